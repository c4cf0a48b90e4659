"""Triton kernels vs the references, bit for bit. Without a GPU they run in Triton's interpreter on CPU tensors."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before the kernels are first JIT-decorated (they are lazy)
    os.environ["TRITON_INTERPRET"] = "1"

import mqcompile  # noqa: E402
from mqcompile.backends.inductor.deploy import detach_to, use_triton_ops  # noqa: E402
from mqcompile.kernels import (
    pack_int4,  # noqa: E402
    triton_ops,  # noqa: E402, F401  (registers the triton ops)
)
from mqcompile.kernels import reference as ref  # noqa: E402
from mqcompile.kernels.triton_kernels import GemmConfig, gemm_config  # noqa: E402
from mqcompile.kernels.triton_ops import qlinear_launch  # noqa: E402
from tests.conftest import TOY_CONFIG, toy_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODALITIES = 3

# (tokens, K, N): one token, ragged M/N/K (K not a multiple of any block), a K spanning several blocks, odd K
SHAPES = [(1, 96, 40), (37, 200, 70), (130, 130, 33), (16, 300, 129), (5, 75, 20)]


def _inputs(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, 3] *= 30  # a long-tailed channel
    clip = torch.rand(MODALITIES, generator=g) * 0.5 + 0.5
    ids = torch.randint(0, MODALITIES, (m,), generator=g)
    shift = torch.randn(MODALITIES, k, generator=g)
    return x, clip, ids, shift


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("routed", [False, True])
def test_quantize_act_matches_reference(m, k, n, bits, routed):
    x, clip, ids, shift = _inputs(m, k, m + k)
    args = (x, clip, ids, bits, shift) if routed else (x, clip[:1], None, bits, None)
    q, s = torch.ops.mqcompile.quantize_act_triton(*(a.to(DEVICE) if torch.is_tensor(a) else a for a in args))
    q_ref, s_ref = ref.quantize_act_ref(*args)
    assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)


def test_quantize_act_ties_and_zero_rows():
    x = torch.tensor([[3.5, -7.0, 0.5, 2.5], [0.0, 0.0, 0.0, 0.0], [1.5, -2.5, 7.0, 6.5]])  # exact halves: to even
    q, s = torch.ops.mqcompile.quantize_act_triton(x.to(DEVICE), torch.ones(1, device=DEVICE), None, 4)
    q_ref, s_ref = ref.quantize_act_ref(x, torch.ones(1), None, 4)
    assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)
    assert q_ref[0].tolist() == [4, -7, 0, 2]


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("w_bits", [4, 8])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_qlinear_matches_reference(m, k, n, w_bits, out_dtype):
    g = torch.Generator().manual_seed(m * k + n)
    x, clip, ids, shift = _inputs(m, k, n)
    xq, xs = ref.quantize_act_ref(x, clip, ids, w_bits, shift)
    lim = 1 << (w_bits - 1)
    wq = torch.randint(-lim, lim, (n, k), generator=g, dtype=torch.int8)
    w = pack_int4(wq) if w_bits == 4 else wq
    ws, bias, comp = torch.rand(n, 1, generator=g), torch.randn(n, generator=g), torch.randn(MODALITIES, n, generator=g)
    for args in (
        (xq, xs, w, ws, bias, w_bits, 0, k, out_dtype, comp, ids),  # routed compensation
        (xq, xs, w, ws, None, w_bits, 0, k, out_dtype, None, None),  # plain
    ):
        got = torch.ops.mqcompile.qlinear_triton(*(a.to(DEVICE) if torch.is_tensor(a) else a for a in args))
        assert torch.equal(got.cpu(), ref.qlinear_ref(*args))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 300, 40), (37, 200, 70), (5, 75, 20)])
@pytest.mark.parametrize(
    "cfg",
    [
        GemmConfig(16, 32, 32, 3),
        GemmConfig(16, 64, 64, 2),
        GemmConfig(32, 16, 32, 8),
        GemmConfig(16, 32, 64, 1, two_dot=True),  # nibble planes against even / odd activation columns
        GemmConfig(32, 64, 128, 2, two_dot=True),
        GemmConfig(16, 16, 32, 1, group_m=2),  # grouped tile order, ragged last group
        GemmConfig(16, 32, 64, 2, group_m=3),
    ],
)
def test_split_k_and_tile_configs_match_reference(m, k, n, cfg):
    # split-K adds int32 partials with atomics (more splits than K blocks leaves some slices empty): still exact
    g = torch.Generator().manual_seed(m + k + cfg.split_k)
    x, clip, ids, shift = _inputs(m, k, n)
    xq, xs = ref.quantize_act_ref(x, clip, ids, 4, shift)
    w = pack_int4(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8))
    ws, bias, comp = torch.rand(n, 1, generator=g), torch.randn(n, generator=g), torch.randn(MODALITIES, n, generator=g)
    args = (xq, xs, w, ws, bias, comp, ids)
    got = qlinear_launch(*(a.to(DEVICE) for a in args), k, True, torch.float32, cfg)
    assert torch.equal(got.cpu(), ref.qlinear_ref(xq, xs, w, ws, bias, 4, 0, k, torch.float32, comp, ids))


@pytest.mark.parametrize(("m", "n", "k"), [(1, 18944, 3584), (1, 3584, 18944), (16, 1280, 1280), (300, 64, 96)])
def test_gemm_config_splits_only_when_the_grid_is_small(m, n, k):
    cfg = gemm_config(m, n, k, sms=132)
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    assert cfg.split_k >= 1 and cfg.block_k * cfg.split_k <= max(k, cfg.block_k)
    if cfg.split_k > 1:
        assert tiles * cfg.split_k <= 2 * 132


def test_fp8_carrier_matches_reference_where_fp32_sums_are_exact():
    # e4m3 holds every int4 value exactly; with |sum| < 2**24 the fp32 accumulation is exact too
    g = torch.Generator().manual_seed(7)
    m, k, n = 5, 200, 24
    xq, wq = (torch.randint(-8, 8, s, generator=g, dtype=torch.int8) for s in ((m, k), (n, k)))
    xs, ws = torch.rand(m, 1, generator=g), torch.rand(n, 1, generator=g)
    e4m3 = (xq.to(torch.float8_e4m3fn), wq.to(torch.float8_e4m3fn))
    got = qlinear_launch(*(t.to(DEVICE) for t in (e4m3[0], xs, e4m3[1], ws)), None, None, None, k, False,
                         torch.float32, GemmConfig(16, 16, 64), fp8=True)  # fmt: skip
    assert torch.equal(got.cpu(), ref.qlinear_ref(xq, xs, wq, ws, None, 8, 0, k, torch.float32))
    with pytest.raises(ValueError, match="split-K"):
        qlinear_launch(*(t.to(DEVICE) for t in (e4m3[0], xs, e4m3[1], ws)), None, None, None, k, False,
                       torch.float32, GemmConfig(16, 16, 64, 2), fp8=True)  # fmt: skip


def test_int32_accumulators_are_exact_at_the_extremes():
    # every product at its largest magnitude: (-128) * (-128) * K, far above fp32's exact-integer range per token
    k, n = 1100, 17
    xq = torch.full((3, k), -128, dtype=torch.int8)
    wq = torch.full((n, k), -128, dtype=torch.int8)
    ones = torch.ones(3, 1), torch.ones(n, 1)
    got = torch.ops.mqcompile.qlinear_triton(
        xq.to(DEVICE), ones[0].to(DEVICE), wq.to(DEVICE), ones[1].to(DEVICE), None, 8, 0, k, torch.float64
    )
    assert torch.equal(got.cpu(), torch.full((3, n), float(128 * 128 * k), dtype=torch.float64))


def test_program_with_triton_ops_equals_the_program(toy):
    _, kwargs, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    module = detach_to(qp.exported_program.module(), DEVICE)
    counts = use_triton_ops(module)
    assert counts == {"quantize_act": 4, "qlinear": 4, "kept": 0, "unpacked": 0}
    for seed in (0, 3):
        inputs = {k: v.to(DEVICE) for k, v in toy_inputs(seed).items()}
        got, want = module(**inputs).cpu(), qp.module()(**toy_inputs(seed))
        if DEVICE == "cpu":
            assert torch.equal(got, want)
        else:  # the float lm_head runs in cuBLAS vs MKL: last-bit differences there only
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_int8_weights_give_the_same_program(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    packed, unpacked = detach_to(qp.exported_program.module(), DEVICE), detach_to(qp.exported_program.module(), DEVICE)
    use_triton_ops(packed)
    assert use_triton_ops(unpacked, int8_weights=True)["unpacked"] == 4
    int8 = [b for n, b in unpacked.named_buffers() if n.endswith("mq_qweight_int8")]
    assert len(int8) == 4 and all(b.dtype == torch.int8 and int(b.abs().max()) <= 8 for b in int8)
    inputs = {k: v.to(DEVICE) for k, v in toy_inputs(5).items()}
    assert torch.equal(packed(**inputs), unpacked(**inputs))


def test_triton_op_rejects_grouped_weights():
    xq, xs, w, ws = torch.zeros(2, 8, dtype=torch.int8), torch.ones(2, 1), torch.zeros(4, 4, dtype=torch.uint8), None
    with pytest.raises(NotImplementedError, match="per-channel"):
        torch.ops.mqcompile.qlinear_triton(xq, xs, w, torch.ones(4, 2), ws, 4, 4, 8, torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# asymmetric activations (w4a4asym)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("routed", [False, True])
def test_quantize_act_asym_matches_reference(m, k, n, bits, routed):
    x, clip, ids, shift = _inputs(m, k, m + k + 1)
    x = x + 2.0  # offset tokens: zero points away from the middle
    args = (x, clip, ids, bits, shift) if routed else (x, clip[:1], None, bits, None)
    got = torch.ops.mqcompile.quantize_act_asym_triton(*(a.to(DEVICE) if torch.is_tensor(a) else a for a in args))
    for g, r in zip(got, ref.quantize_act_asym_ref(*args)):
        assert g.dtype == r.dtype and torch.equal(g.cpu(), r)


def test_quantize_act_asym_ties_and_zero_rows():
    x = torch.tensor([[7.5, 0.0, -7.5, 2.5], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 5.0, 15.0]])  # scales 1: exact halves
    got = torch.ops.mqcompile.quantize_act_asym_triton(x.to(DEVICE), torch.ones(1, device=DEVICE), None, 4)
    want = ref.quantize_act_asym_ref(x, torch.ones(1), None, 4)
    assert all(torch.equal(g.cpu(), r) for g, r in zip(got, want))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 96, 40), (37, 200, 70), (16, 300, 129)])
@pytest.mark.parametrize("cfg", [None, GemmConfig(16, 32, 32, 3), GemmConfig(16, 32, 64, 1, two_dot=True)])
def test_qlinear_with_zero_points_matches_reference(m, k, n, cfg):
    g = torch.Generator().manual_seed(m + n)
    x, clip, ids, shift = _inputs(m, k, n)
    xq, xs, xz = ref.quantize_act_asym_ref(x, clip, ids, 4, shift)
    w = pack_int4(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8))
    colsum = ref.weight_colsum(w, 4, k)
    ws, bias, comp = torch.rand(n, 1, generator=g), torch.randn(n, generator=g), torch.randn(MODALITIES, n, generator=g)
    want = ref.qlinear_ref(xq, xs, w, ws, bias, 4, 0, k, torch.float32, comp, ids, xz, colsum)
    dev = [a.to(DEVICE) for a in (xq, xs, w, ws, bias, comp, ids)]
    got = qlinear_launch(*dev, k, True, torch.float32, cfg, x_zero=xz.to(DEVICE), w_colsum=colsum.to(DEVICE))
    assert torch.equal(got.cpu(), want)


def test_asymmetric_program_with_triton_ops_equals_the_program(toy):
    import dataclasses

    _, _, ep = toy
    qp = mqcompile.quantize(ep, dataclasses.replace(TOY_CONFIG, default="w4a4asym"), progress=False)
    module = detach_to(qp.exported_program.module(), DEVICE)
    assert use_triton_ops(module) == {"quantize_act": 4, "qlinear": 4, "kept": 0, "unpacked": 0}
    targets = {n.target for n in module.graph.nodes}
    assert torch.ops.mqcompile.quantize_act_asym_triton.default in targets
    inputs = {k: v.to(DEVICE) for k, v in toy_inputs(2).items()}
    got, want = module(**inputs).cpu(), qp.module()(**toy_inputs(2))
    if DEVICE == "cpu":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
