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
    from mqcompile.onnx.lower import VARIANTS

    for variant in VARIANTS:  # argparse exits on a choice it does not know
        with pytest.raises(SystemExit) as exit_info:
            main(["export-onnx", "--variant", variant, "--help"])
        assert exit_info.value.code == 0


def test_export_onnx_subcommand_names_a_missing_program(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "nope.pt2"), str(tmp_path / "x.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
