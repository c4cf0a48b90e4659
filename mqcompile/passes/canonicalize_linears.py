"""canonicalize_linears: rewrite matmul-like nodes with a constant weight into ``aten.linear``, so that every later
pass sees linears in one form.

Needs: ``check_program``. Guarantees: ``addmm(b, x, W)``, ``mm(x, W)`` and ``matmul(x, W)`` whose weight operand is
a parameter, buffer or constant, either directly (GPT-2's ``Conv1D``, ``x @ W``) or through a transpose (what
``run_decompositions()`` makes of ``nn.Linear``), become ``linear(x, W', b)`` with ``W'`` of shape ``[out, in]``.
A weight used untransposed is transposed once in the program's state under the same name, so config patterns
and reports keep its name. Where a decomposed program flattened a ``[..., K]`` input to 2-D around the matmul,
the flatten and unflatten are folded away: the linear sees one row per token as in the undecomposed program
(per-token modality routing needs that). Left as they are, and named in the counts' ``float_matmuls`` and in a
warning: weights used both transposed and not, or also by other ops; ``addmm`` with ``alpha``/``beta`` or a 2-D
bias; ``bmm``; a weight as the left operand.

Example:
    ``addmm(p_c_bias, view(x, [B*T, K]), p_c_weight)`` -> ``linear(x, p_c_weight, p_c_bias)``, with
    ``c.weight`` stored transposed (``[N, K]``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..graph.export import call_with_meta, placeholder_targets
from ..graph.linears import float_matmuls
from .base import PassContext, PassResult

__all__ = ["run", "EMPTY"]

log = logging.getLogger(__name__)

aten = torch.ops.aten
# op -> (input operand, weight operand)
_OPERANDS = {aten.addmm.default: (1, 2), aten.mm.default: (0, 1), aten.matmul.default: (0, 1)}
_FLATTENS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}

EMPTY = {"linears": 0, "transposed_weights": 0, "folded_flattens": 0, "float_matmuls": []}


class _Candidate(NamedTuple):
    node: fx.Node
    weight: fx.Node  # the weight's placeholder
    transposed: bool  # the operand is the placeholder transposed, i.e. the placeholder is already [out, in]


def _is_transpose(node: fx.Node) -> bool:
    if node.op != "call_function" or not isinstance(node.args[0], fx.Node):
        return False
    val = node.args[0].meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2:
        return False
    if node.target is aten.t.default:
        return True
    if node.target is aten.permute.default:
        return list(node.args[1]) == [1, 0]
    if node.target is aten.transpose.int:
        return {d % 2 for d in node.args[1:3]} == {0, 1}
    return False


def _candidate(node: fx.Node, constants: set[str]) -> _Candidate | None:
    if node.op != "call_function" or node.target not in _OPERANDS:
        return None
    x_index, w_index = _OPERANDS[node.target]
    if len(node.args) <= w_index or not isinstance(node.args[x_index], fx.Node):
        return None
    w, flips = node.args[w_index], 0
    while isinstance(w, fx.Node) and _is_transpose(w):
        w, flips = w.args[0], flips + 1
    if not isinstance(w, fx.Node) or w.op != "placeholder" or w.name not in constants:
        return None
    wval, xval = w.meta.get("val"), node.args[x_index].meta.get("val")
    if not isinstance(wval, torch.Tensor) or wval.dim() != 2 or not isinstance(xval, torch.Tensor):
        return None
    if node.target is aten.addmm.default:
        bias = node.args[0]
        out = wval.shape[0] if flips % 2 else wval.shape[1]
        plain = all(node.kwargs.get(k, 1) == 1 for k in ("alpha", "beta"))
        bval = bias.meta.get("val") if isinstance(bias, fx.Node) else None
        if not plain or not isinstance(bval, torch.Tensor) or bval.dim() != 1 or bval.shape[0] != out:
            return None
    return _Candidate(node, w, bool(flips % 2))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(statically_known_true(i == j) for i, j in zip(a, b))


def _folded(node: fx.Node, x: fx.Node) -> tuple[fx.Node, fx.Node]:
    """(input, node to replace): the flattened input's source and the unflatten after the matmul when the matmul
    only flattens ``[..., K]`` to 2-D and back; else ``(x, node)``."""
    if x.op != "call_function" or x.target not in _FLATTENS or len(node.users) != 1:
        return x, node
    source, (after,) = x.args[0], node.users
    if not isinstance(source, fx.Node) or after.op != "call_function" or after.target not in _FLATTENS:
        return x, node
    sval, aval, xval = source.meta.get("val"), after.meta.get("val"), x.meta.get("val")
    if after.args[0] is not node or not all(isinstance(v, torch.Tensor) for v in (sval, aval, xval)):
        return x, node
    if sval.dim() < 3 or xval.dim() != 2:
        return x, node
    if not _same(sval.shape[-1:], xval.shape[-1:]) or not _same(sval.shape[:-1], aval.shape[:-1]):
        return x, node
    return source, after


def _transpose_storage(ep: ExportedProgram, placeholder: fx.Node, target: str) -> None:
    store = ep.state_dict if target in ep.state_dict else ep.constants
    old = store[target]
    new = old.detach().t().contiguous()
    store[target] = (
        torch.nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) else new
    )
    val = placeholder.meta["val"]
    with detect_fake_mode([val]):
        placeholder.meta["val"] = val.t().contiguous()


def _erase_unused(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the transposes and flattens that fed a rewritten matmul once nothing reads them (not a general dead
    code pass: in-place ops of the graph must stay)."""
    while nodes:
        node = nodes.pop()
        if node.op == "call_function" and not node.users and (_is_transpose(node) or node.target in _FLATTENS):
            nodes.extend(a for a in node.args if isinstance(a, fx.Node))
            graph.erase_node(node)


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    targets = placeholder_targets(ep)
    constants = {name for name, (_, target) in targets.items() if target is not None}
    by_weight: dict[fx.Node, list[_Candidate]] = {}
    for node in ep.graph.nodes:
        found = _candidate(node, constants)
        if found is not None:
            by_weight.setdefault(found.weight, []).append(found)
    counts = {"linears": 0, "transposed_weights": 0, "folded_flattens": 0}
    graph = ep.graph
    for weight, uses in by_weight.items():
        if any(c.transposed for c in uses):
            if not all(c.transposed for c in uses):
                continue  # used both ways: one stored layout cannot serve both
        else:
            if set(weight.users) != {c.node for c in uses}:
                continue  # something else reads the [in, out] layout
            _transpose_storage(ep, weight, targets[weight.name][1])
            counts["transposed_weights"] += 1
        for c in uses:
            x_index, w_index = _OPERANDS[c.node.target]
            x, replaced = _folded(c.node, c.node.args[x_index])
            bias = c.node.args[0] if c.node.target is aten.addmm.default else None
            with graph.inserting_before(replaced):
                linear = call_with_meta(graph, aten.linear.default, (x, weight, bias))
            linear.meta.update({k: v for k, v in c.node.meta.items() if k not in ("val", "tensor_meta")})
            replaced.replace_all_uses_with(linear)
            operands = [a for a in c.node.args if isinstance(a, fx.Node)]
            graph.erase_node(replaced)
            if replaced is not c.node:
                graph.erase_node(c.node)
                counts["folded_flattens"] += 1
            _erase_unused(graph, operands)
            counts["linears"] += 1
    if counts["linears"]:
        ep.graph_module.recompile()
    counts["float_matmuls"] = float_matmuls(ep)
    if counts["float_matmuls"]:
        names = counts["float_matmuls"]
        log.warning(
            "%d matmul-like nodes with a constant weight could not be made linears and stay float: %s",
            len(names),
            ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
        )
    return PassResult(ep, counts)
