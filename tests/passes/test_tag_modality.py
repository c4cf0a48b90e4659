import torch

from mqcompile import QuantConfig
from mqcompile.graph import meta
from mqcompile.graph.linears import linear_nodes
from mqcompile.passes import PassContext
from mqcompile.pipeline import run_pipeline
from tests.conftest import TOY_CONFIG


def _tags(ep, config):
    _, report = run_pipeline(ep, PassContext(config), progress=False, until="tag_modality")
    return {meta.get(n)["name"]: meta.get(n) for n in linear_nodes(ep.graph)}, report["tag_modality"]


def test_toy_tags_follow_data_flow_through_in_place_writes(toy):
    _, _, ep = toy
    tags, counts = _tags(ep, TOY_CONFIG)
    assert {k: v["modality"] for k, v in tags.items()} == {
        "v": "vision",
        "a": "audio",
        "d1": "fused",
        "d2": "fused",
        "lm_head": "fused",
    }
    assert tags["d1"]["sources"] == ["audio", "text", "vision"]
    assert counts == {"text": 0, "vision": 1, "audio": 1, "fused": 3, "by_module_path": 0}


def test_any_program_without_known_inputs_is_text():
    ep = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), (torch.randn(1, 4),))
    tags, counts = _tags(ep, QuantConfig())
    assert counts["text"] == 2 and all(t["tagged_by"] == "data_flow" for t in tags.values())


def test_configured_sources(toy):
    _, _, ep = toy
    config = QuantConfig(sources={"pixel_values": "vision", "input_ids": "text"})
    tags, _ = _tags(ep, config)
    assert tags["a"]["modality"] == "text"  # reached by no source: module-path hint, "a" names no modality
    assert tags["a"]["tagged_by"] == "module_path"
    assert tags["d1"]["modality"] == "fused" and tags["d1"]["sources"] == ["text", "vision"]


def test_tags_survive_save_load(toy, tmp_path):
    _, _, ep = toy
    _tags(ep, TOY_CONFIG)
    torch.export.save(ep, tmp_path / "p.pt2")
    loaded = torch.export.load(tmp_path / "p.pt2")
    names = {meta.get(n)["name"]: meta.get(n)["modality"] for n in linear_nodes(loaded.graph)}
    assert names["v"] == "vision" and names["d2"] == "fused"


def test_thinker_every_tower_linear_tagged_by_data_flow(thinker_ep, thinker_config):
    tags, counts = _tags(thinker_ep, thinker_config)
    assert counts["by_module_path"] == 0 and counts["text"] == 0
    for node in linear_nodes(thinker_ep.graph):
        info = meta.get(node)
        stack = " ".join(str(v[0]) for v in node.meta["nn_module_stack"].values())
        if "visual" in stack:
            assert info["modality"] == "vision", info["name"]
        elif "audio_tower" in stack:
            assert info["modality"] == "audio", info["name"]
        else:
            assert info["modality"] == "fused", info["name"]
    assert counts["vision"] > 0 and counts["audio"] > 0 and counts["fused"] > 0


def test_sizes_do_not_carry_modality():
    class EncDec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(8, 8)
            self.emb = torch.nn.Embedding(20, 8)
            self.dec = torch.nn.Linear(8, 8)

        def forward(self, input_ids, input_features):
            # the audio path is sliced with a size read from the text input: a shape edge, not data
            h = self.enc(input_features[:, : input_ids.shape[1]])
            return self.dec(self.emb(input_ids) + h)

    seq = torch.export.Dim("seq", max=9)
    ep = torch.export.export(
        EncDec(), (torch.randint(0, 20, (2, 5)), torch.randn(2, 10, 8)), dynamic_shapes=({1: seq}, None)
    )
    assert any(n.target == torch.ops.aten.sym_size.int and n.args[0].name == "input_ids" for n in ep.graph.nodes)
    tags, _ = _tags(ep, QuantConfig())
    assert tags["enc"]["modality"] == "audio" and tags["dec"]["modality"] == "fused"
