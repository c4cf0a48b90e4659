"""gptq: choose weight codes by GPTQ error feedback on each linear's calibration tokens (optional).

Needs: ``calibrate`` and, when present, ``smooth_quant``/``mdqfo`` (their weights, clips and shifts define the grid
and the inputs). Runs when the recipe has :class:`mqcompile.recipes.GPTQ`. Guarantees: for every weight-quantized
linear with calibration tokens, ``plan.weight_codes`` (int8 ``[N, K]``) and ``plan.weight_scale`` (the grid,
unchanged from round-to-nearest with MDQFO's ``gamma``); ``rewrite_linears`` stores those codes. The tokens are
what the weights multiply: the reservoir (already rotated when ``rotate``), times SmoothQuant's multiplier, through
a learned transform (``mdqfo_block``), minus the DABC shift of their modality. Solver:
:func:`mqcompile.solvers.gptq_codes`.
"""

from __future__ import annotations

import logging

import torch
from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .. import recipes
from ..config import SCHEMES
from ..graph import meta
from ..graph.export import placeholder_targets
from ..graph.linears import linear_nodes
from ..kernels.reference import weight_scale
from ..solvers import gptq_codes
from ..solvers.transform import kron_act
from .base import PassContext, PassResult
from .plan import LinearPlan, current_weight, table_value

__all__ = ["run", "weight_tokens", "EMPTY"]

EMPTY = {"linears": 0, "no_tokens": 0}

log = logging.getLogger(__name__)


def weight_tokens(stats, plan: LinearPlan, routed: bool) -> torch.Tensor | None:
    """The calibration tokens as the quantized weights see them, all modalities together (``None``: no tokens);
    each group loses the DABC shift the deployed linear subtracts from it (:func:`table_value`, as the rewrite)."""
    shifts = plan.shift
    rows = []
    for key, tokens in stats.token_groups().items():
        t = tokens.float()
        if plan.act_multiplier is not None:
            t = t * plan.act_multiplier.float()
        if plan.transform is not None:  # the reservoir holds rotated inputs; the learned factors come after
            t = kron_act(t, *plan.transform)
        shift = table_value(shifts, key if routed else None) if shifts else None
        rows.append(t if shift is None else t - shift.float())
    return torch.cat(rows) if rows else None


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts = {"linears": 0, "no_tokens": 0}
    damp = ctx.config.algorithm(recipes.GPTQ).damp
    targets = placeholder_targets(ep)
    nodes = [n for n in linear_nodes(ep.graph) if SCHEMES[meta.get(n)["scheme"]].weight_bits is not None]
    for node in tqdm(nodes, desc="gptq", unit="linear", disable=None if ctx.progress else True, leave=False):
        info = meta.get(node)
        name, bits = info["name"], SCHEMES[info["scheme"]].weight_bits
        plan = ctx.plan(name)
        stats = ctx.stats.get(name)
        tokens = None if stats is None else weight_tokens(stats, plan, bool(info.get("modality_ids")))
        if tokens is None or not len(tokens):
            log.warning("linear %s: no calibration tokens reached it; its weights keep round-to-nearest", name)
            counts["no_tokens"] += 1
            continue
        weight = current_weight(ep, node, ctx.plans, targets).detach().float()
        group = ctx.config.group_for(weight.shape[1])
        scale = weight_scale(weight, bits, group, plan.gamma)
        plan.weight_codes = gptq_codes(weight, tokens, scale, bits, damp=damp)
        plan.weight_scale = scale
        counts["linears"] += 1
    return PassResult(ep, counts)
