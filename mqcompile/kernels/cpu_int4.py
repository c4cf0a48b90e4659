"""CPU W4 linear on ATen's packed-int4 kernel (``aten._weight_int4pack_mm_for_cpu``), exact, for ``mqcompile.compile``.

``mqcompile::qlinear``'s CPU path unpacks the 4-bit weights to fp32 on every call: at decode sizes (M = 1-16) that
unpacking is most of the time (measured 0.02-0.06x bf16 at M = 1, ``docs/bench_cpu``). ATen's int4 kernel reads the
nibbles in its own tiled layout (AVX2/AVX512) instead. It computes ``A @ ((q - 8) * scale + zero)^T`` per group of
K; with scale 1 and zero 0 the dequantized weight is the signed code itself and the fp32 accumulator holds integer
dot products, exact while every partial sum stays below 2**24 (int4 x int4: K < 262,144; int8 activation codes x
int4: K <= 16,384, checked by the lowering). The per-token and per-channel scales then follow in the reference's
order, so the result is bit-identical to :func:`mqcompile.kernels.reference.qlinear_ref`.

Measured on the 2-core AVX2 EPYC (``docs/bench_cpu/bench_kernels_int4pack.md``): 3-4x faster than the unpacking
path at M = 1 (0.10x vs 0.03x of bf16 ``torch.matmul`` on the 7B shapes) but 0.08-0.17x of bf16 from M = 16 on,
where the unpacking path reaches 0.3-4x: with fp32 activations this kernel is not vectorized well here. So it is an
opt-in (``mqcompile.compile(qp, cpu_int4pack=True)``) for one-token decoding only.

The kernel needs N a multiple of 16 and its group (32-256) to divide K: weights are zero-padded once at compile
time (padded K columns meet zero activations, padded N rows are sliced off).

Example:
    >>> w, sz = pack_for_cpu(pack_int4(codes), in_features=k)  # doctest: +SKIP
    >>> y = torch.ops.mqcompile.qlinear_int4pack(xq, xs, w, sz, w_scale, None, k, torch.float32)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from . import reference as ref
from .pack import unpack_int4

__all__ = ["available", "kernel_group", "pack_for_cpu", "qlinear_int4pack"]

_GROUPS = (256, 128, 64, 32)


def available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def kernel_group(k: int) -> int:
    """The kernel's K group for a (padded) ``k``: the largest of 256/128/64/32 dividing it."""
    return next(g for g in _GROUPS if k % g == 0)


def pack_for_cpu(packed: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our packed int4 codes ``[N, ceil(K/2)]`` -> (ATen CPU int4 layout, scale-and-zeros table of ones/zeros)."""
    codes = unpack_int4(packed, in_features).to(torch.int32)
    n, k = codes.shape
    kp, np_ = _round_up(k, 32), _round_up(n, 16)
    codes = torch.nn.functional.pad(codes + 8, (0, kp - k, 0, np_ - n), value=8)  # pads are code 0 (stored 8)
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
    scale_zeros = torch.zeros(kp // kernel_group(kp), np_, 2)
    scale_zeros[..., 0] = 1.0
    return weight, scale_zeros


@torch.library.custom_op("mqcompile::qlinear_int4pack", mutates_args=())
def qlinear_int4pack(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    scale_zeros: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_dtype: torch.dtype,
    comp: torch.Tensor | None = None,
    modality_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mqcompile::qlinear`` (4-bit per-channel weights) on weights from :func:`pack_for_cpu`; bit-exact."""
    lead = xq.shape[:-1]
    n = w_scale.shape[0]
    kp = w.shape[1] * 2  # padded K: the kernel's layout keeps two codes per byte, [N, K / 2]
    x2 = xq.reshape(-1, in_features).float()
    if kp != in_features:
        x2 = torch.nn.functional.pad(x2, (0, kp - in_features))
    acc = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), w, kp // scale_zeros.shape[0], scale_zeros)
    y = (acc[:, :n] * x_scale.reshape(-1, 1).float()) * w_scale.float().T
    return ref.epilogue(y, bias, comp, modality_ids, lead, out_dtype)


@qlinear_int4pack.register_fake
def _(xq, x_scale, w, scale_zeros, w_scale, bias, in_features, out_dtype, comp=None, modality_ids=None):
    return xq.new_empty((*xq.shape[:-1], w_scale.shape[0]), dtype=out_dtype)
