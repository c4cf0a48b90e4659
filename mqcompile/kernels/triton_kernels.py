"""Triton kernels behind the ``mqcompile::`` ops on GPUs, exact w.r.t. :mod:`mqcompile.kernels.reference`.

- ``quantize_act``: one program per token row: absmax of ``x - shift[m(t)]``, scale ``clip[m(t)] * absmax / qmax``,
  codes ``clamp(rint(x~ / s))`` in int8 containers; the activation is read twice from cache-resident blocks, never
  materialized shifted.
- ``quantize_act_asym``: the same per row with a running min and max: scale ``clip * (max(x~, 0) - min(x~, 0)) /
  (2^b - 1)``, int32 zero point ``qmin - rint(lo / s)``, codes ``clamp(rint(x~ / s) + z)``.
- ``qlinear``: W4A4 / W8A8 GEMM on int8 values (Hopper has no int4 MMA; int4 values in int8 containers use the
  int8 tensor cores with exact int32 accumulation). 4-bit weights stay packed two per byte in memory; a
  ``[BLOCK_N, BLOCK_K/2]`` byte tile is loaded coalesced along K and split into sign-extended nibbles with two
  shifts, then interleaved back into K order in registers. Epilogue ``(acc * x_scale[t]) * w_scale[n] + bias[n] +
  comp[m(t), n]`` in fp32, then the output dtype, in the same order as the reference so results match bit for bit;
  with asymmetric codes ``acc - z_t * colsum[n]`` first, in int32.
- Split-K (for few output tiles, e.g. decode or the tall-K MLP down projection): each K slice adds its int32
  partial sums into an int32 workspace with atomics (integer addition is exact and order-free, so the result stays
  deterministic), then ``epilogue_kernel`` scales.
- ``FP8`` (benchmark comparison only): the same GEMM on e4m3 carriers with fp32 accumulation.
- The W4A4 fast paths (``mqcompile::w4a4_linear_triton`` in :mod:`mqcompile.kernels.w4a4_ops`, weights in
  :func:`~mqcompile.kernels.pack.pack_int4_blocked`'s layout): ``qlinear_decode`` for few tokens (``out^T = W x^T``,
  shift-only nibble unpack, split-K, optionally the activation quantization fused in), and ``expand_int4`` (blocked
  nibbles -> int8 or e4m3 bytes, per call) in front of cuBLAS FP8 (``torch._scaled_mm``) for prefill; the quantize
  kernels write e4m3 codes for it (``OUT_FP8``).

Division uses ``tl.div_rn`` (IEEE round-to-nearest, like torch) rather than ``/`` (which lowers to an approximate
division on NVIDIA), and rounding adds and subtracts 1.5 * 2**23, which rounds half to even like ``torch.round``
for the |v| < 2**22 this op produces, and works in ``TRITON_INTERPRET=1`` mode where libdevice is unavailable.

Kernels are JIT-decorated on first use (:func:`kernels`), so a caller that sets ``TRITON_INTERPRET=1`` first (the
CPU tests) gets interpreted kernels. Per-group weight scales are not covered here; the ops use the reference then.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

__all__ = ["available", "kernels", "gemm_config", "GemmConfig", "Kernels", "DecodeConfig", "decode_config"]


def available() -> bool:
    """Whether triton is importable (it is not a core dependency: CPU-only installs run without it)."""
    return importlib.util.find_spec("triton") is not None


class GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    two_dot: bool = False  # 4-bit weights: two dots on the nibble planes instead of re-interleaving K
    group_m: int = 1  # > 1: grouped tile order (row tiles of a group reuse each weight tile from L2)


def gemm_config(m: int, n: int, k: int, sms: int = 132) -> GemmConfig:
    """Tile sizes per regime: decode (tiny M, memory bound on the weights) vs prefill (compute bound).

    Small M splits K until the grid covers the multiprocessors about twice, since each program then streams its own
    slice of the weights. The autotuner's most frequent winners on an H200 (docs/bench_gpu/bench_kernels.md).
    """
    if m <= 16:
        bn, bk = 64, 256
        tiles = -(-n // bn)
        split = 1
        while tiles * split * 2 <= 2 * sms and k // (split * 2) >= 2 * bk:
            split *= 2
        return GemmConfig(16, bn, bk, split, 4, 4)
    if m <= 256:
        return GemmConfig(64, 64, 128, 1, 4, 4)
    return GemmConfig(128, 128, 64, 1, 4, 4)


class Kernels(NamedTuple):
    quantize_act: object
    qlinear: object
    epilogue: object
    quantize_act_asym: object
    expand_int4: object
    qlinear_decode: object


class DecodeConfig(NamedTuple):
    """Tiles of ``qlinear_decode_kernel`` (tokens padded to ``block_t``; ``block_k`` a multiple of the layout's
    block)."""

    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    fuse_quant: bool = False
    num_warps: int = 4
    num_stages: int = 4
    block_t: int = 16


def decode_config(n: int, k: int, sms: int = 132) -> DecodeConfig:
    """Split K until the weight tiles cover the multiprocessors about twice (each program streams its own slice)."""
    bn, bk = 64, 256
    tiles = -(-n // bn)
    split = 1
    while tiles * split * 2 <= 2 * sms and k // (split * 2) >= 2 * bk:
        split *= 2
    return DecodeConfig(bn, bk, split)


@functools.cache
def kernels() -> Kernels:
    """JIT-compiled (or interpreted) Triton functions."""
    from . import _triton_src as src

    return Kernels(
        src.quantize_act_kernel,
        src.qlinear_kernel,
        src.epilogue_kernel,
        src.quantize_act_asym_kernel,
        src.expand_int4_kernel,
        src.qlinear_decode_kernel,
    )
