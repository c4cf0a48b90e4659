import dataclasses

import pytest
import torch

import mqcompile
from mqcompile import CalibrationError, QuantConfig, recipes
from mqcompile.calibration import collect
from mqcompile.graph.export import copy_program
from mqcompile.passes import PassContext
from mqcompile.pipeline import run_pipeline
from tests.conftest import TOY_CONFIG, Toy, toy_inputs


def _analysed(ep):
    run_pipeline(ep, PassContext(TOY_CONFIG), progress=False, until="tag_modality")
    return ep


def test_rtn_skips_calibration(toy):
    qp = mqcompile.quantize(toy[2], QuantConfig(), calibration=[toy_inputs(1)], progress=False)
    assert qp.report["calibrate"] == {"batches": 0, "linears": 0}


def test_smoothquant_calibrates_every_linear(toy):
    qp = mqcompile.quantize(
        toy[2], QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=[toy_inputs(1)], progress=False
    )
    assert qp.report["calibrate"] == {"batches": 1, "linears": 5}


def test_missing_calibration_says_how(toy):
    with pytest.raises(CalibrationError, match=r"calibration=\[batch"):
        mqcompile.quantize(toy[2], QuantConfig(algorithms=recipes.SMOOTHQUANT), progress=False)


class RenamedToy(Toy):
    """The toy with its text input called ``tokens`` (not ``input_ids``), named by ``QuantConfig.sources``."""

    def forward(self, tokens, pixel_values, input_features):
        return super().forward(tokens, pixel_values, input_features)


def test_config_seed_reaches_reservoir_sampling(toy):
    # regression: the calibrate pass called collect() with its default seed 0, whatever QuantConfig.seed said
    _, _, ep = toy
    batches = [((), toy_inputs(s)) for s in range(1, 4)]

    def reservoir(seed):
        config = dataclasses.replace(TOY_CONFIG, seed=seed, reservoir_tokens=4, algorithms=recipes.DABC_ONLY)
        ctx = PassContext(config, calibration=batches, progress=False)
        run_pipeline(copy_program(ep), ctx, progress=False, until="calibrate")
        return ctx.stats["d1"].modalities["text"].reservoir

    direct = collect(
        _analysed(copy_program(ep)), batches, TOY_CONFIG.modality_token_ids, reservoir_tokens=4, seed=3, progress=False
    )
    assert torch.equal(reservoir(3), direct["d1"].modalities["text"].reservoir)
    assert not torch.equal(reservoir(3), reservoir(0))


def test_calibration_routes_tokens_of_the_configured_text_source():
    # regression: calibration read kwargs["input_ids"], so a model whose text input has another name was routed in
    # the graph but calibrated as one shared pool (one DABC plan per fused linear instead of one per modality)
    torch.manual_seed(0)
    model = RenamedToy().eval()

    def inputs(seed):
        x = toy_inputs(seed)
        return {"tokens": x.pop("input_ids"), **x}

    ep = torch.export.export(model, (), inputs(0))
    sources = {"tokens": "text", "pixel_values": "vision", "input_features": "audio"}
    config = dataclasses.replace(TOY_CONFIG, sources=sources, algorithms=recipes.DABC_ONLY)
    qp = mqcompile.quantize(ep, config, calibration=[inputs(s) for s in (1, 2)], progress=False)
    assert qp.report["insert_modality_ids"]["routed"] == 2
    assert qp.report["dabc_plan"]["plans"] == 1 + 1 + 3 + 3  # d1 and d2 get one plan per modality
