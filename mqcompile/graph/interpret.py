"""Run an ExportedProgram node by node (``torch.fx.Interpreter``) and observe chosen nodes.

Used by calibration (statistics of linear inputs) and by the evaluation suite (per-linear output SQNR). Runs the
lifted graph directly, feeding parameters, buffers and constants in signature order, so node names and meta are the
program's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export._tree_utils import reorder_kwargs
from torch.export.graph_signature import InputKind

__all__ = ["run_observed", "flat_inputs"]

Observer = Callable[[fx.Node, tuple, Any], None]


def flat_inputs(ep: ExportedProgram, args: tuple, kwargs: dict) -> list[Any]:
    """All placeholder values of the lifted graph, in order."""
    user = iter(pytree.tree_leaves((tuple(args), reorder_kwargs(kwargs, ep.call_spec.in_spec))))
    values = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            values.append(next(user))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in ep.state_dict:
            values.append(ep.state_dict[spec.target])
        else:
            values.append(ep.constants[spec.target])
    return values


class _Observing(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, want: Callable[[fx.Node], bool], observe: Observer):
        super().__init__(gm)
        self._want, self._observe = want, observe

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if self._want(n):
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            self._observe(n, args, out)
        return out


@torch.no_grad()
def run_observed(
    ep: ExportedProgram, args: tuple, kwargs: dict, want: Callable[[fx.Node], bool], observe: Observer
) -> Any:
    """Run ``ep`` on one batch, calling ``observe(node, evaluated_args, output)`` for every node ``want`` selects."""
    return _Observing(ep.graph_module, want, observe).run(*flat_inputs(ep, args, kwargs))
