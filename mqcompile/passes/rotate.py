"""rotate: plan a block-diagonal randomized Hadamard rotation for each activation-quantized linear (optional).

Needs: ``select_schemes``. Runs when ``config.rotate``. Guarantees: for every activation-quantized linear with a
static weight, ``ctx.tensors[name]["rotation"]`` is the ``[B, B]`` orthogonal block (see
:mod:`mqcompile.solvers.rotation`) and ``ctx.tensors[name]["weight"]`` the weight with the rotation folded in. The
graph is not edited here: ``calibrate`` observes rotated inputs, the solvers see the rotated weight, and
``rewrite_linears`` inserts the online rotation before quantizing, so float outputs are unchanged.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from .. import meta
from ..graph_utils import placeholder_targets
from ..solvers import block_size, rotate_weight, rotation_block
from .base import PassContext, PassResult
from .dabc_plan import act_quantized
from .find_linears import current_weight, linear_nodes

__all__ = ["run"]


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict = {"linears": 0, "blocks": {}}
    if not ctx.config.rotate:
        return PassResult(ep, counts)
    targets = placeholder_targets(ep)
    blocks = {}
    for node in linear_nodes(ep.graph):
        if not act_quantized(node):
            continue
        info = meta.get(node)
        b = block_size(info["in_features"], ctx.config.rotate_max_block)
        if b < 2:
            continue  # odd K: nothing to rotate over
        q = blocks.setdefault(b, rotation_block(b, ctx.config.seed))
        extra = ctx.tensors.setdefault(info["name"], {})
        weight = current_weight(ep, node, ctx.tensors, targets)
        extra.update(rotation=q, weight=rotate_weight(weight, q))
        counts["linears"] += 1
        counts["blocks"][b] = counts["blocks"].get(b, 0) + 1
    return PassResult(ep, counts)
