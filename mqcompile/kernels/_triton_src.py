"""The Triton sources behind :mod:`mqcompile.kernels.triton_kernels` (see there for what each computes).

Imported only through :func:`mqcompile.kernels.triton_kernels.kernels`, on first use: ``triton.jit`` decides at
decoration time whether to compile or interpret, so tests set ``TRITON_INTERPRET=1`` before this module loads. Kept
at module level because Triton resolves a kernel's helpers (``_epilogue``) through the module's globals.
"""

import os

import triton
import triton.language as tl

if os.environ.get("TRITON_INTERPRET") == "1":  # numpy rounds every op; libdevice does not exist there

    @triton.jit
    def _mul(a, b):
        return a * b

    @triton.jit
    def _add(a, b):
        return a + b

else:  # mul.rn / add.rn: an explicit rounding mode keeps the compiler from contracting a*b + c into one FMA,
    # which rounds once instead of twice and would differ from the reference in the last bit
    from triton.language.extra import libdevice

    @triton.jit
    def _mul(a, b):
        return libdevice.mul_rn(a, b)

    @triton.jit
    def _add(a, b):
        return libdevice.add_rn(a, b)


@triton.jit
def _shifted_row(x_ptr, shift_ptr, row, m, rk, K, HAS_SHIFT: tl.constexpr):
    """One block ``rk`` of token ``row``'s ``x - shift[m]`` in fp32 (both quantize kernels read it twice)."""
    x = tl.load(x_ptr + row * K + rk, mask=rk < K, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        x = x - tl.load(shift_ptr + m * K + rk, mask=rk < K, other=0.0)
    return x


@triton.jit
def _rint_div(x, scale):
    """``round_half_even(x / scale)`` in fp32: IEEE division, then 1.5 * 2**23 added and taken off, which rounds
    half to even like ``torch.round`` for the |v| < 2**22 the quantizers produce (libdevice ``rint`` is missing in
    the interpreter)."""
    return (tl.div_rn(x, scale) + 12582912.0) - 12582912.0


@triton.jit
def _codes(v, OUT_FP8: tl.constexpr):
    """Integer-valued fp32 codes as stored bytes: int8, or the e4m3 bit pattern (every int4 value is exact in e4m3;
    the bytes travel as int8 because the interpreter has no fp8 tensors)."""
    if OUT_FP8:
        return v.to(tl.float8e4nv).to(tl.int8, bitcast=True)
    return v.to(tl.int8)


@triton.jit
def quantize_act_kernel(
    x_ptr,
    clip_ptr,
    ids_ptr,
    shift_ptr,
    q_ptr,
    s_ptr,
    K,
    KP,
    QMAX: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    OUT_FP8: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    m = tl.load(ids_ptr + row).to(tl.int64) if HAS_IDS else 0
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _shifted_row(x_ptr, shift_ptr, row, m, rk, K, HAS_SHIFT)
        amax = tl.maximum(amax, tl.abs(x))
    clip = tl.load(clip_ptr + m)
    scale = tl.div_rn(clip * tl.max(amax, axis=0), QMAX * 1.0)
    scale = tl.where(scale == 0, 1.0, scale)  # NaN/Inf stay: the output row shows them, as in float
    tl.store(s_ptr + row, scale)
    for k0 in range(0, KP, BLOCK_K):  # columns K..KP (padding for an aligned GEMM operand) get code 0
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _shifted_row(x_ptr, shift_ptr, row, m, rk, K, HAS_SHIFT)
        v = _rint_div(x, scale)
        v = tl.minimum(tl.maximum(v, -QMAX - 1.0), QMAX * 1.0)
        tl.store(q_ptr + row * KP + rk, _codes(v, OUT_FP8), mask=rk < KP)


@triton.jit
def quantize_act_asym_kernel(
    x_ptr,
    clip_ptr,
    ids_ptr,
    shift_ptr,
    q_ptr,
    s_ptr,
    z_ptr,
    K,
    KP,
    QMAX: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    OUT_FP8: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    m = tl.load(ids_ptr + row).to(tl.int64) if HAS_IDS else 0
    lo = tl.zeros((BLOCK_K,), dtype=tl.float32)  # zero stays in the range: min(x, 0), max(x, 0)
    hi = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _shifted_row(x_ptr, shift_ptr, row, m, rk, K, HAS_SHIFT)
        lo = tl.minimum(lo, x)
        hi = tl.maximum(hi, x)
    clip = tl.load(clip_ptr + m)
    lo_t = _mul(clip, tl.min(lo, axis=0))
    hi_t = _mul(clip, tl.max(hi, axis=0))
    scale = tl.div_rn(hi_t - lo_t, 2.0 * QMAX + 1.0)
    scale = tl.where(scale == 0, 1.0, scale)
    zero = -QMAX - 1.0 - _rint_div(lo_t, scale)
    zero = tl.minimum(tl.maximum(zero, -QMAX - 1.0), QMAX * 1.0)
    zero = tl.where(zero == zero, zero, 0.0)  # NaN rows: the scale carries the NaN
    tl.store(s_ptr + row, scale)
    tl.store(z_ptr + row, zero.to(tl.int32))
    for k0 in range(0, KP, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _shifted_row(x_ptr, shift_ptr, row, m, rk, K, HAS_SHIFT)
        v = _rint_div(x, scale) + zero
        v = tl.minimum(tl.maximum(v, -QMAX - 1.0), QMAX * 1.0)
        v = tl.where(rk < K, v, 0.0)  # padding columns: code 0 (the zero point is corrected over K only)
        v = tl.where(v == v, v, 0.0)
        tl.store(q_ptr + row * KP + rk, _codes(v, OUT_FP8), mask=rk < KP)


@triton.jit
def _epilogue(acc, rm, rn, M, N, xs_ptr, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
              HAS_BIAS: tl.constexpr, HAS_COMP: tl.constexpr, HAS_IDS: tl.constexpr,
              HAS_ZERO: tl.constexpr):  # fmt: skip
    xs = tl.load(xs_ptr + rm, mask=rm < M, other=0.0)
    _epilogue_xs(acc, xs, rm, rn, M, N, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
                 HAS_BIAS, HAS_COMP, HAS_IDS, HAS_ZERO)  # fmt: skip


@triton.jit
def _epilogue_xs(acc, xs, rm, rn, M, N, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
                 HAS_BIAS: tl.constexpr, HAS_COMP: tl.constexpr, HAS_IDS: tl.constexpr,
                 HAS_ZERO: tl.constexpr):  # fmt: skip
    """:func:`_epilogue` with the token scales ``xs`` in registers (a kernel that computed them itself)."""
    if HAS_ZERO:  # asymmetric codes: acc - z_t * colsum(W_q), exact in int32
        xz = tl.load(xz_ptr + rm, mask=rm < M, other=0)
        cs = tl.load(cs_ptr + rn, mask=rn < N, other=0)
        acc = acc - xz[:, None] * cs[None, :]
    ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
    y = _mul(_mul(acc.to(tl.float32), xs[:, None]), ws[None, :])
    if HAS_BIAS:
        y = _add(y, tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :])
    if HAS_COMP:
        m = tl.load(ids_ptr + rm, mask=rm < M, other=0).to(tl.int64) if HAS_IDS else tl.zeros_like(rm)
        y = _add(y, tl.load(comp_ptr + m[:, None] * N + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N)))
    out = out_ptr + rm[:, None] * N + rn[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit(do_not_specialize=["M", "N"])  # one binary for every token count: compile once per config
def qlinear_kernel(
    a_ptr,
    xs_ptr,
    w_ptr,
    ws_ptr,
    bias_ptr,
    comp_ptr,
    ids_ptr,
    xz_ptr,
    cs_ptr,
    out_ptr,
    M,
    N,
    K,
    W_STRIDE,
    W4: tl.constexpr,
    FP8: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_COMP: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    TWO_DOT: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    if GROUP_M > 1:  # grouped tile order on a 1-D grid: GROUP_M row tiles share each weight tile while it is in L2
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        rows = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * tiles_n)) % rows
        pid_n = (pid % (GROUP_M * tiles_n)) // rows
    else:
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb0 = tl.program_id(2) * per_split
    kb1 = tl.minimum(kb0 + per_split, k_blocks)
    for kb in range(kb0, kb1):
        if W4:
            rb = kb * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
            byte = tl.load(
                w_ptr + rn[:, None] * W_STRIDE + rb[None, :], mask=(rn[:, None] < N) & (rb[None, :] < W_STRIDE), other=0
            ).to(tl.int8, bitcast=True)
            lo = (byte << 4) >> 4  # arithmetic shifts sign-extend the nibbles: lo holds k = 2j, hi k = 2j + 1
            hi = byte >> 4
            if TWO_DOT:  # even and odd K columns of A against the two nibble planes: no shuffle of the weights
                ke = kb * BLOCK_K + 2 * tl.arange(0, BLOCK_K // 2)
                row = a_ptr + rm[:, None] * K + ke[None, :]
                a_e = tl.load(row, mask=(rm[:, None] < M) & (ke[None, :] < K), other=0)
                a_o = tl.load(row + 1, mask=(rm[:, None] < M) & (ke[None, :] + 1 < K), other=0)
                acc += tl.dot(a_e, tl.trans(lo), out_dtype=tl.int32)
                acc += tl.dot(a_o, tl.trans(hi), out_dtype=tl.int32)
            else:
                rk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
                a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)
                acc += tl.dot(a, tl.trans(tl.interleave(lo, hi)), out_dtype=tl.int32)  # [BLOCK_N, BLOCK_K] in K order
        else:
            rk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_a = (rm[:, None] < M) & (rk[None, :] < K)
            a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=mask_a, other=0)
            w = tl.load(w_ptr + rn[:, None] * W_STRIDE + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                        other=0)  # fmt: skip
            if FP8:  # e4m3 bytes travel as int8 (a masked fp8 load cannot fill with 0); 0x00 is +0.0 in e4m3
                acc += tl.dot(a.to(tl.float8e4nv, bitcast=True), tl.trans(w.to(tl.float8e4nv, bitcast=True)),
                              out_dtype=tl.float32)  # fmt: skip
            else:
                acc += tl.dot(a, tl.trans(w), out_dtype=tl.int32)
    if SPLIT_K == 1:
        _epilogue(acc, rm, rn, M, N, xs_ptr, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
                  HAS_BIAS, HAS_COMP, HAS_IDS, HAS_ZERO)  # fmt: skip
    else:  # out_ptr is the zeroed int32 workspace
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.atomic_add(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=mask, sem="relaxed")


@triton.jit
def epilogue_kernel(acc_ptr, xs_ptr, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr, M, N,
                    HAS_BIAS: tl.constexpr, HAS_COMP: tl.constexpr, HAS_IDS: tl.constexpr, HAS_ZERO: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.load(acc_ptr + rm[:, None] * N + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N), other=0)
    _epilogue(acc, rm, rn, M, N, xs_ptr, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
              HAS_BIAS, HAS_COMP, HAS_IDS, HAS_ZERO)  # fmt: skip


@triton.jit
def _blocked_cols(kb, H: tl.constexpr, LB: tl.constexpr, BLOCK_K: tl.constexpr):
    """K indices of the low-nibble plane of K block ``kb`` in the blocked layout (the high plane is ``+ H``)."""
    j = tl.arange(0, BLOCK_K // 2)
    return kb * BLOCK_K + (j // H) * LB + j % H


@triton.jit
def expand_int4_kernel(w_ptr, o_ptr, N, K, W_STRIDE, NP, KP, LB: tl.constexpr, FP8: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Blocked packed int4 ``[N, W_STRIDE]`` -> one value a byte ``[NP, KP]`` (int8, or e4m3 bytes), zero-padded:
    bandwidth bound, run per call in front of a GEMM that takes unpacked operands (cuBLAS FP8)."""
    H: tl.constexpr = LB // 2
    rn = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    kb = tl.program_id(1)
    rb = kb * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    byte = tl.load(w_ptr + rn[:, None] * W_STRIDE + rb[None, :], mask=(rn[:, None] < N) & (rb[None, :] < W_STRIDE),
                   other=0).to(tl.int8, bitcast=True)  # fmt: skip
    k_lo = _blocked_cols(kb, H, LB, BLOCK_K)
    mask = rn[:, None] < NP
    lo = _codes(((byte << 4) >> 4).to(tl.float32), FP8)
    hi = _codes((byte >> 4).to(tl.float32), FP8)
    tl.store(o_ptr + rn[:, None] * KP + k_lo[None, :], lo, mask=mask & (k_lo[None, :] < KP))
    tl.store(o_ptr + rn[:, None] * KP + (k_lo + H)[None, :], hi, mask=mask & ((k_lo + H)[None, :] < KP))


@triton.jit
def _decode_codes(x_ptr, shift_ptr, m, scale, rt, k, M, K, QMAX: tl.constexpr, FUSE_QUANT: tl.constexpr,
                  HAS_SHIFT: tl.constexpr):  # fmt: skip
    """Activation codes ``[BLOCK_T, len(k)]`` of the tokens ``rt`` at K indices ``k``: loaded, or (fused) quantized
    here from ``x`` with the per-token ``scale``, exactly as ``quantize_act_kernel`` would."""
    mask = (rt[:, None] < M) & (k[None, :] < K)
    if FUSE_QUANT:
        x = tl.load(x_ptr + rt[:, None] * K + k[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_SHIFT:
            x = x - tl.load(shift_ptr + m[:, None] * K + k[None, :], mask=mask, other=0.0)
        v = _rint_div(x, scale[:, None])
        v = tl.minimum(tl.maximum(v, -QMAX - 1.0), QMAX * 1.0)
        return tl.where(mask, v, 0.0).to(tl.int8)
    return tl.load(x_ptr + rt[:, None] * K + k[None, :], mask=mask, other=0)


@triton.jit(do_not_specialize=["M", "N"])
def qlinear_decode_kernel(
    x_ptr,
    clip_ptr,
    shift_ptr,
    xs_ptr,
    w_ptr,
    ws_ptr,
    bias_ptr,
    comp_ptr,
    ids_ptr,
    xz_ptr,
    cs_ptr,
    out_ptr,
    M,
    N,
    K,
    W_STRIDE,
    QMAX: tl.constexpr,
    FUSE_QUANT: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_COMP: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    LB: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Few tokens (M <= BLOCK_T): ``out^T = W x^T``, the weights on the MMA's large side, tokens padded to BLOCK_T.

    Weights in the blocked layout: ``byte << 4`` and ``byte & 0xF0`` are 16x the low / high nibble as int8 (two ops,
    no sign-extension shifts, no interleave), against the two contiguous halves of each activation block; the int32
    sum is 16x the integer dot product, so ``acc >> 4`` is exact. ``FUSE_QUANT``: the activation quantization runs
    here (``x_ptr`` is the float input, ``clip``/``shift`` its tables; the program with ``pid == (0, 0)`` writes the
    scales): each program first reduces its tokens' absmax over all of K, since the per-token scale needs all of it.
    """
    H: tl.constexpr = LB // 2
    pid_n = tl.program_id(0)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rt = tl.arange(0, BLOCK_T).to(tl.int64)
    m = tl.load(ids_ptr + rt, mask=rt < M, other=0).to(tl.int64) if HAS_IDS else tl.zeros_like(rt)
    scale = tl.zeros((BLOCK_T,), dtype=tl.float32)
    if FUSE_QUANT:
        amax = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mask = (rt[:, None] < M) & (rk[None, :] < K)
            x = tl.load(x_ptr + rt[:, None] * K + rk[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                x = x - tl.load(shift_ptr + m[:, None] * K + rk[None, :], mask=mask, other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        clip = tl.load(clip_ptr + m)
        scale = tl.div_rn(clip * amax, QMAX * 1.0)
        scale = tl.where(scale == 0, 1.0, scale)
        if (pid_n == 0) & (tl.program_id(1) == 0):
            tl.store(xs_ptr + rt, scale, mask=rt < M)
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.int32)
    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb0 = tl.program_id(1) * per_split
    kb1 = tl.minimum(kb0 + per_split, k_blocks)
    for kb in range(kb0, kb1):
        rb = kb * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(
            w_ptr + rn[:, None] * W_STRIDE + rb[None, :], mask=(rn[:, None] < N) & (rb[None, :] < W_STRIDE), other=0
        ).to(tl.int8, bitcast=True)
        k_lo = _blocked_cols(kb, H, LB, BLOCK_K)
        xa = _decode_codes(x_ptr, shift_ptr, m, scale, rt, k_lo, M, K, QMAX, FUSE_QUANT, HAS_SHIFT)
        xb = _decode_codes(x_ptr, shift_ptr, m, scale, rt, k_lo + H, M, K, QMAX, FUSE_QUANT, HAS_SHIFT)
        acc += tl.dot(byte << 4, tl.trans(xa), out_dtype=tl.int32)
        acc += tl.dot(byte & -16, tl.trans(xb), out_dtype=tl.int32)
    acc = tl.trans(acc >> 4)  # [BLOCK_T, BLOCK_N]
    if SPLIT_K == 1:
        if not FUSE_QUANT:  # the scales are in registers when this program computed them
            scale = tl.load(xs_ptr + rt, mask=rt < M, other=0.0)
        _epilogue_xs(acc, scale, rt, rn, M, N, ws_ptr, bias_ptr, comp_ptr, ids_ptr, xz_ptr, cs_ptr, out_ptr,
                     HAS_BIAS, HAS_COMP, HAS_IDS, HAS_ZERO)  # fmt: skip
    else:  # out_ptr is the zeroed int32 workspace
        mask = (rt[:, None] < M) & (rn[None, :] < N)
        tl.atomic_add(out_ptr + rt[:, None] * N + rn[None, :], acc, mask=mask, sem="relaxed")
