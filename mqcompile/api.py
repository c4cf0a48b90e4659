"""``mqcompile.quantize``: the public entry point."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from torch.export import ExportedProgram

from . import recipes
from .config import QuantConfig
from .errors import CalibrationError, ConfigError, NonFiniteError, UnsupportedProgramError
from .graph.export import copy_program, user_input_nodes
from .graph.linears import float_matmuls
from .passes import PassContext
from .pipeline import run_pipeline
from .program import QuantizedProgram

__all__ = ["quantize", "check_inputs"]

log = logging.getLogger(__name__)


def _state_bytes(ep: ExportedProgram) -> int:
    tensors = [*ep.state_dict.values(), *(v for v in ep.constants.values() if isinstance(v, torch.Tensor))]
    return sum(t.numel() * t.element_size() for t in tensors)


def _as_batch(batch) -> tuple[tuple, dict]:
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
        return tuple(batch[0]), dict(batch[1])
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def check_inputs(ep: ExportedProgram, batch, where: str = "input") -> tuple[tuple, dict]:
    """Check one batch against the program's inputs: names, ranks, static dims, dtypes, finiteness.

    Accepts a kwargs dict, an ``(args, kwargs)`` pair, or a tuple of positional args. Raises CalibrationError /
    NonFiniteError that name the offending input.
    """
    args, kwargs = _as_batch(batch)
    nodes = list(user_input_nodes(ep).values())
    positional, named = nodes[: len(args)], nodes[len(args) :]
    expected = [n.name for n in named]
    if sorted(kwargs) != sorted(expected):
        raise CalibrationError(
            f"{where}: got inputs {sorted(kwargs)} (+{len(args)} positional), the program takes "
            f"{[n.name for n in nodes]}; pass a dict with exactly those keys"
        )
    values = list(zip(positional, args)) + [(n, kwargs[n.name]) for n in named]
    for node, value in values:
        want = node.meta.get("val")
        if not isinstance(want, torch.Tensor):
            continue
        if not isinstance(value, torch.Tensor):
            raise CalibrationError(f"{where}: input {node.name!r} must be a tensor, got {type(value).__name__}")
        bad_dims = [
            i for i, s in enumerate(want.shape) if isinstance(s, int) and i < value.dim() and value.shape[i] != s
        ]
        if value.dim() != want.dim() or bad_dims:
            raise CalibrationError(
                f"{where}: input {node.name!r} has shape {tuple(value.shape)}, the program expects "
                f"{tuple(want.shape)} (symbolic dims may vary); make the batch the way the exported example was made"
            )
        if value.dtype != want.dtype:
            raise CalibrationError(f"{where}: input {node.name!r} has dtype {value.dtype}, expected {want.dtype}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteError(f"{where}: input {node.name!r} contains NaN/Inf; clean the data before quantizing")
    return args, kwargs


def quantize(
    ep: ExportedProgram,
    config: QuantConfig | tuple | None = None,
    calibration: Iterable | None = None,
    *,
    example_inputs: tuple[tuple, dict] | None = None,
    progress: bool = True,
) -> QuantizedProgram:
    """Quantize an exported program.

    Args:
        ep: a ``torch.export.ExportedProgram`` with ``aten.linear`` nodes (e.g. from
            :func:`mqcompile.models.export_thinker`). Not modified.
        config: what to quantize and how (a :class:`QuantConfig`, or a bare recipe such as
            ``mqcompile.recipes.MORPHOQUANT`` with the default targeting); default W4A4 round-to-nearest, output head
            float.
        calibration: batches (kwargs dicts or ``(args, kwargs)``) for methods that calibrate; validated against the
            program. Round-to-nearest does not need any.
        example_inputs: ``(args, kwargs)`` for re-export when ``ep`` carries none.
        progress: show a progress bar over the passes.

    Returns:
        A :class:`QuantizedProgram`.

    Example:
        >>> ep = torch.export.export(torch.nn.Linear(64, 32), (torch.randn(4, 64),))
        >>> qp = quantize(ep, progress=False)
        >>> qp.module()(torch.randn(4, 64)).shape
        torch.Size([4, 32])
    """
    config = QuantConfig() if config is None else config
    if isinstance(config, tuple) and all(isinstance(a, recipes.Algorithm) for a in config):
        config = QuantConfig(algorithms=config)  # a bare recipe: default targeting (W4A4, output head float)
    if not isinstance(config, QuantConfig):
        raise ConfigError(
            f"mqcompile.quantize takes a mqcompile.QuantConfig (e.g. QuantConfig(default='w4a4')) or a recipe such "
            f"as mqcompile.recipes.MORPHOQUANT, got {type(config).__name__} {config!r:.60}"
        )
    if not isinstance(ep, ExportedProgram):
        from .passes.check_program import run as check

        check(ep, PassContext(config))  # raises the documented error
    batches = None
    if calibration is not None:
        batches = [check_inputs(ep, b, where=f"calibration batch {i}") for i, b in enumerate(calibration)]
        if not config.needs_calibration:
            log.warning(
                "%d calibration batches given, but recipe %s uses none (round to nearest); pass a calibrated recipe "
                "such as QuantConfig(algorithms=mqcompile.recipes.MORPHOQUANT) to use them",
                len(batches),
                config.recipe,
            )
    if example_inputs is not None:
        example_inputs = check_inputs(ep, example_inputs, where="example_inputs")
    unquantized = float_matmuls(ep)
    if unquantized:
        log.warning(
            "%d matmul-like nodes with a constant weight are not aten.linear and stay float: %s; export with the "
            "weights in nn.Linear modules and without run_decompositions() to quantize them",
            len(unquantized),
            ", ".join(unquantized[:5]) + (" ..." if len(unquantized) > 5 else ""),
        )
    ctx = PassContext(config=config, example_inputs=example_inputs, calibration=batches, progress=progress)
    program, report = run_pipeline(copy_program(ep), ctx, progress=progress)
    if report["find_linears"]["linears"] == 0:
        log.warning("the program has no aten.linear nodes; returning it unchanged")
        program = ep
    report["float_matmuls"] = unquantized
    report["bytes_before"] = _state_bytes(ep)
    report["bytes_after"] = _state_bytes(program)
    # the online rotation blocks (fp32, one per input and block size) are activation-side, not weights
    report["bytes_rotation"] = sum(
        t.numel() * t.element_size() for name, t in program.state_dict.items() if name.endswith(".mq_rotation")
    )
    if not math.isfinite(report["bytes_after"]):
        raise UnsupportedProgramError("internal: byte count is not finite")
    return QuantizedProgram(program, config, report)
