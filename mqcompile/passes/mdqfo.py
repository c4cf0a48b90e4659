"""mdqfo: optimize each activation-quantized linear's quantization function (clips, DABC masks/shifts).

Needs: ``calibrate`` and, with DABC in the recipe, ``dabc_plan``. Runs when the recipe has
:class:`mqcompile.recipes.MDQFO`: clips always, DABC's masks too when ``MDQFO.masks`` (starting from the DABC
plan). Guarantees: ``plan.gamma`` [N, 1], ``plan.act_clip`` and ``plan.shift`` (modality key -> value) for every
such linear; the per-linear loss (RTN, start, after) is in the pass's counts under ``losses``. The solver is
:func:`mqcompile.solvers.optimize_linear`; the loss never rises above its starting point.
"""

from __future__ import annotations

from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .. import recipes
from ..config import SCHEMES
from ..graph import meta
from ..graph.export import placeholder_targets
from ..graph.linears import act_quantized, linear_nodes
from ..solvers import MdqfoOptions, optimize_linear
from .base import PassContext, PassResult
from .plan import current_weight, expected_modalities

__all__ = ["run", "options_for", "EMPTY"]

EMPTY = {"linears": 0, "improved": 0, "losses": {}}


def options_for(cfg: recipes.MDQFO, scheme, group_size: int, seed: int) -> MdqfoOptions:
    return MdqfoOptions(
        w_bits=scheme.weight_bits,
        a_bits=scheme.act_bits,
        act_asym=scheme.act_asym,
        group_size=group_size,
        morph_weight=cfg.morph_weight,
        optimize_clips=True,
        optimize_act_clips=cfg.act_clips,
        optimize_masks=cfg.masks,
        ste_steps=cfg.ste_steps,
        time_budget_s=cfg.time_budget_s,
        seed=seed,
    )


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict = {"linears": 0, "improved": 0, "losses": {}}
    cfg = ctx.config.algorithm(recipes.MDQFO)
    targets = placeholder_targets(ep)
    nodes = [n for n in linear_nodes(ep.graph) if act_quantized(n)]
    for node in tqdm(nodes, desc="mdqfo", unit="linear", disable=None if ctx.progress else True, leave=False):
        info = meta.get(node)
        name = info["name"]
        weight = current_weight(ep, node, ctx.plans, targets)
        group = ctx.config.group_for(info["in_features"])
        tokens = ctx.stats[name].token_groups(expected_modalities(node, ctx.config.modality_token_ids))
        plan = ctx.plan(name)
        dabc = plan.dabc if plan.dabc and set(plan.dabc) == set(tokens) else None
        opts = options_for(cfg, SCHEMES[info["scheme"]], group, ctx.config.seed)
        res = optimize_linear(weight, tokens, opts, dabc)
        plan.gamma, plan.act_clip, plan.shift = res.gamma, res.alpha, res.shift
        counts["linears"] += 1
        counts["improved"] += res.loss_after < res.loss_rtn
        counts["losses"][name] = [res.loss_rtn, res.loss_start, res.loss_after]
    return PassResult(ep, counts)
