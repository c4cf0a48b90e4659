"""rotate: plan a block-diagonal randomized Hadamard rotation for each activation-quantized linear.

Runs when the recipe has :class:`mqcompile.recipes.Rotate`. Guarantees: for every activation-quantized linear with
a static weight and an even K, ``plan.rotation`` is the ``[B, B]`` orthogonal block (see
:mod:`mqcompile.solvers.rotation`) and ``plan.weight`` the weight with the rotation folded in. The graph is not
edited here: ``calibrate`` observes rotated inputs, the solvers see the rotated weight, and ``rewrite_linears``
inserts the online rotation before quantizing, so float outputs are unchanged.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from .. import recipes
from ..graph import meta
from ..graph.export import placeholder_targets
from ..graph.linears import act_quantized, linear_nodes
from ..solvers import block_size, rotate_weight, rotation_block
from .base import PassContext, PassResult
from .plan import current_weight

__all__ = ["run", "EMPTY"]

EMPTY = {"linears": 0, "blocks": {}}


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict = {"linears": 0, "blocks": {}}
    cfg = ctx.config.algorithm(recipes.Rotate)
    targets = placeholder_targets(ep)
    blocks = {}
    for node in linear_nodes(ep.graph):
        if not act_quantized(node):
            continue
        info = meta.get(node)
        b = block_size(info["in_features"], cfg.max_block)
        if b < 2:
            continue  # odd K: nothing to rotate over
        q = blocks.setdefault(b, rotation_block(b, ctx.config.seed))
        weight = current_weight(ep, node, ctx.plans, targets)
        plan = ctx.plan(info["name"])
        plan.rotation, plan.weight = q, rotate_weight(weight, q)
        counts["linears"] += 1
        counts["blocks"][b] = counts["blocks"].get(b, 0) + 1
    return PassResult(ep, counts)
