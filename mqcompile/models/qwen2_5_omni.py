"""Qwen2.5-Omni thinker: tiny test model, checkpoint loading, samples, torch.export of the thinker and its towers.

Everything model-specific that mqcompile needs for Qwen2.5-Omni lives here; passes never look at layer names.

What it provides and guarantees:

* :func:`tiny_thinker_config` / :func:`build_tiny_thinker`: a structurally real, seeded, float32 thinker (vision tower
  with window and full attention layers, audio tower, GQA decoder with M-RoPE) small enough for unit tests.
* :func:`load_thinker`: a real thinker from a local checkpoint directory (thinker-only or full Qwen2.5-Omni config).
* :func:`make_sample`: a multimodal sample laid out the way the processor does it, plus every index tensor the export
  needs, precomputed on the host (the HF code computes them with ``.tolist()`` / loops that ``torch.export`` cannot
  trace). The dict keys are exactly the keyword argument names of the exported forward, so graph placeholders are
  named after them; the modality sources are ``input_ids``, ``pixel_values``, ``pixel_values_videos`` and
  ``input_features``.
* :func:`export_thinker`, :func:`export_vision_tower`, :func:`export_audio_tower`: ``torch.export.ExportedProgram`` s
  whose linears are ``aten.linear.default`` nodes (no decomposition to core aten is run) and whose outputs equal the
  HF forward. The forward is composed in adapter modules (:class:`ThinkerForExport`, :class:`VisionTowerForExport`,
  :class:`AudioTowerForExport`) that call the real submodules (patch embed, linears, norms, MLPs, merger, convs,
  decoder layers, lm_head); no transformers class is patched.

Attention in the vision and audio towers is written in the adapter as *masked* attention over the packed sequence:
the HF eager code splits the sequence with ``cu_seqlens.tolist()`` (data-dependent sizes, unbacked symbols in the
graph). Here the block-diagonal mask is built in the graph from the ``cu_seqlens`` inputs, so the program has static
shapes, no data-dependent ops, and is numerically the same attention (masked keys get exactly zero weight).

Example::

    model = build_tiny_thinker(seed=0)
    sample = make_sample(model, image_grid=(1, 4, 4), audio_frames=100)
    ep = export_thinker(model, sample)
    logits = ep.module()(**sample)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mqcompile.errors import CalibrationError, CheckpointError, NonFiniteError

__all__ = [
    "THINKER_MODEL_TYPE",
    "OMNI_MODEL_TYPE",
    "VIDEO_SECONDS_PER_GRID",
    "VISION_TOWER_KEYS",
    "AUDIO_TOWER_KEYS",
    "ThinkerParts",
    "ThinkerForExport",
    "VisionTowerForExport",
    "AudioTowerForExport",
    "tiny_thinker_config",
    "build_tiny_thinker",
    "load_thinker",
    "thinker_parts",
    "modality_token_ids",
    "make_sample",
    "check_sample",
    "reference_inputs",
    "tower_sample",
    "export_thinker",
    "export_vision_tower",
    "export_audio_tower",
]

logger = logging.getLogger(__name__)

THINKER_MODEL_TYPE = "qwen2_5_omni_thinker"
OMNI_MODEL_TYPE = "qwen2_5_omni"
#: Seconds covered by one temporal grid step of a video (processor default: temporal_patch_size 2 at 2 fps).
VIDEO_SECONDS_PER_GRID = 1.0

#: Sample keys consumed by :func:`export_vision_tower` (the image branch of a thinker sample).
VISION_TOWER_KEYS = (
    "pixel_values",
    "image_position_ids",
    "image_cu_seqlens",
    "image_window_index",
    "image_cu_window_seqlens",
)
#: Sample keys consumed by :func:`export_audio_tower`.
AUDIO_TOWER_KEYS = (
    "input_features",
    "audio_chunk_index",
    "audio_chunk_lengths",
    "audio_valid_indices",
    "audio_pool_indices",
    "audio_cu_seqlens",
)

_VISION_SUFFIXES = ("position_ids", "cu_seqlens", "window_index", "cu_window_seqlens")
_AUDIO_SUFFIXES = ("chunk_index", "chunk_lengths", "valid_indices", "pool_indices", "cu_seqlens")
_INDEX_INT_KEYS = ("input_ids", "position_ids")

# Token ids of the tiny config; all inside the 1024-token vocabulary, ordered like the real model's specials.
_TINY_IDS = {
    "audio_token_index": 1000,
    "audio_start_token_id": 1001,
    "audio_end_token_id": 1002,
    "vision_start_token_id": 1003,
    "vision_end_token_id": 1004,
    "image_token_index": 1005,
    "video_token_index": 1006,
    "user_token_id": 1007,
}


# --------------------------------------------------------------------------------------------------------------------
# Model construction and loading
# --------------------------------------------------------------------------------------------------------------------


def tiny_thinker_config():
    """A tiny but structurally real ``Qwen2_5OmniThinkerConfig`` for tests.

    Every linear has in/out features that are multiples of 2 (int4 weights pack two values per byte) — in fact all
    are multiples of 64: vision 64/128/256, audio 64/128, decoder 128/256/64 (GQA k/v), lm_head 128 -> 1024.

    * vision: depth 4, hidden 64, 2 heads (head_dim 32), patch 14, temporal patch 2, spatial merge 2,
      ``window_size=56`` (a window is 2x2 merged tokens, so a 4x6-patch image already has 2 windows),
      ``fullatt_block_indexes=[1, 3]`` (blocks 0 and 2 use window attention).
    * audio: 2 layers, d_model 64, 2 heads, 128 mel bins like the real model, ``n_window=8`` (16-frame chunks).
    * text: 2 layers, hidden 128, 4 query heads / 2 kv heads (head_dim 32), vocab 1024 with the special ids at
      1000..1007, M-RoPE ``mrope_section=[4, 6, 6]`` (sums to head_dim / 2).

    Example::

        cfg = tiny_thinker_config()
        assert cfg.text_config.vocab_size == 1024
    """
    from transformers import Qwen2_5OmniThinkerConfig

    return Qwen2_5OmniThinkerConfig(
        vision_config={
            "depth": 4,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": 128,
            "fullatt_block_indexes": [1, 3],
        },
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "d_model": 64,
            "n_window": 8,
            "output_dim": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "vocab_size": 1024,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            "tie_word_embeddings": False,
        },
        tie_word_embeddings=False,
        **_TINY_IDS,
    )


def build_tiny_thinker(seed: int = 0):
    """Seeded tiny thinker (float32, eval mode, eager attention) built from :func:`tiny_thinker_config`.

    Weights are normal(0, 0.02) like the HF init, except that norm weights stay 1 and biases are normal(0, 0.02)
    too (the HF init zeros them, which makes every bias-add trivially exact). With this init the logits have a
    standard deviation of roughly 0.2-0.3 — small but far from degenerate, so quantization error is measurable.

    Example::

        model = build_tiny_thinker(seed=0)
        assert not model.training
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = tiny_thinker_config()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the HF init draws from the global RNG; leave the caller's state alone
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, attn_implementation="eager")
    std = config.initializer_range
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_norm_weight(model, name):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.to(torch.float32).eval()


def _is_norm_weight(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    is_norm = isinstance(owner, nn.LayerNorm) or type(owner).__name__.endswith("RMSNorm")
    return is_norm and name.endswith("weight")


def load_thinker(path, *, dtype: torch.dtype = torch.float32):
    """Load a Qwen2.5-Omni thinker from a local checkpoint directory, in eval mode with eager attention.

    ``path`` holds ``config.json`` and safetensors weights. The config is either a thinker config
    (``model_type == "qwen2_5_omni_thinker"``) or a full Qwen2.5-Omni config (``"qwen2_5_omni"``) whose
    ``thinker_config`` is used; in the latter case the ``thinker.`` weight prefix is stripped and talker/token2wav
    weights are ignored.

    Raises:
        CheckpointError: the path does not exist, has no ``config.json``, the config is not a Qwen2.5-Omni
            (thinker) config, there are no weights, or weights are missing for some parameters.

    Example::

        model = load_thinker("/models/Qwen2.5-Omni-7B")
    """
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    root = Path(path)
    if not root.exists():
        raise CheckpointError(
            f"checkpoint path {str(root)!r} does not exist; pass a local directory holding "
            "config.json and *.safetensors of a Qwen2.5-Omni (thinker) checkpoint"
        )
    if not root.is_dir():
        raise CheckpointError(
            f"checkpoint path {str(root)!r} is not a directory; pass the directory that holds "
            "config.json and the safetensors weights"
        )
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{str(root)!r} has no config.json; it does not look like a Hugging Face checkpoint "
            "directory (expected config.json + *.safetensors)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {str(config_file)!r} as JSON: {exc}") from exc
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type == THINKER_MODEL_TYPE:
        config = Qwen2_5OmniThinkerConfig.from_pretrained(root)
    elif model_type == OMNI_MODEL_TYPE:
        config = Qwen2_5OmniConfig.from_pretrained(root).thinker_config
    else:
        raise CheckpointError(
            f"{str(config_file)!r} has model_type {model_type!r}; expected {THINKER_MODEL_TYPE!r} or "
            f"{OMNI_MODEL_TYPE!r} (a Qwen2.5-Omni thinker or full Qwen2.5-Omni checkpoint)"
        )
    if not any(root.glob("*.safetensors")):
        raise CheckpointError(
            f"{str(root)!r} holds no *.safetensors weights; save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )
    model, info = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        root, config=config, attn_implementation="eager", dtype=dtype, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise CheckpointError(
            f"{str(root)!r} lacks weights for {len(missing)} thinker parameters "
            f"(first: {missing[:5]}); the checkpoint is incomplete or not a Qwen2.5-Omni thinker"
        )
    unexpected = info.get("unexpected_keys", ())
    if unexpected:
        logger.info("load_thinker: ignored %d non-thinker weights in %s", len(unexpected), root)
    return model.eval()


@dataclass(frozen=True)
class ThinkerParts:
    """The thinker submodules the adapters call, resolved for both transformers module layouts.

    transformers >= 5.2x: ``thinker.model.{visual, audio_tower, language_model}``; older (e.g. 5.17):
    ``thinker.{visual, audio_tower}`` and ``thinker.model`` is the text model. ``text`` is the decoder
    (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``).
    """

    visual: nn.Module
    audio_tower: nn.Module
    text: nn.Module
    lm_head: nn.Module


def thinker_parts(model: nn.Module) -> ThinkerParts:
    """Resolve the vision tower, audio tower, decoder and lm_head of a thinker for either module layout.

    Example::

        parts = thinker_parts(build_tiny_thinker())
        assert len(parts.text.layers) == 2
    """
    inner = getattr(model, "model", None)

    def pick(name: str) -> nn.Module:
        for owner in (model, inner):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
        raise CheckpointError(
            f"{type(model).__name__} has no {name!r} submodule (looked at .{name} and "
            f".model.{name}); expected a Qwen2.5-Omni thinker"
        )

    visual = pick("visual")
    audio_tower = pick("audio_tower")
    text = getattr(inner, "language_model", None)
    if not isinstance(text, nn.Module):
        text = inner
    if not (isinstance(text, nn.Module) and hasattr(text, "layers") and hasattr(text, "embed_tokens")):
        raise CheckpointError(f"{type(model).__name__} has no text decoder at .model.language_model or .model")
    lm_head = getattr(model, "lm_head", None)
    if not isinstance(lm_head, nn.Module):
        raise CheckpointError(f"{type(model).__name__} has no lm_head")
    return ThinkerParts(visual=visual, audio_tower=audio_tower, text=text, lm_head=lm_head)


def modality_token_ids(config) -> dict[str, list[int]]:
    """Placeholder token ids per modality: ``{"vision": [image_token_id, video_token_id], "audio": [audio_token_id]}``.

    Accepts a thinker config, a full Qwen2.5-Omni config (its ``thinker_config`` is used) or a thinker model.

    Example::

        ids = modality_token_ids(tiny_thinker_config())
        assert ids == {"vision": [1005, 1006], "audio": [1000]}
    """
    config = getattr(config, "config", config)
    config = getattr(config, "thinker_config", config)
    return {"vision": [int(config.image_token_id), int(config.video_token_id)], "audio": [int(config.audio_token_id)]}


# --------------------------------------------------------------------------------------------------------------------
# Host-side index precomputation (the HF code does this with .tolist() and Python loops)
# --------------------------------------------------------------------------------------------------------------------


def _vision_indices(
    grids: list[tuple[int, int, int]], *, merge: int, window_size: int, patch_size: int
) -> dict[str, torch.Tensor]:
    """Rotary position ids, per-frame cu_seqlens, window permutation and window cu_seqlens (HF vision_utils logic)."""
    position_ids, window_index, cu_window = [], [], [0]
    seqlens: list[int] = []
    window_offset = 0
    merger_window = window_size // merge // patch_size
    unit = merge * merge
    for t, h, w in grids:
        if h % merge or w % merge:
            raise CalibrationError(f"image grid h={h}, w={w} must be multiples of spatial_merge_size={merge}")
        hpos = torch.arange(h).view(h, 1).expand(h, w)
        wpos = torch.arange(w).view(1, w).expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(1, 2).flatten()
        wpos = wpos.reshape(block).transpose(1, 2).flatten()
        position_ids.append(torch.stack([hpos, wpos], dim=-1).repeat(t, 1))
        seqlens.extend([h * w] * t)

        gh, gw = h // merge, w // merge
        index = torch.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h = merger_window - gh % merger_window
        pad_w = merger_window - gw % merger_window
        nwh, nww = (gh + pad_h) // merger_window, (gw + pad_w) // merger_window
        padded = F.pad(index, (0, pad_w, 0, pad_h), "constant", -100)
        padded = padded.reshape(t, nwh, merger_window, nww, merger_window).permute(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nwh * nww, merger_window, merger_window)
        window_lens = (padded != -100).sum([2, 3]).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + window_offset)
        for n in (window_lens.cumsum(0) * unit + cu_window[-1]).tolist():
            if n != cu_window[-1]:  # empty (all-padding) windows add no boundary, like unique_consecutive
                cu_window.append(int(n))
        window_offset += t * gh * gw
    cu_seqlens = F.pad(torch.tensor(seqlens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0), value=0)
    return {
        "position_ids": torch.cat(position_ids, dim=0),
        "cu_seqlens": cu_seqlens,
        "window_index": torch.cat(window_index, dim=0),
        "cu_window_seqlens": torch.tensor(cu_window, dtype=torch.int32),
    }


def _audio_after_cnn(frames: int) -> tuple[int, int]:
    """Frames after conv2 (stride 2) and tokens after the stride-2 average pool."""
    after_conv = (frames - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


def _audio_indices(feature_lens: list[int], *, n_window: int) -> dict[str, torch.Tensor]:
    """Chunking, valid-position, pooling and attention indices of the audio tower (HF chunk_and_pad_features logic).

    ``chunk_index[c, j]`` is the frame (column of ``input_features``) at position ``j`` of chunk ``c``, or
    ``total_frames`` for padding: the adapter gathers ``pad(input_features, (0, 1))[:, chunk_index]`` in the graph, so
    ``input_features`` stays the data source of the audio tower (HF passes a precomputed ``padded_feature`` instead).
    """
    chunk = n_window * 2
    lengths: list[int] = []
    starts: list[int] = []
    offset = 0
    for n in feature_lens:
        if n <= 0:
            raise CalibrationError(f"audio feature length must be positive, got {n}")
        for start in range(0, n, chunk):
            starts.append(offset + start)
            lengths.append(min(chunk, n - start))
        offset += n
    total = offset
    max_len = max(lengths)
    pos = torch.arange(max_len)
    starts_t, lengths_t = torch.tensor(starts), torch.tensor(lengths)
    chunk_index = torch.where(pos < lengths_t[:, None], starts_t[:, None] + pos, torch.full_like(pos, total))
    after_conv = (lengths_t - 1) // 2 + 1
    max_after = int(after_conv.max())
    valid = (torch.arange(max_after) < after_conv[:, None]).flatten().nonzero().squeeze(-1)
    cu_seqlens = F.pad(after_conv.cumsum(0), (1, 0), value=0).to(torch.int32)
    pool: list[int] = []
    base = 0
    for n in feature_lens:
        conv_len, pooled = _audio_after_cnn(n)
        pool.extend(base + 2 * i for i in range(pooled))
        base += conv_len
    return {
        "chunk_index": chunk_index,
        "chunk_lengths": lengths_t,
        "valid_indices": valid,
        "pool_indices": torch.tensor(pool, dtype=torch.long),
        "cu_seqlens": cu_seqlens,
    }


def _check_grid(grid, name: str) -> tuple[int, int, int]:
    if grid is None or len(grid) != 3 or any(int(v) <= 0 for v in grid):
        raise CalibrationError(f"{name} must be (t, h, w) in patches with positive entries, got {grid!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def make_sample(
    model,
    *,
    text_tokens: int = 8,
    image_grid: tuple[int, int, int] | None = (1, 4, 4),
    audio_frames: int | None = 100,
    video: bool = False,
    video_grid: tuple[int, int, int] = (2, 4, 6),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A multimodal sample (batch 1) for ``model``, laid out like the Qwen2.5-Omni processor output.

    Sequence: half of the text tokens, ``<vision_bos> <IMAGE>*N <vision_eos>`` with ``N = t*h*w / merge**2``,
    ``<audio_bos> <AUDIO>*M <audio_eos>`` with ``M`` from the audio tower's conv + pool length formula,
    optionally ``<vision_bos> <VIDEO>*K <vision_eos>``, then the other text tokens. ``image_grid=None`` or
    ``audio_frames=None`` leaves that modality out.

    Keys (the keyword arguments of :class:`ThinkerForExport`, i.e. the exported program's placeholder names):

    * ``input_ids`` (1, S) int64 and ``position_ids`` (3, 1, S) int64 (M-RoPE ids from ``get_rope_index``);
    * image: ``pixel_values`` (t*h*w, C*temporal_patch*patch*patch) float, ``image_position_ids`` (t*h*w, 2),
      ``image_cu_seqlens`` (frames+1,) int32, ``image_window_index`` (t*h*w/merge**2,),
      ``image_cu_window_seqlens`` (windows+1,) int32;
    * video (``video=True``): the same with ``pixel_values_videos`` and the ``video_`` prefix;
    * audio: ``input_features`` (n_mels, frames) float, ``audio_chunk_index`` (chunks, max_chunk) int64,
      ``audio_chunk_lengths`` (chunks,), ``audio_valid_indices``, ``audio_pool_indices``, ``audio_cu_seqlens`` int32.

    Example::

        sample = make_sample(build_tiny_thinker(), text_tokens=8, image_grid=(1, 4, 4), audio_frames=100)
        assert sample["pixel_values"].shape == (16, 1176)
    """
    config = model.config
    vcfg, acfg, tcfg = config.vision_config, config.audio_config, config.get_text_config()
    if text_tokens < 0:
        raise CalibrationError(f"text_tokens must be >= 0, got {text_tokens}")
    generator = torch.Generator().manual_seed(seed)
    merge = int(vcfg.spatial_merge_size)
    patch_dim = int(vcfg.in_channels) * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    ids = _special_ids(config)
    specials = set(ids.values())
    allowed = torch.tensor([i for i in range(int(tcfg.vocab_size)) if i not in specials])
    text = allowed[torch.randint(len(allowed), (text_tokens,), generator=generator)].tolist()
    head, tail = text[: text_tokens // 2], text[text_tokens // 2 :]

    sample: dict[str, torch.Tensor] = {}
    tokens = list(head)
    image_grid_thw = video_grid_thw = feature_lens = None
    if image_grid is not None:
        t, h, w = _check_grid(image_grid, "image_grid")
        n = t * h * w // merge**2
        tokens += [ids["vision_start"]] + [ids["image"]] * n + [ids["vision_end"]]
        sample["pixel_values"] = torch.randn(t * h * w, patch_dim, generator=generator)
        for key, value in _vision_indices(
            [(t, h, w)], merge=merge, window_size=int(vcfg.window_size), patch_size=int(vcfg.patch_size)
        ).items():
            sample[f"image_{key}"] = value
        image_grid_thw = torch.tensor([[t, h, w]])
    if audio_frames is not None:
        if audio_frames < 4:
            raise CalibrationError(f"audio_frames must be >= 4 (one pooled audio token), got {audio_frames}")
        m = _audio_after_cnn(audio_frames)[1]
        tokens += [ids["audio_start"]] + [ids["audio"]] * m + [ids["audio_end"]]
        sample["input_features"] = torch.randn(int(acfg.num_mel_bins), audio_frames, generator=generator)
        for key, value in _audio_indices([audio_frames], n_window=int(acfg.n_window)).items():
            sample[f"audio_{key}"] = value
        feature_lens = torch.tensor([audio_frames])
    if video:
        t, h, w = _check_grid(video_grid, "video_grid")
        k = t * h * w // merge**2
        tokens += [ids["vision_start"]] + [ids["video"]] * k + [ids["vision_end"]]
        sample["pixel_values_videos"] = torch.randn(t * h * w, patch_dim, generator=generator)
        for key, value in _vision_indices(
            [(t, h, w)], merge=merge, window_size=int(vcfg.window_size), patch_size=int(vcfg.patch_size)
        ).items():
            sample[f"video_{key}"] = value
        video_grid_thw = torch.tensor([[t, h, w]])
    tokens += tail
    if not tokens:
        raise CalibrationError("the sample would be empty: give text_tokens > 0 or at least one modality")
    input_ids = torch.tensor([tokens], dtype=torch.long)
    sample = {
        "input_ids": input_ids,
        "position_ids": _rope_position_ids(model, input_ids, image_grid_thw, video_grid_thw, feature_lens),
        **sample,
    }
    return sample


def _special_ids(config) -> dict[str, int]:
    return {
        "image": int(config.image_token_id),
        "video": int(config.video_token_id),
        "audio": int(config.audio_token_id),
        "vision_start": int(config.vision_start_token_id),
        "vision_end": int(config.vision_end_token_id),
        "audio_start": int(config.audio_start_token_id),
        "audio_end": int(config.audio_end_token_id),
    }


def _rope_position_ids(model, input_ids, image_grid_thw, video_grid_thw, feature_lens) -> torch.Tensor:
    """3D M-RoPE position ids (3, 1, S) from the model's own ``get_rope_index`` (1D positions without vision)."""
    second_per_grids = torch.tensor([VIDEO_SECONDS_PER_GRID]) if video_grid_thw is not None else None
    position_ids, _ = model.get_rope_index(
        input_ids, image_grid_thw, video_grid_thw, torch.ones_like(input_ids), False, feature_lens, second_per_grids
    )
    return position_ids.contiguous()


def check_sample(sample: Mapping[str, torch.Tensor], *, required: tuple[str, ...] = ("input_ids",)) -> None:
    """Validate a sample before export or calibration.

    Raises:
        CalibrationError: a value is not a tensor, a required key is missing, a modality source lacks its index
            tensors, or ``input_ids``/``position_ids`` are not integer tensors.
        NonFiniteError: ``pixel_values``, ``pixel_values_videos`` or ``input_features`` contain NaN or Inf.

    Example::

        check_sample(make_sample(build_tiny_thinker()))
    """
    if not isinstance(sample, Mapping):
        raise CalibrationError(f"a sample is a dict of tensors, got {type(sample).__name__}")
    for key, value in sample.items():
        if not isinstance(value, torch.Tensor):
            raise CalibrationError(f"sample[{key!r}] is a {type(value).__name__}, expected a torch.Tensor")
    missing = [k for k in required if k not in sample]
    if missing:
        raise CalibrationError(f"sample lacks required keys {missing}; present: {sorted(sample)}")
    groups = {"pixel_values": "image_", "pixel_values_videos": "video_", "input_features": "audio_"}
    for source, prefix in groups.items():
        if source not in sample:
            continue
        suffixes = _AUDIO_SUFFIXES if prefix == "audio_" else _VISION_SUFFIXES
        lacking = [prefix + s for s in suffixes if prefix + s not in sample]
        if lacking:
            raise CalibrationError(
                f"sample has {source!r} but lacks its index tensors {lacking}; build samples with make_sample()"
            )
        value = sample[source]
        if not value.is_floating_point():
            raise CalibrationError(f"sample[{source!r}] must be a floating tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(
                f"sample[{source!r}] has {bad} NaN/Inf values (shape {tuple(value.shape)}); "
                "clean the inputs before calibration or export"
            )
    for key in _INDEX_INT_KEYS:
        if key in sample and sample[key].is_floating_point():
            raise CalibrationError(f"sample[{key!r}] must be an integer tensor, got {sample[key].dtype}")


def reference_inputs(sample: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keyword arguments for the HF thinker forward equivalent to a :func:`make_sample` sample.

    Recovers ``image_grid_thw``/``video_grid_thw`` from the vision index tensors (one image and one video per sample,
    as :func:`make_sample` builds them) and turns ``input_features`` (n_mels, frames) into the processor's batched
    ``(1, n_mels, frames)`` + ``feature_attention_mask``.

    Example::

        logits = model(**reference_inputs(sample)).logits
    """
    out: dict[str, torch.Tensor] = {
        "input_ids": sample["input_ids"],
        "attention_mask": torch.ones_like(sample["input_ids"]),
    }
    for source, prefix, grid_key in (
        ("pixel_values", "image_", "image_grid_thw"),
        ("pixel_values_videos", "video_", "video_grid_thw"),
    ):
        if source in sample:
            out[source] = sample[source]
            out[grid_key] = _grid_from_indices(sample[prefix + "position_ids"], sample[prefix + "cu_seqlens"])
    if "pixel_values_videos" in sample:
        out["video_second_per_grid"] = torch.tensor([VIDEO_SECONDS_PER_GRID])
    if "input_features" in sample:
        features = sample["input_features"]
        out["input_features"] = features.unsqueeze(0)
        out["feature_attention_mask"] = torch.ones(1, features.shape[1], dtype=torch.long)
    return out


def _grid_from_indices(position_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    t = cu_seqlens.numel() - 1
    h = int(position_ids[:, 0].max()) + 1
    w = int(position_ids[:, 1].max()) + 1
    if t * h * w != position_ids.shape[0]:
        raise CalibrationError("cannot recover the vision grid: the sample holds more than one image/video")
    return torch.tensor([[t, h, w]])


def tower_sample(sample: Mapping[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    """The subset of a thinker sample that a tower program takes (``tower`` is ``"vision"`` or ``"audio"``).

    Example::

        ep = export_vision_tower(model, sample)
        image_embeds = ep.module()(**tower_sample(sample, "vision"))
    """
    keys = {"vision": VISION_TOWER_KEYS, "audio": AUDIO_TOWER_KEYS}.get(tower)
    if keys is None:
        raise CalibrationError(f"tower must be 'vision' or 'audio', got {tower!r}")
    missing = [k for k in keys if k not in sample]
    if missing:
        raise CalibrationError(f"sample lacks {missing} needed by the {tower} tower")
    return {k: sample[k] for k in keys}


# --------------------------------------------------------------------------------------------------------------------
# Adapter modules (the exported forwards)
# --------------------------------------------------------------------------------------------------------------------


def _segment_mask(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) bool: True where query and key lie in the same packed segment of ``cu_seqlens``."""
    pos = torch.arange(n, device=cu_seqlens.device)
    segment = (pos[:, None] >= cu_seqlens[None, 1:].to(pos.dtype)).sum(-1)
    return segment[:, None] == segment[None, :]


def _masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Eager attention of (heads, n, d) tensors restricted by a (n, n) bool mask; returns (n, heads * d)."""
    weights = torch.matmul(q, k.transpose(-1, -2)) * scaling
    weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v)  # (heads, n, d)
    return out.transpose(0, 1).reshape(q.shape[1], -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _vision_forward(
    visual: nn.Module,
    pixel_values: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    window_index: torch.Tensor,
    cu_window_seqlens: torch.Tensor,
) -> torch.Tensor:
    """Qwen2.5-Omni vision tower with precomputed indices; returns merged embeddings in original token order."""
    merge = int(visual.spatial_merge_size)
    unit = merge * merge
    full_blocks = {int(i) for i in visual.fullatt_block_indexes}
    hidden = visual.patch_embed(pixel_values.to(_module_dtype(visual.patch_embed)))
    n = hidden.shape[0]
    hidden = hidden.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
    pos = position_ids.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)

    rotary = visual.rotary_pos_emb
    freqs = pos[..., None].float() * rotary.inv_freq.float()  # (n, 2, head_dim / 4)
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    cos, sin = (emb.cos() * scale)[:, None, :], (emb.sin() * scale)[:, None, :]

    full_mask = _segment_mask(cu_seqlens, n)
    window_mask = _segment_mask(cu_window_seqlens, n)
    for i, block in enumerate(visual.blocks):
        attn = block.attn
        x = block.norm1(hidden)
        if hasattr(attn, "qkv"):
            q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).unbind(1)
        else:
            q = attn.q(x).reshape(n, attn.num_heads, -1)
            k = attn.k(x).reshape(n, attn.num_heads, -1)
            v = attn.v(x).reshape(n, attn.num_heads, -1)
        in_dtype = q.dtype
        qf, kf = q.float(), k.float()
        q = (qf * cos + _rotate_half(qf) * sin).to(in_dtype)
        k = (kf * cos + _rotate_half(kf) * sin).to(in_dtype)
        scaling = getattr(attn, "scaling", None) or q.shape[-1] ** -0.5
        out = _masked_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            full_mask if i in full_blocks else window_mask,
            scaling,
        )
        hidden = hidden + attn.proj(out)
        hidden = hidden + block.mlp(block.norm2(hidden))
    merged = visual.merger(hidden)
    return merged[torch.argsort(window_index)]


def _audio_forward(
    tower: nn.Module,
    input_features: torch.Tensor,
    chunk_index: torch.Tensor,
    chunk_lengths: torch.Tensor,
    valid_indices: torch.Tensor,
    pool_indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> torch.Tensor:
    """Qwen2.5-Omni audio tower with precomputed chunking indices; returns (tokens, output_dim) embeddings."""
    features = input_features.to(_module_dtype(tower.conv1))
    padded = F.pad(features, (0, 1))[:, chunk_index].permute(1, 0, 2)  # (chunks, n_mels, max_chunk)
    length = padded.shape[2]
    mask = (torch.arange(length, device=padded.device) < chunk_lengths[:, None]).unsqueeze(1)
    embed = F.gelu(tower.conv1(padded)) * mask.to(padded.dtype)
    embed = F.gelu(tower.conv2(embed)).transpose(1, 2)
    table = tower.positional_embedding
    table = getattr(table, "positional_embedding", table)
    embed = embed + table[: embed.shape[1], :].unsqueeze(0).to(embed.dtype)
    hidden = embed.reshape(-1, embed.shape[-1])[valid_indices]
    n = hidden.shape[0]
    attn_mask = _segment_mask(cu_seqlens, n)
    for layer in tower.layers:
        attn = layer.self_attn
        x = layer.self_attn_layer_norm(hidden)
        q = attn.q_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        k = attn.k_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        v = attn.v_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        hidden = hidden + attn.out_proj(_masked_attention(q, k, v, attn_mask, attn.scaling))
        x = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        hidden = hidden + x
        if hidden.dtype == torch.float16:
            limit = torch.finfo(hidden.dtype).max - 1000
            hidden = hidden.clamp(-limit, limit)
    hidden = (hidden[pool_indices] + hidden[pool_indices + 1]) / 2
    return tower.proj(tower.ln_post(hidden))


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class VisionTowerForExport(nn.Module):
    """Vision tower alone: ``pixel_values`` + image indices -> merged image embeddings (tokens, out_hidden_size).

    Registers only the tower (as ``visual``), so the program's parameters are ``visual.*``.

    Example::

        out = VisionTowerForExport(model)(**tower_sample(sample, "vision"))
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = thinker_parts(model).visual

    def forward(self, pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens):
        return _vision_forward(
            self.visual, pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens
        )


class AudioTowerForExport(nn.Module):
    """Audio tower alone: ``input_features`` + audio indices -> audio embeddings (tokens, output_dim).

    Example::

        out = AudioTowerForExport(model)(**tower_sample(sample, "audio"))
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.audio_tower = thinker_parts(model).audio_tower

    def forward(
        self,
        input_features,
        audio_chunk_index,
        audio_chunk_lengths,
        audio_valid_indices,
        audio_pool_indices,
        audio_cu_seqlens,
    ):
        return _audio_forward(
            self.audio_tower,
            input_features,
            audio_chunk_index,
            audio_chunk_lengths,
            audio_valid_indices,
            audio_pool_indices,
            audio_cu_seqlens,
        )


class ThinkerForExport(nn.Module):
    """The whole thinker forward (prefill, no KV cache) as one traceable module: inputs -> logits (1, S, vocab).

    Registers the thinker as ``thinker`` so parameter names and ``nn_module_stack`` paths are
    ``thinker.<HF name>``. Image and video pixels go through the vision tower in one pass (concatenated, with the
    video indices offset; attention stays within each frame/window, so this equals two separate passes). The
    embeddings are merged with ``masked_scatter`` at the placeholder tokens of ``input_ids``; the decoder runs the
    real decoder layers with an in-graph causal mask and the model's own M-RoPE rotary embedding.

    Example::

        logits = ThinkerForExport(model)(**sample)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.thinker = model
        parts = thinker_parts(model)
        self._parts = parts  # a plain dataclass: the submodules stay registered only under `thinker`
        ids = _special_ids(model.config)
        self.image_token_id, self.video_token_id, self.audio_token_id = ids["image"], ids["video"], ids["audio"]

    def forward(
        self,
        input_ids,
        position_ids,
        pixel_values=None,
        image_position_ids=None,
        image_cu_seqlens=None,
        image_window_index=None,
        image_cu_window_seqlens=None,
        input_features=None,
        audio_chunk_index=None,
        audio_chunk_lengths=None,
        audio_valid_indices=None,
        audio_pool_indices=None,
        audio_cu_seqlens=None,
        pixel_values_videos=None,
        video_position_ids=None,
        video_cu_seqlens=None,
        video_window_index=None,
        video_cu_window_seqlens=None,
    ):
        parts = self._parts
        visual, audio_tower, text, lm_head = parts.visual, parts.audio_tower, parts.text, parts.lm_head
        embeds = text.embed_tokens(input_ids)

        if input_features is not None:
            audio = _audio_forward(
                audio_tower,
                input_features,
                audio_chunk_index,
                audio_chunk_lengths,
                audio_valid_indices,
                audio_pool_indices,
                audio_cu_seqlens,
            )
            embeds = _scatter(embeds, input_ids == self.audio_token_id, audio)

        visual_inputs = []
        if pixel_values is not None:
            visual_inputs.append(
                (pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens)
            )
        if pixel_values_videos is not None:
            visual_inputs.append(
                (pixel_values_videos, video_position_ids, video_cu_seqlens, video_window_index, video_cu_window_seqlens)
            )
        if visual_inputs:
            merged = _vision_forward(visual, *_concat_vision(visual_inputs, int(visual.spatial_merge_size)))
            if pixel_values is not None and pixel_values_videos is not None:
                n_image = pixel_values.shape[0] // int(visual.spatial_merge_size) ** 2
                image, video = merged[:n_image], merged[n_image:]
                embeds = _scatter(embeds, input_ids == self.image_token_id, image)
                embeds = _scatter(embeds, input_ids == self.video_token_id, video)
            elif pixel_values is not None:
                embeds = _scatter(embeds, input_ids == self.image_token_id, merged)
            else:
                embeds = _scatter(embeds, input_ids == self.video_token_id, merged)

        hidden = embeds
        cos_sin = text.rotary_emb(hidden, position_ids)
        seq = hidden.shape[1]
        causal = torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        causal = torch.triu(causal, diagonal=1)[None, None]
        for layer in text.layers:
            out = layer(hidden, attention_mask=causal, position_embeddings=cos_sin)
            hidden = out[0] if isinstance(out, tuple) else out
        return lm_head(text.norm(hidden))


def _scatter(embeds: torch.Tensor, token_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    mask = token_mask.unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


def _concat_vision(inputs: list[tuple[torch.Tensor, ...]], merge: int) -> tuple[torch.Tensor, ...]:
    """Concatenate image and video vision inputs into one packed sequence (indices offset by the earlier inputs)."""
    if len(inputs) == 1:
        return inputs[0]
    pixels, pos, cu, window, cu_window = [], [], [], [], []
    offset = 0
    for i, (p, position_ids, cu_seqlens, window_index, cu_window_seqlens) in enumerate(inputs):
        pixels.append(p)
        pos.append(position_ids)
        start = 0 if i == 0 else 1  # drop the leading 0 of later cu_seqlens
        cu.append(cu_seqlens[start:] + offset)
        cu_window.append(cu_window_seqlens[start:] + offset)
        window.append(window_index + offset // (merge * merge))
        offset += p.shape[0]
    return (torch.cat(pixels), torch.cat(pos), torch.cat(cu), torch.cat(window), torch.cat(cu_window))


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """The decoder layers dispatch on ``config._attn_implementation``; sdpa does not export (data-dependent guard)."""
    previous = getattr(model.config, "_attn_implementation", "eager")
    switch = previous != "eager" and hasattr(model, "set_attn_implementation")
    if switch:
        logger.info("export: switching attention from %s to eager for the trace", previous)
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


def _export(module: nn.Module, kwargs: dict[str, torch.Tensor], dynamic_shapes, what: str):
    start = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(module, args=(), kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    logger.info("exported %s in %.1f s", what, time.perf_counter() - start)
    return ep


def export_thinker(
    model, sample: Mapping[str, torch.Tensor], *, dynamic_text: bool = True, max_text_tokens: int = 4096
) -> torch.export.ExportedProgram:
    """Export the whole thinker forward (inputs of :func:`make_sample` -> logits) as one ``ExportedProgram``.

    Inputs are passed as keyword arguments, so placeholders carry the sample keys (``input_ids``, ``pixel_values``,
    ``input_features``, ...). Linears stay ``aten.linear.default``.

    With ``dynamic_text=True`` the sequence length is dynamic through the number of text tokens: a derived dim
    ``seq = text_tokens + n_fixed`` where ``n_fixed`` is the number of multimodal/special tokens of ``sample`` and
    ``text_tokens`` (``torch.export.Dim("text_tokens", min=1, max=max_text_tokens)``) is the rest. The program then
    accepts any sample with the same images/audio/video (same grids and frames) and a different amount of text.
    Vision and audio shapes are static.

    Export takes about 4 s for the tiny thinker on 2 CPU cores (torch 2.13, transformers 5.24), dynamic or static.

    Raises:
        CalibrationError / NonFiniteError: see :func:`check_sample`.

    Example::

        ep = export_thinker(model, make_sample(model))
        logits = ep.module()(**make_sample(model, text_tokens=20))
    """
    check_sample(sample, required=("input_ids", "position_ids"))
    kwargs = dict(sample)
    adapter = ThinkerForExport(model).eval()
    dynamic_shapes = None
    if dynamic_text:
        ids = _special_ids(model.config)
        n_fixed = int(torch.isin(sample["input_ids"], torch.tensor(sorted(set(ids.values())))).sum())
        n_text = sample["input_ids"].shape[1] - n_fixed
        if n_text < 1:
            raise CalibrationError("dynamic_text=True needs at least one text token in the sample")
        text_dim = torch.export.Dim("text_tokens", min=1, max=max(max_text_tokens, n_text))
        seq = text_dim + n_fixed if n_fixed else text_dim
        dynamic_shapes = {k: None for k in kwargs}
        dynamic_shapes["input_ids"] = {1: seq}
        dynamic_shapes["position_ids"] = {2: seq}
    with _eager_attention(model):
        return _export(adapter, kwargs, dynamic_shapes, "thinker")


def export_vision_tower(model, sample: Mapping[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """Export the vision tower: ``pixel_values`` + image indices -> merged image embeddings (static shapes).

    Example::

        ep = export_vision_tower(model, sample)
        embeds = ep.module()(**tower_sample(sample, "vision"))
    """
    check_sample(sample, required=VISION_TOWER_KEYS)
    return _export(VisionTowerForExport(model).eval(), tower_sample(sample, "vision"), None, "vision tower")


def export_audio_tower(model, sample: Mapping[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """Export the audio tower: ``input_features`` + audio indices -> audio embeddings (static shapes).

    Example::

        ep = export_audio_tower(model, sample)
        embeds = ep.module()(**tower_sample(sample, "audio"))
    """
    check_sample(sample, required=AUDIO_TOWER_KEYS)
    return _export(AudioTowerForExport(model).eval(), tower_sample(sample, "audio"), None, "audio tower")
