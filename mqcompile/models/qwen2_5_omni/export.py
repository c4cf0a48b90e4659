"""Qwen2.5-Omni torch.export entry points: :func:`export_thinker`, :func:`export_vision_tower`,
:func:`export_audio_tower`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mqcompile.errors import CalibrationError

from .forward import AudioTowerForExport, ThinkerForExport, VisionTowerForExport
from .model import AUDIO_TOWER_KEYS, VISION_TOWER_KEYS
from .sample import _special_ids, check_sample, tower_sample

logger = logging.getLogger(__name__)


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
