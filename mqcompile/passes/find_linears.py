"""find_linears: mark every ``aten.linear`` node and describe it.

Needs: an ExportedProgram (``aten.linear.default`` kept, i.e. not decomposed to core aten). Guarantees: each linear
node carries meta ``linear=True``, ``name`` (the weight's state-dict path without ``.weight``, else the node name;
the k-th further use of the same weight, tied or a module called again, is ``<name>#k``, so every linear has a
plan, statistics and buffers of its own while config patterns match the base name),
``in_features``, ``out_features``, ``has_bias``, ``weight`` (``parameter``/``buffer``/``constant``/``dynamic``).
Only weights known ahead of time can be quantized offline; ``dynamic`` ones are reported and left alone later.
"""

from __future__ import annotations

from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from ..graph import meta
from ..graph.export import placeholder_targets
from ..graph.linears import linear_nodes
from .base import PassContext, PassResult

__all__ = ["run"]

_KINDS = {InputKind.PARAMETER: "parameter", InputKind.BUFFER: "buffer", InputKind.CONSTANT_TENSOR: "constant"}


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    targets = placeholder_targets(ep)
    counts = {"linears": 0, "dynamic_weight": 0}
    taken: dict[str, int] = {}
    for node in linear_nodes(ep.graph):
        weight = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        kind, target = targets.get(weight.name, (None, None)) if weight.op == "placeholder" else (None, None)
        weight_kind = _KINDS.get(kind, "dynamic")
        name = target[: -len(".weight")] if target and target.endswith(".weight") else (target or node.name)
        uses = taken.get(name, 0)
        taken[name] = uses + 1
        if uses:  # a tied weight or a module called twice: each use is its own linear, with its own plan
            name = f"{name}#{uses}"
        out_features, in_features = (int(s) for s in weight.meta["val"].shape)
        meta.set_fields(
            node,
            linear=True,
            name=name,
            in_features=in_features,
            out_features=out_features,
            has_bias=bias is not None,
            weight=weight_kind,
        )
        counts["linears"] += 1
        counts["dynamic_weight"] += weight_kind == "dynamic"
    return PassResult(ep, counts)
