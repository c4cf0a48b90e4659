from mqcompile import QuantConfig
from mqcompile.graph import meta
from mqcompile.graph.linears import linear_nodes
from mqcompile.passes import PassContext
from mqcompile.pipeline import run_pipeline


def _schemes(ep, config):
    _, report = run_pipeline(ep, PassContext(config), progress=False, until="select_schemes")
    return {meta.get(n)["name"]: meta.get(n)["scheme"] for n in linear_nodes(ep.graph)}, report["select_schemes"]


def test_default_w4a4_with_float_head(toy):
    schemes, counts = _schemes(toy[2], QuantConfig())
    assert schemes == {"v": "w4a4", "a": "w4a4", "d1": "w4a4", "d2": "w4a4", "lm_head": "float"}
    assert counts == {"w4a4": 4, "float": 1}


def test_per_modality_and_pattern_overrides(toy):
    config = QuantConfig(modality={"audio": "w8a8", "fused": "w4a16"}, overrides=(("d2", "float"), ("lm_*", "w8a8")))
    schemes, counts = _schemes(toy[2], config)
    assert schemes == {"v": "w4a4", "a": "w8a8", "d1": "w4a16", "d2": "float", "lm_head": "w8a8"}
    assert counts == {"w4a4": 1, "w8a8": 2, "w4a16": 1, "float": 1}
