"""Each mqcompile:: op against its reference, and each reference against first principles."""

import pytest
import torch

import mqcompile.kernels  # noqa: F401
from mqcompile.kernels import pack_int4
from mqcompile.kernels import reference as ref

ops = torch.ops.mqcompile
SHAPES = [(1, 64), (7, 37), (513, 96), (2, 5, 130)]  # one token, odd K, many tokens, 3-D


def _rand(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_act_matches_reference_and_definition(shape, bits):
    x = _rand(shape)
    q, s = ops.quantize_act(x, torch.ones(1), None, bits)
    rq, rs = ref.quantize_act_ref(x, torch.ones(1), None, bits)
    assert torch.equal(q, rq) and torch.equal(s, rs)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.min()) >= -qmax - 1 and int(q.max()) <= qmax
    torch.testing.assert_close(s, x.abs().amax(-1, keepdim=True) / qmax)
    # unclipped rounding error is at most half a step per element
    assert ((q.float() * s - x).abs() <= s / 2 + 1e-6).all()


def test_quantize_act_routes_clip_per_token_modality():
    x = _rand((2, 6, 32))
    ids = torch.tensor([[0, 1, 1, 2, 0, 0], [2, 2, 0, 1, 0, 0]])
    clip = torch.tensor([1.0, 0.5, 0.25])
    q, s = ops.quantize_act(x, clip, ids, 4)
    expected = clip[ids][..., None] * x.abs().amax(-1, keepdim=True) / 7
    torch.testing.assert_close(s, expected)
    rq, rs = ref.quantize_act_ref(x, clip, ids, 4)
    assert torch.equal(q, rq) and torch.equal(s, rs)
    assert int(q[ids == 2].abs().max()) == 8  # clipped tokens saturate at -8/7


def test_quantize_act_zero_token():
    x = torch.zeros(3, 16)
    x[1] = 1.0
    q, s = ops.quantize_act(x, torch.ones(1), None, 4)
    assert s[0].item() == 1.0 and (q[0] == 0).all() and (q[1] == 7).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tokens_stay_visible_like_float(bad):
    # issue #15 case 6: the scale guard used to turn a NaN scale into 1, so NaN in gave a finite output
    x = _rand((4, 32))
    x[2, 5] = bad
    w = _rand((8, 32), seed=1)
    codes, w_scale = ref.quantize_weight_ref(w, 4)
    xq, xs = ops.quantize_act(x, torch.ones(1), None, 4)
    y = ops.qlinear(xq, xs, pack_int4(codes), w_scale, None, 4, 0, 32, torch.float32)
    y_float = x @ w.T
    assert not torch.isfinite(y[2]).any() and not torch.isfinite(y_float[2]).any()
    assert torch.isfinite(y[[0, 1, 3]]).all()


@pytest.mark.parametrize("bits,group", [(4, 0), (4, 32), (8, 0)])
def test_quantize_weight_reference(bits, group):
    w = _rand((12, 100))
    codes, scale = ref.quantize_weight_ref(w, bits, group)
    qmax = 2 ** (bits - 1) - 1
    assert codes.shape == w.shape and int(codes.abs().max()) <= qmax
    groups = -(-100 // group) if group else 1
    assert scale.shape == (12, groups)
    gs = group or 100
    first = w[:, :gs].abs().amax(1) / qmax
    torch.testing.assert_close(scale[:, 0], first)
    gamma = torch.full((12, 1), 0.5)
    _, scale_g = ref.quantize_weight_ref(w, bits, group, gamma)
    torch.testing.assert_close(scale_g, scale * 0.5)


def _weights(n, k, bits, group, seed=1):
    codes, scale = ref.quantize_weight_ref(_rand((n, k), seed), bits, group)
    return (pack_int4(codes) if bits == 4 else codes), codes, scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits,group", [(4, 0), (4, 32), (4, 128), (8, 0), (8, 16)])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_matches_reference(shape, bits, group, bias):
    k, n = shape[-1], 24
    x = _rand(shape)
    xq, xs = ref.quantize_act_ref(x, torch.ones(1), None, bits)
    w, codes, ws = _weights(n, k, bits, group)
    b = _rand((n,), 5) if bias else None
    y = ops.qlinear(xq, xs, w, ws, b, bits, group, k, torch.float32)
    y_ref = ref.qlinear_ref(xq, xs, w, ws, b, bits, group, k, torch.float32)
    assert y.shape == (*shape[:-1], n)
    assert torch.equal(y, y_ref)  # the int path must be bit-exact, not just close
    # and the reference equals dequantize-then-matmul in float64
    deq_w = codes.double() * ws.double().repeat_interleave(group or k, dim=1)[:, :k]
    expected = (xq.double() * xs.double()) @ deq_w.T + (b.double() if bias else 0)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4)


def test_int_accumulators_exact_at_large_k():
    k = 18944  # the Qwen2.5-Omni-7B MLP down projection: fp32 would not be exact for int8 products
    g = torch.Generator().manual_seed(3)
    xq = torch.randint(-128, 128, (3, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (5, k), generator=g, dtype=torch.int8)
    acc = ref.int_matmul_ref(xq, wq)
    exact = torch.tensor([[sum(int(a) * int(b) for a, b in zip(r, c)) for c in wq.tolist()] for r in xq.tolist()])
    assert torch.equal(acc.long(), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qlinear_out_dtype(dtype):
    x = _rand((4, 64), dtype=dtype)
    xq, xs = ref.quantize_act_ref(x, torch.ones(1), None, 4)
    w, _, ws = _weights(8, 64, 4, 0)
    assert ops.qlinear(xq, xs, w, ws, None, 4, 0, 64, dtype).dtype == dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [0, 32])
def test_wlinear_matches_reference(shape, group):
    k = shape[-1]
    x = _rand(shape)
    w, codes, ws = _weights(10, k, 4, group)
    y = ops.wlinear(x, w, ws, None, 4, group, k)
    assert torch.equal(y, ref.wlinear_ref(x, w, ws, None, 4, group, k))
    deq = codes.float() * ws.repeat_interleave(group or k, dim=1)[:, :k]
    torch.testing.assert_close(y, x @ deq.T, rtol=1e-5, atol=1e-4)


def test_opcheck_schemas_and_fake_impls():
    x = _rand((3, 40))
    xq, xs = ref.quantize_act_ref(x, torch.ones(1), None, 4)
    w, _, ws = _weights(6, 40, 4, 0)
    torch.library.opcheck(ops.quantize_act.default, (x, torch.ones(1), None, 4))
    torch.library.opcheck(ops.quantize_act.default, (x, torch.ones(3), torch.tensor([0, 1, 2]), 4))
    torch.library.opcheck(ops.qlinear.default, (xq, xs, w, ws, torch.zeros(6), 4, 0, 40, torch.float32))
    torch.library.opcheck(ops.wlinear.default, (x, w, ws, None, 4, 0, 40))


@pytest.mark.parametrize("x_bits,w_bits,k", [(4, 4, 18944), (8, 8, 18944), (8, 8, 2048), (8, 4, 5000), (8, 8, 7)])
def test_cpu_int_gemm_exact_through_chunks(x_bits, w_bits, k):
    from mqcompile.kernels.ops import cpu_int_gemm, exact_float_chunk

    g = torch.Generator().manual_seed(k)
    lo_x, lo_w = -(1 << (x_bits - 1)), -(1 << (w_bits - 1))
    xq = torch.full((3, k), lo_x, dtype=torch.int8)  # worst case magnitudes ...
    xq[1:] = torch.randint(lo_x, -lo_x, (2, k), generator=g, dtype=torch.int8)  # ... and random rows
    wq = torch.full((4, k), lo_w, dtype=torch.int8)
    wq[1:] = torch.randint(lo_w, -lo_w, (3, k), generator=g, dtype=torch.int8)
    w = pack_int4(wq) if w_bits == 4 else wq
    assert exact_float_chunk(8, 8) == 1024
    assert torch.equal(cpu_int_gemm(xq, w, w_bits, k), ref.int_matmul_ref(xq, wq))


@pytest.mark.parametrize("routed", [False, True])
def test_dabc_shift_and_compensation(routed):
    x = _rand((2, 5, 40))
    x[..., 3] += 50.0  # an offset channel the shift removes
    ids = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 0, 0, 1]]) if routed else None
    shift = torch.zeros(3 if routed else 1, 40)
    shift[:, 3] = torch.tensor([50.0, 49.0, 51.0])[: shift.shape[0]]
    q, s = ops.quantize_act(x, torch.ones(shift.shape[0]), ids, 4, shift)
    rows = shift[ids] if routed else shift[0].expand_as(x)
    xs = x - rows
    torch.testing.assert_close(s, xs.abs().amax(-1, keepdim=True) / 7)
    assert torch.equal((q, s)[0], ref.quantize_act_ref(x, torch.ones(shift.shape[0]), ids, 4, shift)[0])
    w, codes, ws = _weights(6, 40, 4, 0)
    wf = _rand((6, 40), 7)
    comp = shift @ wf.T  # [M, N]
    y = ops.qlinear(q, s, w, ws, None, 4, 0, 40, torch.float32, comp, ids)
    assert torch.equal(y, ref.qlinear_ref(q, s, w, ws, None, 4, 0, 40, torch.float32, comp, ids))
    base = ref.qlinear_ref(q, s, w, ws, None, 4, 0, 40, torch.float32)
    torch.testing.assert_close(y - base, comp[ids] if routed else comp[0].expand(2, 5, 6))
    torch.library.opcheck(ops.quantize_act.default, (x, torch.ones(shift.shape[0]), ids, 4, shift))
    torch.library.opcheck(ops.qlinear.default, (q, s, w, ws, None, 4, 0, 40, torch.float32, comp, ids))
