"""tag_modality: tag every linear with its modality path by data flow.

Needs: ``find_linears``. Guarantees: each linear's meta has ``modality`` (``text``/``vision``/``audio``, or ``fused``
when tokens of several modalities reach it) and ``sources`` (sorted modalities reaching it), and ``tagged_by``
(``data_flow``, or ``module_path`` for a linear no source reaches, tagged from its ``nn_module_stack`` as a hint).

Only tensor values propagate a modality (sizes do not). Data flow rather than module names because
``nn_module_stack`` paths differ across transformers versions (see DESIGN.md). Sources come from
``QuantConfig.sources`` or, by default, from the input names in ``mqcompile.graph.linears.DEFAULT_SOURCES``; a
program with none of those names (any other model) treats all its inputs as one text source.
"""

from __future__ import annotations

import logging

import networkx as nx
import torch
import torch.fx as fx
from torch.export import ExportedProgram

from ..graph import meta
from ..graph.linears import linear_nodes, resolve_sources
from .base import PassContext, PassResult

__all__ = ["run", "data_flow_graph"]

log = logging.getLogger(__name__)

_PATH_HINTS = (("visual", "vision"), ("vision", "vision"), ("audio", "audio"))


def _view_base(node: fx.Node) -> fx.Node:
    while isinstance(node.target, torch._ops.OpOverload) and node.target.is_view and node.args:
        node = node.args[0]
    return node


def _mutated_args(node: fx.Node) -> list[fx.Node]:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return []
    out = []
    for arg, spec in zip(node.args, node.target._schema.arguments):
        if isinstance(arg, fx.Node) and spec.alias_info is not None and spec.alias_info.is_write:
            out.append(arg)
    return out


def _carries_data(node: fx.Node) -> bool:
    """Tensors carry token data; sizes and other scalars (``sym_size``, ``.item()``) carry only shape facts. A shared
    dynamic batch dim would otherwise make ``input_ids`` "reach" every audio linear through a reshape."""
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) for v in val)
    return val is None or isinstance(val, torch.Tensor)


def data_flow_graph(graph: fx.Graph) -> nx.DiGraph:
    """Value edges of the fx graph (tensor values only), plus an edge from every in-place op to the base tensor it
    writes into (``h[:, a:b] = img`` writes image data into ``h`` through a view; without this edge it would look
    text-only)."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node.name)
        if not _carries_data(node):
            continue
        for user in node.users:
            g.add_edge(node.name, user.name)
        for target in _mutated_args(node):
            g.add_edge(node.name, _view_base(target).name)
    return g


def _hint(node: fx.Node) -> str:
    paths = " ".join(str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()).lower()
    for needle, modality in _PATH_HINTS:
        if needle in paths:
            return modality
    return "text"


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    sources = resolve_sources(ep, ctx.config.sources)
    flow = data_flow_graph(ep.graph)
    reach: dict[str, set[str]] = {}
    for name, modality in sources.items():
        for desc in nx.descendants(flow, name):
            reach.setdefault(desc, set()).add(modality)
    counts = {"text": 0, "vision": 0, "audio": 0, "fused": 0, "by_module_path": 0}
    for node in linear_nodes(ep.graph):
        mods = sorted(reach.get(node.name, ()))
        if mods:
            path, how = (mods[0] if len(mods) == 1 else "fused"), "data_flow"
        else:
            path, how = _hint(node), "module_path"
            counts["by_module_path"] += 1
        meta.set_fields(node, modality=path, sources=mods, tagged_by=how)
        counts[path] += 1
    return PassResult(ep, counts)
