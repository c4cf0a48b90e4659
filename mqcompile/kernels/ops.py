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

from typing import Any, NamedTuple

import torch

from . import reference as ref
from .pack import unpack_int4_float

__all__ = [
    "quantize_act",
    "quantize_act_asym",
    "qlinear",
    "wlinear",
    "QuantizeActArgs",
    "QLinearArgs",
    "WLinearArgs",
    "op_args",
    "arg_position",
    "cpu_int_gemm",
    "cpu_group_gemm",
    "exact_float_chunk",
]


class QuantizeActArgs(NamedTuple):
    """The arguments of ``mqcompile::quantize_act``, in schema order."""

    x: Any
    clip: Any
    modality_ids: Any
    bits: int
    shift: Any = None


class QLinearArgs(NamedTuple):
    """The arguments of ``mqcompile::qlinear``, in schema order (the rewrite and every backend use this record)."""

    xq: Any
    x_scale: Any
    w: Any
    w_scale: Any
    bias: Any
    w_bits: int
    group_size: int
    in_features: int
    out_dtype: Any
    comp: Any = None
    modality_ids: Any = None
    x_zero: Any = None
    w_colsum: Any = None


class WLinearArgs(NamedTuple):
    """The arguments of ``mqcompile::wlinear``, in schema order."""

    x: Any
    w: Any
    w_scale: Any
    bias: Any
    w_bits: int
    group_size: int
    in_features: int


def op_args(record: type, node):
    """``record`` (one of the ``*Args`` tuples) of an fx node calling that op, from its args and kwargs; the
    argument layout is written down once, beside the op schemas, and everything reads it through these records."""
    return record(*node.args, **node.kwargs)


def arg_position(record: type, name: str) -> int:
    """The positional index of argument ``name`` of ``record``'s op (for ``node.update_arg``)."""
    return record._fields.index(name)


@torch.library.custom_op("mqcompile::quantize_act", mutates_args=())
def quantize_act(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic symmetric quantization after the DABC shift; see :func:`reference.quantize_act_ref`."""
    return ref.quantize_act_ref(x, clip, modality_ids, bits, shift)


@quantize_act.register_fake
def _(x, clip, modality_ids, bits, shift=None):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("mqcompile::quantize_act_asym", mutates_args=())
def quantize_act_asym(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token dynamic asymmetric quantization (codes, scales, zero points); see
    :func:`reference.quantize_act_asym_ref`. Takes :class:`QuantizeActArgs` like ``quantize_act``."""
    return ref.quantize_act_asym_ref(x, clip, modality_ids, bits, shift)


@quantize_act_asym.register_fake
def _(x, clip, modality_ids, bits, shift=None):
    lead = (*x.shape[:-1], 1)
    return (
        x.new_empty(x.shape, dtype=torch.int8),
        x.new_empty(lead, dtype=torch.float32),
        x.new_empty(lead, dtype=torch.int32),
    )


def exact_float_chunk(x_bits: int, w_bits: int) -> int:
    """Largest K whose integer dot products stay exact in an fp32 GEMM (every partial sum below 2**24)."""
    return (1 << 24) // ((1 << (x_bits - 1)) * (1 << (w_bits - 1)))


def cpu_int_gemm(xq: torch.Tensor, w: torch.Tensor, w_bits: int, in_features: int, x_bits: int = 8) -> torch.Tensor:
    """Exact int32 accumulators ``xq @ wq.T`` on CPU through fp32 GEMM (MKL) on integer-valued operands.

    Why not ``torch._int_mm``: on the CPUs we run on (AMD EPYC, AVX2, no AMX/VNNI exposed) it measured 10-25x
    slower than fp32 GEMM (256x1024x1024: 451 ms vs 46 ms). Integer-valued fp32 operands give bit-exact integer
    results while every partial sum stays below 2**24, so K is split into chunks that guarantee it
    (int8 codes x int4 weights: 16,384-wide chunks; int8 x int8: 1,024) and chunks are summed in int32.
    """
    wf = unpack_int4_float(w, in_features) if w_bits == 4 else w.float()
    xf = xq.float()
    chunk = exact_float_chunk(x_bits, w_bits)
    if in_features <= chunk:
        return (xf @ wf.T).to(torch.int32)
    acc = None
    for start in range(0, in_features, chunk):
        part = (xf[:, start : start + chunk] @ wf[:, start : start + chunk].T).to(torch.int32)
        acc = part if acc is None else acc + part
    return acc


def cpu_group_gemm(xq: torch.Tensor, w: torch.Tensor, w_bits: int, in_features: int, group_size: int, groups: int):
    """Per-group integer dot products ``[M, G, N]`` (exact, as fp32) through one batched fp32 GEMM: the reference's
    int32 einsum runs ~6x slower on CPU. Exact while ``group_size <= exact_float_chunk(8, w_bits)``."""
    wf = unpack_int4_float(w, in_features) if w_bits == 4 else w.float()
    pad = groups * group_size - in_features
    xg = torch.nn.functional.pad(xq.float(), (0, pad)).reshape(-1, groups, group_size).transpose(0, 1)  # [G, M, gs]
    wg = torch.nn.functional.pad(wf, (0, pad)).reshape(-1, groups, group_size).permute(1, 2, 0)  # [G, gs, N]
    return torch.bmm(xg, wg).transpose(0, 1).contiguous()


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
    comp: torch.Tensor | None = None,
    modality_ids: torch.Tensor | None = None,
    x_zero: torch.Tensor | None = None,
    w_colsum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer linear on int8-container codes, plus DABC compensation, and the zero-point correction of
    asymmetric codes (``x_zero`` with ``w_colsum``); see :func:`reference.qlinear_ref`."""
    args = (xq, x_scale, w, w_scale, bias, w_bits, group_size, in_features, out_dtype, comp, modality_ids)
    if (x_zero is None) != (w_colsum is None):
        raise ValueError("mqcompile::qlinear: x_zero and w_colsum come together (asymmetric codes) or not at all")
    if xq.device.type != "cpu" or group_size > exact_float_chunk(8, w_bits):
        return ref.qlinear_ref(*args, x_zero, w_colsum)
    lead = xq.shape[:-1]
    x2 = xq.reshape(-1, in_features)
    if group_size:  # same ops as the reference on the same [M, G, N] values: bit-exact
        acc = cpu_group_gemm(x2, w, w_bits, in_features, group_size, w_scale.shape[1])
        if x_zero is not None:
            acc = ref.zero_correction(acc, x_zero, w_colsum)
        y = ((acc * x_scale.reshape(-1, 1, 1).float()) * w_scale.float().T[None]).sum(dim=1)
    else:
        acc = cpu_int_gemm(x2, w, w_bits, in_features)
        if x_zero is not None:
            acc = ref.zero_correction(acc, x_zero, w_colsum)
        y = (acc.float() * x_scale.reshape(-1, 1).float()) * w_scale.float().T
    return ref.epilogue(y, bias, comp, modality_ids, lead, out_dtype)


@qlinear.register_fake
def _(xq, x_scale, w, w_scale, bias, w_bits, group_size, in_features, out_dtype, comp=None, modality_ids=None,
      x_zero=None, w_colsum=None):  # fmt: skip
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
