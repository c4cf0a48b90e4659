"""Qwen2.5-Omni model: shared constants, tiny test config/model, checkpoint loading, :func:`thinker_parts` and
:func:`modality_token_ids`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mqcompile.errors import CheckpointError
from mqcompile.models.loading import quiet_loading

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
    with quiet_loading():
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
