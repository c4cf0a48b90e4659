import dataclasses
import logging

import torch

import mqcompile
from mqcompile import recipes
from tests.conftest import TOY_CONFIG, toy_inputs


def _outlier_inputs(seed):
    x = toy_inputs(seed)
    x["pixel_values"][:, 2] += 40.0  # a massive-activation channel in the vision linear's input
    return x


def _config(**kw):
    return dataclasses.replace(TOY_CONFIG, debug=False, **kw)


def test_plans_every_act_quantized_linear_and_finds_the_outlier(toy):
    _, _, ep = toy
    calib = [_outlier_inputs(s) for s in range(1, 4)]
    qp = mqcompile.quantize(ep, _config(algorithms=recipes.DABC_ONLY), calibration=calib, progress=False)
    assert qp.report["dabc_plan"]["linears"] == 4  # lm_head stays float
    assert qp.report["dabc_plan"]["plans"] == 1 + 1 + 3 + 3  # fused linears get one plan per modality
    state = qp.exported_program.state_dict
    assert state["v.mq_act_clip"].shape == (1,)
    # one-modality linear: the shift is an input of quantize_act, the compensation folded into the bias
    assert "v.mq_shift" in state and "v.mq_bias" in state and "v.mq_comp" not in state
    assert state["v.mq_shift"][0, 2] > 30 and int((state["v.mq_shift"] != 0).sum()) == 1


def test_dabc_improves_the_outlier_linear_and_round_trips(toy, tmp_path):
    model, _, ep = toy
    calib = [_outlier_inputs(s) for s in range(1, 4)]
    test = _outlier_inputs(9)
    rtn = mqcompile.quantize(ep, _config(), progress=False)
    dabc = mqcompile.quantize(ep, _config(algorithms=recipes.DABC_ONLY), calibration=calib, progress=False)
    ref = model.v(test["pixel_values"])

    def v_out(qp):
        seen = {}
        from mqcompile.graph.interpret import run_observed

        run_observed(
            qp.exported_program,
            (),
            test,
            lambda n: n.target == torch.ops.mqcompile.qlinear.default,
            lambda n, a, o: seen.setdefault(n.name, o),
        )
        return seen["qlinear"]

    err_rtn = (v_out(rtn) - ref).pow(2).mean()
    err_dabc = (v_out(dabc) - ref).pow(2).mean()
    assert err_dabc < 0.5 * err_rtn
    dabc.save(tmp_path / "d.pt2")
    loaded = mqcompile.QuantizedProgram.load(tmp_path / "d.pt2")
    assert torch.equal(loaded.module()(**test), dabc.module()(**test))


def test_fused_linear_missing_a_modality_falls_back_with_warning(toy, caplog):
    _, _, ep = toy
    calib = [toy_inputs(1)]
    for batch in calib:  # no audio tokens in calibration
        batch["input_ids"][batch["input_ids"] == 46] = 3
    with caplog.at_level(logging.WARNING):
        qp = mqcompile.quantize(ep, _config(algorithms=recipes.DABC_ONLY), calibration=calib, progress=False)
    assert "linear d1: calibration has no ['audio'] tokens" in caplog.text
    assert qp.report["dabc_plan"]["plans"] == 1 + 1 + 1 + 1
