"""insert_modality_ids: compute per-token modality ids in the graph for fused linears.

Needs: ``select_schemes``. Guarantees: when ``QuantConfig.modality_token_ids`` is set and the program has an
integer text source (:func:`mqcompile.graph.linears.text_source`), one node computes ``ids[b, t]`` (index into
``mqcompile.config.MODALITIES``: vision/audio where the token is one of their placeholder ids, text elsewhere, by
the rule of :func:`mqcompile.graph.linears.modality_id_steps`, which calibration applies too) from it, and every
fused linear with quantized activations whose token dims equal the text input's dims gets meta ``modality_ids`` =
that node's name. Other fused linears share one set of parameters (warned once with the count).
"""

from __future__ import annotations

import logging

import torch
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..config import SCHEMES
from ..graph import meta
from ..graph.export import call_with_meta
from ..graph.linears import linear_nodes, modality_id_steps, text_source
from .base import PassContext, PassResult

__all__ = ["run"]

log = logging.getLogger(__name__)


def _same_token_dims(x: torch.Tensor, ids: torch.Tensor) -> bool:
    tokens = tuple(x.shape[:-1])
    return len(tokens) == ids.dim() and all(statically_known_true(a == b) for a, b in zip(tokens, ids.shape))


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    fused = [
        n
        for n in linear_nodes(ep.graph)
        if meta.get(n)["modality"] == "fused" and SCHEMES[meta.get(n)["scheme"]].act_bits is not None
    ]
    counts = {"fused_quantized": len(fused), "routed": 0, "shared": 0, "id_nodes": 0}
    if not fused:
        return PassResult(ep, counts)
    source = text_source(ep, ctx.config.sources)
    token_ids = ctx.config.modality_token_ids
    if source is None or not token_ids:
        why = "no modality_token_ids in the config" if source is not None else "no integer text input"
        log.warning("%d fused linears share one set of parameters across modalities (%s)", len(fused), why)
        counts["shared"] = len(fused)
        return PassResult(ep, counts)

    graph = ep.graph
    first_op = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first_op):
        ids = call_with_meta(graph, torch.ops.aten.zeros_like.default, (source,))
        for value, index in modality_id_steps(token_ids):
            mask = call_with_meta(graph, torch.ops.aten.eq.Scalar, (source, value))
            ids = call_with_meta(graph, torch.ops.aten.where.ScalarSelf, (mask, index, ids))
    meta.set_fields(ids, modality_ids=True)
    counts["id_nodes"] = 1
    for node in fused:
        if _same_token_dims(node.args[0].meta["val"], ids.meta["val"]):
            meta.set_fields(node, modality_ids=ids.name)
            counts["routed"] += 1
        else:
            counts["shared"] += 1
    if counts["shared"]:
        log.warning("%d fused linears do not see one row per input token; they share parameters", counts["shared"])
    return PassResult(ep, counts)
