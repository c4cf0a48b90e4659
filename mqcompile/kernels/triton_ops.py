"""``mqcompile::quantize_act_triton`` / ``mqcompile::qlinear_triton``: the Triton kernels as ``triton_op``s.

Registered with ``torch.library.triton_op`` and launched through ``wrap_triton`` so that ``torch.compile`` (Inductor)
sees the user-defined Triton kernels and schedules around them, instead of treating an opaque custom op as a graph
break. Same schemas and semantics as ``mqcompile::quantize_act`` / ``mqcompile::qlinear``; ``mqcompile.compile``
swaps them in on GPUs. Eager calls on CPU tensors work under ``TRITON_INTERPRET=1`` (that is how the tests run).

Example:
    >>> import torch, mqcompile.kernels.triton_ops  # doctest: +SKIP
    >>> torch.ops.mqcompile.qlinear_triton(xq, xs, w, ws, None, 4, 0, k, torch.float16)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from . import autotune
from .triton_kernels import GemmConfig, kernels

__all__ = ["quantize_act_triton", "quantize_act_asym_triton", "qlinear_triton", "qlinear_launch"]


def _launch_quantize(kernel, x, clip, modality_ids, bits, shift, extra_outputs: int, fp8: bool = False,
                     pad_to: int = 1) -> list[torch.Tensor]:  # fmt: skip
    """One program per token row of ``kernel`` (either quantize kernel: the same tables, then its outputs): codes
    ``[..., K]`` int8, scales ``[..., 1]`` fp32, and ``extra_outputs`` int32 ``[..., 1]`` rows (zero points).
    ``fp8``: the codes as ``float8_e4m3fn``; ``pad_to``: codes ``[rows, K']`` with K' the next multiple (zeros
    past K), for a GEMM that needs aligned operands."""
    k = x.shape[-1]
    kp = -(-k // pad_to) * pad_to
    rows = x.numel() // k if k else 0
    x2 = x.reshape(rows, k).contiguous()
    q = torch.empty((rows, kp), dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x.device)
    per_row = [torch.empty((rows, 1), dtype=torch.float32, device=x.device)]
    per_row += [torch.empty((rows, 1), dtype=torch.int32, device=x.device) for _ in range(extra_outputs)]
    clip32 = clip.float().contiguous()
    ids = modality_ids.reshape(-1).contiguous() if modality_ids is not None else clip32
    sh = shift.float().contiguous() if shift is not None else clip32
    block = min(1024, max(16, 1 << (k - 1).bit_length()))
    if rows:
        wrap_triton(kernel)[(rows,)](
            x2, clip32, ids, sh, q.view(torch.int8), *per_row, k, kp, (1 << (bits - 1)) - 1,
            modality_ids is not None, shift is not None, fp8, block,
        )  # fmt: skip
    lead = (*x.shape[:-1], 1)
    codes = q if pad_to > 1 else q.reshape(x.shape)
    return [codes, *(t.reshape(lead) for t in per_row)]


@triton_op("mqcompile::quantize_act_triton", mutates_args=())
def quantize_act_triton(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = _launch_quantize(kernels().quantize_act, x, clip, modality_ids, bits, shift, 0)
    return q, s


@triton_op("mqcompile::quantize_act_asym_triton", mutates_args=())
def quantize_act_asym_triton(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, s, z = _launch_quantize(kernels().quantize_act_asym, x, clip, modality_ids, bits, shift, 1)
    return q, s, z


@triton_op("mqcompile::qlinear_triton", mutates_args=())
def qlinear_triton(
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
    if group_size:
        raise NotImplementedError(
            "qlinear_triton covers per-channel weight scales; grouped weights use mqcompile::qlinear"
        )
    lead = xq.shape[:-1]
    a = xq.reshape(-1, in_features).contiguous()
    out = qlinear_launch(
        a, x_scale, w, w_scale, bias, comp, modality_ids, in_features, w_bits == 4, out_dtype,
        x_zero=x_zero, w_colsum=w_colsum,
    )  # fmt: skip
    return out.reshape(*lead, w.shape[0])


def qlinear_launch(
    a: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    comp: torch.Tensor | None,
    modality_ids: torch.Tensor | None,
    k: int,
    w4: bool,
    out_dtype: torch.dtype,
    cfg: GemmConfig | None = None,
    fp8: bool = False,
    *,
    x_zero: torch.Tensor | None = None,
    w_colsum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the GEMM on ``a [M, K]`` (int8 codes, or e4m3 with ``fp8``); ``cfg`` overrides the autotuned choice
    (:mod:`mqcompile.kernels.autotune`); ``x_zero`` ``[M, 1]`` with ``w_colsum`` ``[1, N]`` for asymmetric codes."""
    m, n = a.shape[0], w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if not m:
        return out
    xs = x_scale.reshape(-1).float().contiguous()
    if fp8 and x_zero is not None:
        raise ValueError("zero points (x_zero, w_colsum) are corrected on the integer GEMM only")
    (ws, b, cp, ids, xz, cs), flags = _epilogue_args(w_scale, bias, comp, modality_ids, x_zero, w_colsum)
    w = w.contiguous()
    if fp8:  # the kernel loads e4m3 bytes as int8 and bitcasts (masked fp8 loads cannot fill with 0)
        a, w = a.view(torch.int8), w.view(torch.int8)
    if cfg is None:
        kind = "fp8" if fp8 else "w4" if w4 else "w8"
        cfg = autotune.choose(a, n, k, kind, lambda c: qlinear_launch(
            a, x_scale, w, w_scale, bias, comp, modality_ids, k, w4, out_dtype, c, fp8,
            x_zero=x_zero, w_colsum=w_colsum))  # fmt: skip
    if fp8 and cfg.split_k > 1:
        raise ValueError("the fp8 GEMM accumulates in fp32 and has no split-K path; use split_k=1")
    tiles = (triton_cdiv(m, cfg.block_m), triton_cdiv(n, cfg.block_n))
    grid = (tiles[0] * tiles[1], 1, cfg.split_k) if cfg.group_m > 1 else (*tiles, cfg.split_k)
    target = out if cfg.split_k == 1 else torch.zeros((m, n), dtype=torch.int32, device=a.device)
    k_ = kernels()
    wrap_triton(k_.qlinear)[grid](
        a, xs, w, ws, b, cp, ids, xz, cs, target, m, n, k, w.shape[1], w4, fp8, *flags,
        cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k, cfg.two_dot and w4, cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if cfg.split_k > 1:
        bm, bn = 16 if m <= 16 else 64, 128
        wrap_triton(k_.epilogue)[(triton_cdiv(m, bm), triton_cdiv(n, bn))](
            target, xs, ws, b, cp, ids, xz, cs, out, m, n, *flags, bm, bn
        )
    return out


def _epilogue_args(w_scale, bias, comp, modality_ids, x_zero, w_colsum):
    """The GEMM epilogue's tables as kernel arguments ``(w_scale, bias, comp, ids, x_zero, colsum)`` and their
    ``HAS_BIAS, HAS_COMP, HAS_IDS, HAS_ZERO`` flags; an absent table is passed as the weight scales (never read)."""
    if (x_zero is None) != (w_colsum is None):
        raise ValueError("x_zero and w_colsum come together (asymmetric codes) or not at all")
    ws = w_scale.reshape(-1).float().contiguous()
    tables = (
        ws,
        bias.contiguous() if bias is not None else ws,
        comp.float().contiguous() if comp is not None else ws,
        modality_ids.reshape(-1).contiguous() if modality_ids is not None else ws,
        x_zero.reshape(-1).to(torch.int32).contiguous() if x_zero is not None else ws,
        w_colsum.reshape(-1).to(torch.int32).contiguous() if w_colsum is not None else ws,
    )
    return tables, (bias is not None, comp is not None, modality_ids is not None, x_zero is not None)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
