"""Pure-PyTorch references for every ``mqcompile::`` op: the definition the fast paths are tested against.

Integer products are accumulated exactly (int32) before any scaling, so a fast path with an int32 accumulator must
match these bit for bit; the float epilogue is ``((acc * x_scale) * w_scale) + bias`` in fp32, then cast.

Example:
    >>> import torch
    >>> q, s = quantize_act_ref(torch.tensor([[1.0, -7.0]]), torch.ones(1), None, 4)
    >>> q.tolist(), s.tolist()
    ([[1, -7]], [[1.0]])
"""

from __future__ import annotations

import torch

from .pack import unpack_int4, unpack_int4_float

__all__ = [
    "qrange",
    "quantize_act_ref",
    "quantize_act_asym_ref",
    "zero_correction",
    "weight_colsum",
    "quantize_weight_ref",
    "weight_scale",
    "unpack_weight",
    "int_matmul_ref",
    "qlinear_ref",
    "epilogue",
    "wlinear_ref",
]


def qrange(bits: int) -> tuple[int, int]:
    """Signed symmetric range: (-2^(b-1), 2^(b-1)-1); scales divide by the positive end."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _token_rows(table: torch.Tensor, modality_ids: torch.Tensor | None, lead: torch.Size) -> torch.Tensor:
    """Row ``m(t)`` of a per-modality table for every token (row 0 for all tokens without ids)."""
    if modality_ids is None:
        return table[0]
    return table.index_select(0, modality_ids.reshape(-1)).reshape(*lead, *table.shape[1:])


def _shifted(x: torch.Tensor, shift: torch.Tensor | None, modality_ids: torch.Tensor | None) -> torch.Tensor:
    """``x - shift[m(t)]`` in fp32 (``x`` itself in fp32 without a shift)."""
    x32 = x.float()
    return x32 if shift is None else x32 - _token_rows(shift.float(), modality_ids, x.shape[:-1])


def quantize_act_ref(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic symmetric quantization after the DABC shift.

    ``x~ = x - shift[m(t)]`` (``shift [M, K]`` = mask * center per modality, none: ``x~ = x``);
    ``s_t = clip[m(t)] * max_k |x~_tk| / qmax``; ``q = clamp(round(x~ / s_t), qmin, qmax)`` in int8 containers.
    An all-zero token gets scale 1 (its codes are 0 either way); a token with NaN/Inf keeps its NaN/Inf scale, so
    the linear's output row is NaN/Inf as in float (garbage stays visible). Returns (codes ``[..., K]`` int8,
    scales ``[..., 1]`` fp32).
    """
    qmin, qmax = qrange(bits)
    lead = x.shape[:-1]
    x32 = _shifted(x, shift, modality_ids)
    amax = x32.abs().amax(dim=-1, keepdim=True)
    scale = _token_rows(clip.float()[:, None], modality_ids, lead) * amax / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(x32 / scale), qmin, qmax).to(torch.int8)
    return q, scale


def quantize_act_asym_ref(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token dynamic asymmetric quantization after the DABC shift (the ``w4a4asym`` scheme).

    ``x~`` as in :func:`quantize_act_ref`; the token's range ``[lo, hi] = clip[m(t)] * [min(x~_t, 0), max(x~_t, 0)]``
    (zero stays exact) maps onto all ``2^b`` codes: ``s_t = (hi - lo) / (qmax - qmin)``, zero point
    ``z_t = qmin - round(lo / s_t)`` (in ``[qmin, qmax]``), ``q = clamp(round(x~ / s_t) + z_t, qmin, qmax)``, so
    ``x~ ~= s_t (q - z_t)``. Codes stay signed (int8 containers for 4 and 8 bits, ONNX's int8 zero point). An
    all-zero token gets scale 1 (its codes equal its zero point); NaN/Inf propagate through the scale as in
    :func:`quantize_act_ref`.
    Returns (codes ``[..., K]`` int8, scales ``[..., 1]`` fp32, zero points ``[..., 1]`` int32).
    """
    qmin, qmax = qrange(bits)
    lead = x.shape[:-1]
    x32 = _shifted(x, shift, modality_ids)
    clip_t = _token_rows(clip.float()[:, None], modality_ids, lead)
    lo = clip_t * x32.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = clip_t * x32.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    zero = torch.where(torch.isfinite(zero), zero, torch.zeros_like(zero))  # NaN rows: the scale carries the NaN
    q = torch.clamp(torch.round(x32 / scale) + zero, qmin, qmax)
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    return q.to(torch.int8), scale, zero.to(torch.int32)


def zero_correction(acc: torch.Tensor, x_zero: torch.Tensor, w_colsum: torch.Tensor) -> torch.Tensor:
    """``acc - z_t * colsum(W_q)``: the integer accumulators of asymmetric codes made those of ``q - z`` (exact in
    int32). ``acc`` ``[M, N]`` or ``[M, G, N]`` (int32, or fp32 holding integers), ``x_zero`` ``[M, 1]`` int32,
    ``w_colsum`` ``[G, N]`` int32."""
    # in acc's dtype: the CPU path's fp32 accumulators hold exact integers, and so does this product (< 2**24)
    z, colsum = x_zero.reshape(-1, 1).to(acc.dtype), w_colsum.to(acc.dtype)
    if acc.dim() == 3:
        return acc - z[:, :, None] * colsum[None]
    return acc - z * colsum.reshape(1, -1)


def weight_colsum(w: torch.Tensor, w_bits: int, in_features: int, group_size: int = 0) -> torch.Tensor:
    """Per-group column sums of the stored weight codes, int32 ``[G, N]`` (``G = 1`` per channel), for
    :func:`zero_correction`."""
    wq = unpack_weight(w, w_bits, in_features).to(torch.int32)
    gs = group_size or in_features
    groups = -(-in_features // gs)
    return _group_view(wq, gs, groups).sum(dim=-1).T.contiguous()


def weight_scale(w: torch.Tensor, bits: int, group_size: int = 0, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """The weight grid, the one definition the solvers (MDQFO, GPTQ, block-wise) and deployment share:
    ``s = gamma * max|W| / qmax`` per row (or per group of ``group_size`` along K, the last one zero-padded), fp32
    ``[N, G]``; a zero row or group gets ``s = 1`` (its codes are 0 either way). Differentiable in ``gamma``."""
    _, qmax = qrange(bits)
    n, k = w.shape
    gs = group_size or k
    groups = -(-k // gs)
    amax = _group_view(w.detach().float(), gs, groups).abs().amax(dim=-1)
    if gamma is not None:
        amax = amax * gamma.float().reshape(n, -1)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_weight_ref(
    w: torch.Tensor, bits: int, group_size: int = 0, gamma: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel (or per-group along K) weight quantization on :func:`weight_scale`'s grid;
    returns (int8 codes ``[N, K]``, fp32 scales ``[N, G]``)."""
    qmin, qmax = qrange(bits)
    n, k = w.shape
    gs = group_size or k
    groups = -(-k // gs)
    scale = weight_scale(w, bits, group_size, gamma)
    padded = _group_view(w.float(), gs, groups)
    q = torch.clamp(torch.round(padded / scale[..., None]), qmin, qmax).to(torch.int8)
    return q.reshape(n, groups * gs)[:, :k].contiguous(), scale


def unpack_weight(w: torch.Tensor, w_bits: int, in_features: int) -> torch.Tensor:
    """Stored weight codes (packed uint8 for 4 bits, int8 for 8 bits) -> int8 ``[N, K]``."""
    return unpack_int4(w, in_features) if w_bits == 4 else w


def _group_view(t: torch.Tensor, group_size: int, groups: int) -> torch.Tensor:
    k = t.shape[-1]
    t = torch.nn.functional.pad(t, (0, groups * group_size - k))
    return t.reshape(*t.shape[:-1], groups, group_size)


def int_matmul_ref(xq: torch.Tensor, wq: torch.Tensor, group_size: int = 0, groups: int = 1) -> torch.Tensor:
    """Exact int32 accumulators: ``[M, N]`` per channel, or ``[M, G, N]`` per group."""
    if not group_size:
        return xq.to(torch.int32) @ wq.to(torch.int32).T
    xg = _group_view(xq.to(torch.int32), group_size, groups)  # [M, G, gs]
    wg = _group_view(wq.to(torch.int32), group_size, groups)  # [N, G, gs]
    return torch.einsum("mgk,ngk->mgn", xg, wg).contiguous()  # one layout: the fp32 sum over G depends on it


def qlinear_ref(
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
    """Integer linear: quantized activations (codes + per-token scales, and zero points ``x_zero`` for asymmetric
    codes, with the weights' ``w_colsum``) times quantized weights, plus the DABC compensation ``comp[m(t)]``
    (``comp [M, N]`` = shift_m W^T in fp32) for every token."""
    lead = xq.shape[:-1]
    x2 = xq.reshape(-1, in_features)
    s2 = x_scale.reshape(-1, 1).float()
    wq = unpack_weight(w, w_bits, in_features)
    acc = int_matmul_ref(x2, wq, group_size, w_scale.shape[1])
    if x_zero is not None:
        acc = zero_correction(acc, x_zero, w_colsum)
    if group_size:
        y = ((acc.float() * s2[:, :, None]) * w_scale.float().T[None]).sum(dim=1)
    else:
        y = (acc.float() * s2) * w_scale.float().T
    return epilogue(y, bias, comp, modality_ids, lead, out_dtype)


def epilogue(
    y: torch.Tensor,
    bias: torch.Tensor | None,
    comp: torch.Tensor | None,
    modality_ids: torch.Tensor | None,
    lead: torch.Size,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Add bias and per-token compensation to the fp32 ``[M, N]`` result, restore the leading dims, cast."""
    if bias is not None:
        y = y + bias.float()
    if comp is not None:
        y = y + _token_rows(comp.float(), modality_ids, lead).reshape(-1, comp.shape[-1])
    return y.reshape(*lead, -1).to(out_dtype)


def wlinear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    w_bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """Weight-only linear: dequantize the weights to the activation dtype, then a float linear."""
    wq = unpack_int4_float(w, in_features) if w_bits == 4 else w.float()
    gs = group_size or in_features
    groups = w_scale.shape[1]
    wd = (_group_view(wq, gs, groups) * w_scale.float()[..., None]).reshape(wq.shape[0], -1)[:, :in_features]
    return torch.nn.functional.linear(x, wd.to(x.dtype), None if bias is None else bias.to(x.dtype))
