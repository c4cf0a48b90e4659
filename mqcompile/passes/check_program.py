"""check_program: reject programs and weights mqcompile cannot handle, before any work.

Needs: anything. Guarantees: the input is an ExportedProgram whose floating parameters, buffers and constants are
finite. Changes nothing.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from ..errors import NonFiniteError, UnsupportedProgramError
from .base import PassContext, PassResult

__all__ = ["run"]


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    if not isinstance(ep, ExportedProgram):
        raise UnsupportedProgramError(
            f"mqcompile.quantize expects a torch.export.ExportedProgram, got {type(ep).__name__}; "
            "export your model first: ep = torch.export.export(model, args, kwargs) "
            "(for Qwen2.5-Omni use mqcompile.models.export_thinker)"
        )
    checked = 0
    for name, tensor in [*ep.state_dict.items(), *ep.constants.items()]:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            checked += 1
            if not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteError(
                    f"weight {name!r} has {bad} NaN/Inf values; fix or reload the checkpoint before quantizing"
                )
    return PassResult(ep, {"tensors_checked": checked})
