"""smooth_quant: SmoothQuant's per-channel migration of activation range into the weights (baseline method).

Needs: ``calibrate`` (``ctx.stats``). Runs when the recipe has :class:`mqcompile.recipes.SmoothQuant`. For every
group of activation-quantized linears that read the same input ``x``: ``s_k = max|x_k|^a / max_n|W_nk|^(1-a)``
(a = ``SmoothQuant.alpha``); weights become ``W * s`` (``plan.weight``) and the input ``x / s``. The division
is folded into the producer when it is a norm whose affine parameters nothing else reads (RMSNorm's trailing
``mul`` by its weight, or ``layer_norm``'s weight and bias, replaced in the program's state dict); otherwise
``plan.act_multiplier = 1 / s`` and the rewrite multiplies before quantizing.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from .. import recipes
from ..config import SCHEMES
from ..graph import meta
from ..graph.export import placeholder_targets
from ..graph.linears import linear_nodes
from .base import PassContext, PassResult
from .plan import current_weight

__all__ = ["run", "smoothing_factors", "EMPTY"]

EMPTY = {"groups": 0, "linears": 0, "folded": 0, "explicit": 0}


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = act^alpha / w^(1-alpha)``, guarded so dead channels get 1."""
    a, w = act_absmax.float().clamp_min(1e-5), weight_absmax.float().clamp_min(1e-5)
    s = a.pow(alpha) / w.pow(1 - alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def _param(ep: ExportedProgram, node, targets) -> str | None:
    if isinstance(node, fx.Node) and node.op == "placeholder" and len(node.users) == 1:
        target = targets.get(node.name, (None, None))[1]
        return target if target in ep.state_dict else None
    return None


def _norm_params(ep: ExportedProgram, x: fx.Node, group: list[fx.Node], targets) -> list[tuple[str, bool]]:
    """State-dict targets to divide by ``s`` (with whether it is a bias), or [] when the producer can't absorb it."""
    if set(x.users) != set(group) or x.op != "call_function":
        return []
    k = int(x.meta["val"].shape[-1])
    if x.target == torch.ops.aten.mul.Tensor:
        for arg in x.args:
            target = _param(ep, arg, targets)
            if target is not None and tuple(ep.state_dict[target].shape) == (k,):
                return [(target, False)]
    if x.target == torch.ops.aten.layer_norm.default and len(x.args) >= 4:
        weight, bias = _param(ep, x.args[2], targets), _param(ep, x.args[3], targets)
        if weight is not None and bias is not None:
            return [(weight, False), (bias, True)]
    return []


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts = {"groups": 0, "linears": 0, "folded": 0, "explicit": 0}
    alpha = ctx.config.algorithm(recipes.SmoothQuant).alpha
    targets = placeholder_targets(ep)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in linear_nodes(ep.graph):
        info = meta.get(node)
        if SCHEMES[info["scheme"]].act_bits is not None and info["weight"] != "dynamic":
            groups.setdefault(node.args[0], []).append(node)
    for x, group in groups.items():
        names = [meta.get(n)["name"] for n in group]
        weights = [current_weight(ep, n, ctx.plans, targets) for n in group]
        w_absmax = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)
        s = smoothing_factors(ctx.stats[names[0]].merged_absmax(), w_absmax, alpha)
        for name, w in zip(names, weights):
            ctx.plan(name).weight = (w.detach().float() * s).to(w.dtype)
        fold = _norm_params(ep, x, group, targets)
        for target, _ in fold:
            old = ep.state_dict[target]
            ep.state_dict[target] = torch.nn.Parameter((old.detach().float() / s).to(old.dtype), requires_grad=False)
        if not fold:
            for name in names:
                ctx.plan(name).act_multiplier = 1.0 / s
        counts["groups"] += 1
        counts["linears"] += len(group)
        counts["folded" if fold else "explicit"] += len(group)
    return PassResult(ep, counts)
