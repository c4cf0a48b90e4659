"""``mqcompile.quantize``: the public entry point."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

import torch
from torch.export import ExportedProgram

from . import recipes
from .config import QuantConfig
from .errors import ConfigError, UnsupportedProgramError
from .graph.export import copy_program
from .inputs import InputSpec
from .passes import PassContext
from .pipeline import run_pipeline
from .program import QuantizedProgram

__all__ = ["quantize", "check_inputs"]

log = logging.getLogger(__name__)


def _state_bytes(ep: ExportedProgram) -> int:
    tensors = [*ep.state_dict.values(), *(v for v in ep.constants.values() if isinstance(v, torch.Tensor))]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_inputs(ep: ExportedProgram, batch, where: str = "input") -> tuple[tuple, dict]:
    """Check one batch against the program's inputs: names, ranks, static dims, dtypes, token ids within the
    vocabulary, finiteness (:class:`mqcompile.inputs.InputSpec`).

    Accepts a kwargs dict, an ``(args, kwargs)`` pair, or a tuple of positional args. Raises CalibrationError /
    NonFiniteError that name the offending input.
    """
    return InputSpec(ep).check(batch, where)


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
        ep: a ``torch.export.ExportedProgram`` (e.g. from :func:`mqcompile.models.export_thinker`); its linears
            are ``aten.linear`` nodes or matmuls with a constant weight (``addmm``, ``mm``, ``matmul``, also
            decomposed). Not modified.
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
    spec = InputSpec(ep)  # read once from the graph, for the calibration batches and the example inputs
    if calibration is not None:
        batches = [spec.check(b, where=f"calibration batch {i}") for i, b in enumerate(calibration)]
        if not config.needs_calibration:
            log.warning(
                "%d calibration batches given, but recipe %s uses none (round to nearest); pass a calibrated recipe "
                "such as QuantConfig(algorithms=mqcompile.recipes.MORPHOQUANT) to use them",
                len(batches),
                config.recipe,
            )
    if example_inputs is not None:
        example_inputs = spec.check(example_inputs, where="example_inputs")
    ctx = PassContext(config=config, example_inputs=example_inputs, calibration=batches, progress=progress)
    program, report = run_pipeline(copy_program(ep), ctx, progress=progress)
    if report["find_linears"]["linears"] == 0:
        log.warning("the program has no linears with a constant weight; returning it unchanged")
        program = ep
    report["float_matmuls"] = report["canonicalize_linears"]["float_matmuls"]
    report["bytes_before"] = _state_bytes(ep)
    report["bytes_after"] = _state_bytes(program)
    # the online rotation blocks and learned transform factors (one per input) are activation-side, not weights
    report["bytes_rotation"] = sum(
        t.numel() * t.element_size()
        for name, t in program.state_dict.items()
        if re.fullmatch(r"mq_rotation(_left)?(_\d+)?", name.rpartition(".")[2])
    )
    if not math.isfinite(report["bytes_after"]):
        raise UnsupportedProgramError("internal: byte count is not finite")
    return QuantizedProgram(program, config, report)
