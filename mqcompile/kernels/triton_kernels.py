"""Triton kernels behind the ``mqcompile::`` ops on GPUs, exact w.r.t. :mod:`mqcompile.kernels.reference`.

- ``quantize_act``: one program per token row: absmax of ``x - shift[m(t)]``, scale ``clip[m(t)] * absmax / qmax``,
  codes ``clamp(rint(x~ / s))`` in int8 containers; the activation is read twice from cache-resident blocks, never
  materialized shifted.
- ``qlinear``: W4A4 / W8A8 GEMM on int8 values (Hopper has no int4 MMA; int4 values in int8 containers use the
  int8 tensor cores with exact int32 accumulation). 4-bit weights stay packed two per byte in memory and are
  unpacked in registers; epilogue ``(acc * x_scale[t]) * w_scale[n] + bias[n] + comp[m(t), n]`` in fp32, then the
  output dtype, in the same order as the reference so results match bit for bit on the same fp32 math.

Division uses ``tl.div_rn`` (IEEE round-to-nearest, like torch) rather than ``/`` (which lowers to an approximate
division on NVIDIA), and rounding adds and subtracts 1.5 * 2**23, which rounds half to even like ``torch.round``
for the |v| < 2**22 this op produces, and works in ``TRITON_INTERPRET=1`` mode where libdevice is unavailable.

Kernels are JIT-decorated on first use (:func:`kernels`), so a caller that sets ``TRITON_INTERPRET=1`` first (the
CPU tests) gets interpreted kernels. Per-group weight scales are not covered here; the ops use the reference then.
"""

from __future__ import annotations

import functools
import importlib.util

__all__ = ["available", "kernels", "gemm_configs"]


def available() -> bool:
    """Whether triton is importable (it is not a core dependency: CPU-only installs run without it)."""
    return importlib.util.find_spec("triton") is not None


def gemm_configs(m: int) -> dict[str, int]:
    """Tile sizes per regime: decode (tiny M, memory bound on the weights) vs prefill (compute bound).

    Plain heuristics, not autotuned yet: autotuning needs the GPU and is the benchmark's job (issue #5).
    """
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}
    if m <= 256:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}


@functools.cache
def kernels():
    """``(quantize_act_kernel, qlinear_kernel)``, JIT-compiled (or interpreted) Triton functions."""
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_act_kernel(
        x_ptr,
        clip_ptr,
        ids_ptr,
        shift_ptr,
        q_ptr,
        s_ptr,
        K,
        QMAX: tl.constexpr,
        HAS_IDS: tl.constexpr,
        HAS_SHIFT: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        m = tl.load(ids_ptr + row).to(tl.int64) if HAS_IDS else 0
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row * K + rk, mask=rk < K, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                x = x - tl.load(shift_ptr + m * K + rk, mask=rk < K, other=0.0)
            amax = tl.maximum(amax, tl.abs(x))
        clip = tl.load(clip_ptr + m)
        scale = tl.div_rn(clip * tl.max(amax, axis=0), QMAX * 1.0)
        scale = tl.where(scale > 0, scale, 1.0)
        tl.store(s_ptr + row, scale)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row * K + rk, mask=rk < K, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                x = x - tl.load(shift_ptr + m * K + rk, mask=rk < K, other=0.0)
            v = (tl.div_rn(x, scale) + 12582912.0) - 12582912.0  # 1.5 * 2**23: round half to even
            v = tl.minimum(tl.maximum(v, -QMAX - 1.0), QMAX * 1.0)
            tl.store(q_ptr + row * K + rk, v.to(tl.int8), mask=rk < K)

    @triton.jit
    def qlinear_kernel(
        a_ptr,
        xs_ptr,
        w_ptr,
        ws_ptr,
        bias_ptr,
        comp_ptr,
        ids_ptr,
        out_ptr,
        M,
        N,
        K,
        W_STRIDE,
        W4: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_COMP: tl.constexpr,
        HAS_IDS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)
            w_mask = (rn[None, :] < N) & (rk[:, None] < K)
            if W4:
                byte = tl.load(w_ptr + rn[None, :] * W_STRIDE + (rk // 2)[:, None], mask=w_mask, other=0)
                nib = tl.where((rk % 2)[:, None] == 0, byte & 0xF, byte >> 4).to(tl.int8)
                b = tl.where(nib > 7, nib - 16, nib).to(tl.int8)
            else:
                b = tl.load(w_ptr + rn[None, :] * W_STRIDE + rk[:, None], mask=w_mask, other=0)
            acc += tl.dot(a, b, out_dtype=tl.int32)
        xs = tl.load(xs_ptr + rm, mask=rm < M, other=0.0)
        ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
        y = (acc.to(tl.float32) * xs[:, None]) * ws[None, :]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if HAS_COMP:
            m = tl.load(ids_ptr + rm, mask=rm < M, other=0).to(tl.int64) if HAS_IDS else tl.zeros_like(rm)
            y = y + tl.load(comp_ptr + m[:, None] * N + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N))
        out = out_ptr + rm[:, None] * N + rn[None, :]
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    return quantize_act_kernel, qlinear_kernel
