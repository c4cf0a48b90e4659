import dataclasses

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig, recipes
from tests.conftest import TOY_CONFIG, toy_inputs

MORPHOQUANT = (recipes.DABC(), recipes.MDQFO(ste_steps=3))
RECIPES = {"mdqfo_clips": (recipes.MDQFO(ste_steps=3, masks=False),), "morphoquant": MORPHOQUANT}


def _config(algorithms=recipes.RTN):
    return dataclasses.replace(TOY_CONFIG, debug=False, algorithms=algorithms)


@pytest.mark.parametrize("method", ["mdqfo_clips", "morphoquant"])
def test_losses_never_rise_and_tables_are_per_modality(toy, method):
    _, _, ep = toy
    calib = [toy_inputs(s) for s in range(1, 4)]
    qp = mqcompile.quantize(ep, _config(RECIPES[method]), calibration=calib, progress=False)
    report = qp.report["mdqfo"]
    assert report["linears"] == 4 and set(report["losses"]) == {"v", "a", "d1", "d2"}
    for _rtn, start, after in report["losses"].values():
        assert after <= start
    assert report["improved"] >= 1
    state = qp.exported_program.state_dict
    assert state["d1.mq_act_clip"].shape == (3,)
    assert bool((state["d1.mq_act_clip"] <= 1).all()) and bool((state["d1.mq_act_clip"] >= 0.3).all())


def test_morphoquant_not_worse_than_rtn_on_held_out(toy):
    model, _, ep = toy
    calib = [toy_inputs(s) for s in range(1, 6)]
    test = [toy_inputs(s) for s in range(20, 24)]
    rtn = mqcompile.quantize(ep, _config(), progress=False)
    mq = mqcompile.quantize(ep, _config(MORPHOQUANT), calibration=calib, progress=False)

    @torch.no_grad()
    def err(qp):
        return sum(float((qp.module()(**x) - model(**x)).pow(2).mean()) for x in test)

    assert err(mq) < err(rtn)


def test_deterministic(toy):
    _, _, ep = toy
    calib = [toy_inputs(s) for s in range(1, 3)]
    a = mqcompile.quantize(ep, _config(MORPHOQUANT), calibration=calib, progress=False)
    b = mqcompile.quantize(ep, _config(MORPHOQUANT), calibration=calib, progress=False)
    for k, v in a.exported_program.state_dict.items():
        assert torch.equal(v, b.exported_program.state_dict[k]), k


def test_activation_clips_can_be_turned_off(toy):
    _, _, ep = toy
    calib = [toy_inputs(s) for s in range(1, 3)]
    no_clips = (recipes.DABC(), recipes.MDQFO(ste_steps=3, act_clips=False))
    qp = mqcompile.quantize(ep, _config(no_clips), calibration=calib, progress=False)
    state = qp.exported_program.state_dict
    clips = [v for k, v in state.items() if k.endswith("mq_act_clip")]
    assert len(clips) == 4 and all(bool((c == 1).all()) for c in clips)
    assert QuantConfig.from_json(qp.config.to_json()).algorithm(recipes.MDQFO).act_clips is False
