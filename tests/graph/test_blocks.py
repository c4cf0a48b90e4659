import pytest
import torch

from mqcompile.graph.blocks import run_segment, segments
from mqcompile.graph.interpret import flat_inputs


def _module(node):
    return list(node.meta["nn_module_stack"].values())[-1][0]


def _run_all(ep, kwargs, linear=None, replace=lambda n: False):
    places = [n for n in ep.graph.nodes if n.op == "placeholder"]
    env = dict(zip(places, flat_inputs(ep, (), kwargs)))
    with torch.no_grad():
        for seg in segments(ep.graph):
            env.update(run_segment(ep.graph_module, seg, env, linear, replace))
    return [env[n] for n in ep.graph.output_node().all_input_nodes]


def test_thinker_blocks_are_its_layers(thinker_ep):
    segs = segments(thinker_ep.graph)
    keys = [s.key for s in segs if s.key]
    for prefix, count in (("audio_tower.layers", 2), ("visual.blocks", 4), ("language_model.layers", 2)):
        assert [k for k in keys if f".{prefix}." in k] == [f"thinker.model.{prefix}.{i}" for i in range(count)]
    assert len(keys) == len(set(keys))  # each block is one contiguous segment
    for seg in segs:
        for node in seg.nodes:
            if node.target == torch.ops.aten.linear.default and seg.key and ".layers." in seg.key:
                assert _module(node).startswith(seg.key + "."), (seg.key, _module(node))
    # every layer's residual output leaves its segment: exactly one float output per decoder layer
    for seg in segs:
        if seg.key and "language_model.layers" in seg.key:
            assert len(seg.outputs) == 1


def test_running_segments_reproduces_the_program(thinker_ep, tiny_sample):
    out = _run_all(thinker_ep, tiny_sample)
    ref = thinker_ep.module()(**tiny_sample)
    assert torch.equal(out[0], ref)


def test_stand_in_linear_replaces_only_selected_nodes(thinker_ep, tiny_sample):
    calls = []

    def stand_in(node, x, w, b=None):
        calls.append(node.name)
        return torch.nn.functional.linear(x, w, b)

    def is_lm_linear(n):
        return n.target == torch.ops.aten.linear.default and "language_model" in _module(n)

    same = _run_all(thinker_ep, tiny_sample, stand_in, is_lm_linear)[0]
    assert torch.equal(same, thinker_ep.module()(**tiny_sample))
    assert len(calls) == 14  # 2 layers x 7 linears
    zeroed = _run_all(thinker_ep, tiny_sample, lambda n, x, w, b=None: x[..., :1] * 0 * w[:, 0], is_lm_linear)[0]
    assert not torch.allclose(zeroed, same)


def test_program_without_module_lists_is_one_segment(toy):
    _, kwargs, ep = toy
    segs = segments(ep.graph)
    assert [s.key for s in segs] == [None]
    assert torch.equal(_run_all(ep, kwargs)[0], ep.module()(**kwargs))


def test_missing_input_value_is_an_error(thinker_ep):
    seg = next(s for s in segments(thinker_ep.graph) if s.key)
    with pytest.raises(KeyError):
        run_segment(thinker_ep.graph_module, seg, {})
