"""What ``mqcompile quantize SOURCE`` reads: a saved ``ExportedProgram``, or a checkpoint directory that one of
the adapters knows, exported by that adapter with its sample inputs.

Known directories (by ``config.json``'s ``model_type``): a Qwen2.5-Omni thinker (``qwen2_5_omni_thinker``, or a
full ``qwen2_5_omni`` checkpoint, whose thinker is used), a Qwen2-family causal LM (``qwen2``) and a DINOv2-style
ViT (``dinov2``, exported at 112 x 112 pixels as the suite does). Each source says
which token ids mark each modality, which held-out batches measure fidelity (never used for calibration), and how
to build the ``builtin`` calibration, when it can.

Example:
    >>> source = load_source("exported.pt2")  # doctest: +SKIP
    >>> source.program, source.held_out  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.export import ExportedProgram

from mqcompile.archive import load_archive
from mqcompile.errors import CheckpointError, ProgramFileError

__all__ = ["Source", "load_source", "KNOWN_MODEL_TYPES"]

log = logging.getLogger(__name__)

KNOWN_MODEL_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni", "qwen2", "dinov2")


@dataclass
class Source:
    program: ExportedProgram
    kind: str
    modality_token_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    held_out: list[dict] = field(default_factory=list)  # kwargs batches for the fidelity table
    builtin: Callable[[int], list[dict]] | None = None  # n -> n calibration batches; None: no builtin data
    builtin_what: str = ""  # what the builtin calibration is made of


def load_source(path: str | Path, seed: int = 0) -> Source:
    """A saved ExportedProgram (a ``.pt2`` file) or a known checkpoint directory; CheckpointError /
    ProgramFileError saying what is expected otherwise."""
    root = Path(path)
    if root.is_dir():
        return _directory(root, seed)
    if not root.exists():
        raise CheckpointError(
            f"{str(root)!r} does not exist; pass a .pt2 file written by torch.export.save, or a checkpoint directory "
            f"(config.json with model_type one of {list(KNOWN_MODEL_TYPES)})"
        )
    return _saved_program(root)


def _saved_program(path: Path) -> Source:
    extra = {"mqcompile.json": ""}
    ep = load_archive(path, extra, what="torch.export.save")
    if extra["mqcompile.json"]:
        raise ProgramFileError(
            f"{path}: already a QuantizedProgram; quantize the float program it came from "
            "(mqcompile export-onnx deploys this one)"
        )
    held_out = []
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        held_out = [(tuple(args), dict(kwargs))]
    return Source(program=ep, kind="exported program", held_out=held_out)


def _model_type(root: Path) -> str:
    config = root / "config.json"
    if not config.is_file():
        raise CheckpointError(
            f"{str(root)!r} has no config.json; pass a Hugging Face checkpoint directory (config.json + safetensors) "
            "or a .pt2 file written by torch.export.save"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {str(config)!r} as a JSON object: {exc}") from None
    if model_type not in KNOWN_MODEL_TYPES:
        raise CheckpointError(
            f"{str(root)!r} holds a {model_type!r} model; the adapters know {list(KNOWN_MODEL_TYPES)}. Export other "
            "models yourself (torch.export.export(model, args, kwargs); torch.export.save(ep, 'model.pt2')) and pass "
            "the .pt2"
        )
    return model_type


def _directory(root: Path, seed: int) -> Source:
    model_type = _model_type(root)
    if model_type == "qwen2":
        return _causal_lm(root)
    if model_type == "dinov2":
        return _vit(root, seed)
    return _thinker(root, seed)


def _thinker(root: Path, seed: int) -> Source:
    from .qwen2_5_omni import export_thinker, load_thinker, make_sample, modality_token_ids

    model = load_thinker(root)
    sample = make_sample(model, seed=seed)
    program = export_thinker(model, sample)
    token_ids = {k: tuple(v) for k, v in modality_token_ids(model.config).items()}

    def builtin(n: int) -> list[dict]:
        return [make_sample(model, seed=seed + 1 + i) for i in range(n)]

    return Source(
        program=program,
        kind="Qwen2.5-Omni thinker",
        modality_token_ids=token_ids,
        held_out=[make_sample(model, seed=seed + 10_000)],
        builtin=builtin,
        builtin_what="the adapter's synthetic samples (random token ids, image patches and audio features laid out "
        "as the processor would); for real data pass --calibration FILE",
    )


_LM_SEQ = 256


def _causal_lm(root: Path) -> Source:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loading import quiet_loading
    from .qwen2_text import export_causal_lm

    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(root)

    def batch(text: str) -> dict | None:
        """The first ``_LM_SEQ`` tokens of ``text`` as one batch (None when it is shorter)."""
        ids = tokenizer(text[: _LM_SEQ * 8]).input_ids  # ~4 characters a token: plenty
        if len(ids) < _LM_SEQ:
            return None
        return {"input_ids": torch.tensor([ids[:_LM_SEQ]]), "attention_mask": torch.ones(1, _LM_SEQ, dtype=torch.long)}

    def builtin(n: int) -> list[dict]:
        from mqcompile.evaluation.text_lm import load_wiki_articles

        # the suite's calibration half (odd articles): its evaluation half stays unseen
        batches = [b for _, text in load_wiki_articles()[1::2] for b in [batch(text)] if b is not None]
        return batches[:n]

    # the example only shapes the export (batch and sequence stay dynamic): any valid ids do
    example = torch.arange(16).remainder(model.config.vocab_size).reshape(2, 8)
    program = export_causal_lm(model, example, torch.ones_like(example))
    held_out = _held_out_text(batch)
    return Source(
        program=program,
        kind="Qwen2-family causal LM",
        held_out=held_out,
        builtin=builtin,
        builtin_what=f"Wikipedia articles of the suite's calibration half, {_LM_SEQ}-token sequences",
    )


def _held_out_text(batch: Callable[[str], dict | None]) -> list[dict]:
    """One sequence of Python's reference-manual prose (``pydoc_data``, in every CPython): a source the builtin
    calibration never draws from."""
    from pydoc_data.topics import topics

    found = batch("\n\n".join(topics[key].strip() for key in sorted(topics)[:40]))
    return [] if found is None else [found]


_VIT_SIZE = 112  # the suite's image size: 8 x 8 patches of 14 (224 costs ~5x on CPU)
_VIT_BATCH = 4


def _vit(root: Path, seed: int) -> Source:
    from transformers import Dinov2Model

    from .dinov2 import export_dinov2
    from .loading import quiet_loading

    with quiet_loading():
        model = Dinov2Model.from_pretrained(root, attn_implementation="eager", dtype=torch.float32).eval()
    size = _VIT_SIZE - _VIT_SIZE % model.config.patch_size
    gen = torch.Generator().manual_seed(seed)
    program = export_dinov2(model, torch.randn(2, 3, size, size, generator=gen))  # shapes only: batch is dynamic

    def builtin(n: int) -> list[dict]:
        from mqcompile.evaluation.vision import calibration_images, preprocess

        pixels = preprocess(calibration_images(n * _VIT_BATCH, seed), size)
        return [{"pixel_values": b} for b in pixels.split(_VIT_BATCH)]

    held_out = []
    try:  # 2 faces and 2 other thumbnails of LFW, a set the builtin calibration never draws from
        from mqcompile.evaluation.vision import lfw_images, preprocess

        held_out = [{"pixel_values": preprocess(lfw_images()[0][::50], size)}]
    except (ImportError, CheckpointError) as exc:  # scikit-image's data comes with the eval extra
        log.info("no held-out images for the fidelity table (%s)", exc)
    return Source(
        program=program,
        kind="DINOv2-style ViT",
        held_out=held_out,
        builtin=builtin,
        builtin_what=f"random crops of scikit-image's sample photos, {_VIT_BATCH} images of {size} x {size} a batch",
    )
