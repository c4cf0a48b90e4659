import torch

from mqcompile import QuantConfig
from mqcompile.graph import meta
from mqcompile.passes import PassContext, rewrite_linears
from mqcompile.pipeline import run_pipeline
from tests.conftest import TOY_CONFIG

ops = torch.ops.mqcompile


def _rewrite(ep, config):
    ctx = PassContext(config)
    ep, _ = run_pipeline(ep, ctx, progress=False, until="insert_modality_ids")
    return rewrite_linears.run(ep, ctx)


def _count(ep, target):
    return sum(1 for n in ep.graph.nodes if n.target == target)


def test_w4a4_rewrite_counts_buffers_and_numerics(toy):
    model, kwargs, ep = toy
    result = _rewrite(ep, TOY_CONFIG)
    assert result.counts == {"matched": 5, "qlinear": 4, "wlinear": 0, "kept_float": 1, "float_weights_dropped": 4}
    new = result.program
    assert _count(new, ops.qlinear.default) == 4 and _count(new, ops.quantize_act.default) == 4
    assert _count(new, torch.ops.aten.linear.default) == 1
    assert "v.mq_qweight" in new.state_dict and "v.weight" not in new.state_dict
    assert new.state_dict["v.mq_qweight"].dtype == torch.uint8 and new.state_dict["v.mq_qweight"].shape == (16, 6)
    assert new.state_dict["d1.mq_act_clip"].shape == (3,)  # routed per modality
    assert new.state_dict["v.mq_act_clip"].shape == (1,)
    routed = [n for n in new.graph.nodes if n.target == ops.quantize_act.default and n.args[2] is not None]
    assert len(routed) == 2
    for n in new.graph.nodes:
        if n.target == ops.qlinear.default:
            assert meta.get(n)["op"] == "qlinear" and meta.get(n)["scheme"] == "w4a4"
    y, yq = model(**kwargs), new.module()(**kwargs)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), yq.flatten(), dim=0)
    assert 0.98 < cos < 1.0


def test_mixed_schemes_and_groups(toy):
    model, kwargs, ep = toy
    config = QuantConfig(
        modality={"audio": "w8a8", "vision": "w4a16"}, overrides=(("d2", "float"),), weight_group_size=8
    )
    result = _rewrite(ep, config)
    assert result.counts["qlinear"] == 2 and result.counts["wlinear"] == 1 and result.counts["kept_float"] == 2
    new = result.program
    assert new.state_dict["a.mq_qweight"].dtype == torch.int8  # 8-bit codes are not packed
    assert new.state_dict["v.mq_w_scale"].shape == (16, 2)  # K=12 in groups of 8 -> 2 groups (ragged)
    y, yq = model(**kwargs), new.module()(**kwargs)
    assert torch.nn.functional.cosine_similarity(y.flatten(), yq.flatten(), dim=0) > 0.99


def test_dynamic_batch_dim_survives():
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    ep = torch.export.export(model, (torch.randn(4, 32),), dynamic_shapes=({0: torch.export.Dim("n")},))
    new = _rewrite(ep, QuantConfig()).program
    for n in (1, 4, 33):
        x = torch.randn(n, 32)
        assert new.module()(x).shape == (n, 16)


def test_tied_weight_kept_for_other_user():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, ids):
            return torch.nn.functional.linear(self.proj(self.emb(ids)), self.emb.weight)

    ep = torch.export.export(Tied(), (torch.tensor([[1, 2, 3]]),))
    result = _rewrite(ep, QuantConfig(keep_float=()))
    assert result.counts["qlinear"] == 2
    assert "emb.weight" in result.program.state_dict  # still read by the embedding lookup


def test_thinker_rewrite_counts(thinker_qp):
    report = thinker_qp.report
    matched = report["rewrite_linears"]["matched"]
    assert matched == report["find_linears"]["linears"]
    assert report["rewrite_linears"]["kept_float"] == 1  # lm_head
    assert report["rewrite_linears"]["qlinear"] == matched - 1
    assert report["insert_modality_ids"]["routed"] == report["tag_modality"]["fused"] - 1
