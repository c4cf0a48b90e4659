"""gptq: choose weight codes by GPTQ error feedback on each linear's calibration tokens (optional).

Needs: ``calibrate`` and, when present, ``smooth_quant``/``mdqfo`` (their weights, clips and shifts define the grid
and the inputs). Runs when ``config.weight_rounding == "gptq"``. Guarantees: for every weight-quantized linear with
calibration tokens, ``ctx.tensors[name]["weight_codes"]`` (int8 ``[N, K]``) and ``["weight_scale"]`` (the grid,
unchanged from round-to-nearest with MDQFO's ``gamma``); ``rewrite_linears`` stores those codes. The tokens are
what the weights multiply: the reservoir (already rotated when ``rotate``), times SmoothQuant's multiplier, minus
the DABC shift of their modality. Solver: :func:`mqcompile.solvers.gptq_codes`.
"""

from __future__ import annotations

import logging

import torch
from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .. import meta
from ..config import SCHEMES
from ..graph_utils import placeholder_targets
from ..kernels.reference import quantize_weight_ref
from ..solvers import gptq_codes
from .base import PassContext, PassResult
from .find_linears import current_weight, linear_nodes
from .rewrite_linears import table_value

__all__ = ["run", "weight_tokens"]

log = logging.getLogger(__name__)


def weight_tokens(stats, extra: dict, routed: bool) -> torch.Tensor | None:
    """The calibration tokens as the quantized weights see them, all modalities together (``None``: no tokens);
    each group loses the DABC shift the deployed linear subtracts from it (:func:`table_value`, as the rewrite)."""
    shifts = extra.get("shift", {})
    rows = []
    for key, tokens in stats.token_groups().items():
        t = tokens.float()
        if "act_multiplier" in extra:
            t = t * extra["act_multiplier"].float()
        shift = table_value(shifts, key if routed else None) if shifts else None
        rows.append(t if shift is None else t - shift.float())
    return torch.cat(rows) if rows else None


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts = {"linears": 0, "no_tokens": 0}
    if ctx.config.weight_rounding != "gptq":
        return PassResult(ep, counts)
    targets = placeholder_targets(ep)
    nodes = [n for n in linear_nodes(ep.graph) if SCHEMES[meta.get(n)["scheme"]].weight_bits is not None]
    for node in tqdm(nodes, desc="gptq", unit="linear", disable=not ctx.progress, leave=False):
        info = meta.get(node)
        name, bits = info["name"], SCHEMES[info["scheme"]].weight_bits
        extra = ctx.tensors.setdefault(name, {})
        stats = ctx.stats.get(name)
        tokens = None if stats is None else weight_tokens(stats, extra, bool(info.get("modality_ids")))
        if tokens is None or not len(tokens):
            log.warning("linear %s: no calibration tokens reached it; its weights keep round-to-nearest", name)
            counts["no_tokens"] += 1
            continue
        weight = current_weight(ep, node, ctx.tensors, targets).detach().float()
        group = ctx.config.group_for(weight.shape[1])
        _, scale = quantize_weight_ref(weight, bits, group, extra.get("gamma"))
        extra["weight_codes"] = gptq_codes(weight, tokens, scale, bits, damp=ctx.config.gptq_damp)
        extra["weight_scale"] = scale
        counts["linears"] += 1
    return PassResult(ep, counts)
