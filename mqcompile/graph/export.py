"""Small helpers over torch.export programs shared by several passes."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import warnings

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind

from ..errors import UnsupportedProgramError

__all__ = [
    "copy_program",
    "user_input_nodes",
    "placeholder_targets",
    "call_with_meta",
    "reexport",
    "example_inputs_of",
]

log = logging.getLogger(__name__)


def _renamed_signature(sig: ExportGraphSignature, names: dict[str, str]) -> ExportGraphSignature:
    def fix(spec):
        arg = spec.arg
        if hasattr(arg, "name") and arg.name in names:
            arg = dataclasses.replace(arg, name=names[arg.name])
        return dataclasses.replace(spec, arg=arg)

    return ExportGraphSignature([fix(s) for s in sig.input_specs], [fix(s) for s in sig.output_specs])


def copy_program(ep: ExportedProgram) -> ExportedProgram:
    """A copy whose graph can be edited without touching ``ep``; weights are shared, not copied."""
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside deepcopy of its specs
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(ep.graph_module)
        module_call_graph = copy.deepcopy(ep.module_call_graph)
    # copying a graph may rename nodes (a placeholder called ``input`` becomes ``input_1``): follow the renames
    names = {old.name: new.name for old, new in zip(ep.graph.nodes, gm.graph.nodes)}
    return ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=_renamed_signature(ep.graph_signature, names),
        state_dict=dict(ep.state_dict),
        range_constraints=dict(ep.range_constraints),
        module_call_graph=module_call_graph,
        example_inputs=ep.example_inputs,
        constants=dict(ep.constants),
        verifiers=list(ep.verifiers),
    )


def user_input_nodes(ep: ExportedProgram) -> dict[str, fx.Node]:
    """Placeholder nodes of user inputs, by name (kwargs keep their names through export)."""
    names = set(ep.graph_signature.user_inputs)
    return {n.name: n for n in ep.graph.nodes if n.op == "placeholder" and n.name in names}


def placeholder_targets(ep: ExportedProgram) -> dict[str, tuple[InputKind, str | None]]:
    """Placeholder name -> (kind, state-dict target) for parameters, buffers and constants."""
    return {spec.arg.name: (spec.kind, spec.target) for spec in ep.graph_signature.input_specs}


def call_with_meta(graph: fx.Graph, target, args: tuple, kwargs: dict | None = None) -> fx.Node:
    """Insert a call_function node and fill ``meta['val']`` by running ``target`` on the args' fake values."""
    kwargs = kwargs or {}
    node = graph.call_function(target, args, kwargs)
    fake_args, fake_kwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
    fake_mode = detect_fake_mode(fx.node.map_aggregate((fake_args, fake_kwargs), lambda a: a))
    with fake_mode:
        node.meta["val"] = target(*fake_args, **fake_kwargs)
    return node


def example_inputs_of(ep: ExportedProgram, example_inputs=None) -> tuple[tuple, dict]:
    if example_inputs is None:
        example_inputs = ep.example_inputs
    if example_inputs is None:
        raise UnsupportedProgramError(
            "the ExportedProgram carries no example inputs (exported by an older torch, or stripped); "
            "pass example_inputs=(args, kwargs) to mqcompile.quantize"
        )
    args, kwargs = example_inputs
    return tuple(args), dict(kwargs)


def _dynamic_spec(value, node: fx.Node):
    if not isinstance(value, torch.Tensor):
        return None
    shape = node.meta["val"].shape
    dims = {i: Dim.AUTO for i, s in enumerate(shape) if not isinstance(s, int)}
    return dims or None


def reexport(ep: ExportedProgram, module: torch.nn.Module, example_inputs: tuple[tuple, dict]) -> ExportedProgram:
    """Export ``module`` (usually an edited ``ep.module()``) again, keeping the dims that were dynamic in ``ep``.

    Re-export is how new buffers (packed weights, scales) become proper lifted inputs of the program with a valid
    signature, rather than editing the graph signature by hand.
    """
    args, kwargs = example_inputs
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(ep.graph_signature.user_inputs)]
    flat = list(args) + [kwargs[k] for k in kwargs]
    if len(flat) != len(inputs):
        raise UnsupportedProgramError(
            f"example inputs have {len(flat)} tensors but the program takes {len(inputs)} user inputs"
        )
    specs = [_dynamic_spec(v, n) for v, n in zip(flat, inputs)]
    names = list(inspect.signature(module.forward).parameters)
    if any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        dynamic = None if not any(specs) else (tuple(specs[: len(args)]), dict(zip(kwargs, specs[len(args) :])))
        dynamic = None if dynamic is None else {"args": dynamic[0], "kwargs": dynamic[1]}
    else:
        dynamic = dict(zip(names[: len(args)], specs[: len(args)]))
        dynamic.update(zip(kwargs, specs[len(args) :]))
        if not any(dynamic.values()):
            dynamic = None
    new = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic)
    _warn_specialized(ep, new)
    return new


def _warn_specialized(old: ExportedProgram, new: ExportedProgram) -> None:
    def dynamic_dims(ep):
        out = []
        for n in user_input_nodes(ep).values():
            val = n.meta.get("val")
            shape = val.shape if isinstance(val, torch.Tensor) else ()
            out.append((n.name, {i for i, s in enumerate(shape) if not isinstance(s, int)}))
        return out

    # by position: copying a graph renames placeholders (``input`` -> ``input_1``), so names need not match
    for (name, before), (_, after) in zip(dynamic_dims(old), dynamic_dims(new)):
        lost = sorted(before - after)
        if lost:
            log.warning("re-export specialized input %r dims %s that were dynamic", name, lost)
