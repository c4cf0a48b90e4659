import math

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
