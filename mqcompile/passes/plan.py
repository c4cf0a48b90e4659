"""The per-linear plan the algorithm passes fill and ``rewrite_linears`` consumes, and the helpers they share.

Passes never import each other: what two of them need lives here. A plan is keyed by the linear's name
(``meta["name"]``) in ``PassContext.plans``.

Example:
    >>> plan = LinearPlan(act_clip={"text": 0.9})
    >>> table_value(plan.act_clip, "vision")
    0.9
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from ..config import MODALITIES
from ..graph import meta
from ..solvers import DabcPlan

__all__ = ["LinearPlan", "current_weight", "expected_modalities", "table_value", "table_rows", "act_tables"]


@dataclass
class LinearPlan:
    """What the algorithms chose for one linear; every field is optional (unset: round to nearest).

    Per-modality fields map a modality key (``text``/``vision``/``audio`` for routed fused linears, the linear's
    own modality otherwise, ``shared`` when a routed linear's calibration lacks a modality) to a value.
    """

    weight: torch.Tensor | None = None  # replacement float weight [N, K]: rotated and/or smoothed
    act_multiplier: torch.Tensor | None = None  # [K] applied to the input before quantizing (SmoothQuant, unfolded)
    rotation: torch.Tensor | None = None  # [B, B] orthogonal block applied to the input before quantizing
    # learned Kronecker factors (P1, P2) applied after the rotation (BlockMDQFO(transform=True)); when set, ``weight``
    # and ``shift`` are already in the transformed space (:mod:`mqcompile.solvers.transform`)
    transform: tuple[torch.Tensor | None, torch.Tensor] | None = None
    dabc: dict[str, DabcPlan] = field(default_factory=dict)  # DABC's masks and centers
    gamma: torch.Tensor | None = None  # weight clip [N, 1] (MDQFO)
    act_clip: dict[str, float] = field(default_factory=dict)  # activation clip ratio (MDQFO)
    shift: dict[str, torch.Tensor] = field(default_factory=dict)  # DABC shift [K] = mask * center
    weight_codes: torch.Tensor | None = None  # int8 [N, K] chosen by GPTQ on ``weight_scale``
    weight_scale: torch.Tensor | None = None  # fp32 [N, G]


def current_weight(ep: ExportedProgram, node: fx.Node, plans: dict[str, LinearPlan], targets: dict) -> torch.Tensor:
    """The float weight a later pass works on: an earlier pass's replacement (rotated or smoothed) or else the
    program's own; ``targets`` from :func:`mqcompile.graph.export.placeholder_targets`."""
    plan = plans.get(meta.get(node)["name"])
    if plan is not None and plan.weight is not None:
        return plan.weight
    target = targets[node.args[1].name][1]
    # a non-persistent buffer (register_buffer(..., persistent=False)) lives in the constants, not the state dict
    return ep.state_dict[target] if target in ep.state_dict else ep.constants[target]


def expected_modalities(node: fx.Node, token_ids) -> list[str] | None:
    """Modality keys a routed fused linear needs parameters for (None for linears without routing)."""
    if not meta.get(node).get("modality_ids"):
        return None
    return ["text", *token_ids]


def table_value(values: dict, modality: str | None):
    """The entry of a per-modality parameter dict that tokens of ``modality`` use: their own when routed, else (or
    when missing) ``shared``, else the first; ``modality=None`` for a linear without routing (one row for all)."""
    fallback = values.get("shared", next(iter(values.values())))
    return fallback if modality is None else values.get(modality, fallback)


def table_rows(values: dict, routed: bool, default) -> list:
    """Per-modality table rows: MODALITIES order when routed, else the single entry (:func:`table_value`)."""
    if not values:
        return [default] * (len(MODALITIES) if routed else 1)
    if not routed:
        return [table_value(values, None)]
    return [table_value(values, m) for m in MODALITIES]


def act_tables(plan: LinearPlan, routed: bool, weight: torch.Tensor):
    """(clip [M], shift [M, K] or None, compensation [M, N] or None) from the plan's clips and DABC shifts."""
    k = weight.shape[1]
    clip = torch.tensor(table_rows(plan.act_clip, routed, 1.0), dtype=torch.float32)
    if not any(bool(v.any()) for v in plan.shift.values()):
        return clip, None, None
    shift = torch.stack(table_rows(plan.shift, routed, torch.zeros(k))).float()
    comp = shift @ weight.detach().float().T  # exact outlier mass through the unquantized W, in fp32
    return clip, shift, comp
