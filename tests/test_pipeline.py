"""The checked pipeline: entries say what they need and when they run; failures name the pass; passes never
import each other; the op argument records match the op schemas; one weight grid for solvers and deployment."""

import ast
import dataclasses
import pathlib

import pytest
import torch

import mqcompile
from mqcompile import CalibrationError, PassError, QuantConfig, recipes
from mqcompile.graph.export import copy_program
from mqcompile.kernels.ops import QLinearArgs, QuantizeActArgs, WLinearArgs
from mqcompile.kernels.reference import quantize_weight_ref, weight_scale
from mqcompile.passes import PassContext, PassResult
from mqcompile.pipeline import PIPELINE, Pass, run_pipeline
from mqcompile.solvers import fake_quant_weight
from tests.conftest import TOY_CONFIG, toy_inputs

PASSES = pathlib.Path(mqcompile.__file__).parent / "passes"
SHARED = {"base", "plan", "__init__"}  # the context and the per-linear plan: shared, not passes


def _imported(node) -> set[str]:
    """Absolute names an import statement inside ``mqcompile/passes/`` may bind (module, or module.attribute)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = ["mqcompile", "passes"][: 3 - node.level] if node.level else []
    module = base + (node.module.split(".") if node.module else [])
    return {".".join(module)} | {".".join([*module, a.name]) for a in node.names}


def test_no_pass_imports_another_pass():
    passes = {f"mqcompile.passes.{p.stem}" for p in PASSES.glob("*.py")} - {f"mqcompile.passes.{s}" for s in SHARED}
    for path in PASSES.glob("*.py"):
        if path.stem in SHARED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                hits = _imported(node) & passes
                assert not hits, f"{path.name} imports pass module(s) {sorted(hits)}"


def test_every_entry_is_a_pass_module_in_order_and_needs_only_earlier_ones():
    seen = set()
    for entry in PIPELINE:
        assert (PASSES / f"{entry.name}.py").exists()
        assert set(entry.needs) <= seen, entry.name
        seen.add(entry.name)
    assert {p.stem for p in PASSES.glob("*.py")} - SHARED == seen


def test_until_stops_after_the_named_pass(toy):
    _, _, ep = toy
    ctx = PassContext(TOY_CONFIG, progress=False)
    _, report = run_pipeline(copy_program(ep), ctx, progress=False, until="select_schemes")
    assert list(report) == ["check_program", "canonicalize_linears", "find_linears", "tag_modality", "select_schemes"]
    with pytest.raises(mqcompile.MQCompileError, match="no such pass"):
        run_pipeline(copy_program(ep), ctx, progress=False, until="calibrat")


def test_skipped_passes_report_their_zero_counts(toy):
    _, _, ep = toy
    _, report = run_pipeline(copy_program(ep), PassContext(TOY_CONFIG, progress=False), progress=False)
    assert report["calibrate"] == {"batches": 0, "linears": 0} and report["gptq"] == {"linears": 0, "no_tokens": 0}


def test_a_missing_needed_pass_is_named(toy):
    _, _, ep = toy
    passes = tuple(p for p in PIPELINE if p.name != "tag_modality")
    with pytest.raises(PassError, match=r"pass 'select_schemes' needs \['tag_modality'\]"):
        run_pipeline(copy_program(ep), PassContext(TOY_CONFIG, progress=False), passes, progress=False)


def test_failures_name_the_pass_and_keep_our_error_types(toy):
    _, _, ep = toy

    def broken(ep, ctx) -> PassResult:
        raise KeyError("val")

    passes = (*PIPELINE[:3], Pass("broken", broken, ("find_linears",)))
    with pytest.raises(PassError, match=r"pass 'broken' failed: KeyError"):
        run_pipeline(copy_program(ep), PassContext(TOY_CONFIG, progress=False), passes, progress=False)
    config = QuantConfig(algorithms=recipes.MORPHOQUANT)  # calibrated, but no calibration given
    with pytest.raises(CalibrationError, match=r"pass 'calibrate': .*calibration=\[batch"):
        mqcompile.quantize(ep, config, progress=False)


def test_the_rewrite_deploys_what_the_plans_say(toy):
    _, _, ep = toy
    config = dataclasses.replace(TOY_CONFIG, algorithms=recipes.DABC_ONLY)
    ctx = PassContext(config, calibration=[((), toy_inputs(s)) for s in (1, 2)], progress=False)
    program, _ = run_pipeline(copy_program(ep), ctx, progress=False)
    plan = ctx.plans["v"]
    assert set(plan.dabc) == {"vision"}
    assert torch.equal(plan.shift["vision"], plan.dabc["vision"].center * plan.dabc["vision"].mask)
    assert torch.equal(program.state_dict["v.mq_shift"][0], plan.shift["vision"].float())


@pytest.mark.parametrize(
    ("record", "op"),
    [
        (QuantizeActArgs, torch.ops.mqcompile.quantize_act.default),
        (QLinearArgs, torch.ops.mqcompile.qlinear.default),
        (WLinearArgs, torch.ops.mqcompile.wlinear.default),
    ],
)
def test_op_argument_records_match_the_schemas(record, op):
    assert list(record._fields) == [a.name for a in op._schema.arguments]


def test_solvers_and_deployment_share_one_weight_grid():
    g = torch.Generator().manual_seed(0)
    for n, k, group, bits in ((8, 40, 16, 4), (5, 33, 0, 4), (3, 64, 32, 8), (4, 17, 8, 4)):  # K not a multiple
        w = torch.randn(n, k, generator=g)
        w[1] = 0  # a zero row
        if group:
            w[2, :group] = 0  # a zero group
        gamma = torch.rand(n, 1, generator=g) * 0.7 + 0.3
        codes, scale = quantize_weight_ref(w, bits, group, gamma)
        assert torch.equal(scale, weight_scale(w, bits, group, gamma))
        gs = group or k
        deployed = codes.float() * scale.repeat_interleave(gs, dim=1)[:, :k]
        assert torch.equal(fake_quant_weight(w, gamma, bits, group), deployed)


def test_the_bar_counts_the_passes_that_run_and_draws_nothing_off_a_terminal(toy, monkeypatch, capfd):
    # issue #15 case 7: the bar listed all passes however few the recipe ran, and piped output got escape codes
    from mqcompile import pipeline

    _, _, ep = toy
    seen = {"names": []}

    class Bar:
        def __init__(self, total, disable, **kwargs):
            seen.update(total=total, disable=disable)

        def set_postfix_str(self, name):
            seen["names"].append(name)

        def update(self):
            pass

        def close(self):
            pass

    config = dataclasses.replace(TOY_CONFIG, algorithms=recipes.RTN)
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "tqdm", Bar)
        _, report = run_pipeline(copy_program(ep), PassContext(config), progress=True)
    running = ["check_program", "canonicalize_linears", "find_linears", "tag_modality", "select_schemes"]
    assert seen["names"] == [*running, "insert_modality_ids", "rewrite_linears"] and seen["total"] == 7
    assert len(report) == len(PIPELINE)  # the skipped ones still report their zero counts
    assert seen["disable"] is None  # tqdm's "only on a terminal"
    capfd.readouterr()
    run_pipeline(copy_program(ep), PassContext(config), progress=True)  # pytest's stderr is not a terminal
    assert capfd.readouterr().err == ""
