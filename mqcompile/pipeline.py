"""The pipeline: the one ordered list of passes ``mqcompile.quantize`` runs, read top to bottom."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .errors import MQCompileError
from .passes import (
    PassContext,
    PassResult,
    calibrate,
    check_program,
    dabc_plan,
    find_linears,
    gptq,
    insert_modality_ids,
    mdqfo,
    mdqfo_block,
    rewrite_linears,
    rotate,
    select_schemes,
    smooth_quant,
    tag_modality,
)

__all__ = ["PIPELINE", "run_pipeline"]

log = logging.getLogger(__name__)

PassFn = Callable[[ExportedProgram, PassContext], PassResult]

PIPELINE: tuple[tuple[str, PassFn], ...] = (
    ("check_program", check_program.run),
    ("find_linears", find_linears.run),
    ("tag_modality", tag_modality.run),
    ("select_schemes", select_schemes.run),
    ("insert_modality_ids", insert_modality_ids.run),
    ("rotate", rotate.run),
    ("calibrate", calibrate.run),
    ("smooth_quant", smooth_quant.run),
    ("dabc_plan", dabc_plan.run),
    ("mdqfo", mdqfo.run),
    ("mdqfo_block", mdqfo_block.run),
    ("gptq", gptq.run),
    ("rewrite_linears", rewrite_linears.run),
)


def _check(ep: ExportedProgram, name: str) -> None:
    try:
        ep.graph.lint()
        ep.validate()
    except Exception as exc:  # any failure here is a bug in that pass; say which
        raise MQCompileError(f"pass {name!r} left an invalid program: {exc}") from exc


def run_pipeline(
    ep: ExportedProgram, ctx: PassContext, passes=PIPELINE, progress: bool = True
) -> tuple[ExportedProgram, dict[str, dict]]:
    """Run ``passes`` in order; returns the final program and each pass's counts."""
    report: dict[str, dict] = {}
    bar = tqdm(passes, desc="mqcompile", unit="pass", disable=not progress, leave=False)
    for name, fn in bar:
        bar.set_postfix_str(name)
        result = fn(ep, ctx)
        ep = result.program
        report[name] = result.counts
        log.info("pass %s: %s", name, result.counts)
        if ctx.config.debug:
            _check(ep, name)
    return ep, report
