"""ONNX QDQ export: exact activation numerics, graph structure, parity in ONNX Runtime, size, variants, bad input."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mqcompile
from mqcompile import ConfigError, QuantConfig, QuantizedProgram, UnsupportedProgramError, recipes
from mqcompile.backends.onnx.export import export_float_onnx, export_onnx, ort_optimized_op_counts, parity
from mqcompile.errors import CalibrationError
from mqcompile.kernels.reference import quantize_act_ref
from mqcompile.metrics import cosine
from tests.conftest import TOY_CONFIG, Toy, toy_inputs

COSINE = 0.999


def _config(**kw):
    return dataclasses.replace(TOY_CONFIG, debug=False, **kw)


def _outlier_inputs(seed):
    x = toy_inputs(seed)
    x["pixel_values"][:, 2] += 40.0  # a massive-activation channel: DABC shifts it
    x["input_ids"][:, 8:] = 44  # a text token with an outlier embedding channel in the fused linears
    return x


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ops(path):
    model = onnx.load(str(path))
    return model, [n.op_type for n in model.graph.node]


def _int4_inits(model):
    return {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4}


@pytest.fixture(scope="module")
def toy_ep():
    torch.manual_seed(0)
    model = Toy().eval()
    with torch.no_grad():
        model.emb.weight[44, 3] = 25.0
    return model, torch.export.export(model, (), toy_inputs())


@pytest.fixture(scope="module")
def toy_rtn(toy_ep):
    return mqcompile.quantize(toy_ep[1], _config(), progress=False)


@pytest.fixture(scope="module")
def toy_mq(toy_ep):
    calib = [_outlier_inputs(s) for s in range(1, 4)]
    return mqcompile.quantize(toy_ep[1], _config(algorithms=recipes.DABC_ONLY), calibration=calib, progress=False)


@pytest.fixture(scope="module")
def toy_w4a4(toy_rtn, tmp_path_factory):
    return export_onnx(toy_rtn, tmp_path_factory.mktemp("onnx") / "toy.onnx")


# ----------------------------------------------------------------------------------------------------------------------
# exact numerics of the activation quantizer
# ----------------------------------------------------------------------------------------------------------------------


class _QuantizeActs(torch.nn.Module):
    """quantize_act alone, four ways: 4/8 bits, with/without modality routing and DABC shift."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("clip1", torch.tensor([1.0]))
        self.register_buffer("clip3", torch.tensor([1.0, 0.9, 0.75]))
        self.register_buffer("shift1", torch.randn(1, 64, generator=g) * 3)
        self.register_buffer("shift3", torch.randn(3, 64, generator=g) * 3)

    def forward(self, x, ids):
        q = torch.ops.mqcompile.quantize_act
        return (
            q(x, self.clip1, None, 4, None),
            q(x, self.clip3, ids, 4, self.shift3),
            q(x, self.clip1, None, 4, self.shift1),
            q(x, self.clip3, ids, 8, self.shift3),
        )


def test_activation_codes_and_scales_are_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(2, 200, 64, generator=g) * torch.rand(2, 200, 1, generator=g) * 10,
            torch.randint(-16, 17, (2, 60, 64), generator=g).float() / 2,
            torch.zeros(2, 1, 64),  # all-zero token: scale 1
        ],
        dim=1,
    )
    ties = torch.tensor([7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 6.5])  # max 7, clip 1: scale exactly 1
    x[0, 0] = torch.cat([ties, torch.zeros(54)])
    ids = torch.randint(0, 3, (2, 261), generator=g)
    module = _QuantizeActs().eval()
    ep = torch.export.export(module, (), {"x": x, "ids": ids})
    report = export_onnx(QuantizedProgram(ep, QuantConfig()), tmp_path / "qa.onnx", check=False)
    assert report.quantize_linear == 4
    session = _session(report.path)
    feeds = {i.name: {"x": x, "ids": ids}[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    cases = [(module.clip1, None, 4, None), (module.clip3, ids, 4, module.shift3)]
    cases += [(module.clip1, None, 4, module.shift1), (module.clip3, ids, 8, module.shift3)]
    for i, (clip, mids, bits, shift) in enumerate(cases):
        q, s = quantize_act_ref(x, clip, mids, bits, shift)
        assert np.array_equal(got[2 * i], q.numpy()), f"codes differ in case {i}"
        assert np.array_equal(got[2 * i + 1], s.numpy()), f"scales differ in case {i}"
    assert got[0][0, 0, :10].tolist() == [7, 0, 2, 2, 0, -2, -2, 4, -4, 6]  # half to even, like torch.round


class _QuantizeActsAsym(_QuantizeActs):
    """quantize_act_asym alone, three ways: plain, routed clips with DABC shift, 8 bits."""

    def forward(self, x, ids):
        q = torch.ops.mqcompile.quantize_act_asym
        return q(x, self.clip1, None, 4, None), q(x, self.clip3, ids, 4, self.shift3), q(x, self.clip1, None, 8, None)


def test_asymmetric_codes_scales_and_zero_points_are_bit_exact(tmp_path):
    from mqcompile.kernels.reference import quantize_act_asym_ref

    g = torch.Generator().manual_seed(1)
    x = torch.cat(
        [
            torch.randn(2, 200, 64, generator=g) * torch.rand(2, 200, 1, generator=g) * 10 + 3,
            torch.randint(-16, 17, (2, 60, 64), generator=g).float() / 2,  # ties
            torch.zeros(2, 1, 64),
        ],
        dim=1,
    )
    ids = torch.randint(0, 3, (2, 261), generator=g)
    module = _QuantizeActsAsym().eval()
    ep = torch.export.export(module, (), {"x": x, "ids": ids})
    report = export_onnx(QuantizedProgram(ep, QuantConfig()), tmp_path / "qa.onnx", check=False)
    assert report.quantize_linear == 6  # per case: the codes, and the zero point rounded and saturated by one
    got = _session(report.path).run(None, {"x": x.numpy(), "ids": ids.numpy()})
    cases = [(module.clip1, None, 4, None), (module.clip3, ids, 4, module.shift3), (module.clip1, None, 8, None)]
    for i, (clip, mids, bits, shift) in enumerate(cases):
        for j, (what, ref) in enumerate(
            zip(("codes", "scales", "zeros"), quantize_act_asym_ref(x, clip, mids, bits, shift))
        ):
            assert np.array_equal(got[3 * i + j], ref.numpy()), f"{what} differ in case {i}"


def test_toy_w4a4asym_parity(toy_ep, tmp_path):
    qp = mqcompile.quantize(toy_ep[1], _config(default="w4a4asym"), progress=False)
    ops = {n.target for n in qp.exported_program.graph.nodes}
    assert torch.ops.mqcompile.quantize_act_asym.default in ops and torch.ops.mqcompile.quantize_act.default not in ops
    report = export_onnx(qp, tmp_path / "asym.onnx", toy_inputs(2))
    assert report.parity.cosine > COSINE and report.qlinear == 4, report
    model, _ = _ops(report.path)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 3 and "act" in n.name]
    assert len(dq) == 4  # the activation DequantizeLinear takes the per-token zero point


# ----------------------------------------------------------------------------------------------------------------------
# structure and parity
# ----------------------------------------------------------------------------------------------------------------------


def test_toy_w4a4_structure_names_and_parity(toy_rtn, toy_w4a4):
    report = toy_w4a4
    model, ops = _ops(report.path)
    n_act = sum(1 for r in toy_rtn.linears() if r.scheme == "w4a4")
    assert report.qlinear == n_act == 4 and report.wlinear == 0
    assert ops.count("QuantizeLinear") == n_act  # one activation Q per linear (no two share an input here)
    assert ops.count("DequantizeLinear") == 2 * n_act  # its DQ and the weight's DQ
    inits = _int4_inits(model)
    assert sorted(inits) == ["a.qweight", "d1.qweight", "d2.qweight", "v.qweight"]
    assert list(inits["d1.qweight"].dims) == [16, 32]  # [K, N]
    assert {i.domain for i in model.opset_import} == {""} and model.opset_import[0].version == 21
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.name.split("/")[0] in {"v", "a", "d1", "d2"}
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["output_dtype"] == onnx.TensorProto.INT4 and attrs["axis"] == 0
    assert report.checked and report.parity.cosine >= COSINE and report.parity.argmax_agreement == 1.0
    held_out = parity(toy_rtn, report.path, toy_inputs(5))
    assert held_out.cosine >= COSINE and held_out.argmax_agreement == 1.0


def test_toy_dabc_shift_and_routed_compensation(toy_mq, tmp_path):
    state = toy_mq.exported_program.state_dict
    assert "d1.mq_comp" in state and "v.mq_shift" in state  # routed compensation, one-modality shift
    report = export_onnx(toy_mq, tmp_path / "toy_mq.onnx")
    model, ops = _ops(report.path)
    assert ops.count("Sub") >= 2  # DABC shifts
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.name.startswith("d1/")]
    assert len(gathers) >= 2  # per-token clip / shift / compensation rows by modality id
    for seed in (7, 8):
        p = parity(toy_mq, report.path, _outlier_inputs(seed))
        assert p.cosine >= COSINE and p.argmax_agreement == 1.0, p
    integer = export_onnx(toy_mq, tmp_path / "toy_mq_int.onnx", variant="w4a8int")  # keeps shift + compensation
    assert integer.node_counts["Sub"] == report.node_counts["Sub"]
    assert parity(toy_mq, integer.path, _outlier_inputs(7)).cosine >= 0.99


@pytest.fixture(scope="module")
def tower_eps(tiny_thinker, tiny_sample):
    from mqcompile.models import export_audio_tower, export_vision_tower

    return {
        "vision": export_vision_tower(tiny_thinker, tiny_sample),
        "audio": export_audio_tower(tiny_thinker, tiny_sample),
    }


@pytest.mark.parametrize("tower", ["vision", "audio"])
@pytest.mark.parametrize("method", ["rtn", "dabc"])
def test_tiny_thinker_towers_parity(tiny_thinker, tower_eps, tower, method, tmp_path):
    from mqcompile.models import make_sample, tower_sample

    ep = tower_eps[tower]
    calib = [tower_sample(make_sample(tiny_thinker, seed=1), tower)] if method != "rtn" else None
    algorithms = {"rtn": recipes.RTN, "dabc": recipes.DABC_ONLY}[method]
    qp = mqcompile.quantize(ep, QuantConfig(algorithms=algorithms), calibration=calib, progress=False)
    if method == "dabc":
        assert any(k.endswith(".mq_shift") for k in qp.exported_program.state_dict)
    report = export_onnx(qp, tmp_path / f"{tower}.onnx", check=False)
    onnx.checker.check_model(report.path, full_check=True)
    model, ops = _ops(report.path)
    n = len([r for r in qp.linears() if r.scheme == "w4a4"])
    assert report.qlinear == n and len(_int4_inits(model)) == n
    weight_dq = [x for x in model.graph.node if x.op_type == "DequantizeLinear" and x.input[0].endswith(".qweight")]
    assert len(weight_dq) == n
    # linears that read the same activation with the same clip/shift (q/k/v, gate/up) share one QuantizeLinear
    assert 0 < ops.count("QuantizeLinear") <= n
    assert ops.count("DequantizeLinear") == n + ops.count("QuantizeLinear")
    p = parity(qp, report.path, tower_sample(make_sample(tiny_thinker, seed=9), tower))
    assert p.cosine >= COSINE and p.argmax_agreement == 1.0, p


def test_variants_and_what_onnxruntime_fuses(toy_rtn, toy_w4a4, tmp_path):
    a8 = export_onnx(toy_rtn, tmp_path / "a8.onnx", variant="w4a8")
    model, _ = _ops(a8.path)
    q_types = {
        onnx.helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        for a in n.attribute
        if a.name == "output_dtype"
    }
    assert q_types == {onnx.TensorProto.INT8} and a8.quantize_linear == 4
    a16 = export_onnx(toy_rtn, tmp_path / "a16.onnx", variant="w4a16")
    assert a16.quantize_linear == 0 and a16.dequantize_linear == 4 and a16.int4_initializers == 4
    for report in (a8, a16):  # different numerics from the W4A4 program, but close
        assert report.parity.cosine >= 0.99
    fused = ort_optimized_op_counts(a16.path, tmp_path / "a16.ort.onnx")
    assert fused.get("MatMulNBits") == 4 and "DequantizeLinear" not in fused
    for report in (toy_w4a4, a8):  # activation Q/DQ in front of the MatMul: ORT keeps DequantizeLinear + Gemm
        fused = ort_optimized_op_counts(report.path, tmp_path / "x.ort.onnx")
        assert "MatMulNBits" not in fused and fused["DequantizeLinear"] == 8
    a8i = export_onnx(toy_rtn, tmp_path / "a8i.onnx", variant="w4a8int")
    assert a8i.quantize_linear == a8i.dequantize_linear == 0 and a8i.int4_initializers == 4  # the file stays 4-bit
    assert a8i.node_counts["MatMulInteger"] == a8i.node_counts["DynamicQuantizeLinear"] == 4
    assert a8i.parity.cosine >= 0.99
    fused = ort_optimized_op_counts(a8i.path, tmp_path / "a8i.ort.onnx")
    assert fused.get("MatMulIntegerToFloat") == 4 and "MatMulInteger" not in fused and "Cast" not in fused


def _dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """ONNX DynamicQuantizeLinear, as its spec writes it (float64 here)."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255
    zero = int(np.clip(np.round(-lo / scale), 0, 255))
    return np.clip(np.round(x / scale) + zero, 0, 255), scale, zero


@pytest.mark.parametrize("shape", [(1, 1, 40), (2, 33, 40)])
def test_integer_variant_matches_a_numpy_reference(shape, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 24).eval()  # K = 40: not a multiple of any block
    x = torch.randn(*shape)
    x[..., 5] += 6.0  # one large channel: an asymmetric range, a nonzero UINT8 zero point
    qp = mqcompile.quantize(torch.export.export(model, (x,)), progress=False)
    report = export_onnx(qp, tmp_path / "lin.onnx", variant="w4a8int")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(report.path).graph.initializer}
    weight = next(v for k, v in inits.items() if k.endswith("qweight")).astype(np.float64)  # [K, N], int4 values
    w_scale = next(v for k, v in inits.items() if k.endswith("w_scale")).astype(np.float64)
    assert weight.shape == (40, 24) and weight.min() >= -8 and weight.max() <= 7
    rows = x.reshape(-1, 40).double().numpy()
    codes, scale, zero = _dynamic_quantize_linear(rows)
    want = (codes - zero) @ weight * (w_scale * scale) + model.bias.detach().double().numpy()
    session = _session(report.path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].reshape(-1, 24)
    # fp32 scales in ORT vs float64 here: rounding-level differences, never a wrong code (that would cost a column
    # of |weight| * scale >= 0.5 * scale * w_scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    exact = model(x).reshape(-1, 24)
    program = qp.module()(x).reshape(-1, 24)
    assert cosine(torch.from_numpy(got), exact) > cosine(program, exact)  # 8-bit activations: closer to float


def test_integer_variant_needs_per_channel_weights(toy_ep, tmp_path):
    qp = mqcompile.quantize(toy_ep[1], _config(weight_group_size=4), progress=False)
    with pytest.raises(UnsupportedProgramError, match="one weight scale per output channel"):
        export_onnx(qp, tmp_path / "g.onnx", variant="w4a8int")


def test_grouped_int8_and_weight_only_linears(toy_ep, tmp_path):
    config = _config(modality={"audio": "w8a8", "vision": "w4a16"}, weight_group_size=4)
    qp = mqcompile.quantize(toy_ep[1], config, progress=False)
    report = export_onnx(qp, tmp_path / "mixed.onnx")
    assert (report.qlinear, report.wlinear) == (3, 1)  # a (w8a8), d1, d2 (w4a4); v weight-only
    model, _ = _ops(report.path)
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["a.qweight"].data_type == onnx.TensorProto.INT8 and list(inits["a.qweight"].dims) == [10, 16]
    assert inits["v.qweight"].data_type == onnx.TensorProto.INT4
    assert list(inits["d2.w_scale"].dims) == [8, 16]  # [K / group, N]
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".qweight"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs == {"axis": 0, "block_size": 4}
        if node.op_type == "QuantizeLinear" and node.name.startswith("a/"):
            assert any(a.name == "output_dtype" and a.i == onnx.TensorProto.INT8 for a in node.attribute)
    assert report.parity.cosine >= COSINE and report.parity.argmax_agreement == 1.0


class _MLP(torch.nn.Module):
    def __init__(self, d=256):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(d, d) for _ in range(3))

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_w4_file_is_under_0_3x_the_float_file_and_dynamic_tokens_run(tmp_path):
    torch.manual_seed(0)
    model = _MLP().eval()
    x = torch.randn(2, 24, 256)
    tokens = torch.export.Dim("tokens", min=2, max=512)
    ep = torch.export.export(model, (x,), dynamic_shapes=({1: tokens},))
    qp = mqcompile.quantize(ep, progress=False)
    float_bytes = export_float_onnx(ep, tmp_path / "f.onnx")
    report = export_onnx(qp, tmp_path / "q.onnx")
    assert report.file_bytes <= 0.3 * float_bytes, (report.file_bytes, float_bytes)
    p = parity(qp, report.path, (torch.randn(2, 40, 256),))  # another token count than the example
    assert p.cosine >= COSINE and p.argmax_agreement == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_opset_variant_and_path_errors(toy_rtn, tmp_path):
    with pytest.raises(ConfigError, match="opset >= 21"):
        export_onnx(toy_rtn, tmp_path / "m.onnx", opset=20)
    with pytest.raises(ConfigError, match="unknown variant"):
        export_onnx(toy_rtn, tmp_path / "m.onnx", variant="w2a2")
    with pytest.raises(ConfigError, match="does not exist"):
        export_onnx(toy_rtn, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ConfigError, match="is a directory"):
        export_onnx(toy_rtn, tmp_path)
    with pytest.raises(UnsupportedProgramError, match="QuantizedProgram"):
        export_onnx(toy_rtn.exported_program, tmp_path / "m.onnx")
    with pytest.raises(CalibrationError, match="input_ids"):
        export_onnx(toy_rtn, tmp_path / "m.onnx", example_inputs={"x": torch.zeros(1)})


@torch.library.custom_op("mqtest::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


class _WithMystery(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.ops.mqtest.mystery(self.fc(x))


def test_unsupported_op_names_the_op_and_the_node(tmp_path):
    ep = torch.export.export(_WithMystery().eval(), (torch.randn(4, 16),))
    qp = mqcompile.quantize(ep, progress=False)
    with pytest.raises(UnsupportedProgramError, match=r"node 'mystery' calls mqtest::mystery"):
        export_onnx(qp, tmp_path / "m.onnx")


def test_dynamic_shape_errors_say_what_to_do(toy_rtn, tmp_path, monkeypatch):
    inputs = toy_inputs()
    inputs["input_ids"] = torch.cat([inputs["input_ids"], inputs["input_ids"]], dim=1)  # 24 tokens, program has 12
    with pytest.raises(UnsupportedProgramError, match=r"dim 1 is 24.*fixed to 12.*dynamic_shapes"):
        export_onnx(toy_rtn, tmp_path / "m.onnx", example_inputs=inputs)

    def exporter_fails(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression Eq(u0, 1) (unhinted: Eq(u0, 1))")

    monkeypatch.setattr(mqcompile.backends.onnx.export, "_run_exporter", exporter_fails)
    with pytest.raises(UnsupportedProgramError, match="cannot express this program's dynamic shapes.*static"):
        export_onnx(toy_rtn, tmp_path / "m.onnx")


# ----------------------------------------------------------------------------------------------------------------------
# real models (DINOv2-S, Whisper-base encoder): parity against the program's own sensitivity
# ----------------------------------------------------------------------------------------------------------------------


def _real_dinov2():
    from mqcompile.evaluation.checkpoints.dinov2 import load_dinov2_small
    from mqcompile.models.dinov2 import export_dinov2

    model = load_dinov2_small()
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    return export_dinov2(model, x, dynamic_batch=False), {"pixel_values": x}


def _real_whisper():
    from mqcompile.evaluation.checkpoints.whisper import load_whisper_base
    from mqcompile.models.whisper import export_whisper_encoder

    model, _ = load_whisper_base()
    frames = 2 * model.config.max_source_positions  # the encoder's fixed 30 s window
    x = torch.randn(1, model.config.num_mel_bins, frames, generator=torch.Generator().manual_seed(0))
    return export_whisper_encoder(model, x), {"input_features": x}


def _self_agreement(qp, inputs, draws=2):
    """Mean cosine of the torch program's output vs itself with the input scaled by (1 + 1e-7 noise): how far fp32
    rounding noise alone moves this quantized model."""
    module = qp.module()
    ((name, x),) = inputs.items()
    base = module(**inputs)
    g = torch.Generator().manual_seed(1)
    cosines = [cosine(base, module(**{name: x * (1 + 1e-7 * torch.randn(x.shape, generator=g))})) for _ in range(draws)]
    return sum(cosines) / draws


@pytest.mark.assets
@pytest.mark.parametrize("model", ["dinov2", "whisper"])
def test_real_model_parity(model, tmp_path):
    """W8A8: the issue's bound (cosine >= 0.999). W4A4 (RTN + rotation): cosine >= 0.999 is not reachable
    on these 12-layer models by any runtime (a 4-bit code at a rounding boundary flips under last-ulp differences in
    LayerNorm/softmax/GELU and the flips compound, docs/onnx.md), so the check is relative: ORT may deviate from the
    program at most 3x as much as the program deviates from itself under 1e-7 relative input noise (measured: about
    1x); a wrong scale, shift, rotation or layout deviates by far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the mqcompile ops on a loaded 2-core box: see tests/evaluation/test_vision.py
    try:
        ep, inputs = _real_dinov2() if model == "dinov2" else _real_whisper()
        w8 = export_onnx(
            mqcompile.quantize(ep, QuantConfig(default="w8a8"), progress=False), tmp_path / "w8.onnx", inputs
        )
        qp = mqcompile.quantize(ep, QuantConfig(algorithms=(recipes.Rotate(),)), progress=False)
        with torch.no_grad():
            self_cos = _self_agreement(qp, inputs)
        w4 = export_onnx(qp, tmp_path / "w4.onnx", inputs)
    finally:
        torch.set_num_threads(threads)
    # per-row argmax of hidden features (not tokens: these are encoders) flips where two features nearly tie
    assert w8.parity.cosine >= 0.999 and w8.parity.argmax_agreement >= 0.95, w8.parity
    assert self_cos < 1.0
    assert 1 - w4.parity.cosine <= 3 * (1 - self_cos), (w4.parity, self_cos)


@pytest.mark.parametrize("scheme", ["w4a4", "w4a4asym", "w8a8"])
@pytest.mark.parametrize("shape", [(1, 1, 40), (2, 33, 40), (513, 40)])
def test_exact_integer_variant_equals_the_program_bit_for_bit(scheme, shape, tmp_path):
    torch.manual_seed(0)
    # two linears back to back: no float op between them whose ORT rounding could differ from torch's
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 8)).eval()
    x = torch.randn(*shape)
    x[..., 5] += 6.0  # one large channel: asymmetric ranges, ties and saturation at the clip
    ep = torch.export.export(model, (x,))
    qp = mqcompile.quantize(ep, QuantConfig(default=scheme, keep_float=()), progress=False)
    report = export_onnx(qp, tmp_path / "int.onnx", variant="w4a4int", check=False)
    assert report.int4_initializers == (2 if scheme != "w8a8" else 0)  # the file keeps 4-bit weights
    session = _session(report.path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.array_equal(got, qp.module()(x).detach().numpy())
    fused = ort_optimized_op_counts(report.path, tmp_path / "int.ort.onnx")
    assert fused.get("MatMulInteger") == 2 and "DequantizeLinear" not in fused and "MatMul" not in fused


def test_exact_integer_variant_keeps_routed_dabc_and_clips(toy_ep, toy_mq, tmp_path):
    report = export_onnx(toy_mq, tmp_path / "mq_int.onnx", toy_inputs(2), variant="w4a4int")
    assert report.parity.cosine > COSINE and report.qlinear == 4
    assert ort_optimized_op_counts(report.path, tmp_path / "mq_int.ort.onnx").get("MatMulInteger") == 4
    grouped = mqcompile.quantize(toy_ep[1], _config(weight_group_size=4), progress=False)
    with pytest.raises(UnsupportedProgramError, match="variant 'w4a4int' needs one weight scale per output channel"):
        export_onnx(grouped, tmp_path / "g.onnx", variant="w4a4int")
