"""mini-omni: export and tagging, per-token modality ids, text-only equality with the plain decoder, input checks,
the projector file check (tiny random towers and decoder; the committed projector file itself at the end)."""

import numpy as np
import pytest
import torch

import mqcompile
from mqcompile.config import MODALITIES
from mqcompile.errors import CalibrationError, CheckpointError
from mqcompile.graph import meta
from mqcompile.graph.interpret import run_observed
from mqcompile.models import mini_omni as mo
from mqcompile.models.qwen2_text import export_causal_lm


@pytest.fixture(scope="module")
def tiny():
    model = mo.tiny_mini_omni(seed=0)
    s = model.spec
    rows = [
        [1, 2, s.vision_start_id, *[s.image_token_id] * s.image_tokens, s.vision_end_id, 5, 6],
        [7, s.audio_start_id, *[s.audio_token_id] * (40 // 4), s.audio_end_id, 8, 9, 10],
        [9, 10, 11, s.vision_start_id, *[s.image_token_id] * s.image_tokens, s.vision_end_id, 12],
    ]
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 80, s.audio_frames, generator=g)
    feature_mask = torch.zeros(2, s.audio_frames, dtype=torch.long)
    feature_mask[0, :40] = 1  # clip 0: 40 valid frames = 10 tokens; clip 1: none
    pixels = torch.randn(2, 3, s.image_size, s.image_size, generator=g)
    inputs = mo.make_inputs(s, rows, pixels, (features, feature_mask))
    return model, inputs, mo.export_mini_omni(model, inputs)


def test_program_matches_model_and_tags_every_linear(tiny):
    model, inputs, ep = tiny
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(**inputs), model(**inputs), rtol=0, atol=0)
    config = mqcompile.QuantConfig(modality_token_ids=mo.modality_token_ids(model.spec))
    qp = mqcompile.quantize(ep, config, progress=False)
    counts = {}
    for rec in qp.linears():
        counts[rec.modality] = counts.get(rec.modality, 0) + 1
    # decoder: 2 layers x 7 linears + lm_head; DINOv2: 1 layer x 6 + projector 2; Whisper: 1 layer x 6 + projector 2
    assert counts == {"fused": 15, "vision": 8, "audio": 8}
    nodes = [n for n in qp.exported_program.graph.nodes if meta.get(n).get("modality")]
    assert {meta.get(n)["tagged_by"] for n in nodes} == {"data_flow"}
    assert {meta.get(n)["name"] for n in nodes if meta.get(n)["modality"] == "vision"} >= {
        "vision_projector.0",
        "vision_projector.2",
    }
    routed = {meta.get(n)["name"] for n in nodes if meta.get(n).get("modality_ids") and meta.is_linear_output(n)}
    assert len(routed) == 14 and qp.report["insert_modality_ids"]["routed"] == 14  # lm_head stays float


def test_modality_ids_are_the_placeholder_positions(tiny):
    model, inputs, ep = tiny
    config = mqcompile.QuantConfig(modality_token_ids=mo.modality_token_ids(model.spec))
    qp = mqcompile.quantize(ep, config, progress=False)
    seen = []
    run_observed(
        qp.exported_program,
        (),
        inputs,
        lambda n: meta.get(n).get("modality_ids") is True,
        lambda n, a, o: seen.append(o),
    )
    assert len(seen) == 1
    ids = inputs["input_ids"]
    expected = torch.full_like(ids, MODALITIES.index("text"))
    expected[ids == model.spec.image_token_id] = MODALITIES.index("vision")
    expected[ids == model.spec.audio_token_id] = MODALITIES.index("audio")
    assert torch.equal(seen[0], expected)
    assert int((seen[0] == MODALITIES.index("audio")).sum()) == 10


def test_tower_outputs_land_on_their_placeholders(tiny):
    model, inputs, _ = tiny
    s = model.spec
    with torch.no_grad():
        embeds = model.embed(
            inputs["input_ids"], inputs["pixel_values"], inputs["input_features"], inputs["feature_attention_mask"]
        )
        image = model.image_embeddings(inputs["pixel_values"])
        audio = model.audio_projector(model.audio_states(inputs["input_features"]))[0, :10]
    ids = inputs["input_ids"]
    torch.testing.assert_close(embeds[ids == s.image_token_id], image)
    torch.testing.assert_close(embeds[ids == s.audio_token_id], audio)
    text = (ids != s.image_token_id) & (ids != s.audio_token_id)
    torch.testing.assert_close(embeds[text], model.lm.model.embed_tokens(ids)[text])


def test_text_only_prompt_gives_the_plain_decoder_logits(tiny):
    model, _, ep = tiny
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    plain = export_causal_lm(model.lm, ids, torch.ones_like(ids))
    with torch.no_grad():
        want = plain.module()(input_ids=ids, attention_mask=torch.ones_like(ids))
        got = ep.module()(**mo.make_inputs(model.spec, ids.tolist()))
    assert torch.equal(got, want)


def test_bad_inputs_say_what_is_expected(tiny):
    model, inputs, _ = tiny
    s = model.spec
    short = dict(inputs, input_ids=inputs["input_ids"].clone())
    short["input_ids"][0, 3] = 5  # one image placeholder fewer
    with pytest.raises(CalibrationError, match=r"7 image placeholders but the vision tower gives 8 tokens"):
        model(**short)
    audio = dict(inputs, feature_attention_mask=inputs["feature_attention_mask"].clone())
    audio["feature_attention_mask"][1, :8] = 1  # two more audio tokens than placeholders
    with pytest.raises(CalibrationError, match=r"10 audio placeholders but the audio tower gives 12 tokens"):
        model(**audio)
    with pytest.raises(CalibrationError, match=rf"expects \(images, 3, {s.image_size}, {s.image_size}\)"):
        model(**dict(inputs, pixel_values=torch.zeros(2, 3, 32, 32)))
    with pytest.raises(CalibrationError, match=rf"accepts at most {s.audio_frames}"):
        model(**dict(inputs, input_features=torch.zeros(2, 80, s.audio_frames + 4)))
    with pytest.raises(CalibrationError, match=r"at most 0\.6 s"):
        mo.audio_features(s, [np.zeros(int(0.7 * 16000), dtype=np.float32)])
    with pytest.raises(CalibrationError, match=r"RGB uint8 images of \(28, 28, 3\)"):
        mo.image_pixels(s, [np.zeros((30, 28, 3), dtype=np.uint8)])


def test_audio_features_mark_the_valid_frames():
    s = mo.tiny_mini_omni().spec
    features, mask = mo.audio_features(s, [np.zeros(3200, np.float32), np.zeros(8000, np.float32)])
    assert features.shape == (2, 80, s.audio_frames)
    assert mask.sum(-1).tolist() == [20, 50]


def test_projector_file_is_checked(tmp_path, tiny):
    model, _, _ = tiny
    path = tmp_path / "proj.safetensors"
    digest = mo.save_projectors(model, path)
    state = mo.load_projectors(path, digest)
    assert set(state) == set(model.projector_state())
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path}.*expected {digest}.*{mo.TRAIN_COMMAND}"):
        mo.load_projectors(path, digest)
    with pytest.raises(CheckpointError, match=rf"missing.*{mo.TRAIN_COMMAND}"):
        mo.load_projectors(tmp_path / "absent.safetensors", digest)


def test_committed_projectors_match_their_hash():
    state = mo.load_projectors()  # checks PROJECTOR_SHA256
    assert state["vision.0.weight"].shape == (896, 384 * 4)
    assert state["audio.0.weight"].shape == (896, 512)
    assert all(v.dtype == torch.float16 for v in state.values())
