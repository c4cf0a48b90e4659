import math

import pytest

from mqcompile import QuantizedProgram
from mqcompile.cli import main


def test_demo_prints_tables_and_saves(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--tiny-only"]) == 0
    out = capsys.readouterr().out
    assert "Linears by modality path" in out and "Logit fidelity" in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["text"], ["vision"], ["audio"])
    }
    for modality in ("text", "vision", "audio"):
        cos, sqnr = float(rows[modality][-2]), float(rows[modality][-1])
        assert 0.9 < cos < 1.0 and math.isfinite(sqnr) and sqnr > 5
    qp = QuantizedProgram.load(tmp_path / "tiny_thinker_w4a4.pt2")
    assert {r.modality for r in qp.linears()} == {"vision", "audio", "fused"}


def test_export_onnx_subcommand(toy, tmp_path, capsys):
    import mqcompile
    from tests.conftest import TOY_CONFIG

    _, _, ep = toy
    mqcompile.quantize(ep, TOY_CONFIG, progress=False).save(tmp_path / "toy.pt2")
    assert main(["export-onnx", str(tmp_path / "toy.pt2"), str(tmp_path / "toy.onnx")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "toy.onnx").stat().st_size > 0
    cosine = float(out.split("cosine ")[1].split(",")[0])
    assert cosine > 0.999 and "INT4 initializers" in out
    assert main(["export-onnx", str(tmp_path / "toy.pt2"), str(tmp_path / "int.onnx"), "--variant", "w4a8int"]) == 0
    assert "w4a8int" in capsys.readouterr().out


def test_export_onnx_subcommand_offers_every_variant():
    from mqcompile.backends.onnx.lower import VARIANTS

    for variant in VARIANTS:  # argparse exits on a choice it does not know
        with pytest.raises(SystemExit) as exit_info:
            main(["export-onnx", "--variant", variant, "--help"])
        assert exit_info.value.code == 0


def test_export_onnx_subcommand_names_a_missing_program(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "nope.pt2"), str(tmp_path / "x.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_prints_the_mini_omni_examples_and_table(tmp_path, capsys, monkeypatch):
    from dataclasses import asdict

    import mqcompile.demo as demo
    from mqcompile.evaluation.omni import OmniTask
    from mqcompile.evaluation.suite import MethodResult, machine

    facts = [{"color": "red", "shape": "circle", "side": "left"}] * 3
    methods = {m: MethodResult({"wer": 50.0, "vision_acc": 60.0}, 1.0, 2.0) for m in demo.OMNI_DEMO_METHODS}
    fake = {
        "quick": True,
        "seed": 0,
        "command": "mqcompile demo",
        "tasks": ["mini-omni"],
        "results": {"mini-omni": {"setup_s": 0.0, "methods": {m: asdict(r) for m, r in methods.items()}}},
        "metrics": {"mini-omni": [asdict(m) for m in OmniTask.metrics]},
        "total_s": 3.0,
        "machine": machine(),
        "examples": {m: {"transcripts": [f"said by {m}"], "answers": facts} for m in demo.OMNI_DEMO_METHODS},
        "references": {"transcripts": ["the reference", "not transcribed"], "facts": facts * 2},
    }
    monkeypatch.setattr(demo, "run_omni_demo", lambda progress: fake)
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "speech 1  reference: the reference" in out and "not transcribed" not in out
    assert "said by W4A4-MorphoQuant+Rot-fast" in out and "scene 3  truth: red / circle / left" in out
    assert "| W4A4-RTN | 50.00 | – | 60.0 |" in out and (tmp_path / "RESULTS_demo.json").is_file()
