import pytest
import torch.fx as fx

from mqcompile.graph import meta


def test_accessor_round_trip_and_json_only():
    node = fx.Graph().placeholder("x")
    assert meta.get(node) == {}
    meta.set_fields(node, modality="audio", sources=["audio"])
    meta.set_fields(node, scheme="w4a4")
    assert meta.get(node) == {"modality": "audio", "sources": ["audio"], "scheme": "w4a4"}
    assert meta.has(node, "scheme") and node.meta["custom"][meta.KEY]["scheme"] == "w4a4"
    with pytest.raises(TypeError):
        meta.set_fields(node, bad=object())
    meta.clear(node)
    assert meta.get(node) == {}
