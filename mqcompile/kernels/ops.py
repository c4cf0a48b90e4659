"""``mqcompile::`` operators (torch.library custom ops) with fake implementations.

The ops are opaque to torch.export and Inductor (they appear as single nodes), which is what lets the rewrite pass
emit one node per quantized linear, the ONNX exporter translate each into Q/DQ, and Inductor dispatch them to our
kernels. Every op's eager implementation is exact w.r.t. :mod:`mqcompile.kernels.reference`.

Example:
    >>> import torch, mqcompile.kernels.ops  # noqa: F401 (registers the ops)
    >>> q, s = torch.ops.mqcompile.quantize_act(torch.randn(3, 8), torch.ones(1), None, 4)
    >>> q.dtype, s.shape
    (torch.int8, torch.Size([3, 1]))
"""

from __future__ import annotations

import torch

from . import reference as ref

__all__ = ["quantize_act", "qlinear", "wlinear", "cpu_int_mm_applies"]


@torch.library.custom_op("mqcompile::quantize_act", mutates_args=())
def quantize_act(
    x: torch.Tensor, clip: torch.Tensor, modality_ids: torch.Tensor | None, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic symmetric quantization; see :func:`reference.quantize_act_ref`."""
    return ref.quantize_act_ref(x, clip, modality_ids, bits)


@quantize_act.register_fake
def _(x, clip, modality_ids, bits):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


def cpu_int_mm_applies(xq: torch.Tensor, group_size: int) -> bool:
    """``torch._int_mm`` (oneDNN, AMX int8 where present) serves the per-channel case on CPU exactly."""
    return xq.device.type == "cpu" and not group_size


@torch.library.custom_op("mqcompile::qlinear", mutates_args=())
def qlinear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    w_bits: int,
    group_size: int,
    in_features: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Integer linear on int8-container codes; see :func:`reference.qlinear_ref`."""
    if not cpu_int_mm_applies(xq, group_size):
        return ref.qlinear_ref(xq, x_scale, w, w_scale, bias, w_bits, group_size, in_features, out_dtype)
    lead = xq.shape[:-1]
    wq = ref.unpack_weight(w, w_bits, in_features)
    acc = torch._int_mm(xq.reshape(-1, in_features), wq.T)
    y = (acc.float() * x_scale.reshape(-1, 1).float()) * w_scale.float().T
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, -1).to(out_dtype)


@qlinear.register_fake
def _(xq, x_scale, w, w_scale, bias, w_bits, group_size, in_features, out_dtype):
    return xq.new_empty((*xq.shape[:-1], w.shape[0]), dtype=out_dtype)


@torch.library.custom_op("mqcompile::wlinear", mutates_args=())
def wlinear(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    w_bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """Weight-only quantized linear (W4A16, W8A16); see :func:`reference.wlinear_ref`."""
    return ref.wlinear_ref(x, w, w_scale, bias, w_bits, group_size, in_features)


@wlinear.register_fake
def _(x, w, w_scale, bias, w_bits, group_size, in_features):
    return x.new_empty((*x.shape[:-1], w.shape[0]))
