"""Matching example inputs to an ExportedProgram: names, positional layout, static dims."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from ...errors import CalibrationError, UnsupportedProgramError
from ...graph.export import user_input_nodes
from ...inputs import as_batch, call_form

__all__ = ["Inputs", "match_inputs", "check_static_dims"]


@dataclass(frozen=True)
class Inputs:
    args: tuple
    kwargs: dict[str, Any]
    by_name: dict[str, Any]  # user input placeholder name -> value (the ONNX graph's input names)


def match_inputs(ep: ExportedProgram, inputs) -> Inputs:
    """Example inputs (kwargs dict, ``(args, kwargs)`` or positional tuple), matched to the program's inputs."""
    if inputs is None:
        inputs = ep.example_inputs
        if inputs is None:
            raise UnsupportedProgramError(
                "the program carries no example inputs; pass example_inputs={name: tensor} to export_onnx"
            )
    if isinstance(inputs, Inputs):
        return inputs
    args, kwargs = as_batch(inputs)
    names = list(user_input_nodes(ep))
    by_name = dict(zip(names, args))
    by_name.update(kwargs)
    if len(args) > len(names) or sorted(by_name) != sorted(names):
        raise CalibrationError(
            f"inputs {sorted(kwargs)} (+{len(args)} positional) do not match the program's inputs {names}; "
            "pass a dict with exactly those keys"
        )
    layout = call_form(ep)
    if layout is not None and layout[0] + len(layout[1]) == len(names):  # call the module the way it was exported
        n_args, keys = layout
        args = tuple(by_name[n] for n in names[:n_args])
        kwargs = {key: by_name[n] for key, n in zip(keys, names[n_args:])}
    return Inputs(args, kwargs, by_name)


def check_static_dims(ep: ExportedProgram, inputs: Inputs) -> None:
    """Inputs must fit the program: a dim that is static in the program is static in the ONNX graph too."""
    for name, node in user_input_nodes(ep).items():
        want, value = node.meta.get("val"), inputs.by_name[name]
        if not isinstance(want, torch.Tensor) or not isinstance(value, torch.Tensor):
            continue
        if value.dim() != want.dim():
            raise CalibrationError(f"input {name!r} has rank {value.dim()}, the program expects {want.dim()}")
        for i, (got, dim) in enumerate(zip(value.shape, want.shape)):
            if isinstance(dim, int) and got != dim:
                raise UnsupportedProgramError(
                    f"input {name!r} dim {i} is {got}, but the program was exported with it fixed to {dim}; an "
                    f"ONNX graph cannot be more dynamic than its program. Re-export the model with torch.export "
                    f"dynamic_shapes={{{name!r}: {{{i}: torch.export.Dim(...)}}}} and quantize again, or pass "
                    f"inputs of the exported shape"
                )
