"""rewrite_linears: replace each selected ``aten.linear`` with ``mqcompile::`` ops, weights quantized RTN.

Needs: ``select_schemes`` (and ``insert_modality_ids`` for routed fused linears). Guarantees: every linear with a
non-float scheme becomes ``quantize_act`` + ``qlinear`` (weights and activations quantized; ``quantize_act_asym``
and the weights' column sums ``.mq_w_colsum`` for asymmetric activations) or ``wlinear`` (weight-only); packed
weight codes, scales and per-modality activation clips become buffers next to the original weight
(``<linear>.mq_qweight``, ``.mq_w_scale``, ``.mq_act_clip``, and ``.mq_rotation`` when the ``rotate`` pass
planned one, ``.mq_rotation_left`` too for a learned transform: then the input is rotated by graph ops inserted once
per input and transform); the float weight is dropped unless something else still uses it (tied weights). The new
nodes carry the linear's meta plus ``op``. The program is re-exported once so the new buffers are proper lifted
inputs.

Weights are quantized by :func:`mqcompile.kernels.reference.quantize_weight_ref` rather than torchao's
``choose_qparams_affine``: its symmetric mapping divides by (qmax - qmin) / 2 = 7.5 for int4, which clips the
largest weight, while the method (DESIGN.md) defines ``s = gamma * max|W| / 7``; the rounding itself is one line.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from ..config import SCHEMES, group_for
from ..graph import meta
from ..graph.export import example_inputs_of, reexport
from ..kernels import pack_int4
from ..kernels.ops import QLinearArgs, QuantizeActArgs, WLinearArgs
from ..kernels.reference import quantize_weight_ref, weight_colsum
from .base import PassContext, PassResult
from .plan import LinearPlan, act_tables

__all__ = ["run", "quantized_weight", "stored_codes"]


def _owner(gm: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    path, _, attr = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), attr


def quantized_weight(
    w: torch.Tensor, bits: int, group_size: int | None, gamma: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Codes as stored (packed uint8 for int4, int8 for int8), fp32 scales ``[N, G]``, and the group size used."""
    group = group_for(group_size, w.shape[1])
    codes, scale = quantize_weight_ref(w.detach(), bits, group, gamma)
    return stored_codes(codes, bits), scale, group


def stored_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 weight codes ``[N, K]`` in the ops' storage format: packed uint8 for 4 bits, as they are for 8."""
    return pack_int4(codes) if bits == 4 else codes


def _add_buffer(gm: fx.GraphModule, owner: torch.nn.Module, owner_path: str, name: str, value: torch.Tensor):
    base, k = name, 0
    while hasattr(owner, name):  # a second use of the same module (tied weight, module called twice): its own copy
        k += 1
        name = f"{base}_{k}"
    owner.register_buffer(name, value)
    return gm.graph.get_attr(f"{owner_path}.{name}" if owner_path else name)


def _rotated(gm: fx.GraphModule, x: fx.Node, plan: LinearPlan, owner, owner_path: str, cache: dict) -> fx.Node:
    """``P1^T X P2`` on ``X = x`` viewed ``[K / B, B]`` as graph ops, one per (input, transform) however many
    linears read it: ``P1 = I``, ``P2 = Q`` for the rotate pass's block-diagonal Hadamard, or a learned transform's
    factors with the Hadamard folded into ``P2`` (:mod:`mqcompile.solvers.transform`)."""
    q = plan.rotation
    b = q.shape[0]
    key = (x, b, None if plan.transform is None else id(plan.transform))
    if key not in cache:
        k, dtype = x.meta["val"].shape[-1], x.meta["val"].dtype
        p1, p2 = (None, q) if plan.transform is None else (plan.transform[0], q.float() @ plan.transform[1])
        right = _add_buffer(gm, owner, owner_path, "mq_rotation", p2.to(dtype))
        blocks = gm.graph.call_function(torch.ops.aten.unflatten.int, (x, -1, [k // b, b]))
        rotated = gm.graph.call_function(torch.ops.aten.matmul.default, (blocks, right))
        if p1 is not None:
            left = _add_buffer(gm, owner, owner_path, "mq_rotation_left", p1.T.contiguous().to(dtype))
            rotated = gm.graph.call_function(torch.ops.aten.matmul.default, (left, rotated))
        cache[key] = gm.graph.call_function(torch.ops.aten.flatten.using_ints, (rotated, -2, -1))
    return cache[key]


def _rewrite_one(
    gm: fx.GraphModule, node: fx.Node, info: dict, ids_nodes: dict[str, fx.Node], ctx, rotations: dict
) -> None:
    scheme = SCHEMES[info["scheme"]]
    x, w_node = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    owner, _ = _owner(gm, w_node.target)
    owner_path = w_node.target.rpartition(".")[0]
    plan = ctx.plans.get(info["name"], LinearPlan())
    weight = operator.attrgetter(w_node.target)(gm) if plan.weight is None else plan.weight
    gamma = plan.gamma
    if plan.weight_codes is not None:  # GPTQ's codes on the grid it was given
        codes, scale = stored_codes(plan.weight_codes, scheme.weight_bits), plan.weight_scale
        group = ctx.config.group_for(weight.shape[1])
    else:
        codes, scale, group = quantized_weight(weight, scheme.weight_bits, ctx.config.weight_group_size, gamma)
    ids = ids_nodes.get(info.get("modality_ids"))
    out_dtype = node.meta["val"].dtype
    with gm.graph.inserting_before(node):
        if plan.rotation is not None:
            x = _rotated(gm, x, plan, owner, owner_path, rotations)
        if plan.act_multiplier is not None:
            multiplier = _add_buffer(
                gm, owner, owner_path, "mq_act_multiplier", plan.act_multiplier.to(x.meta["val"].dtype)
            )
            x = gm.graph.call_function(torch.ops.aten.mul.Tensor, (x, multiplier))
        qw = _add_buffer(gm, owner, owner_path, "mq_qweight", codes)
        ws = _add_buffer(gm, owner, owner_path, "mq_w_scale", scale)
        if scheme.act_bits is None:
            args = WLinearArgs(x, qw, ws, bias, scheme.weight_bits, group, info["in_features"])
            new = gm.graph.call_function(torch.ops.mqcompile.wlinear.default, tuple(args))
            op = "wlinear"
        else:
            clip, shift, comp = act_tables(plan, ids is not None, weight)
            ac = _add_buffer(gm, owner, owner_path, "mq_act_clip", clip)
            sh = None if shift is None else _add_buffer(gm, owner, owner_path, "mq_shift", shift)
            qa_args = QuantizeActArgs(x, ac, ids, scheme.act_bits, sh)
            quantizer = torch.ops.mqcompile.quantize_act_asym if scheme.act_asym else torch.ops.mqcompile.quantize_act
            qa = gm.graph.call_function(quantizer.default, tuple(qa_args))
            xq = gm.graph.call_function(operator.getitem, (qa, 0))
            xs = gm.graph.call_function(operator.getitem, (qa, 1))
            xz = colsum = None
            if scheme.act_asym:
                xz = gm.graph.call_function(operator.getitem, (qa, 2))
                sums = weight_colsum(codes, scheme.weight_bits, info["in_features"], group)
                colsum = _add_buffer(gm, owner, owner_path, "mq_w_colsum", sums)
            if comp is not None and ids is None and (bias is None or bias.op == "get_attr"):
                # one-modality linear: the compensation is a constant row, folded into the bias
                old = torch.zeros(comp.shape[1]) if bias is None else operator.attrgetter(bias.target)(gm)
                bias = _add_buffer(gm, owner, owner_path, "mq_bias", (old.float() + comp[0]).to(old.dtype))
                comp = None
            cp = None if comp is None else _add_buffer(gm, owner, owner_path, "mq_comp", comp)
            args = QLinearArgs(
                xq, xs, qw, ws, bias, scheme.weight_bits, group, info["in_features"], out_dtype, cp, ids, xz, colsum
            )
            new = gm.graph.call_function(torch.ops.mqcompile.qlinear.default, tuple(args))
            meta.set_fields(qa, **info, op="quantize_act_asym" if scheme.act_asym else "quantize_act")
            op = "qlinear"
    meta.set_fields(new, **info, op=op, group_size=group)
    new.meta["val"] = node.meta["val"]  # a later linear reading this one's output needs its shape (e.g. to rotate)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _drop_unused_weights(gm: fx.GraphModule) -> int:
    dropped = 0
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr" and n.users}
    for n in list(gm.graph.nodes):
        if n.op == "get_attr" and not n.users:
            gm.graph.erase_node(n)
            if n.target not in used:
                owner, attr = _owner(gm, n.target)
                if attr in owner._parameters or attr in owner._buffers:
                    delattr(owner, attr)
                    dropped += 1
    return dropped


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    example_inputs = example_inputs_of(ep, ctx.example_inputs)
    gm = ep.module()
    ids_nodes = {n.name: n for n in gm.graph.nodes if meta.get(n).get("modality_ids") is True}
    counts = {"matched": 0, "qlinear": 0, "wlinear": 0, "kept_float": 0}
    targets = [n for n in gm.graph.nodes if n.op == "call_function" and meta.get(n).get("linear")]
    rotations: dict = {}
    for node in targets:
        info = meta.get(node)
        counts["matched"] += 1
        if SCHEMES[info["scheme"]].is_float:
            counts["kept_float"] += 1
            continue
        _rewrite_one(gm, node, info, ids_nodes, ctx, rotations)
        counts["wlinear" if SCHEMES[info["scheme"]].act_bits is None else "qlinear"] += 1
    counts["float_weights_dropped"] = _drop_unused_weights(gm)
    gm.graph.lint()
    gm.recompile()
    if counts["qlinear"] + counts["wlinear"] == 0:
        return PassResult(ep, counts)
    return PassResult(reexport(ep, gm, example_inputs), counts)
