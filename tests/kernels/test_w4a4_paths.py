"""The W4A4 fast paths of issue #20 (decode kernel, cuBLAS FP8 prefill, the M-dispatching op) vs the references,
bit for bit. Without a GPU the Triton kernels run in Triton's interpreter and ``torch._scaled_mm`` on the CPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before the kernels are first JIT-decorated (they are lazy)
    os.environ["TRITON_INTERPRET"] = "1"

from mqcompile.kernels import (
    pack_int4,  # noqa: E402
    w4a4_ops,  # noqa: E402
)
from mqcompile.kernels import reference as ref  # noqa: E402
from mqcompile.kernels.pack import BLOCK, pack_int4_blocked, unpack_int4_blocked  # noqa: E402
from mqcompile.kernels.triton_kernels import DecodeConfig, decode_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODALITIES = 3


def _dev(*ts):
    return [t.to(DEVICE) if torch.is_tensor(t) else t for t in ts]


def _case(m, k, n, seed, asym=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, min(3, k - 1)] *= 30  # a long-tailed channel
    if asym:
        x = x + 1.5
    clip = torch.rand(MODALITIES, generator=g) * 0.5 + 0.5
    ids = torch.randint(0, MODALITIES, (m,), generator=g)
    shift = torch.randn(MODALITIES, k, generator=g)
    wq = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    ws, bias, comp = torch.rand(n, 1, generator=g), torch.randn(n, generator=g), torch.randn(MODALITIES, n, generator=g)
    return x, clip, ids, shift, wq, ws, bias, comp


def _want(x, clip, ids, shift, wq, ws, bias, comp, k, out_dtype, asym=False, routed=True):
    quant = ref.quantize_act_asym_ref if asym else ref.quantize_act_ref
    qa = quant(x, clip, ids, 4, shift) if routed else quant(x, clip[:1], None, 4, None)
    w = pack_int4(wq)
    zero = (qa[2], ref.weight_colsum(w, 4, k)) if asym else (None, None)
    cp, cids = (comp, ids) if routed else (None, None)
    return ref.qlinear_ref(qa[0], qa[1], w, ws, bias, 4, 0, k, out_dtype, cp, cids, *zero)


@pytest.mark.parametrize("k", [1, 31, 64, 75, 200, 333])
def test_blocked_layout_round_trips_and_puts_halves_in_the_nibbles(k):
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8)
    packed = pack_int4_blocked(q)
    assert packed.shape == (5, -(-k // BLOCK) * BLOCK // 2)
    assert torch.equal(unpack_int4_blocked(packed, k), q)
    padded = torch.nn.functional.pad(q, (0, packed.shape[1] * 2 - k))
    low = ((packed.view(torch.int8) << 4) >> 4)[:, : BLOCK // 2]
    high = (packed.view(torch.int8) >> 4)[:, : BLOCK // 2]
    assert torch.equal(low, padded[:, : BLOCK // 2]) and torch.equal(high, padded[:, BLOCK // 2 : BLOCK])


@pytest.mark.parametrize(("k", "n"), [(75, 20), (200, 33), (64, 16)])
@pytest.mark.parametrize("fp8", [False, True])
def test_expand_int4_gives_the_values_zero_padded(k, n, fp8):
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    out = w4a4_ops.expand_int4(pack_int4_blocked(q).to(DEVICE), k, fp8=fp8).cpu()
    assert out.shape == (-(-n // 16) * 16, -(-k // 16) * 16)
    assert out.dtype == (torch.float8_e4m3fn if fp8 else torch.int8)
    want = torch.nn.functional.pad(q.float(), (0, out.shape[1] - k, 0, out.shape[0] - n))
    assert torch.equal(out.float(), want)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 96, 40), (5, 75, 20), (16, 300, 129), (3, 1, 17), (16, 640, 64)])
@pytest.mark.parametrize(
    "cfg",
    [
        None,  # the heuristic
        DecodeConfig(16, 64, 1),
        DecodeConfig(32, 128, 3),  # more splits than K blocks at small K: empty slices add nothing
        DecodeConfig(16, 64, 2, fuse_quant=True),
        DecodeConfig(64, 256, 1, fuse_quant=True),
    ],
)
def test_decode_kernel_matches_reference(m, k, n, cfg):
    x, clip, ids, shift, wq, ws, bias, comp = _case(m, k, n, m * k + n)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.float32)
    w, xq_xs = pack_int4_blocked(wq), ref.quantize_act_ref(x, clip, ids, 4, shift)
    if cfg is not None and cfg.fuse_quant:
        got, xs = w4a4_ops.decode_launch(*_dev(x, None, w, ws, bias, comp, ids), k, torch.float32, cfg,
                                           clip=clip.to(DEVICE), shift=shift.to(DEVICE))  # fmt: skip
        assert torch.equal(xs.cpu(), xq_xs[1])  # the scales it computed are the reference's
    else:
        got, _ = w4a4_ops.decode_launch(*_dev(*xq_xs, w, ws, bias, comp, ids), k, torch.float32, cfg)
    assert torch.equal(got.cpu(), want)


def test_decode_kernel_with_zero_points_matches_reference():
    m, k, n = 7, 200, 48
    x, clip, ids, shift, wq, ws, bias, comp = _case(m, k, n, 11, asym=True)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.float16, asym=True)
    xq, xs, xz = ref.quantize_act_asym_ref(x, clip, ids, 4, shift)
    colsum = ref.weight_colsum(pack_int4(wq), 4, k)
    for cfg in (DecodeConfig(16, 64, 1), DecodeConfig(32, 64, 2)):
        got, _ = w4a4_ops.decode_launch(*_dev(xq, xs, pack_int4_blocked(wq), ws, bias, comp, ids), k,
                                          torch.float16, cfg, x_zero=xz.to(DEVICE),
                                          w_colsum=colsum.to(DEVICE))  # fmt: skip
        assert torch.equal(got.cpu(), want)


def test_decode_kernel_refuses_what_it_cannot_do():
    w = pack_int4_blocked(torch.zeros(16, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match="at most 16 tokens"):
        w4a4_ops.decode_launch(torch.zeros(17, 64, dtype=torch.int8), torch.ones(17, 1), w, torch.ones(16, 1),
                                 None, None, None, 64, torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="blocked layout"):
        w4a4_ops.decode_launch(torch.zeros(2, 75, dtype=torch.int8), torch.ones(2, 1), pack_int4(torch.zeros(
            16, 75, dtype=torch.int8)), torch.ones(16, 1), None, None, None, 75, torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="clip"):
        w4a4_ops.decode_launch(torch.zeros(2, 64), None, w, torch.ones(16, 1), None, None, None, 64,
                                 torch.float32, DecodeConfig(fuse_quant=True))  # fmt: skip
    with pytest.raises(ValueError, match="x_scale"):
        w4a4_ops.decode_launch(torch.zeros(2, 64, dtype=torch.int8), None, w, torch.ones(16, 1), None, None, None,
                                 64, torch.float32)  # fmt: skip


def test_decode_candidates_are_valid_tiles():
    from mqcompile.kernels import autotune

    for k in (96, 3584, 18944):
        for fuse in (False, True):
            cands = autotune.decode_candidates(k, fuse)
            assert cands and all(c.fuse_quant == fuse and c.block_k % BLOCK == 0 for c in cands)
            assert all(c.split_k == 1 or k >= c.block_k * c.split_k for c in cands)
    # on the CPU nothing is timed: the heuristic, with the fused flag as asked
    x = torch.zeros(3, 96)
    assert autotune.choose_decode(x, 40, 96, True, lambda c: None) == decode_config(40, 96)._replace(fuse_quant=True)


@pytest.mark.parametrize(("m", "k", "n"), [(17, 75, 20), (40, 200, 33), (300, 130, 129)])
@pytest.mark.parametrize("asym", [False, True])
def test_fp8_path_matches_reference(m, k, n, asym):
    # e4m3 codes and weights, unit-scale _scaled_mm in fp32 (exact integer sums), the reference's epilogue
    x, clip, ids, shift, wq, ws, bias, comp = _case(m, k, n, m + k + n, asym)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.bfloat16, asym)
    quantize = w4a4_ops.kernels().quantize_act_asym if asym else w4a4_ops.kernels().quantize_act
    q8, xs, *xz = w4a4_ops._launch_quantize(quantize, *_dev(x, clip, ids), 4, shift.to(DEVICE), int(asym),
                                              fp8=True, pad_to=16)  # fmt: skip
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == (m, -(-k // 16) * 16)
    qa = (ref.quantize_act_asym_ref if asym else ref.quantize_act_ref)(x, clip, ids, 4, shift)
    assert torch.equal(q8.float().cpu()[:, :k], qa[0].float()) and not q8.float()[:, k:].any()
    w8 = w4a4_ops.expand_int4(pack_int4_blocked(wq).to(DEVICE), k, fp8=True)
    colsum = ref.weight_colsum(pack_int4(wq), 4, k) if asym else None
    got = w4a4_ops.fp8_gemm(q8, xs, w8, *_dev(ws, bias, comp, ids), n, torch.bfloat16,
                              x_zero=xz[0] if asym else None, w_colsum=_dev(colsum)[0])  # fmt: skip
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("m", [1, 16, 17, 64])
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("routed", [False, True])
@pytest.mark.parametrize("fp8_min_tokens", [17, 10**9])  # FP8 prefill, or the int8 GEMM on expanded weights
def test_dispatching_op_matches_reference_on_every_path(m, asym, routed, fp8_min_tokens):
    k, n = 200, 70
    x, clip, ids, shift, wq, ws, bias, comp = _case(m, k, n, m + 100 * asym, asym)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.float16, asym, routed)
    tables = (clip, ids, shift) if routed else (clip[:1], None, None)
    colsum = ref.weight_colsum(pack_int4(wq), 4, k) if asym else None
    for fuse in (False, True):
        got = torch.ops.mqcompile.w4a4_linear_triton(
            *_dev(x, *tables), asym, *_dev(pack_int4_blocked(wq), ws, bias), k, torch.float16,
            *_dev(comp if routed else None, ids if routed else None, colsum), None, fp8_min_tokens, False, fuse,
        )  # fmt: skip
        assert torch.equal(got.cpu(), want)


def test_dispatching_op_takes_a_stored_fp8_copy_and_keeps_leading_dims():
    k, n = 96, 40
    x, clip, ids, shift, wq, ws, bias, comp = _case(24, k, n, 5)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.float32).reshape(2, 12, n)
    w = pack_int4_blocked(wq).to(DEVICE)
    w8 = w4a4_ops.expand_int4(w, k, fp8=True)
    got = torch.ops.mqcompile.w4a4_linear_triton(*_dev(x.reshape(2, 12, k), clip, ids.reshape(2, 12), shift), False,
                                                 w, *_dev(ws, bias), k, torch.float32,
                                                 *_dev(comp, ids.reshape(2, 12)), None, w8)  # fmt: skip
    assert got.shape == (2, 12, n) and torch.equal(got.cpu(), want)


def test_decode_config_splits_only_when_the_grid_is_small():
    for n, k in ((18944, 3584), (3584, 18944), (64, 96)):
        cfg = decode_config(n, k, sms=132)
        assert cfg.block_k % BLOCK == 0 and cfg.split_k >= 1
        if cfg.split_k > 1:
            assert -(-n // cfg.block_n) * cfg.split_k <= 2 * 132


# ----------------------------------------------------------------------------------------------------------------------
# programs: use_w4a4_paths fuses each 4-bit pair into the dispatching op
# ----------------------------------------------------------------------------------------------------------------------


def _deployed(qp, **kwargs):
    from mqcompile.backends.inductor.deploy import detach_to, use_triton_ops, use_w4a4_paths

    module = detach_to(qp.exported_program.module(), DEVICE)
    counts = use_w4a4_paths(module, **kwargs)
    return module, counts, use_triton_ops(module)


@pytest.mark.parametrize("scheme", ["w4a4", "w4a4asym"])
def test_program_on_the_w4a4_paths_equals_the_program(toy, scheme):
    import dataclasses

    import mqcompile
    from tests.conftest import TOY_CONFIG, toy_inputs

    _, _, ep = toy
    qp = mqcompile.quantize(ep, dataclasses.replace(TOY_CONFIG, default=scheme), progress=False)
    module, counts, rest = _deployed(qp)
    assert counts == {"fused": 4, "kept": 0} and rest == {"quantize_act": 0, "qlinear": 0, "kept": 0, "unpacked": 0}
    targets = [n.target for n in module.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.mqcompile.w4a4_linear_triton.default) == 4
    assert not any(str(t).startswith("mqcompile.q") for t in targets)  # no quantize_act / qlinear left
    buffers = dict(module.named_buffers())
    assert not any(name.endswith("mq_qweight") for name in buffers)  # one copy of the weights: the blocked one
    assert sum(name.endswith("mq_qweight_blocked") for name in buffers) == 4
    for seed in (0, 3):
        got = module(**{k: v.to(DEVICE) for k, v in toy_inputs(seed).items()}).cpu()
        want = qp.module()(**toy_inputs(seed))
        if DEVICE == "cpu":
            assert torch.equal(got, want)
        else:  # the float lm_head runs in cuBLAS vs MKL: last-bit differences there only
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(96, 200)
        self.down = torch.nn.Linear(200, 40)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize("tokens", [1, 16, 17, 70])
@pytest.mark.parametrize("fp8_weights", [False, True])
def test_every_token_count_takes_its_path_and_equals_the_program(tokens, fp8_weights):
    import mqcompile

    torch.manual_seed(0)
    x = torch.randn(1, tokens, 96)
    ep = torch.export.export(_MLP().eval(), (x,))
    qp = mqcompile.quantize(ep, mqcompile.QuantConfig(), progress=False)
    module, counts, _ = _deployed(qp, fp8_weights=fp8_weights)
    assert counts == {"fused": 2, "kept": 0}
    e4m3 = [b for n, b in module.named_buffers() if n.endswith("_e4m3")]
    assert len(e4m3) == (2 if fp8_weights else 0) and all(b.dtype == torch.float8_e4m3fn for b in e4m3)
    got, want = module(x.to(DEVICE)).cpu(), qp.module()(x)
    if DEVICE == "cpu":
        assert torch.equal(got, want)
    else:  # the GELU between the linears runs in CUDA vs the CPU: a last-bit difference can flip a rare code
        assert float((got - want).norm() / want.norm()) < 1e-3


def test_codes_read_elsewhere_keep_the_pair():
    import operator

    import mqcompile
    from mqcompile.backends.inductor.deploy import use_w4a4_paths

    ep = torch.export.export(_MLP().eval(), (torch.randn(1, 4, 96),))
    qp = mqcompile.quantize(ep, mqcompile.QuantConfig(), progress=False)
    module = qp.exported_program.module()
    graph = module.graph
    codes = next(n for n in graph.nodes if n.target is operator.getitem and n.args[1] == 0)
    with graph.inserting_after(codes):  # another reader of the first linear's codes
        graph.output_node().update_arg(0, (graph.output_node().args[0][0], graph.call_function(torch.neg, (codes,))))
    module.recompile()
    assert use_w4a4_paths(module) == {"fused": 1, "kept": 1}


def test_torch_compile_traces_one_graph_per_regime_with_dynamic_tokens():
    # Dynamo + AOTAutograd through the triton_op's body (a separate process: the interpreter's kernels cannot be
    # traced): 40 and 70 tokens share the FP8 graph (quantize, expand, _scaled_mm, the epilogue as aten ops that
    # Inductor fuses), 3 and 16 the decode graph; the choice is a guard on M, so 4 calls make 2 graphs
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).parent / "scripts" / "trace_w4a4_paths.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    graphs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(graphs) == 2
    fp8, decode = graphs
    assert fp8.count("aten._scaled_mm.default") == 2 and fp8.count("triton_kernel_wrapper_functional") == 4
    assert "aten._scaled_mm.default" not in decode and decode.count("triton_kernel_wrapper_functional") == 4


@pytest.mark.parametrize(("m", "k", "n", "routed"), [(17, 75, 20, True), (300, 130, 129, False)])
def test_cublas_scales_form_is_the_reference_within_bf16_rounding(m, k, n, routed, monkeypatch):
    # the opt-in inexact FP8 epilogue: rowwise scales and bias inside _scaled_mm, bf16 out, compensation added in bf16
    calls, scaled_mm = [], torch._scaled_mm

    def spy(*args, **kwargs):
        calls.append((tuple(kwargs["scale_a"].shape), kwargs.get("bias") is not None, kwargs["out_dtype"]))
        return scaled_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    x, clip, ids, shift, wq, ws, bias, comp = _case(m, k, n, m * n)
    want = _want(x, clip, ids, shift, wq, ws, bias, comp, k, torch.bfloat16, routed=routed).float()
    tables = (clip, ids, shift) if routed else (clip[:1], None, None)
    got = torch.ops.mqcompile.w4a4_linear_triton(
        *_dev(x, *tables), False, *_dev(pack_int4_blocked(wq), ws, bias), k, torch.bfloat16,
        *_dev(comp if routed else None, ids if routed else None), None, None, 17, False, False, True,
    ).cpu().float()  # fmt: skip
    assert calls == [((m, 1), True, torch.bfloat16)] and got.shape == want.shape
    # bf16 keeps 8 bits: two roundings (the GEMM's output, then + compensation) are within 2 ulps of the exact value
    torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * float(want.abs().max()) * 2**-4)
    exact = torch.ops.mqcompile.w4a4_linear_triton(
        *_dev(x, *tables), False, *_dev(pack_int4_blocked(wq), ws, bias), k, torch.bfloat16,
        *_dev(comp if routed else None, ids if routed else None), None, None, 17,
    ).cpu().float()  # fmt: skip
    assert torch.equal(exact, want) and calls[1] == ((), False, torch.float32)  # unit scales, fp32: exact


def test_fused_decode_routes_the_quantization_by_the_activation_ids():
    # a routed clip / shift without compensation (comp folded away): the fused kernel must route by act_ids
    m, k, n = 9, 200, 40
    x, clip, ids, shift, wq, ws, bias, _ = _case(m, k, n, 21)
    xq, xs = ref.quantize_act_ref(x, clip, ids, 4, shift)
    want = ref.qlinear_ref(xq, xs, pack_int4(wq), ws, bias, 4, 0, k, torch.float32)
    for fuse in (False, True):
        got = torch.ops.mqcompile.w4a4_linear_triton(*_dev(x, clip, ids, shift), False,
                                                     *_dev(pack_int4_blocked(wq), ws, bias), k, torch.float32,
                                                     None, None, None, None, 17, False, fuse)  # fmt: skip
        assert torch.equal(got.cpu(), want), fuse
