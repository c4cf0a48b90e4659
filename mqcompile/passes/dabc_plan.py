"""dabc_plan: choose DABC channel masks and centers per activation-quantized linear and modality.

Needs: ``calibrate`` (``ctx.stats``). Runs for methods in ``config.DABC_METHODS``. Guarantees: ``ctx.plans[name]``
maps each modality key of the linear (``text``/``vision``/``audio`` for routed fused linears, the linear's own
modality otherwise, ``shared`` when a routed linear's calibration lacks a modality) to a
:class:`mqcompile.solvers.DabcPlan`. Planning is :func:`mqcompile.solvers.plan_dabc` on the calibration reservoir.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from .. import meta
from ..config import DABC_METHODS, SCHEMES
from ..solvers import plan_dabc
from .base import PassContext, PassResult
from .find_linears import linear_nodes

__all__ = ["run", "expected_modalities", "act_quantized"]


def act_quantized(node) -> bool:
    info = meta.get(node)
    return SCHEMES[info["scheme"]].act_bits is not None and info["weight"] != "dynamic"


def expected_modalities(node, ctx: PassContext) -> list[str] | None:
    """Modality keys a routed fused linear needs parameters for (None for linears without routing)."""
    if not meta.get(node).get("modality_ids"):
        return None
    return ["text", *ctx.config.modality_token_ids]


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts = {"linears": 0, "shifted_channels": 0, "plans": 0}
    if ctx.config.method not in DABC_METHODS:
        return PassResult(ep, counts)
    for node in linear_nodes(ep.graph):
        if not act_quantized(node):
            continue
        name = meta.get(node)["name"]
        groups = ctx.stats[name].token_groups(expected_modalities(node, ctx))
        ctx.plans[name] = {m: plan_dabc(x, ctx.config.dabc_max_channels) for m, x in groups.items()}
        counts["linears"] += 1
        counts["plans"] += len(groups)
        counts["shifted_channels"] += sum(int(p.mask.sum()) for p in ctx.plans[name].values())
    return PassResult(ep, counts)
