"""Issue #17: the quantization report: files exist, every figure shows what its title says (read through
matplotlib, not pixels), and the numbers come from the programs."""

import base64
import re

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig, recipes
from mqcompile.report import collect, draw
from tests.conftest import TOY_CONFIG, toy_inputs

MQ_ROT = (recipes.DABC(), recipes.MDQFO(ste_steps=0), recipes.Rotate())


@pytest.fixture
def quantized(toy):
    _, _, ep = toy
    config = QuantConfig(modality_token_ids=TOY_CONFIG.modality_token_ids, algorithms=MQ_ROT)
    return ep, mqcompile.quantize(ep, config, calibration=[toy_inputs(1), toy_inputs(2)], progress=False)


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_the_report_writes_html_and_pngs(quantized, tmp_path):
    ep, qp = quantized
    path = qp.write_report(tmp_path / "r", ep, [toy_inputs(3)])
    pngs = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert {"layers.png", "dabc.png", "mdqfo.png", "bytes.png", "morphology_0.png"} <= set(pngs)
    text = open(path, encoding="utf-8").read()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(embedded) == len(pngs)  # self-contained: every figure inside the HTML
    assert base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Worst linears" in text and "recipes.MORPHOQUANT" not in text  # the recipe as run (MDQFO(ste_steps=0))
    assert "Rotate(max_block=256)" in text


def test_every_figure_shows_what_it_says(quantized):
    ep, qp = quantized
    data = collect(ep, qp, [toy_inputs(3)])
    figures = draw(data)
    assert _titles(figures["layers"]) == [
        "Per-linear output SQNR along the depth, by modality path",
        "Fused linears: output SQNR by token modality",
    ]
    paths = {entry["path"] for entry in data.morphology.values()}
    assert paths == {"vision", "audio", "fused"}  # the worst linear of each path
    for i, (name, entry) in enumerate(data.morphology.items()):
        fig = figures[f"morphology_{i}"]
        assert name in fig.get_suptitle()
        assert _titles(fig) == [
            "per-channel max |x|, float input",
            "per-channel max |x|, as quantized (rotated, DABC-shifted)",
            "values, float input",
            "values, as quantized (rotated, DABC-shifted)",
        ]
        # the rotation changes what is quantized: the profiles differ
        before, after = entry["before"], entry["after"]
        key = next(iter(before))
        assert before[key].shape == after[key].shape
        assert not torch.allclose(before[key].abs().amax(0), after[key].abs().amax(0))
    assert _titles(figures["dabc"]) == ["DABC: channels moved into the bias per linear, by token modality"]
    assert _titles(figures["mdqfo"]) == ["MDQFO: loss before and after per linear"]
    assert _titles(figures["bytes"]) == ["Weights and buffers: MiB before and after"]
    assert sum(sum(moved.values()) for moved in data.dabc.values()) > 0
    assert data.mdqfo == qp.report["mdqfo"]["losses"] and len(data.mdqfo) == qp.report["mdqfo"]["linears"]
    assert all(after <= rtn * (1 + 1e-6) for rtn, _, after in data.mdqfo.values())


def test_the_layer_sqnr_is_the_suites(quantized):
    from mqcompile.evaluation.layer_sqnr import layer_sqnr

    ep, qp = quantized
    data = collect(ep, qp, [toy_inputs(3)])
    want = layer_sqnr(ep, qp.exported_program, toy_inputs(3), qp.config)
    assert [(n, p, v) for n, p, v in data.layers] == [(n, *want[n]) for n, _, _ in data.layers]
    assert [n for n, _, _ in data.layers] == [r.name for r in qp.linears()]


def test_a_round_to_nearest_report_says_what_did_not_run(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    figures = draw(collect(ep, qp, [toy_inputs(3)]))
    assert _titles(figures["dabc"]) == [
        "DABC: channels moved into the bias per linear (none: the recipe has no DABC shifts)"
    ]
    assert _titles(figures["mdqfo"]) == ["MDQFO: loss before and after per linear (none: the recipe has no MDQFO)"]
