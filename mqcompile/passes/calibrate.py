"""calibrate: collect per-linear, per-modality input statistics when the recipe needs them.

Runs when an algorithm of the recipe is calibrated (``config.needs_calibration``). Guarantees: ``ctx.stats`` maps
every linear name to :class:`mqcompile.calibration.LinearStats`, sampled with ``config.seed`` and observing rotated
inputs where ``rotate`` planned a rotation. Raises CalibrationError when no calibration was given, NonFiniteError
naming the batch for NaN/Inf activations.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from ..calibration import collect
from ..graph.linears import text_source
from .base import PassContext, PassResult

__all__ = ["run", "EMPTY"]

EMPTY = {"batches": 0, "linears": 0}


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    source = text_source(ep, ctx.config.sources)
    ctx.stats = collect(
        ep,
        ctx.calibration or [],
        ctx.config.modality_token_ids,
        reservoir_tokens=ctx.config.reservoir_tokens,
        seed=ctx.config.seed,
        progress=ctx.progress,
        rotations={name: p.rotation for name, p in ctx.plans.items() if p.rotation is not None},
        text_input=None if source is None else source.name,
    )
    return PassResult(ep, {"batches": len(ctx.calibration), "linears": len(ctx.stats)})
