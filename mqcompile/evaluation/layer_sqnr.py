"""Per-linear output SQNR of a quantized program against its float program, grouped by modality tag."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.export import ExportedProgram

from ..config import QuantConfig
from ..graph import meta
from ..graph.export import copy_program
from ..graph.interpret import run_observed
from ..metrics import sqnr_db
from ..passes import PassContext
from ..pipeline import run_pipeline

__all__ = ["layer_sqnr", "by_modality", "tagged_reference"]


def tagged_reference(float_ep: ExportedProgram, config: QuantConfig | None = None) -> ExportedProgram:
    """A copy of the float program with every linear named and tagged as ``quantize`` names them (the analysis
    passes only), so that its linears can be matched to the quantized program's by name."""
    ref_ep, _ = run_pipeline(
        copy_program(float_ep), PassContext(config or QuantConfig()), progress=False, until="tag_modality"
    )
    return ref_ep


def layer_sqnr(
    float_ep: ExportedProgram,
    quant_ep: ExportedProgram,
    batch: dict,
    config: QuantConfig | None = None,
    token_groups: Mapping[str, torch.Tensor] | None = None,
    reference: ExportedProgram | None = None,
) -> dict[str, tuple[str, float]]:
    """``{linear name: (modality path, SQNR dB)}`` on one batch: each linear's output in the quantized program vs
    the same linear's output in the float program (errors of earlier layers included, as deployed).

    ``token_groups`` (name -> bool mask over the batch's tokens): a linear whose output rows have the mask's shape
    also gets ``{"<name>@<group>": ("<path>/<group>", SQNR of those rows)}`` (a group with no tokens is left out).
    ``reference``: :func:`tagged_reference` of ``float_ep`` made once for many batches (else made here)."""
    ref_ep = reference if reference is not None else tagged_reference(float_ep, config)
    ref: dict[str, torch.Tensor] = {}
    run_observed(ref_ep, (), batch, meta.is_linear_output, lambda n, a, out: ref.__setitem__(meta.get(n)["name"], out))
    result: dict[str, tuple[str, float]] = {}

    def observe(node, args, out) -> None:
        info = meta.get(node)
        name = info["name"]
        if name not in ref:
            return
        result[name] = (info["modality"], sqnr_db(ref[name], out))
        for group, mask in (token_groups or {}).items():
            if tuple(out.shape[:-1]) == tuple(mask.shape) and mask.any():
                result[f"{name}@{group}"] = (f"{info['modality']}/{group}", sqnr_db(ref[name][mask], out[mask]))

    run_observed(quant_ep, (), batch, meta.is_linear_output, observe)
    return result


def by_modality(per_linear: dict[str, tuple[str, float]]) -> dict[str, float]:
    """Mean SQNR (dB) per modality path; infinite values (float linears) are left out."""
    groups: dict[str, list[float]] = {}
    for modality, value in per_linear.values():
        if value != float("inf"):
            groups.setdefault(modality, []).append(value)
    return {m: sum(v) / len(v) for m, v in sorted(groups.items())}
