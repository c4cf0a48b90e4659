"""Run an ExportedProgram node by node (``torch.fx.Interpreter``), observing chosen nodes or standing in for them.

:class:`NodeInterpreter` is the one interpreter: calibration and the evaluation suite observe linears with it
(:func:`run_observed`), the block runner (:mod:`.blocks`) replaces them with quantized stand-ins. Runs the lifted
graph directly, feeding parameters, buffers and constants in signature order, so node names and meta are the
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

__all__ = ["NodeInterpreter", "run_observed", "flat_inputs"]

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


def _never(node: fx.Node) -> bool:
    return False


class NodeInterpreter(fx.Interpreter):
    """``fx.Interpreter`` that computes the nodes ``replace`` selects with ``stand_in(node, *args, **kwargs)``
    instead of their own op, and calls ``observe(node, evaluated_args, output)`` for the nodes ``want`` selects."""

    def __init__(
        self,
        gm: fx.GraphModule,
        *,
        want: Callable[[fx.Node], bool] = _never,
        observe: Observer | None = None,
        replace: Callable[[fx.Node], bool] = _never,
        stand_in: Callable[..., Any] | None = None,
        garbage_collect_values: bool = True,
    ):
        super().__init__(gm, garbage_collect_values=garbage_collect_values)
        self._want, self._observe, self._replace, self._stand_in = want, observe, replace, stand_in

    def run_node(self, n: fx.Node) -> Any:
        if self._stand_in is not None and self._replace(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = self._stand_in(n, *args, **kwargs)
        else:
            out = super().run_node(n)
        if self._observe is not None and self._want(n):
            self._observe(n, fx.node.map_arg(n.args, lambda a: self.env[a]), out)
        return out


@torch.no_grad()
def run_observed(
    ep: ExportedProgram, args: tuple, kwargs: dict, want: Callable[[fx.Node], bool], observe: Observer
) -> Any:
    """Run ``ep`` on one batch, calling ``observe(node, evaluated_args, output)`` for every node ``want`` selects."""
    return NodeInterpreter(ep.graph_module, want=want, observe=observe).run(*flat_inputs(ep, args, kwargs))
