import dataclasses

import pytest
import torch

import mqcompile
from mqcompile.backends.inductor.deploy import detach_to, use_triton_ops
from tests.conftest import TOY_CONFIG, toy_inputs


def test_compile_on_cpu_matches_the_program(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    fast = mqcompile.compile(qp)  # CPU: Inductor around the exact integer ops, no Triton
    for seed in (1, 2):
        assert torch.equal(fast(**toy_inputs(seed)), qp.module()(**toy_inputs(seed)))


def test_grouped_weights_keep_the_reference_op(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, dataclasses.replace(TOY_CONFIG, weight_group_size=4), progress=False)
    module = qp.exported_program.module()
    counts = use_triton_ops(module)
    assert counts == {"quantize_act": 4, "qlinear": 0, "kept": 4, "unpacked": 0}
    targets = {n.target for n in module.graph.nodes if n.op == "call_function"}
    assert torch.ops.mqcompile.qlinear.default in targets


def test_compile_leaves_the_program_as_it_was(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    before = {k: (v.device, v.requires_grad, v.clone()) for k, v in qp.exported_program.state_dict.items()}
    fast = mqcompile.compile(qp, device="meta")  # torch.compile is lazy: nothing runs on the meta tensors
    assert all(t.device.type == "meta" for t in fast.state_dict().values())
    for k, v in qp.exported_program.state_dict.items():
        assert (v.device, v.requires_grad) == before[k][:2] and torch.equal(v, before[k][2])
    assert torch.equal(qp.module()(**toy_inputs(1)), mqcompile.compile(qp)(**toy_inputs(1)))


def test_detach_to_retargets_factory_ops_and_leaves_the_program():
    class WithFactory(torch.nn.Module):
        def forward(self, x):
            return x + torch.arange(x.shape[-1], dtype=x.dtype)  # exported with device=cpu as a constant kwarg

    ep = torch.export.export(WithFactory(), (torch.zeros(2, 3),))
    module = detach_to(ep.module(), "meta")
    assert module(torch.zeros(2, 3, device="meta")).device.type == "meta"
    assert torch.equal(ep.module()(torch.zeros(2, 3)), torch.arange(3.0).expand(2, 3))  # the program is untouched


def test_int8_weights_need_the_triton_path(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    with pytest.raises(ValueError, match="device='cuda'"):
        mqcompile.compile(qp, int8_weights=True)


def test_cpu_int4pack_is_bit_exact_and_replaces_the_weights(toy):
    from mqcompile.backends.inductor.deploy import use_cpu_int4pack

    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    module = detach_to(qp.exported_program.module())
    counts = use_cpu_int4pack(module)
    assert counts == {"int4pack": 4, "kept": 0}
    targets = {n.target for n in module.graph.nodes if n.op == "call_function"}
    assert torch.ops.mqcompile.qlinear.default not in targets
    assert not any(k.endswith("mq_qweight") for k in module.state_dict())  # the unpacked-path copy is gone
    for seed in (1, 2, 3):
        assert torch.equal(module(**toy_inputs(seed)), qp.module()(**toy_inputs(seed)))


def test_cpu_int4pack_keeps_grouped_and_8_bit_weights(toy):
    from mqcompile.backends.inductor.deploy import use_cpu_int4pack

    _, _, ep = toy
    grouped = dataclasses.replace(TOY_CONFIG, weight_group_size=4)
    for config in (grouped, dataclasses.replace(TOY_CONFIG, default="w8a8")):
        qp = mqcompile.quantize(ep, config, progress=False)
        module = detach_to(qp.exported_program.module())
        assert use_cpu_int4pack(module) == {"int4pack": 0, "kept": 4}
        assert torch.equal(module(**toy_inputs(1)), qp.module()(**toy_inputs(1)))


def test_compile_with_cpu_int4pack_matches_the_program(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    fast = mqcompile.compile(qp, cpu_int4pack=True)
    assert torch.equal(fast(**toy_inputs(1)), qp.module()(**toy_inputs(1)))


def test_fp8_weights_need_the_w4a4_paths_on_the_triton_path(toy):
    _, _, ep = toy
    qp = mqcompile.quantize(ep, TOY_CONFIG, progress=False)
    with pytest.raises(ValueError, match="w4a4_paths=True"):
        mqcompile.compile(qp, fp8_weights=True, w4a4_paths=False)
    with pytest.raises(ValueError, match="no int8_weights"):
        mqcompile.compile(qp, fp8_weights=True, int8_weights=True)
    with pytest.raises(ValueError, match="device='cuda'"):
        mqcompile.compile(qp, fp8_weights=True)  # CPU: no Triton kernels to take the copy
    with pytest.raises(ValueError, match="unknown"):
        mqcompile.compile(qp, w4a4_options={"fast_acum": True})
    with pytest.raises(ValueError, match="device='cuda'"):
        mqcompile.compile(qp, w4a4_options={"fast_accum": True})
