"""mdqfo: optimize each activation-quantized linear's quantization function (clips, DABC masks/shifts).

Needs: ``calibrate`` and, for DABC methods, ``dabc_plan``. Runs for methods in ``config.MDQFO_METHODS``:
``dabc`` keeps the DABC plan as is (no optimization), ``mdqfo_clips`` optimizes clips without DABC,
``morphoquant`` optimizes clips and masks starting from the DABC plan. Guarantees: ``ctx.tensors[name]`` holds
``gamma`` [N, 1], ``act_clip`` and ``shift`` (modality key -> value) for every such linear; the per-linear loss
(RTN, start, after) is in the pass's counts under ``losses``. The solver is
:func:`mqcompile.solvers.optimize_linear`; the loss never rises above its starting point.
"""

from __future__ import annotations

from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .. import meta
from ..config import MDQFO_METHODS, SCHEMES
from ..graph_utils import placeholder_targets
from ..solvers import MdqfoOptions, optimize_linear
from .base import PassContext, PassResult
from .dabc_plan import act_quantized, expected_modalities
from .find_linears import current_weight, linear_nodes

__all__ = ["run", "options_for"]


def options_for(ctx: PassContext, scheme, group_size: int) -> MdqfoOptions:
    method = ctx.config.method
    return MdqfoOptions(
        w_bits=scheme.weight_bits,
        a_bits=scheme.act_bits,
        group_size=group_size,
        morph_weight=ctx.config.morph_weight,
        optimize_clips=method != "dabc",
        optimize_act_clips=ctx.config.mdqfo_act_clips,
        optimize_masks=method == "morphoquant",
        ste_steps=ctx.config.mdqfo_ste_steps,
        time_budget_s=ctx.config.mdqfo_time_budget_s,
        seed=ctx.config.seed,
    )


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict = {"linears": 0, "improved": 0, "losses": {}}
    if ctx.config.method not in MDQFO_METHODS:
        return PassResult(ep, counts)
    targets = placeholder_targets(ep)
    nodes = [n for n in linear_nodes(ep.graph) if act_quantized(n)]
    for node in tqdm(nodes, desc="mdqfo", unit="linear", disable=not ctx.progress, leave=False):
        info = meta.get(node)
        name = info["name"]
        weight = current_weight(ep, node, ctx.tensors, targets)
        group = ctx.config.group_for(info["in_features"])
        tokens = ctx.stats[name].token_groups(expected_modalities(node, ctx))
        plans = ctx.plans.get(name)
        if plans is not None and set(plans) != set(tokens):
            plans = None
        res = optimize_linear(weight, tokens, options_for(ctx, SCHEMES[info["scheme"]], group), plans)
        ctx.tensors.setdefault(name, {}).update(gamma=res.gamma, act_clip=res.alpha, shift=res.shift)
        counts["linears"] += 1
        counts["improved"] += res.loss_after < res.loss_rtn
        counts["losses"][name] = [res.loss_rtn, res.loss_start, res.loss_after]
    return PassResult(ep, counts)
