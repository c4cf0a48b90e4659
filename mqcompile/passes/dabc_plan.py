"""dabc_plan: choose DABC channel masks and centers per activation-quantized linear and modality.

Needs: ``calibrate`` (``ctx.stats``). Runs when the recipe has :class:`mqcompile.recipes.DABC`. Guarantees:
``plan.dabc`` maps each modality key of the linear (``text``/``vision``/``audio`` for routed fused linears, the
linear's own modality otherwise, ``shared`` when a routed linear's calibration lacks a modality) to a
:class:`mqcompile.solvers.DabcPlan`, and ``plan.shift`` to its shift ``mask * center`` (what deployment subtracts
unless MDQFO changes the masks). Planning is :func:`mqcompile.solvers.plan_dabc` on the calibration reservoir.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from .. import recipes
from ..graph import meta
from ..graph.linears import act_quantized, linear_nodes
from ..solvers import plan_dabc
from .base import PassContext, PassResult
from .plan import expected_modalities

__all__ = ["run", "EMPTY"]

EMPTY = {"linears": 0, "shifted_channels": 0, "plans": 0}


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts = {"linears": 0, "shifted_channels": 0, "plans": 0}
    max_channels = ctx.config.algorithm(recipes.DABC).max_channels
    for node in linear_nodes(ep.graph):
        if not act_quantized(node):
            continue
        name = meta.get(node)["name"]
        groups = ctx.stats[name].token_groups(expected_modalities(node, ctx.config.modality_token_ids))
        plan = ctx.plan(name)
        plan.dabc = {m: plan_dabc(x, max_channels) for m, x in groups.items()}
        plan.shift = {m: p.center * p.mask for m, p in plan.dabc.items()}
        counts["linears"] += 1
        counts["plans"] += len(groups)
        counts["shifted_channels"] += sum(int(p.mask.sum()) for p in plan.dabc.values())
    return PassResult(ep, counts)
