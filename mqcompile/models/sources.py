"""What ``mqcompile quantize SOURCE`` reads: a saved ``ExportedProgram``, or a checkpoint directory that one of
the adapters knows, exported by that adapter with its sample inputs.

Known directories (by ``config.json``'s ``model_type``): a Qwen2.5-Omni thinker (``qwen2_5_omni_thinker``, or a
full ``qwen2_5_omni`` checkpoint, whose thinker is used), a Qwen2-family causal LM (``qwen2``), Whisper
(``whisper``: encoder and decoder as one program, teacher-forced transcripts) and a DINOv2-style ViT (``dinov2``,
exported at 112 x 112 pixels as the suite does). The name ``mini-omni`` (not a path) is the suite's mini-omni,
assembled from the eval extra's real weights. Each source says which token ids mark each modality, which held-out
batches measure fidelity (never used for calibration), and how to build the ``builtin`` calibration
(:mod:`.builtin_data`), when it can.

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
from mqcompile.errors import CalibrationError, CheckpointError, ConfigError, ProgramFileError

__all__ = ["Source", "load_source", "KNOWN_MODEL_TYPES"]

log = logging.getLogger(__name__)

KNOWN_MODEL_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni", "qwen2", "whisper", "dinov2")
MINI_OMNI = "mini-omni"  # a SOURCE name, not a path: the suite's mini-omni from the eval extra's weights


@dataclass
class Source:
    program: ExportedProgram
    kind: str
    modality_token_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    held_out: list[dict] = field(default_factory=list)  # kwargs batches for the fidelity table
    builtin: Callable[[int], list[dict]] | None = None  # n -> n calibration batches; None: no builtin data
    builtin_what: str = ""  # what the builtin calibration is made of


def load_source(path: str | Path, seed: int = 0, kv_cache: bool = False) -> Source:
    """A saved ExportedProgram (a ``.pt2`` file) or a known checkpoint directory; CheckpointError /
    ProgramFileError saying what is expected otherwise. ``kv_cache``: a Qwen2-family causal LM directory becomes its
    KV-cache program (:func:`~mqcompile.models.qwen2_text.export_causal_lm_with_cache`, prefill and decode in one);
    ConfigError for any other source."""
    root = Path(path)
    if kv_cache and (not root.is_dir() or _model_type(root) != "qwen2"):
        raise ConfigError(
            f"--kv-cache: {str(path)!r} is not a Qwen2-family causal LM directory (config.json model_type 'qwen2'); "
            "only those have a KV-cache program here. Leave the flag out for other sources"
        )
    if root.is_dir():
        return _directory(root, seed, kv_cache)
    if not root.exists() and str(path) == MINI_OMNI:
        return _mini_omni(seed)
    if not root.exists():
        raise CheckpointError(
            f"{str(root)!r} does not exist; pass a .pt2 file written by torch.export.save, a checkpoint directory "
            f"(config.json with model_type one of {list(KNOWN_MODEL_TYPES)}), or {MINI_OMNI!r}"
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


def _directory(root: Path, seed: int, kv_cache: bool = False) -> Source:
    model_type = _model_type(root)
    if model_type == "qwen2":
        return _causal_lm(root, kv_cache)
    if model_type == "dinov2":
        return _vit(root, seed)
    if model_type == "whisper":
        return _whisper(root)
    return _thinker(root, seed)


def _tokenizer(root: Path):
    """The directory's tokenizer, or None when it has no tokenizer files."""
    if not any((root / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(root)


_THINKER_IMAGE = 112  # pixels a side: 8 x 8 patches of 14, 16 image tokens after the 2 x 2 merge
_THINKER_FRAMES = 600  # mel frames per clip (6 s; the exported thinker's audio shapes are static): 150 audio tokens
_THINKER_TEXT = 64  # text tokens per sample, half before the image and clip, half after


def _thinker(root: Path, seed: int) -> Source:
    from . import builtin_data
    from .qwen2_5_omni import export_thinker, load_thinker, make_sample, modality_token_ids, real_sample

    model = load_thinker(root)
    token_ids = {k: tuple(v) for k, v in modality_token_ids(model.config).items()}
    tokenizer = _tokenizer(root)
    if tokenizer is None:  # no text can be laid out: the adapter's synthetic samples, and the output says so
        log.info("%s has no tokenizer: builtin calibration and held-out samples are synthetic", root)
        sample = make_sample(model, seed=seed)
        return Source(
            program=export_thinker(model, sample),
            kind="Qwen2.5-Omni thinker",
            modality_token_ids=token_ids,
            held_out=[make_sample(model, seed=seed + 10_000)],
            builtin=lambda n: [make_sample(model, seed=seed + 1 + i) for i in range(n)],
            builtin_what=f"synthetic samples (random token ids, image patches and audio features laid out as the "
            f"processor would): {root} has no tokenizer to lay out real text; add its tokenizer files or pass "
            "--calibration FILE",
        )

    def sample(text: str, image, wave) -> dict:
        ids = tokenizer(text[: _THINKER_TEXT * 8]).input_ids[:_THINKER_TEXT]  # ~4 characters a token: plenty
        return real_sample(model, ids, image, wave, _THINKER_FRAMES)

    _, held_wave = builtin_data.speech(calibration=False, count=1)
    held_out = [sample(builtin_data.held_out_text(), builtin_data.scenes(1, _THINKER_IMAGE)[0], held_wave[0])]

    def builtin(n: int) -> list[dict]:
        texts, images = builtin_data.wiki_texts(), builtin_data.photos(n, _THINKER_IMAGE, seed)
        _, waves = builtin_data.speech(calibration=True, count=n)
        return [sample(texts[i], images[i], waves[i]) for i in range(n)]

    return Source(
        program=export_thinker(model, held_out[0]),  # text length stays dynamic; image and clip shapes are fixed
        kind="Qwen2.5-Omni thinker",
        modality_token_ids=token_ids,
        held_out=held_out,
        builtin=builtin,
        builtin_what=f"one Wikipedia passage ({_THINKER_TEXT} tokens), scikit-image photo ({_THINKER_IMAGE} px) and "
        f"spoken sentence (espeak-ng, {_THINKER_FRAMES // 100} s) a sample",
    )


_LM_SEQ = 256


def _causal_lm(root: Path, kv_cache: bool = False) -> Source:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loading import quiet_loading
    from .qwen2_text import empty_cache_inputs, export_causal_lm, export_causal_lm_with_cache

    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(root)

    def batch(text: str) -> dict | None:
        """The first ``_LM_SEQ`` tokens of ``text`` as one batch (None when it is shorter)."""
        ids = tokenizer(text[: _LM_SEQ * 8]).input_ids  # ~4 characters a token: plenty
        if len(ids) < _LM_SEQ:
            return None
        ids, mask = torch.tensor([ids[:_LM_SEQ]]), torch.ones(1, _LM_SEQ, dtype=torch.long)
        if kv_cache:  # a prefill on an empty past: the same activations as the prefill program's
            return empty_cache_inputs(model.config, ids, mask)
        return {"input_ids": ids, "attention_mask": mask}

    def builtin(n: int) -> list[dict]:
        from .builtin_data import wiki_texts

        return [b for text in wiki_texts() for b in [batch(text)] if b is not None][:n]

    # the example only shapes the export (batch and sequence stay dynamic): any valid ids do
    example = torch.arange(16).remainder(model.config.vocab_size).reshape(2, 8)
    if kv_cache:
        program = export_causal_lm_with_cache(model)
    else:
        program = export_causal_lm(model, example, torch.ones_like(example))
    held_out = _held_out_text(batch)
    return Source(
        program=program,
        kind="Qwen2-family causal LM" + (" with its KV cache" if kv_cache else ""),
        held_out=held_out,
        builtin=builtin,
        builtin_what=f"Wikipedia articles of the suite's calibration half, {_LM_SEQ}-token sequences",
    )


def _held_out_text(batch: Callable[[str], dict | None]) -> list[dict]:
    from .builtin_data import held_out_text

    found = batch(held_out_text())
    return [] if found is None else [found]


def _whisper(root: Path) -> Source:
    from transformers import WhisperForConditionalGeneration

    from . import builtin_data
    from .loading import quiet_loading
    from .whisper import decoder_prompt, export_whisper, log_mel

    with quiet_loading():
        model = WhisperForConditionalGeneration.from_pretrained(
            root, dtype=torch.float32, attn_implementation="eager"
        ).eval()
    tokenizer = _tokenizer(root)
    if tokenizer is None:
        raise CheckpointError(
            f"{str(root)!r} has no tokenizer files; a Whisper directory needs them (tokenizer.json, as Whisper "
            "checkpoints ship) to lay out the transcripts the decoder is calibrated and measured on"
        )
    cfg = model.config
    prompt = decoder_prompt(cfg, tokenizer)

    def batches(sentences: list[str], waves: list) -> list[dict]:
        out = []
        for sentence, features in zip(sentences, log_mel(cfg, waves).split(1)):
            text = tokenizer(" " + sentence, add_special_tokens=False).input_ids
            ids = (prompt + text)[: int(cfg.max_target_positions) - 1] + [int(cfg.eos_token_id)]
            out.append({"input_features": features, "decoder_input_ids": torch.tensor([ids])})
        return out

    held_out = batches(*builtin_data.speech(calibration=False, count=2))
    # batch 1 (static), the transcript length dynamic: one clip and its teacher-forced transcript a batch
    program = export_whisper(model, **held_out[0])
    return Source(
        program=program,
        kind="Whisper",
        held_out=held_out,
        builtin=lambda n: batches(*builtin_data.speech(calibration=True, count=n)),
        builtin_what="sentences spoken by espeak-ng with their teacher-forced transcripts, one clip a batch",
    )


_OMNI_MOST = 16  # builtin calibration batches the mini-omni source prepares


def _mini_omni(seed: int) -> Source:
    from mqcompile.evaluation.omni import OmniTask

    spec = OmniTask(seed=seed, calibration_batches=_OMNI_MOST).programs()["omni"]

    def builtin(n: int) -> list[dict]:
        if n > _OMNI_MOST:
            raise CalibrationError(f"--samples {n}: the mini-omni's builtin calibration has {_OMNI_MOST} batches")
        return spec.calibration[:n]

    return Source(
        program=spec.program,
        kind="mini-omni",
        modality_token_ids=dict(spec.config["modality_token_ids"]),
        held_out=[spec.probe],
        builtin=builtin,
        builtin_what="the suite's mini-omni calibration: a rendered scene with its question and answer, a spoken "
        "sentence with its transcript and a Wikipedia passage a batch",
    )


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
