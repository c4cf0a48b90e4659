"""Asymmetric per-token activations (the w4a4asym scheme): the reference against its definition, the op and the
CPU path against the reference, bit for bit, at awkward shapes."""

import pytest
import torch

import mqcompile.kernels  # noqa: F401
from mqcompile.kernels import pack_int4
from mqcompile.kernels import reference as ref
from mqcompile.solvers import fake_quant_act

ops = torch.ops.mqcompile
SHAPES = [(1, 64), (7, 37), (513, 96), (2, 5, 130)]  # one token, odd K, many tokens, 3-D


def _rand(shape, seed=0, offset=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 3 + offset  # an offset: what the zero point is for


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_use_the_whole_range_and_reconstruct_within_half_a_step(shape, bits):
    x = _rand(shape)
    q, s, z = ops.quantize_act_asym(x, torch.ones(1), None, bits)
    rq, rs, rz = ref.quantize_act_asym_ref(x, torch.ones(1), None, bits)
    assert torch.equal(q, rq) and torch.equal(s, rs) and torch.equal(z, rz)
    qmin, qmax = ref.qrange(bits)
    assert q.dtype == torch.int8 and z.dtype == torch.int32 and s.shape == z.shape == (*shape[:-1], 1)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax and int(z.min()) >= qmin and int(z.max()) <= qmax
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(s, (hi - lo) / (qmax - qmin))
    assert ((s * (q.float() - z) - x).abs() <= s / 2 + 1e-5).all()
    # finer than the symmetric grid on offset data: the step is (hi - lo) / (2^b - 1), not max|x| / qmax
    sym = ref.quantize_act_ref(x, torch.ones(1), None, bits)[1]
    assert bool((s <= sym * (1 + 1e-6)).all()) and float((s / sym).mean()) < 0.9


def test_routed_clips_shift_zero_and_non_finite_tokens():
    x = _rand((2, 6, 32))
    ids = torch.tensor([[0, 1, 1, 2, 0, 0], [2, 2, 0, 1, 0, 0]])
    clip, shift = torch.tensor([1.0, 0.5, 0.8]), _rand((3, 32), seed=4)
    q, s, z = ops.quantize_act_asym(x, clip, ids, 4, shift)
    xs = x - shift[ids]
    lo = clip[ids][..., None] * xs.amin(-1, keepdim=True).clamp(max=0)
    hi = clip[ids][..., None] * xs.amax(-1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(s, (hi - lo) / 15)
    assert {int(v) for v in q[ids == 1].flatten()} >= {-8, 7}  # clipped tokens saturate at both ends
    zero = torch.zeros(2, 8)
    q0, s0, z0 = ops.quantize_act_asym(zero, torch.ones(1), None, 4)
    assert (s0 == 1).all() and (q0 == z0).all()  # dequantizes to exact zeros
    bad = _rand((3, 16))
    bad[1, 2] = float("nan")
    _, sb, _ = ops.quantize_act_asym(bad, torch.ones(1), None, 4)
    assert torch.isnan(sb[1]).all() and torch.isfinite(sb[[0, 2]]).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits,group", [(4, 0), (4, 32), (8, 0), (8, 16)])
def test_qlinear_with_zero_points_matches_reference_and_dequantized_math(shape, bits, group):
    k, n = shape[-1], 24
    x = _rand(shape)
    xq, xs, xz = ref.quantize_act_asym_ref(x, torch.ones(1), None, bits)
    codes, ws = ref.quantize_weight_ref(_rand((n, k), seed=2, offset=0), bits, group)
    w = pack_int4(codes) if bits == 4 else codes
    colsum = ref.weight_colsum(w, bits, k, group)
    b = _rand((n,), 5)
    y = ops.qlinear(xq, xs, w, ws, b, bits, group, k, torch.float32, None, None, xz, colsum)
    y_ref = ref.qlinear_ref(xq, xs, w, ws, b, bits, group, k, torch.float32, None, None, xz, colsum)
    assert y.shape == (*shape[:-1], n) and torch.equal(y, y_ref)
    deq_w = codes.double() * ws.double().repeat_interleave(group or k, dim=1)[:, :k]
    expected = ((xq.double() - xz.double()) * xs.double()) @ deq_w.T + b.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4)


def test_colsum_definition_and_both_or_neither():
    codes = torch.randint(-8, 8, (5, 37), dtype=torch.int8)
    w = pack_int4(codes)
    assert torch.equal(ref.weight_colsum(w, 4, 37), codes.int().sum(1)[None])
    grouped = ref.weight_colsum(w, 4, 37, 16)
    assert grouped.shape == (3, 5) and torch.equal(grouped[2], codes[:, 32:].int().sum(1))
    xq, xs, xz = ref.quantize_act_asym_ref(_rand((2, 37)), torch.ones(1), None, 4)
    ws = torch.ones(5, 1)
    with pytest.raises(ValueError, match="come together"):
        ops.qlinear(xq, xs, w, ws, None, 4, 0, 37, torch.float32, None, None, xz, None)


def test_solver_fake_quant_is_the_op_numerics():
    x = _rand((9, 40))
    for alpha in (1.0, 0.8):
        q, s, z = ref.quantize_act_asym_ref(x, torch.tensor([alpha]), None, 4)
        torch.testing.assert_close(fake_quant_act(x, alpha, 4, asym=True), (q.float() - z) * s)


def test_opcheck_schemas_and_fake_impls():
    x = _rand((3, 40))
    torch.library.opcheck(ops.quantize_act_asym.default, (x, torch.ones(1), None, 4))
    torch.library.opcheck(ops.quantize_act_asym.default, (x, torch.ones(3), torch.tensor([0, 1, 2]), 4, x[:3] * 0.1))
    xq, xs, xz = ref.quantize_act_asym_ref(x, torch.ones(1), None, 4)
    codes, ws = ref.quantize_weight_ref(_rand((6, 40), seed=1), 4)
    w = pack_int4(codes)
    args = (xq, xs, w, ws, torch.zeros(6), 4, 0, 40, torch.float32, None, None, xz, ref.weight_colsum(w, 4, 40))
    torch.library.opcheck(ops.qlinear.default, args)
