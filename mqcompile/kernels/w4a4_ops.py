"""``mqcompile::w4a4_linear_triton``: a W4A4 linear (4-bit codes, 4-bit per-channel weights) that picks its kernel
by the token count (issue #20), and the launchers of its paths.

- up to :data:`DECODE_TOKENS` tokens: the decode kernel (``out^T = W x^T``, shift-only nibble unpack, split-K);
- from ``fp8_min_tokens`` on, where the GPU has FP8: e4m3 codes, weights expanded to e4m3 (or a stored copy), cuBLAS
  FP8 through ``torch._scaled_mm``, the reference's epilogue as aten ops that Inductor fuses;
- otherwise: int8 codes, weights expanded to int8, the int8 GEMM of :mod:`mqcompile.kernels.triton_ops`.

Weights are stored once, in :func:`~mqcompile.kernels.pack.pack_int4_blocked`'s layout;
:func:`mqcompile.backends.inductor.deploy.use_w4a4_paths` swaps the op into programs. Every path equals the
reference ops bit for bit (``cublas_scales``: an opt-in, inexact FP8 epilogue).

Example:
    >>> import torch, mqcompile.kernels.w4a4_ops  # doctest: +SKIP
    >>> w = pack_int4_blocked(codes)  # doctest: +SKIP
    >>> op = torch.ops.mqcompile.w4a4_linear_triton  # doctest: +SKIP
    >>> y = op(x, clip, None, None, False, w, ws, None, k, x.dtype)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from . import autotune
from . import reference as ref
from .pack import BLOCK, blocked_cols
from .triton_kernels import DecodeConfig, kernels
from .triton_ops import _epilogue_args, _launch_quantize, qlinear_launch, triton_cdiv

__all__ = ["w4a4_linear_triton", "decode_launch", "expand_int4", "fp8_gemm", "DECODE_TOKENS", "FP8_MIN_TOKENS"]

DECODE_TOKENS = 16  # the decode kernel's token tile: up to this many tokens take it
# Prefill through cuBLAS FP8 from this many tokens on. Measured on an H200 (docs/bench_gpu/bench_kernels.md,
# 2026-11-27): ``_scaled_mm`` ran 1.03-1.28x bf16 at M = 256 and 1.7-1.86x at 4096 on the 7B shapes, where our int8
# GEMM ran 0.35-0.39x / 0.53-0.59x; at M = 16 int8 containers beat it (1.3-1.8x vs 0.8-1.2x), so the decode kernel
# keeps M <= 16 and everything above goes to FP8. Re-measured by tools/bench_kernels.py.
FP8_MIN_TOKENS = DECODE_TOKENS + 1


def expand_int4(w: torch.Tensor, k: int, fp8: bool, pad_to: int = 16) -> torch.Tensor:
    """Blocked packed int4 ``[N, blocked_cols(K)]`` -> ``[N', K']`` one value a byte (int8, or ``float8_e4m3fn``),
    zero-padded to multiples of ``pad_to`` (cuBLAS FP8 needs K and N divisible by 16)."""
    n = w.shape[0]
    np_, kp = -(-n // pad_to) * pad_to, -(-k // pad_to) * pad_to
    out = torch.empty((np_, kp), dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=w.device)
    bn, bk = 64, 2 * BLOCK
    if np_ and kp:
        wrap_triton(kernels().expand_int4)[(triton_cdiv(np_, bn), triton_cdiv(kp, bk))](
            w, out.view(torch.int8), n, k, w.shape[1], np_, kp, BLOCK, fp8, bn, bk
        )
    return out


def fp8_gemm(
    q8: torch.Tensor,
    x_scale: torch.Tensor,
    w8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    comp: torch.Tensor | None,
    modality_ids: torch.Tensor | None,
    n: int,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
    x_zero: torch.Tensor | None = None,
    w_colsum: torch.Tensor | None = None,
    cublas_scales: bool = False,
) -> torch.Tensor:
    """W4A4 on cuBLAS FP8: ``q8 [M, K']`` and ``w8 [N', K']`` hold int4 values in e4m3 (exact), ``torch._scaled_mm``
    with unit scales returns the integer dot products in fp32, exact while every partial sum stays below 2**24
    (|sum| <= 64 K: any K below 262,144) and the tensor cores accumulate without loss (checked on the GPU with and
    without ``fast_accum``). The epilogue is the reference's, in its order, as plain torch ops that Inductor fuses
    into one pass; the scales go there rather than into ``_scaled_mm`` because cuBLAS multiplies them in its own
    order (last-bit differences from the reference).

    ``cublas_scales`` (bf16 output, symmetric codes): the faster, inexact form instead: rowwise scales and the bias
    in ``_scaled_mm``'s own epilogue and a bf16 result, so the fp32 ``[M, N]`` round trip goes; the per-token DABC
    compensation is then added in bf16. Its error against the reference is what the benchmark reports."""
    if cublas_scales and out_dtype == torch.bfloat16 and x_zero is None:
        n_pad = w8.shape[0]
        scale_b = _padded(w_scale.reshape(-1).float(), n_pad, 1.0).reshape(1, -1)
        bias_b = None if bias is None else _padded(bias.to(torch.bfloat16), n_pad, 0.0)
        y = torch._scaled_mm(q8, w8.t(), scale_a=x_scale.reshape(-1, 1).float(), scale_b=scale_b, bias=bias_b,
                             out_dtype=out_dtype, use_fast_accum=fast_accum)[:, :n]  # fmt: skip
        if comp is None:
            return y
        rows = comp[0] if modality_ids is None else comp.index_select(0, modality_ids.reshape(-1))
        return y + rows.to(out_dtype)
    one = torch.ones((), dtype=torch.float32, device=q8.device)
    acc = torch._scaled_mm(q8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=fast_accum)
    acc = acc[:, :n]
    if x_zero is not None:  # integers below 2**24: exact in fp32, as the reference's int32 correction
        acc = acc - x_zero.reshape(-1, 1).float() * w_colsum.reshape(1, -1).float()
    y = (acc * x_scale.reshape(-1, 1).float()) * w_scale.reshape(1, -1).float()
    return ref.epilogue(y, bias, comp, modality_ids, y.shape[:1], out_dtype)


def _padded(v: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """The vector ``v`` padded with ``value`` to ``n`` entries (the padded GEMM's columns)."""
    return torch.nn.functional.pad(v, (0, n - v.shape[0]), value=value)


def decode_launch(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    comp: torch.Tensor | None,
    modality_ids: torch.Tensor | None,
    k: int,
    out_dtype: torch.dtype,
    cfg: DecodeConfig | None = None,
    *,
    clip: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    bits: int = 4,
    x_zero: torch.Tensor | None = None,
    w_colsum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decode kernel on ``x [M <= block_t, K]``: int8 codes with ``x_scale``, or, with ``cfg.fuse_quant``, the
    float input with its ``clip`` / ``shift`` tables (the scales are then computed and returned). ``w``: blocked
    packed int4. Returns ``(out [M, N], x_scale)``. Without ``cfg``: the autotuner's choice
    (:func:`mqcompile.kernels.autotune.choose_decode`; fused when ``clip`` is given without ``x_scale``)."""
    m, n = x.shape[0], w.shape[0]
    if cfg is None:
        fuse = clip is not None and x_scale is None

        def launch(c: DecodeConfig):
            return decode_launch(x, x_scale, w, w_scale, bias, comp, modality_ids, k, out_dtype, c, clip=clip,
                                 shift=shift, bits=bits, x_zero=x_zero, w_colsum=w_colsum)  # fmt: skip

        cfg = autotune.choose_decode(x, n, k, fuse, launch)
    if m > cfg.block_t:
        raise ValueError(f"the decode kernel takes at most {cfg.block_t} tokens, got {m}")
    if cfg.fuse_quant and (clip is None or x_zero is not None):
        raise ValueError("fuse_quant quantizes symmetric codes here and needs the clip table")
    if not cfg.fuse_quant and x_scale is None:
        raise ValueError("int8 codes need their x_scale (or pass the float input with clip to fuse the quantization)")
    if w.shape[1] != blocked_cols(k):
        raise ValueError(f"weight rows of {w.shape[1]} bytes are not the blocked layout of K={k}")
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    xs = torch.empty((m,), dtype=torch.float32, device=x.device) if cfg.fuse_quant else x_scale.reshape(-1).float()
    if not m:
        return out, xs.reshape(m, 1)
    (ws, b, cp, ids, xz, cs), flags = _epilogue_args(w_scale, bias, comp, modality_ids, x_zero, w_colsum)
    cl = clip.float().contiguous() if clip is not None else ws
    sh = shift.float().contiguous() if shift is not None else ws
    target = out if cfg.split_k == 1 else torch.zeros((m, n), dtype=torch.int32, device=x.device)
    k_ = kernels()
    wrap_triton(k_.qlinear_decode)[(triton_cdiv(n, cfg.block_n), cfg.split_k)](
        x.contiguous(), cl, sh, xs, w.contiguous(), ws, b, cp, ids, xz, cs, target, m, n, k, w.shape[1],
        (1 << (bits - 1)) - 1, cfg.fuse_quant, shift is not None, *flags, BLOCK, cfg.block_t, cfg.block_n,
        cfg.block_k, cfg.split_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if cfg.split_k > 1:
        wrap_triton(k_.epilogue)[(1, triton_cdiv(n, 128))](target, xs, ws, b, cp, ids, xz, cs, out, m, n, *flags,
                                                           cfg.block_t, 128)  # fmt: skip
    return out, xs.reshape(m, 1)


def _has_fp8(t: torch.Tensor) -> bool:
    """cuBLAS FP8 needs compute capability 8.9 (Ada, Hopper) or newer; the CPU has ``_scaled_mm`` too (tests)."""
    return t.device.type == "cpu" or torch.cuda.get_device_capability(t.device) >= (8, 9)


@triton_op("mqcompile::w4a4_linear_triton", mutates_args=())
def w4a4_linear_triton(
    x: torch.Tensor,
    clip: torch.Tensor,
    act_ids: torch.Tensor | None,
    shift: torch.Tensor | None,
    asym: bool,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_dtype: torch.dtype,
    comp: torch.Tensor | None = None,
    comp_ids: torch.Tensor | None = None,
    w_colsum: torch.Tensor | None = None,
    w_fp8: torch.Tensor | None = None,
    fp8_min_tokens: int = FP8_MIN_TOKENS,
    fast_accum: bool = False,
    fuse_quant: bool = False,
    cublas_scales: bool = False,
) -> torch.Tensor:
    """``quantize_act(_asym)`` (4-bit codes) + ``qlinear`` (4-bit per-channel weights) as one op that picks its path
    by the token count M: the decode kernel up to :data:`DECODE_TOKENS` tokens, cuBLAS FP8 from ``fp8_min_tokens``
    on (where the GPU has FP8; ``w_fp8``: an e4m3 copy of the weights kept by the user, else expanded per call),
    else the int8 GEMM on weights expanded per call. ``w``: :func:`~mqcompile.kernels.pack.pack_int4_blocked`
    layout. The same numbers as the two reference ops, bit for bit, on every path (``cublas_scales``: the faster,
    inexact FP8 epilogue of :func:`fp8_gemm`, opt-in). ``fuse_quant`` applies to symmetric codes whose routing ids
    are the compensation's (or that have none); otherwise the quantization runs as its own kernel. Under
    ``torch.compile`` the choice is made at trace time (static shapes) or guarded on M (dynamic ones: one graph per
    regime)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    m = x2.shape[0]
    quantize = kernels().quantize_act_asym if asym else kernels().quantize_act
    zeros = int(asym)  # the asymmetric quantizer's extra output
    # the fused kernel reads one ids table for the quantization's routing and the compensation's gather
    one_table = comp is None or act_ids is comp_ids
    if m <= DECODE_TOKENS:
        if fuse_quant and not asym and one_table:
            out, _ = decode_launch(x2, None, w, w_scale, bias, comp, act_ids, in_features, out_dtype,
                                   clip=clip, shift=shift)  # fmt: skip
        else:
            q, xs, *xz = _launch_quantize(quantize, x2, clip, act_ids, 4, shift, zeros)
            out, _ = decode_launch(q, xs, w, w_scale, bias, comp, comp_ids, in_features, out_dtype,
                                   x_zero=xz[0] if asym else None, w_colsum=w_colsum)  # fmt: skip
    elif m >= fp8_min_tokens and _has_fp8(x):
        q8, xs, *xz = _launch_quantize(quantize, x2, clip, act_ids, 4, shift, zeros, fp8=True, pad_to=16)
        w8 = w_fp8 if w_fp8 is not None else expand_int4(w, in_features, fp8=True)
        out = fp8_gemm(q8, xs, w8, w_scale, bias, comp, comp_ids, w.shape[0], out_dtype, fast_accum,
                       xz[0] if asym else None, w_colsum, cublas_scales)  # fmt: skip
    else:
        q, xs, *xz = _launch_quantize(quantize, x2, clip, act_ids, 4, shift, zeros)
        w8 = expand_int4(w, in_features, fp8=False, pad_to=1)
        out = qlinear_launch(q, xs, w8, w_scale, bias, comp, comp_ids, in_features, False, out_dtype,
                             x_zero=xz[0] if asym else None, w_colsum=w_colsum)  # fmt: skip
    return out.reshape(*lead, w.shape[0])
