import pytest
import torch

import mqcompile
from mqcompile import ProgramFileError, QuantizedProgram
from tests.conftest import TOY_CONFIG


def _assert_same_program(a, b, kwargs):
    assert a.exported_program.state_dict.keys() == b.exported_program.state_dict.keys()
    for k, v in a.exported_program.state_dict.items():
        assert torch.equal(v, b.exported_program.state_dict[k]), k
    assert torch.equal(a.module()(**kwargs), b.module()(**kwargs))
    assert a.config == b.config and a.report == b.report
    assert a.linears() == b.linears()


def test_save_load_bit_exact(toy, tmp_path):
    _, kwargs, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    qp.save(tmp_path / "q.pt2")
    _assert_same_program(qp, QuantizedProgram.load(tmp_path / "q.pt2"), kwargs)


def test_linear_records(toy):
    qp = mqcompile.quantize(toy[2], TOY_CONFIG, progress=False)
    recs = {r.name: r for r in qp.linears()}
    assert recs["v"].modality == "vision" and recs["v"].scheme == "w4a4" and recs["v"].op == "qlinear"
    assert recs["lm_head"].scheme == "float" and recs["lm_head"].op == "linear"
    assert len(recs) == 5


def test_load_rejects_other_files(toy, tmp_path):
    with pytest.raises(ProgramFileError, match="no such file"):
        QuantizedProgram.load(tmp_path / "missing.pt2")
    (tmp_path / "text.pt2").write_text("hello")
    with pytest.raises(ProgramFileError, match="not a .pt2 archive"):
        QuantizedProgram.load(tmp_path / "text.pt2")
    torch.export.save(toy[2], tmp_path / "plain.pt2")
    with pytest.raises(ProgramFileError, match="not a QuantizedProgram"):
        QuantizedProgram.load(tmp_path / "plain.pt2")


def test_thinker_save_load_bit_exact(thinker_qp, tiny_sample, tmp_path):
    thinker_qp.save(tmp_path / "t.pt2")
    _assert_same_program(thinker_qp, QuantizedProgram.load(tmp_path / "t.pt2"), tiny_sample)


def test_summary_tells_rotation_blocks_from_weights():
    # issue #15 case 7: a rotated MLP read 1.7x "bigger" because the fp32 rotation blocks counted as weights
    from mqcompile import recipes

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    ep = torch.export.export(model, (torch.randn(4, 256),))
    qp = mqcompile.quantize(ep, (recipes.Rotate(),), progress=False)
    assert qp.report["bytes_rotation"] == 2 * 256 * 256 * 4
    assert "of which 0.50 MiB are the online rotation blocks" in qp.summary()
    assert "without them 0.13" in qp.summary()
