import dataclasses

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig, recipes
from mqcompile.errors import ConfigError
from mqcompile.solvers.block import output_loss


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, 2 * d)
        self.fc2 = torch.nn.Linear(2 * d, d)

    def forward(self, h):
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(h))))


class Stack(torch.nn.Module):
    """Residual blocks in a module list, like a transformer's layers."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(16, 32)
        self.layers = torch.nn.ModuleList([Block(32) for _ in range(3)])

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return h  # the last block's output: the block loss the pass reports is the program's own error


def _inputs(seed, tokens=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, 16, generator=g)
    x[..., 3] = x[..., 3] * 12 + 20  # a long-tailed, offset channel
    return {"x": x}


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    model = Stack().eval()
    with torch.no_grad():
        model.layers[1].fc1.weight[:, 5] *= 10  # an outlier input column inside a block
    return model, torch.export.export(model, (), _inputs(0))


MQ = (recipes.DABC(), recipes.MDQFO(ste_steps=2))


def _config(block_steps=0):
    block = (recipes.BlockMDQFO(steps=block_steps),) if block_steps else ()
    return QuantConfig(algorithms=MQ + block, keep_float=())


CALIB = [_inputs(s) for s in range(1, 5)]


def test_off_by_default_and_never_without_mdqfo(stack):
    _, ep = stack
    assert QuantConfig().algorithm(recipes.BlockMDQFO) is None
    qp = mqcompile.quantize(ep, _config(), calibration=CALIB, progress=False)
    assert qp.report["mdqfo_block"]["blocks"] == 0
    with pytest.raises(ConfigError, match="add MDQFO"):  # the old flat config ignored this combination silently
        QuantConfig(algorithms=(recipes.BlockMDQFO(steps=5),))


def test_block_losses_never_rise_and_clips_move(stack):
    model, ep = stack
    base = mqcompile.quantize(ep, _config(), calibration=CALIB, progress=False)
    qp = mqcompile.quantize(ep, _config(12), calibration=CALIB, progress=False)
    report = qp.report["mdqfo_block"]
    assert set(report["losses"]) == {"layers.0", "layers.1", "layers.2"} and report["blocks"] == 3
    for start, after in report["losses"].values():
        assert after <= start
    assert report["improved"] >= 1
    changed = [
        k
        for k, v in qp.exported_program.state_dict.items()
        if k.endswith(("mq_act_clip", "mq_w_scale")) and not torch.equal(v, base.exported_program.state_dict[k])
    ]
    assert changed and all(k.startswith("layers.") for k in changed)  # only block linears move
    for k, v in qp.exported_program.state_dict.items():
        if k.endswith("mq_act_clip"):
            assert bool((v >= 0.3).all()) and bool((v <= 1).all())

    # the pass simulates deployment faithfully: its last block's final loss is the program's own output error
    with torch.no_grad():
        deployed = sum(float(output_loss(model(**x), qp.module()(**x), beta=0.1)) for x in CALIB) / len(CALIB)
    assert deployed == pytest.approx(report["losses"]["layers.2"][1], rel=1e-4)


def test_deterministic(stack):
    _, ep = stack
    a = mqcompile.quantize(ep, _config(4), calibration=CALIB, progress=False)
    b = mqcompile.quantize(ep, _config(4), calibration=CALIB, progress=False)
    for k, v in a.exported_program.state_dict.items():
        assert torch.equal(v, b.exported_program.state_dict[k]), k


def test_program_parameters_get_no_gradients(stack):
    _, ep = stack
    mqcompile.quantize(ep, _config(3), calibration=CALIB, progress=False)
    assert all(p.grad is None for p in ep.state_dict.values())


def test_routed_fused_blocks_keep_per_modality_tables(thinker_ep, thinker_config, tiny_sample):
    algorithms = (recipes.DABC(), recipes.MDQFO(ste_steps=1), recipes.BlockMDQFO(steps=3))
    config = dataclasses.replace(thinker_config, algorithms=algorithms)
    qp = mqcompile.quantize(thinker_ep, config, calibration=[tiny_sample], progress=False)
    report = qp.report["mdqfo_block"]
    lm = [k for k in report["losses"] if "language_model.layers" in k]
    assert len(lm) == 2 and all(after <= start for start, after in report["losses"].values())
    clip = qp.exported_program.state_dict["thinker.model.language_model.layers.0.mlp.up_proj.mq_act_clip"]
    assert clip.shape == (3,)


def test_config_checks_and_round_trips():
    with pytest.raises(ConfigError, match="BlockMDQFO.steps"):
        recipes.BlockMDQFO(steps=-1)
    config = QuantConfig(algorithms=MQ + (recipes.BlockMDQFO(steps=7),))
    assert QuantConfig.from_json(config.to_json()).algorithm(recipes.BlockMDQFO).steps == 7


# ----------------------------------------------------------------------------------------------------------------------
# the learned online transform (BlockMDQFO(transform=True))
# ----------------------------------------------------------------------------------------------------------------------

ROT = (recipes.Rotate(max_block=8),)


def _transform_config(transform, steps=12, extra=()):
    algorithms = MQ + ROT + (recipes.BlockMDQFO(steps=steps, transform=transform),) + extra
    return QuantConfig(algorithms=algorithms, keep_float=())


@pytest.fixture(scope="module")
def learned(stack):
    _, ep = stack
    return mqcompile.quantize(ep, _transform_config(True), calibration=CALIB, progress=False)


def test_learned_transform_starts_at_the_rotation_and_never_raises_a_loss(stack, learned):
    model, ep = stack
    fixed = mqcompile.quantize(ep, _transform_config(False), calibration=CALIB, progress=False)
    report, base = learned.report["mdqfo_block"], fixed.report["mdqfo_block"]
    # identity factors on top of the Hadamard: before any step the block computes exactly the rotated program
    assert report["losses"]["layers.0"][0] == base["losses"]["layers.0"][0]
    assert all(after <= start for start, after in report["losses"].values())
    assert report["transforms"] >= 1 and report["improved"] >= 1
    lefts = [k for k in learned.exported_program.state_dict if k.endswith("mq_rotation_left")]
    assert lefts and all(k.startswith("layers.") for k in lefts)  # the stem linear is in no block
    assert learned.report["bytes_rotation"] > fixed.report["bytes_rotation"]
    # deployment computes what the pass optimized: the last block's loss is the program's own output error
    with torch.no_grad():
        deployed = sum(float(output_loss(model(**x), learned.module()(**x), beta=0.1)) for x in CALIB) / len(CALIB)
    assert deployed == pytest.approx(report["losses"]["layers.2"][1], rel=1e-4)


def test_learned_transform_keeps_the_float_function(stack):
    from mqcompile.graph.export import copy_program
    from mqcompile.passes import PassContext
    from mqcompile.pipeline import run_pipeline
    from mqcompile.solvers import rotate_act
    from mqcompile.solvers.transform import kron_act

    model, ep = stack
    ctx = PassContext(_transform_config(True), calibration=[((), x) for x in CALIB], progress=False)
    run_pipeline(copy_program(ep), ctx, progress=False, until="mdqfo_block")
    learned = {name: plan for name, plan in ctx.plans.items() if plan.transform is not None}
    assert learned
    for name, plan in learned.items():
        linear = model.get_submodule(name)
        x = torch.randn(5, linear.in_features)
        moved = kron_act(rotate_act(x, plan.rotation), *plan.transform)
        assert not torch.allclose(moved, rotate_act(x, plan.rotation), atol=1e-3), name  # it did learn something
        assert torch.allclose(moved @ plan.weight.T, linear(x) - linear.bias, atol=1e-4), name


def test_learned_transform_exports_and_compiles(stack, learned, tmp_path):
    from mqcompile.backends.onnx.export import export_onnx

    x = _inputs(9)
    with torch.no_grad():  # Inductor reassociates the float transform matmuls (so does it the fixed rotation's)
        assert torch.allclose(mqcompile.compile(learned)(**x), learned.module()(**x), atol=1e-4)
    result = export_onnx(learned, tmp_path / "learned.onnx", x)
    assert result.parity.cosine > 0.999, result.parity


class _Groups:
    def __init__(self, groups):
        self.groups = groups

    def token_groups(self):
        return self.groups


def test_gptq_after_a_learned_transform_rounds_in_its_space(stack, learned):
    from mqcompile.passes.gptq import weight_tokens
    from mqcompile.passes.plan import LinearPlan
    from mqcompile.solvers.transform import kron_act

    # the tokens GPTQ feeds back are the rotated reservoir through the learned factors, less the (transformed) shift
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(40, 32, generator=g)
    p1, p2 = torch.eye(4) + 0.1 * torch.randn(4, 4, generator=g), torch.eye(8) + 0.1 * torch.randn(8, 8, generator=g)
    shift = torch.randn(32, generator=g)
    plan = LinearPlan(transform=(p1, p2), shift={"text": shift})
    got = weight_tokens(_Groups({"text": tokens}), plan, routed=False)
    assert torch.equal(got, kron_act(tokens, p1, p2) - shift)
    assert not torch.allclose(got, tokens - shift, atol=1e-3)
    # end to end it runs on every linear and does not hurt the stack (its gain over the learned clips and factors
    # is within this toy's float noise: +-1 % across CPUs)
    model, ep = stack
    gptq = mqcompile.quantize(ep, _transform_config(True, extra=(recipes.GPTQ(),)), calibration=CALIB, progress=False)
    assert gptq.report["gptq"]["linears"] == 7
    with torch.no_grad():
        err = [sum(float(output_loss(model(**x), qp.module()(**x))) for x in CALIB) for qp in (learned, gptq)]
    assert err[1] < err[0] * 1.02, err


def test_transform_needs_rotate():
    with pytest.raises(ConfigError, match="add recipes.Rotate"):
        QuantConfig(algorithms=MQ + (recipes.BlockMDQFO(transform=True),))
    with pytest.raises(ConfigError, match="BlockMDQFO.transform"):
        recipes.BlockMDQFO(transform=1)
    config = _transform_config(True)
    assert QuantConfig.from_json(config.to_json()).algorithm(recipes.BlockMDQFO).transform is True
