"""Tests of the Whisper adapter: exports vs the HF forward, and modality tags of the combined program (on a tiny
random Whisper). The CTranslate2 reader and converter are tested in
``tests/evaluation/checkpoints/test_whisper_checkpoint.py``. No asset packages needed."""

from __future__ import annotations

import pytest
import torch

import mqcompile
from mqcompile.errors import CalibrationError
from mqcompile.models import whisper
from tests.tiny_models import tiny_whisper


@pytest.fixture(scope="module")
def model():
    return tiny_whisper()


@pytest.fixture(scope="module")
def features():
    return torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 94, (3, 6), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def combined_ep(model, features, ids):
    return whisper.export_whisper(model, features[:2], ids[:2])


# ----------------------------------------------------------------------------------------------------------- export


def _linears(ep) -> list[torch.fx.Node]:
    return [n for n in ep.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]


def test_export_encoder_matches_hf_with_dynamic_batch(model, features):
    ep = whisper.export_whisper_encoder(model, features[:2])
    assert [n.name for n in ep.graph.nodes if n.op == "placeholder"][-1] == "input_features"
    assert len(_linears(ep)) == 6 * model.config.encoder_layers
    with torch.no_grad():
        got = ep.module()(input_features=features)
        want = model.model.encoder(features).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)


def test_export_decoder_matches_hf_with_dynamic_batch_and_length(model, features, ids):
    with torch.no_grad():
        states = model.model.encoder(features).last_hidden_state
    ep = whisper.export_whisper_decoder(model, states[:2], ids[:2, :4])
    for batch, length in ((3, 6), (1, 1), (2, 9)):
        x = torch.randint(0, 94, (batch, length))
        with torch.no_grad():
            got = ep.module()(encoder_hidden_states=states[:batch], decoder_input_ids=x)
            want = model(encoder_outputs=(states[:batch],), decoder_input_ids=x).logits
        assert got.shape == (batch, length, model.config.vocab_size)
        assert torch.allclose(got, want, atol=1e-5)
    names = {n.args[1].name for n in _linears(ep)}
    assert "p_lm_head_weight" in names  # the tied head is named lm_head (see the module doc)


def test_export_whisper_matches_hf(model, features, ids, combined_ep):
    for length in (3, 6):
        with torch.no_grad():
            got = combined_ep.module()(input_features=features[:2], decoder_input_ids=ids[:2, :length])
            want = model(input_features=features[:2], decoder_input_ids=ids[:2, :length]).logits
        assert torch.allclose(got, want, atol=1e-5)
    assert len(_linears(combined_ep)) == 6 * 2 + 10 * 2 + 1
    dynamic = whisper.export_whisper(model, features[:2], ids[:2], dynamic_batch=True)
    with torch.no_grad():
        got = dynamic.module()(input_features=features, decoder_input_ids=ids)
    assert torch.allclose(got, model(input_features=features, decoder_input_ids=ids).logits, atol=1e-5)


def test_export_rejects_bad_inputs(model, features, ids):
    with pytest.raises(CalibrationError, match="3000|32"):
        whisper.export_whisper_encoder(model, features[..., :30])
    with pytest.raises(CalibrationError, match="int64"):
        whisper.export_whisper(model, features[:2], ids[:2].int())
    with pytest.raises(CalibrationError, match="batch"):
        whisper.export_whisper(model, features[:2], ids[:3])


# ---------------------------------------------------------------------------------------------------- modality tags


def _expected_tag(name: str) -> str:
    if name.startswith("encoder."):
        return "audio"
    if name == "lm_head":
        return "fused"
    layer = int(name.split(".")[2])
    if ".encoder_attn.k_proj" in name or ".encoder_attn.v_proj" in name:
        return "audio"
    if layer == 0 and (".self_attn." in name or ".encoder_attn.q_proj" in name):
        return "text"
    return "fused"


def _tags(qp) -> dict[str, tuple[str, str]]:
    from mqcompile.graph import meta

    out = {}
    for node in qp.exported_program.graph.nodes:
        info = meta.get(node)
        if node.op == "call_function" and info.get("linear") and info.get("op", "linear") != "quantize_act":
            out[info["name"]] = (info["modality"], info["tagged_by"])
    return out


def test_combined_program_modality_tags(model, features, ids, combined_ep):
    """With both inputs as sources, tags follow data flow from ``input_features`` (audio) and ``decoder_input_ids``
    (text):

    * every encoder linear: audio only.
    * decoder layer 0 self-attention q/k/v/out and the cross-attention query: text only (they run before any
      cross-attention has mixed audio into the residual stream).
    * cross-attention k/v projections of every layer: audio (they read the encoder output only).
    * everything after layer 0's cross-attention: fused. This includes layer 0's cross-attention output projection
      and FFN, and the self-attention q/k/v/out of layers >= 1: their input is the residual stream, which carries
      audio from layer 0's cross-attention on. So only layer 0's self-attention is text-only, not every layer's.
    * the output head ``lm_head``: fused, and float (default ``keep_float``).
    """
    config = mqcompile.QuantConfig(sources={"input_features": "audio", "decoder_input_ids": "text"})
    qp = mqcompile.quantize(combined_ep, config, progress=False)
    tags = {rec.name: rec.modality for rec in qp.linears()}
    assert len(tags) == 6 * 2 + 10 * 2 + 1
    assert tags == {name: _expected_tag(name) for name in tags}
    counts = {m: list(tags.values()).count(m) for m in ("text", "audio", "fused")}
    assert counts == {"text": 5, "audio": 12 + 4, "fused": 12}
    assert {how for _, how in _tags(qp).values()} == {"data_flow"}
    schemes = {rec.name: rec.scheme for rec in qp.linears()}
    assert schemes["lm_head"] == "float" and {s for n, s in schemes.items() if n != "lm_head"} == {"w4a4"}
    with torch.no_grad():
        out = qp.module()(input_features=features[:2], decoder_input_ids=ids[:2])
    assert out.shape == (2, ids.shape[1], model.config.vocab_size) and torch.isfinite(out).all()


def test_combined_program_default_sources(combined_ep):
    """``decoder_input_ids`` and ``input_features`` are both default source names, so ``mqcompile.quantize(ep)``
    with the default config tags by data flow alone: audio (encoder, cross-attention k/v), text (layer 0
    self-attention and cross-attention query) and fused (everything the two streams both reach)."""
    qp = mqcompile.quantize(combined_ep, progress=False)
    tags = _tags(qp)
    for name, (modality, how) in tags.items():
        assert (modality, how) == (_expected_tag(name), "data_flow"), name
    assert sum(1 for m, _ in tags.values() if m == "text") == 5
    assert {rec.scheme for rec in qp.linears() if rec.name == "lm_head"} == {"float"}


def test_decoder_program_modality_tags(model, features, ids):
    """The speech task's decoder program (sources as in its ProgramSpec): the same decoder tags as in the combined
    program, with ``encoder_hidden_states`` as the audio source; the dynamic batch does not leak between sources."""
    with torch.no_grad():
        states = model.model.encoder(features[:2]).last_hidden_state
    ep = whisper.export_whisper_decoder(model, states, ids[:2])
    config = mqcompile.QuantConfig(sources={"encoder_hidden_states": "audio", "decoder_input_ids": "text"})
    tags = {rec.name: rec.modality for rec in mqcompile.quantize(ep, config, progress=False).linears()}
    assert len(tags) == 10 * 2 + 1
    assert tags == {name: _expected_tag(name) for name in tags}
