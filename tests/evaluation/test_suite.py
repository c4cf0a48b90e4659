"""The suite runner on a synthetic task (no assets needed)."""

import json
import os

import torch

from mqcompile.evaluation import METHODS, Metric, ProgramSpec, format_results, run_task, write_results
from mqcompile.evaluation.layer_sqnr import by_modality, layer_sqnr
from mqcompile.evaluation.suite import layer_plots
from mqcompile.report import ReportData, draw_layers
from tests.conftest import TOY_CONFIG, Toy, toy_inputs


class ToyTask:
    name = "toy"
    metrics = (Metric("agree", True), Metric("mse", False, "{:.4f}"))

    def __init__(self):
        torch.manual_seed(0)
        self.model = Toy().eval()
        self.inputs = [toy_inputs(s) for s in range(10, 14)]
        self.reference = [self.model(**x).argmax(-1) for x in self.inputs]

    def programs(self):
        ep = torch.export.export(self.model, (), toy_inputs(0))
        config = {"modality_token_ids": dict(TOY_CONFIG.modality_token_ids)}
        return {"main": ProgramSpec(ep, [toy_inputs(s) for s in range(1, 4)], self.inputs[0], config)}

    @torch.no_grad()
    def evaluate(self, modules):
        outs = [modules["main"](**x) for x in self.inputs]
        agree = sum(float((o.argmax(-1) == r).float().mean()) for o, r in zip(outs, self.reference)) / len(outs)
        mse = sum(float((o - self.model(**x)).pow(2).mean()) for o, x in zip(outs, self.inputs)) / len(outs)
        return {"agree": 100 * agree, "mse": mse}


def test_run_task_all_methods_and_tables(tmp_path):
    results = run_task(ToyTask(), list(METHODS), progress=False)
    assert list(results) == list(METHODS)
    assert results["FP"].metrics == {"agree": 100.0, "mse": 0.0} and results["FP"].layer_sqnr_db == {}
    assert results["W8A8-RTN"].metrics["mse"] < results["W4A4-RTN"].metrics["mse"]
    assert set(results["W4A4-RTN"].layer_sqnr_db) == {"vision", "audio", "fused"}
    assert results["W4A4-RTN"].linears == {"vision": 1, "audio": 1, "fused": 3}
    data = {
        "quick": True,
        "seed": 0,
        "total_s": 1.0,
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "python": "p"},
        "metrics": {"toy": [{"name": "agree", "higher_is_better": True, "fmt": "{:.2f}"}]},
        "results": {"toy": {"setup_s": 0.1, "methods": {m: r.__dict__ for m, r in results.items()}}},
    }
    text = format_results(data)
    assert "| W4A4-SmoothQuant | " in text and "agree (↑)" in text and "| method | audio | fused | vision |" in text
    write_results(data, str(tmp_path / "R.md"))
    assert json.loads((tmp_path / "R.json").read_text())["results"]["toy"]["methods"]["FP"]["metrics"]["agree"] == 100
    # issue #17: the per-layer plot for every quantized row, from the per-linear SQNR the row records
    assert [name for name, _, _ in results["W4A4-RTN"].layers] == [
        f"main/{n}" for n in ("v", "a", "d1", "d2", "lm_head")
    ]
    assert results["FP"].layers == []
    plots = layer_plots(data, str(tmp_path / "R_layers"))
    assert len(plots) == len(METHODS) - 1 and all(os.path.isfile(p) for p in plots)
    fig = draw_layers(ReportData(layers=[tuple(x) for x in results["W4A4-RTN"].layers]), "toy W4A4-RTN")
    assert fig.get_suptitle() == "toy W4A4-RTN"
    assert fig.axes[0].get_title() == "Per-linear output SQNR along the depth, by modality path"
    assert {line.get_label() for line in fig.axes[0].get_lines()} == {"vision", "audio", "fused"}


def test_layer_sqnr_finite_for_quantized_inf_for_float(toy):
    import mqcompile

    _, kwargs, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    per = layer_sqnr(ep, qp.exported_program, kwargs, TOY_CONFIG)
    assert set(per) == {"v", "a", "d1", "d2", "lm_head"}
    assert per["v"][0] == "vision" and 5 < per["v"][1] < 40
    assert per["lm_head"][0] == "fused"
    means = by_modality(per)
    assert set(means) == {"vision", "audio", "fused"}


def test_layer_sqnr_per_token_group(toy):
    import mqcompile

    _, kwargs, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    ids = kwargs["input_ids"]
    groups = {
        "vision": ids == 45,
        "all": torch.ones_like(ids, dtype=torch.bool),
        "empty": torch.zeros_like(ids, dtype=torch.bool),
    }
    per = layer_sqnr(ep, qp.exported_program, kwargs, TOY_CONFIG, groups)
    # fused linears see one row per token: a value per non-empty group; tower linears (3 or 2 rows) get none
    fused = {f"{n}@{g}" for n in ("d1", "d2", "lm_head") for g in ("vision", "all")}
    assert set(per) == {"v", "a", "d1", "d2", "lm_head", *fused}
    assert per["d1@vision"][0] == "fused/vision" and per["d2@all"][0] == "fused/all"
    assert per["d1@all"][1] == per["d1"][1]  # every token: the linear's own SQNR
    assert per["d1@vision"][1] != per["d1"][1]
    assert set(by_modality(per)) == {"vision", "audio", "fused", "fused/vision", "fused/all"}


def test_run_suite_reports_after_every_method(monkeypatch):
    from mqcompile.evaluation import suite

    monkeypatch.setitem(suite.TASKS, "toy", lambda quick, seed: ToyTask())
    seen = []
    data = suite.run_suite(
        ["toy"], ["FP", "W4A4-RTN"], progress=False, on_task=lambda d: seen.append(json.loads(json.dumps(d)))
    )
    entries = [s["results"]["toy"] for s in seen]
    assert [list(e["methods"]) for e in entries] == [["FP"], ["FP", "W4A4-RTN"], ["FP", "W4A4-RTN"]]
    assert [e.get("pending") for e in entries] == [["W4A4-RTN"], [], None]
    assert "Partial: still running or not run: toy: W4A4-RTN" in format_results(seen[0])
    assert "Partial" not in format_results(data)
