import torch

from mqcompile import QuantConfig
from mqcompile.graph import meta
from mqcompile.graph.linears import linear_nodes
from mqcompile.passes import PassContext
from mqcompile.pipeline import run_pipeline
from tests.conftest import AUDIO_TOKEN, TOY_CONFIG, VISION_TOKEN


def _run(ep, config):
    _, report = run_pipeline(ep, PassContext(config), progress=False, until="insert_modality_ids")
    return report["insert_modality_ids"]


def _ids_node(ep):
    return next(n for n in ep.graph.nodes if meta.get(n).get("modality_ids") is True)


def test_routes_fused_linears_and_computes_ids(toy):
    _, kwargs, ep = toy
    counts = _run(ep, TOY_CONFIG)
    assert counts == {"fused_quantized": 2, "routed": 2, "shared": 0, "id_nodes": 1}
    ids_node = _ids_node(ep)
    routed = [meta.get(n).get("modality_ids") for n in linear_nodes(ep.graph)]
    assert routed.count(ids_node.name) == 2
    # evaluate the inserted subgraph: it must mark vision/audio placeholder tokens
    output = ep.graph.find_nodes(op="output")[0]
    output.args = ((*output.args[0], ids_node),)
    ep.graph_module.recompile()
    ids = kwargs["input_ids"]
    expected = torch.zeros_like(ids)
    expected[ids == VISION_TOKEN] = 1
    expected[ids == AUDIO_TOKEN] = 2
    out = torch.fx.Interpreter(ep.graph_module).run(*ep.state_dict.values(), *kwargs.values())
    assert torch.equal(out[-1], expected)


def test_without_token_ids_fused_linears_share(toy):
    counts = _run(toy[2], QuantConfig())
    assert counts == {"fused_quantized": 2, "routed": 0, "shared": 2, "id_nodes": 0}


def test_weight_only_fused_linears_need_no_ids(toy):
    config = QuantConfig(modality={"fused": "w4a16"}, modality_token_ids={"vision": (VISION_TOKEN,)})
    assert _run(toy[2], config)["fused_quantized"] == 0
