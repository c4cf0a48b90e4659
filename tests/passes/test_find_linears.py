import torch

from mqcompile.graph import meta
from mqcompile.graph.linears import linear_nodes
from mqcompile.passes import PassContext, find_linears
from tests.conftest import TOY_CONFIG


def test_marks_every_linear_with_shape_and_name(toy):
    _, _, ep = toy
    result = find_linears.run(ep, PassContext(TOY_CONFIG))
    assert result.counts == {"linears": 5, "dynamic_weight": 0}
    infos = {meta.get(n)["name"]: meta.get(n) for n in linear_nodes(ep.graph)}
    assert set(infos) == {"v", "a", "d1", "d2", "lm_head"}
    assert infos["v"]["in_features"] == 12 and infos["v"]["out_features"] == 16
    assert infos["lm_head"]["has_bias"] is False and infos["d1"]["has_bias"] is True
    assert all(i["weight"] == "parameter" for i in infos.values())


def test_weight_computed_at_run_time_is_dynamic():
    class M(torch.nn.Module):
        def forward(self, x, w):
            return torch.nn.functional.linear(x, w * 2)

    ep = torch.export.export(M(), (torch.randn(2, 4), torch.randn(3, 4)))
    result = find_linears.run(ep, PassContext(TOY_CONFIG))
    assert result.counts == {"linears": 1, "dynamic_weight": 1}


def test_thinker_linear_counts(thinker_ep, thinker_config):
    result = find_linears.run(thinker_ep, PassContext(thinker_config))
    assert result.counts["linears"] > 0 and result.counts["dynamic_weight"] == 0
