import pytest
import torch

from mqcompile import NonFiniteError, QuantConfig
from mqcompile.calibration import collect
from mqcompile.errors import CalibrationError
from mqcompile.graph import meta
from mqcompile.graph.linears import token_modality_ids
from mqcompile.passes import PassContext
from mqcompile.pipeline import run_pipeline
from tests.conftest import AUDIO_TOKEN, TOY_CONFIG, VISION_TOKEN, toy_inputs


def _analysed(ep, config=TOY_CONFIG):
    run_pipeline(ep, PassContext(config), progress=False, until="tag_modality")
    return ep


def test_token_modality_ids():
    ids = torch.tensor([[1, VISION_TOKEN, AUDIO_TOKEN, 3]])
    got = token_modality_ids(ids, {"vision": (VISION_TOKEN,), "audio": (AUDIO_TOKEN,)})
    assert got.tolist() == [[0, 1, 2, 0]]


def test_stats_match_direct_computation_per_modality(toy):
    model, _, ep = toy
    _analysed(ep)
    batches = [((), toy_inputs(s)) for s in (1, 2, 3)]
    stats = collect(ep, batches, TOY_CONFIG.modality_token_ids, reservoir_tokens=10, progress=False)
    assert set(stats) == {"v", "a", "d1", "d2", "lm_head"}
    # vision linear: its inputs are pixel_values directly
    pix = torch.cat([b[1]["pixel_values"] for b in batches])
    v = stats["v"].modalities["vision"]
    assert torch.equal(v.absmax, pix.abs().amax(0)) and v.count == 9
    torch.testing.assert_close(v.mean, pix.mean(0).double())
    assert v.reservoir.shape == (9, 12)  # fewer tokens than the limit: all kept
    # fused linear d1: tokens split by modality
    d1 = stats["d1"].modalities
    assert set(d1) == {"text", "vision", "audio"}
    assert d1["vision"].count == 9 and d1["audio"].count == 6 and d1["text"].count == 36 - 15
    assert d1["text"].reservoir.shape == (10, 16)  # bounded
    # reservoir rows are real input rows
    h = model.emb(torch.cat([b[1]["input_ids"] for b in batches])).reshape(-1, 16)
    text_rows = {tuple(r.tolist()) for r in h}
    assert all(tuple(r.tolist()) in text_rows for r in d1["text"].reservoir)


def test_shared_when_no_token_ids(toy):
    _, _, ep = toy
    _analysed(ep, QuantConfig())
    stats = collect(ep, [((), toy_inputs(1))], None, progress=False)
    assert set(stats["d1"].modalities) == {"shared"}


def test_empty_and_nan_calibration(toy):
    _, _, ep = toy
    _analysed(ep)
    with pytest.raises(CalibrationError, match="calibration="):
        collect(ep, [], progress=False)
    bad = toy_inputs(2)
    bad["pixel_values"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="calibration batch 1.*linear v"):
        collect(ep, [((), toy_inputs(1)), ((), bad)], progress=False)


def test_meta_untouched_by_collection(toy):
    _, _, ep = toy
    _analysed(ep)
    before = [meta.get(n) for n in ep.graph.nodes]
    collect(ep, [((), toy_inputs(1))], progress=False)
    assert [meta.get(n) for n in ep.graph.nodes] == before
