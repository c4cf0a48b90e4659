"""check_program: reject programs and weights mqcompile cannot handle, before any work.

Needs: anything. Guarantees: the input is an ExportedProgram whose parameters, buffers and constants hold data (none
on the meta device) and whose floating ones are finite. Changes nothing.
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
    tensors = [(name, t) for name, t in [*ep.state_dict.items(), *ep.constants.items()] if isinstance(t, torch.Tensor)]
    on_meta = [name for name, tensor in tensors if tensor.is_meta]
    if on_meta:
        raise UnsupportedProgramError(
            f"{len(on_meta)} weights of the program are on the meta device (no data), e.g. {on_meta[0]!r}: the model "
            "was built with device='meta' (or init_empty_weights / a lazy load) and exported before its weights were "
            "loaded; load them (model.to_empty(device='cpu') then load_state_dict, or from_pretrained without a meta "
            "device_map) and export again"
        )
    for name, tensor in tensors:
        if tensor.is_floating_point():
            checked += 1
            if not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteError(
                    f"weight {name!r} has {bad} NaN/Inf values; fix or reload the checkpoint before quantizing"
                )
    return PassResult(ep, {"tensors_checked": checked})
