"""A program's repeated blocks (transformer layers) as graph segments, and running one segment at a time.

The graph (in its execution order) is cut into contiguous segments. A node's *block key* is the outermost module
path in its ``nn_module_stack`` with an integer component, cut after it (``model.layers.3.mlp.up_proj`` ->
``model.layers.3``): one element of a module list. Nodes without a module of their own (residual adds and reshapes
written inline in a parent's forward; torch.export records only the root for them) continue the segment they
follow; a node of any other module (embedding, final norm, projector) starts a segment between blocks (key
``None``). Any contiguous cut runs correctly, since every value a segment reads from before it is one of its
``inputs``; the key only decides which nodes form the unit whose outputs a block-wise loss compares.

Example:
    >>> segs = segments(ep.graph)  # doctest: +SKIP
    >>> [s.key for s in segs if s.key][:2]  # doctest: +SKIP
    ['model.layers.0', 'model.layers.1']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from .interpret import NodeInterpreter

__all__ = ["Segment", "block_key", "segments", "run_segment"]

_INLINE = object()  # a node recorded under the root module only: belongs to the segment it follows

LinearFn = Callable[..., Any]


@dataclass
class Segment:
    key: str | None  # block key; None between blocks
    nodes: list[fx.Node] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)  # values it reads from before it (placeholders included)
    outputs: list[fx.Node] = field(default_factory=list)  # its values read after it (or returned by the graph)


def block_key(node: fx.Node):
    """The node's block key, ``None`` for a module that is not a module-list element, or ``_INLINE``."""
    paths = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values() if path]
    if not paths:
        return _INLINE
    for path in paths:  # outermost first
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                return ".".join(parts[: i + 1])
    return None


def segments(graph: fx.Graph) -> list[Segment]:
    """The graph's computation (every node but placeholders and the output) cut into :class:`Segment` s."""
    out: list[Segment] = []
    current = None
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        key = block_key(node)
        current = current if key is _INLINE else key
        if not out or out[-1].key != current:
            out.append(Segment(current))
        out[-1].nodes.append(node)
    for seg in out:
        members = set(seg.nodes)
        seen: set[fx.Node] = set()
        for node in seg.nodes:
            for arg in node.all_input_nodes:
                if arg not in members and arg not in seen:
                    seen.add(arg)
                    seg.inputs.append(arg)
        seg.outputs = [n for n in seg.nodes if any(user not in members for user in n.users)]
    return out


def run_segment(
    gm: fx.GraphModule,
    seg: Segment,
    values: dict[fx.Node, Any],
    linear: LinearFn | None = None,
    replace: Callable[[fx.Node], bool] = lambda n: False,
    keep: frozenset[fx.Node] = frozenset(),
) -> dict[fx.Node, Any]:
    """Run ``seg``'s nodes on ``values`` (which must hold every node of ``seg.inputs``); returns its outputs and
    the values of its nodes in ``keep``.

    ``linear(node, *args, **kwargs)`` computes each node ``replace`` selects instead of the node's own op (a
    quantized stand-in for ``aten.linear``). Gradients flow when the inputs or the stand-in's parameters need them.
    """
    runner = NodeInterpreter(gm, replace=replace, stand_in=linear, garbage_collect_values=False)
    runner.env = {n: values[n] for n in seg.inputs}
    for node in seg.nodes:
        runner.env[node] = runner.run_node(node)
    wanted = set(seg.outputs) | set(keep)
    return {n: runner.env[n] for n in seg.nodes if n in wanted}
