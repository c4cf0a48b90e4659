"""Tests of the Qwen2.5-Omni thinker adapter: tiny model, samples, exports vs the HF forward, checkpoint loading."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch import nn

from mqcompile.errors import CalibrationError, CheckpointError, NonFiniteError
from mqcompile.models import qwen2_5_omni as omni

ATOL = 1e-4
# Sample used for the exports: a 4x6-patch image (2 attention windows with a non-identity window permutation),
# a 2x4x6 video and 100 audio frames (7 chunks of <= 16 frames).
RICH = {"image_grid": (1, 4, 6), "video": True, "audio_frames": 100, "text_tokens": 8}


def _linear_nodes(ep: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    return [n for n in ep.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]


def _linear_groups(ep: torch.export.ExportedProgram) -> Counter:
    groups: Counter = Counter()
    for node in _linear_nodes(ep):
        path = list(node.meta["nn_module_stack"].values())[-1][0]
        if ".visual." in path or path.startswith("visual."):
            groups["vision"] += 1
        elif ".audio_tower." in path or path.startswith("audio_tower."):
            groups["audio"] += 1
        else:
            groups["text"] += 1
    return groups


@pytest.fixture(scope="module")
def model():
    return omni.build_tiny_thinker(seed=0)


@pytest.fixture(scope="module")
def sample(model):
    return omni.make_sample(model, **RICH)


@pytest.fixture(scope="module")
def hf_logits(model, sample):
    with torch.no_grad():
        return model(**omni.reference_inputs(sample)).logits


@pytest.fixture(scope="module")
def thinker_ep(model, sample):
    return omni.export_thinker(model, sample, dynamic_text=True)


# ---------------------------------------------------------------------------------------------------------- model


def test_tiny_thinker_is_deterministic_and_meaningful(model):
    again = omni.build_tiny_thinker(seed=0)
    other = omni.build_tiny_thinker(seed=1)
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    assert not torch.equal(ref["lm_head.weight"], other.state_dict()["lm_head.weight"])
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    sample = omni.make_sample(model)
    with torch.no_grad():
        logits = model(**omni.reference_inputs(sample)).logits
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.05  # not degenerate: quantization error is measurable


def test_tiny_config_structure(model):
    cfg = model.config
    v = cfg.vision_config
    assert v.patch_size == 14 and v.spatial_merge_size == 2 and v.temporal_patch_size == 2
    assert set(v.fullatt_block_indexes) < set(range(v.depth))  # at least one window and one full layer
    assert cfg.text_config.num_key_value_heads < cfg.text_config.num_attention_heads  # GQA
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    ids = omni.modality_token_ids(cfg)
    assert ids == {"vision": [cfg.image_token_id, cfg.video_token_id], "audio": [cfg.audio_token_id]}
    assert omni.modality_token_ids(model) == ids
    assert max(ids["vision"] + ids["audio"]) < cfg.text_config.vocab_size
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert module.in_features % 2 == 0 and module.out_features % 2 == 0, name


def test_thinker_parts_supports_legacy_layout(model, sample):
    """transformers 5.17 layout: thinker.{visual, audio_tower}, thinker.model is the text decoder."""
    parts = omni.thinker_parts(model)
    legacy = nn.Module()
    legacy.visual, legacy.audio_tower, legacy.model, legacy.lm_head = (
        parts.visual,
        parts.audio_tower,
        parts.text,
        parts.lm_head,
    )
    legacy.config = model.config
    legacy_parts = omni.thinker_parts(legacy)
    assert legacy_parts == parts
    with torch.no_grad():
        assert torch.equal(omni.ThinkerForExport(legacy)(**sample), omni.ThinkerForExport(model)(**sample))
    with pytest.raises(CheckpointError):
        omni.thinker_parts(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------------- sample


@pytest.mark.parametrize("kwargs", [{}, RICH, {"image_grid": (2, 8, 6), "audio_frames": 37, "text_tokens": 3}])
def test_sample_token_counts_match_grids(model, kwargs):
    s = omni.make_sample(model, **kwargs)
    cfg = model.config
    t, h, w = kwargs.get("image_grid", (1, 4, 4))
    frames = kwargs.get("audio_frames", 100)
    ids = s["input_ids"][0]
    seq = ids.numel()
    assert (ids == cfg.image_token_id).sum() == t * h * w // 4
    after_conv = (frames - 1) // 2 + 1
    assert (ids == cfg.audio_token_id).sum() == (after_conv - 2) // 2 + 1
    n_video = 2 * 4 * 6 // 4 if kwargs.get("video") else 0
    assert (ids == cfg.video_token_id).sum() == n_video
    assert s["pixel_values"].shape == (t * h * w, 3 * 2 * 14 * 14)
    assert s["input_features"].shape == (128, frames)
    assert s["position_ids"].shape == (3, 1, seq)
    assert s["image_window_index"].numel() == t * h * w // 4
    assert s["image_cu_seqlens"].tolist() == [i * h * w for i in range(t + 1)]
    assert s["audio_pool_indices"].numel() == (ids == cfg.audio_token_id).sum()
    assert int(s["audio_cu_seqlens"][-1]) == s["audio_valid_indices"].numel() == after_conv
    vision_keys = {
        "pixel_values",
        "image_position_ids",
        "image_cu_seqlens",
        "image_window_index",
        "image_cu_window_seqlens",
    }
    audio_keys = {
        "input_features",
        "audio_chunk_index",
        "audio_chunk_lengths",
        "audio_valid_indices",
        "audio_pool_indices",
        "audio_cu_seqlens",
    }
    video_keys = {k.replace("image_", "video_").replace("pixel_values", "pixel_values_videos") for k in vision_keys}
    expected = {"input_ids", "position_ids"} | vision_keys | audio_keys | (video_keys if kwargs.get("video") else set())
    assert set(s) == expected
    omni.check_sample(s)
    again = omni.make_sample(model, **kwargs)
    assert all(torch.equal(s[k], again[k]) for k in s)


def test_sample_without_modalities(model):
    s = omni.make_sample(model, image_grid=None, audio_frames=None, text_tokens=5)
    assert set(s) == {"input_ids", "position_ids"}
    with torch.no_grad():
        hf = model(**omni.reference_inputs(s)).logits
        assert torch.allclose(omni.ThinkerForExport(model)(**s), hf, atol=ATOL)


def test_check_sample_rejects_bad_inputs(model, sample):
    bad = dict(sample, pixel_values=sample["pixel_values"].clone())
    bad["pixel_values"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="pixel_values"):
        omni.export_thinker(model, bad)
    bad = dict(sample, input_features=sample["input_features"].clone())
    bad["input_features"][3, 7] = float("inf")
    with pytest.raises(NonFiniteError, match="input_features"):
        omni.check_sample(bad)
    with pytest.raises(CalibrationError, match="image_window_index"):
        omni.check_sample({k: v for k, v in sample.items() if k != "image_window_index"})
    with pytest.raises(CalibrationError):
        omni.check_sample(dict(sample, input_ids=sample["input_ids"].float()))
    with pytest.raises(CalibrationError):
        omni.make_sample(model, image_grid=(1, 3, 4))
    # real content that does not fit its layout
    with pytest.raises(CalibrationError, match="without their image_grid"):
        omni.make_sample(model, image_grid=None, pixel_values=sample["pixel_values"])
    with pytest.raises(CalibrationError, match="image_grid \\(1, 4, 4\\) takes"):
        omni.make_sample(model, pixel_values=sample["pixel_values"][:8])
    with pytest.raises(CalibrationError, match="the audio tower takes"):
        omni.make_sample(model, input_features=sample["input_features"][:5])
    with pytest.raises(CalibrationError, match="special or out-of-vocabulary"):
        omni.make_sample(model, text_ids=[1, int(model.config.image_token_id)])


# --------------------------------------------------------------------------------------------------------- export


def test_export_thinker_matches_hf_forward(model, sample, hf_logits, thinker_ep):
    user_inputs = list(thinker_ep.graph_signature.user_inputs)
    assert user_inputs == list(sample)  # placeholders are named after the sample keys
    assert {"input_ids", "pixel_values", "pixel_values_videos", "input_features"} <= set(user_inputs)
    with torch.no_grad():
        out = thinker_ep.module()(**sample)
    assert out.shape == hf_logits.shape
    torch.testing.assert_close(out, hf_logits, atol=ATOL, rtol=0)


def test_export_thinker_linear_counts(model, thinker_ep):
    cfg = model.config
    expected = {
        "vision": 7 * cfg.vision_config.depth + 2,  # q k v proj gate up down per block + 2 merger linears
        "audio": 6 * cfg.audio_config.encoder_layers + 1,  # q k v out fc1 fc2 per layer + proj
        "text": 7 * cfg.text_config.num_hidden_layers + 1,  # q k v o gate up down per layer + lm_head
    }
    assert expected == {"vision": 30, "audio": 13, "text": 15}
    assert dict(_linear_groups(thinker_ep)) == expected  # image + video share one vision pass
    assert len(_linear_nodes(thinker_ep)) == sum(expected.values())
    assert all(n.target != torch.ops.aten.addmm.default for n in thinker_ep.graph.nodes)  # not decomposed


@pytest.mark.parametrize("text_tokens", [3, 21])
def test_export_thinker_dynamic_text(model, sample, thinker_ep, text_tokens):
    other = omni.make_sample(model, **dict(RICH, text_tokens=text_tokens), seed=5)
    with torch.no_grad():
        hf = model(**omni.reference_inputs(other)).logits
        out = thinker_ep.module()(**other)
    assert out.shape[1] == other["input_ids"].shape[1] != sample["input_ids"].shape[1]
    torch.testing.assert_close(out, hf, atol=ATOL, rtol=0)


def test_export_thinker_static_default_sample(model):
    s = omni.make_sample(model)
    ep = omni.export_thinker(model, s, dynamic_text=False)
    assert not ep.range_constraints
    with torch.no_grad():
        hf = model(**omni.reference_inputs(s)).logits
        torch.testing.assert_close(ep.module()(**s), hf, atol=ATOL, rtol=0)


def test_export_vision_tower_matches_hf(model, sample):
    ep = omni.export_vision_tower(model, sample)
    ref = omni.reference_inputs(sample)
    inputs = omni.tower_sample(sample, "vision")
    assert list(ep.graph_signature.user_inputs) == list(inputs)
    with torch.no_grad():
        hf = torch.cat(model.get_image_features(ref["pixel_values"], ref["image_grid_thw"]).pooler_output)
        out = ep.module()(**inputs)
    torch.testing.assert_close(out, hf, atol=ATOL, rtol=0)
    assert dict(_linear_groups(ep)) == {"vision": 30}


def test_export_audio_tower_matches_hf(model, sample):
    ep = omni.export_audio_tower(model, sample)
    ref = omni.reference_inputs(sample)
    inputs = omni.tower_sample(sample, "audio")
    assert list(ep.graph_signature.user_inputs) == list(inputs)
    with torch.no_grad():
        hf = model.get_audio_features(ref["input_features"], ref["feature_attention_mask"]).last_hidden_state
        out = ep.module()(**inputs)
    torch.testing.assert_close(out, hf, atol=ATOL, rtol=0)
    assert dict(_linear_groups(ep)) == {"audio": 13}


# ----------------------------------------------------------------------------------------------------- checkpoints


def test_load_thinker_round_trip(model, tmp_path):
    sample = omni.make_sample(model)
    ref = omni.reference_inputs(sample)
    model.save_pretrained(tmp_path / "thinker")
    loaded = omni.load_thinker(tmp_path / "thinker")
    assert not loaded.training and loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.equal(loaded(**ref).logits, model(**ref).logits)


def test_load_thinker_from_full_omni_checkpoint(model, tmp_path):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    full = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=model.config.to_dict(), enable_audio_output=False)
    )
    full.thinker.load_state_dict(model.state_dict())
    full.save_pretrained(tmp_path / "omni")
    loaded = omni.load_thinker(tmp_path / "omni")
    ref = omni.reference_inputs(omni.make_sample(model))
    with torch.no_grad():
        assert torch.equal(loaded(**ref).logits, model(**ref).logits)


def test_load_thinker_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        omni.load_thinker(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        omni.load_thinker(tmp_path / "empty")
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(CheckpointError, match="'bert'"):
        omni.load_thinker(tmp_path / "bert")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(CheckpointError, match="model_type None"):
        omni.load_thinker(tmp_path / "plain")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        omni.load_thinker(tmp_path / "broken")
    (tmp_path / "noweights").mkdir()
    omni.tiny_thinker_config().save_pretrained(tmp_path / "noweights")
    with pytest.raises(CheckpointError, match="safetensors"):
        omni.load_thinker(tmp_path / "noweights")
    assert issubclass(CheckpointError, FileNotFoundError)
