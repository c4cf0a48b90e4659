"""Run by tests/kernels/test_w4a4_paths.py in a process of its own (real Triton JIT functions, not the
interpreter's, so that Dynamo traces the kernels as wrap_triton nodes instead of running them; nothing runs):
torch.compile's graphs of a W4A4 program with a dynamic token count, one per regime the dispatching op takes.
Prints one JSON line: the call_function targets of every AOT forward graph."""

import json
import logging

import torch
from torch._functorch.aot_autograd import aot_module_simplified

import mqcompile
from mqcompile.backends.inductor.deploy import detach_to, use_triton_ops, use_w4a4_paths

logging.disable(logging.WARNING)  # the CPU has no Triton driver: torch warns it cannot read the kernels' TTIR


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(96, 200)
        self.down = torch.nn.Linear(200, 40)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


torch.manual_seed(0)
tokens = torch.export.Dim("tokens", max=4096)
ep = torch.export.export(MLP().eval(), (torch.randn(1, 40, 96),), dynamic_shapes=({1: tokens},))
module = detach_to(mqcompile.quantize(ep, mqcompile.QuantConfig(), progress=False).exported_program.module())
use_w4a4_paths(module)
use_triton_ops(module)
graphs = []


class Traced(Exception):
    pass


def backend(gm, example_inputs):
    def forward_compiler(graph, _):
        graphs.append([str(n.target) for n in graph.graph.nodes if n.op == "call_function"])

        def stop(*_):
            raise Traced

        return stop

    return aot_module_simplified(gm, example_inputs, fw_compiler=forward_compiler)


compiled = torch.compile(module, backend=backend, dynamic=True)
for m in (40, 3, 70, 16):
    try:
        compiled(torch.randn(1, m, 96))
    except Traced:
        pass
print(json.dumps(graphs))
