"""mdqfo_block: refine MDQFO's clips jointly over each block (transformer layer) against the block's float output.

Needs: ``mdqfo`` (its clips and shifts are the starting point; ``rotate``/``smooth_quant`` results are honoured).
Runs when the recipe has :class:`mqcompile.recipes.BlockMDQFO` (which needs MDQFO) and calibration batches.
The program is cut into segments (:mod:`mqcompile.graph.blocks`) that run in order on every calibration batch twice:
in float (the targets) and quantized (every quantized linear replaced by :func:`mqcompile.solvers.block.fake_linear`
with its current parameters). In each block with activation-quantized linears, ``BlockMDQFO.steps`` Adam steps
(straight-through rounding, one calibration batch per step in seeded order) move every linear's weight clip
``gamma`` and activation clip rows together to lower :func:`mqcompile.solvers.block.output_loss` between the block's
quantized outputs, computed from the quantized blocks before it as deployment will feed it, and its float outputs.
With ``BlockMDQFO(transform=True)`` the same steps also move one invertible Kronecker-factored transform per
distinct input of the block's rotated linears (linears reading one value share it), starting at the identity on top
of ``rotate``'s Hadamard, so the start is exactly the rotated program (FlatQuant-style).
The new parameters are kept only when that loss over all batches drops; DABC shifts stay as MDQFO left them (moved
into the transformed space with the input when a transform is kept).
Guarantees: ``plan.gamma`` and ``plan.act_clip`` updated; with a kept transform ``plan.transform`` set and
``plan.weight``/``plan.shift`` in its space; counts ``blocks`` (tuned), ``improved``, ``transforms`` (kept),
``losses`` (block key -> [start, after]).
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .. import recipes
from ..config import MODALITIES, SCHEMES
from ..graph import meta
from ..graph.blocks import Segment, run_segment, segments
from ..graph.export import placeholder_targets
from ..graph.interpret import flat_inputs
from ..graph.linears import linear_nodes
from ..solvers.block import QuantLinear, fake_linear, output_loss
from ..solvers.transform import kron_act
from .base import PassContext, PassResult
from .plan import LinearPlan, act_tables, current_weight

__all__ = ["run", "EMPTY"]

log = logging.getLogger(__name__)

EMPTY = {"blocks": 0, "improved": 0, "transforms": 0, "losses": {}}
# Adam step on the clips (they live in [0.3, 1]). Measured on Qwen2-0.5B MorphoQuant + rotate, 10 steps: 5e-3 gave
# ppl 27.28 / 11.49 (wiki / pydoc), 2e-2 26.70 / 10.64, 5e-2 27.31 / 10.75 (per-linear only: 28.22 / 11.34)
LR = 2e-2
CLIP_RANGE = (0.3, 1.0)
# Adam step on the transform factors (they start at the identity); FlatQuant trains its transforms at 5e-3
LR_TRANSFORM = 5e-3


def _quant_linears(ep: ExportedProgram, ctx: PassContext) -> tuple[dict[fx.Node, QuantLinear], set[fx.Node]]:
    """Each quantized linear's stand-in (as ``rewrite_linears`` will build it), and the routed ones."""
    targets = placeholder_targets(ep)
    quant, routed = {}, set()
    for node in linear_nodes(ep.graph):
        info = meta.get(node)
        scheme = SCHEMES[info["scheme"]]
        if scheme.is_float:
            continue
        plan = ctx.plans.get(info["name"], LinearPlan())
        weight = current_weight(ep, node, ctx.plans, targets).detach().float()
        alpha = shift = None
        if scheme.act_bits is not None:
            alpha, shift, _ = act_tables(plan, bool(info.get("modality_ids")), weight)
            if info.get("modality_ids"):
                routed.add(node)
        gamma = plan.gamma  # None: no MDQFO clip yet (QuantLinear uses 1)
        quant[node] = QuantLinear(
            weight,
            scheme.weight_bits,
            scheme.act_bits,
            ctx.config.group_for(weight.shape[1]),
            None if gamma is None else gamma.float(),
            alpha,
            shift,
            plan.rotation,
            None if plan.act_multiplier is None else plan.act_multiplier.float(),
            transform=plan.transform,
            a_asym=scheme.act_asym,
        )
    return quant, routed


class _Blocks:
    """The two per-batch environments (float, quantized) walked segment by segment, pruned as values die."""

    def __init__(self, ep: ExportedProgram, ctx: PassContext):
        self.gm = ep.graph_module
        self.quant, self.routed = _quant_linears(ep, ctx)
        self.ids = next((n for n in ep.graph.nodes if meta.get(n).get("modality_ids") is True), None)
        self.keep = frozenset([self.ids]) if self.ids is not None else frozenset()
        self.segments = segments(ep.graph)
        self.last_use: dict[fx.Node, float] = {}
        for i, seg in enumerate(self.segments):
            for node in seg.inputs:
                self.last_use[node] = i
        for node in ep.graph.output_node().all_input_nodes:
            self.last_use[node] = float("inf")
        places = [n for n in ep.graph.nodes if n.op == "placeholder"]
        # detached: gradients must reach the clips only, never the program's own parameters
        self.float_envs = [
            {p: v.detach() if isinstance(v, torch.Tensor) else v for p, v in zip(places, flat_inputs(ep, a, k))}
            for a, k in ctx.calibration
        ]
        self.quant_envs = [dict(env) for env in self.float_envs]

    @torch.no_grad()
    def run_float(self, seg: Segment) -> None:
        for env in self.float_envs:
            env.update(run_segment(self.gm, seg, env, keep=self.keep))

    def run_quant(self, seg: Segment, b: int, ste: bool = False) -> dict[fx.Node, object]:
        env = self.quant_envs[b]
        rows = env.get(self.ids)

        def stand_in(node, x, weight, bias=None):
            return fake_linear(x, self.quant[node], bias, rows if node in self.routed else None, ste)

        return run_segment(self.gm, seg, env, stand_in, self.quant.__contains__, self.keep)

    def loss(self, seg: Segment, b: int, outs: dict, beta: float) -> torch.Tensor:
        target = self.float_envs[b]
        rows = self.quant_envs[b].get(self.ids)
        terms = [
            output_loss(target[n], outs[n], rows, beta)
            for n in seg.outputs
            if n is not self.ids and isinstance(outs[n], torch.Tensor) and outs[n].is_floating_point()
        ]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def prune(self, i: int) -> None:
        for env in (*self.float_envs, *self.quant_envs):
            for node in [n for n in env if n.op != "placeholder" and n not in self.keep]:
                if self.last_use.get(node, -1) <= i:
                    del env[node]


def _new_transforms(blocks: _Blocks, tuned: list[fx.Node]) -> list[list[fx.Node]]:
    """Identity factors (trainable) for every input the block's rotated linears read, shared by its readers;
    returns the groups of linears that share one."""
    groups: dict[fx.Node, list[fx.Node]] = {}
    for n in tuned:
        q = blocks.quant[n]
        if q.rotation is not None and q.transform is None:
            groups.setdefault(n.args[0], []).append(n)
    for nodes in groups.values():
        q = blocks.quant[nodes[0]]
        k2 = q.rotation.shape[0]
        k1 = q.weight.shape[1] // k2
        factors = (torch.eye(k1).requires_grad_(True) if k1 > 1 else None, torch.eye(k2).requires_grad_(True))
        _set_transform(blocks, nodes, factors)
    return list(groups.values())


def _set_transform(blocks: _Blocks, nodes: list[fx.Node], factors) -> None:
    """One factor pair (or None) shared by every linear of ``nodes``: they read the same input."""
    for n in nodes:
        blocks.quant[n].transform = factors


def _tune(blocks: _Blocks, seg: Segment, tuned: list[fx.Node], ctx: PassContext, gen: torch.Generator):
    """Adam on the block's clips (and transforms); returns (start loss, final loss, quantized outputs per batch at
    the kept parameters)."""
    cfg = ctx.config.algorithm(recipes.BlockMDQFO)
    nb = len(blocks.quant_envs)

    @torch.no_grad()
    def evaluate():
        outs = [blocks.run_quant(seg, b) for b in range(nb)]
        return float(sum(blocks.loss(seg, b, o, cfg.morph_weight) for b, o in enumerate(outs)) / nb), outs

    start, start_outs = evaluate()
    saved = {n: (blocks.quant[n].gamma, blocks.quant[n].alpha) for n in tuned}
    params = []
    for n in tuned:
        q = blocks.quant[n]
        q.gamma = q.gamma.clone().requires_grad_(True)
        q.alpha = q.alpha.clone().requires_grad_(cfg.act_clips)
        params += [q.gamma] + ([q.alpha] if cfg.act_clips else [])
    groups = _new_transforms(blocks, tuned) if cfg.transform else []
    factors = [t for g in groups for t in blocks.quant[g[0]].transform if t is not None]
    optim = torch.optim.Adam([{"params": params}, {"params": factors, "lr": LR_TRANSFORM}], lr=LR)
    order = torch.randperm(nb, generator=gen).tolist()
    for step in range(cfg.steps):
        b = order[step % nb]
        optim.zero_grad()
        loss = blocks.loss(seg, b, blocks.run_quant(seg, b, ste=True), cfg.morph_weight)
        if not loss.requires_grad:  # no float output of this block depends on its clips
            break
        loss.backward()
        optim.step()
        with torch.no_grad():
            for p in params:
                p.clamp_(*CLIP_RANGE)
    for n in tuned:
        q = blocks.quant[n]
        q.gamma, q.alpha = q.gamma.detach(), q.alpha.detach()
    for g in groups:
        _set_transform(blocks, g, tuple(None if t is None else t.detach() for t in blocks.quant[g[0]].transform))
    after, outs = evaluate()
    if after >= start:
        for n, (gamma, alpha) in saved.items():
            blocks.quant[n].gamma, blocks.quant[n].alpha = gamma, alpha
        for g in groups:
            _set_transform(blocks, g, None)
        return start, start, start_outs
    return start, after, outs


def _store(ctx: PassContext, node: fx.Node, q: QuantLinear, routed: bool) -> None:
    plan = ctx.plan(meta.get(node)["name"])
    plan.gamma = q.gamma
    if q.transform is not None and plan.transform is None:
        plan.transform = q.transform
        plan.weight = q.folded_weight().to(plan.weight.dtype)
        plan.shift = {key: kron_act(v.float(), *q.transform) for key, v in plan.shift.items()}
    clips = plan.act_clip or {"shared": 1.0}
    if routed:
        plan.act_clip = {m: float(q.alpha[i]) for i, m in enumerate(MODALITIES)}
    else:
        plan.act_clip = {key: float(q.alpha[0]) for key in clips}


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict = {"blocks": 0, "improved": 0, "transforms": 0, "losses": {}}
    if not ctx.calibration:
        return PassResult(ep, counts)
    blocks = _Blocks(ep, ctx)
    gen = torch.Generator().manual_seed(ctx.config.seed)
    bar = tqdm(blocks.segments, desc="mdqfo-block", unit="segment", disable=None if ctx.progress else True, leave=False)
    for i, seg in enumerate(bar):
        blocks.run_float(seg)
        tuned = [n for n in seg.nodes if n in blocks.quant and blocks.quant[n].a_bits is not None]
        if seg.key is not None and tuned:
            start, after, outs = _tune(blocks, seg, tuned, ctx, gen)
            counts["blocks"] += 1
            counts["improved"] += after < start
            counts["losses"][seg.key] = [start, after]
            counts["transforms"] += len({id(blocks.quant[n].transform) for n in tuned if blocks.quant[n].transform})
            for n in tuned:
                _store(ctx, n, blocks.quant[n], n in blocks.routed)
            log.debug("block %s: loss %.4g -> %.4g", seg.key, start, after)
        else:
            with torch.no_grad():
                outs = [blocks.run_quant(seg, b) for b in range(len(blocks.quant_envs))]
        for env, out in zip(blocks.quant_envs, outs):
            env.update(out)
        blocks.prune(i)
    return PassResult(ep, counts)
