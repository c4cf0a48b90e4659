"""calibrate: collect per-linear, per-modality input statistics when the method needs them.

Needs: ``find_linears``, ``tag_modality``, ``select_schemes``. Guarantees: ``ctx.stats`` maps every linear name to
:class:`mqcompile.calibration.LinearStats` when ``config.needs_calibration``; otherwise nothing happens. Raises
CalibrationError when calibration is needed but none was given, NonFiniteError naming the batch for NaN/Inf
activations.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from ..calibration import collect
from .base import PassContext, PassResult

__all__ = ["run"]


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    if not ctx.config.needs_calibration:
        return PassResult(ep, {"batches": 0, "linears": 0})
    ctx.stats = collect(
        ep,
        ctx.calibration or [],
        ctx.config.modality_token_ids,
        reservoir_tokens=ctx.config.reservoir_tokens,
        progress=ctx.progress,
        rotations={name: t["rotation"] for name, t in ctx.tensors.items() if "rotation" in t},
    )
    return PassResult(ep, {"batches": len(ctx.calibration), "linears": len(ctx.stats)})
