"""The pipeline: the one ordered list of passes ``mqcompile.quantize`` runs, read top to bottom.

Each entry says what it needs (passes that must have run before it) and when it runs (from the recipe); the
runner checks both, skips an entry whose condition is false (its report is the pass's zero counts, ``EMPTY``),
re-raises any failure naming the pass, and in debug mode lints and validates the program after every pass
(executorch's requires -> call -> ensures).

Example:
    >>> program, report = run_pipeline(ep, ctx, until="calibrate")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import NamedTuple

from torch.export import ExportedProgram
from tqdm.auto import tqdm

from . import recipes
from .config import QuantConfig
from .errors import MQCompileError, PassError
from .passes import (
    PassContext,
    PassResult,
    calibrate,
    canonicalize_linears,
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

__all__ = ["Pass", "PIPELINE", "run_pipeline"]

log = logging.getLogger(__name__)


class Pass(NamedTuple):
    name: str
    run: Callable[[ExportedProgram, PassContext], PassResult]
    needs: tuple[str, ...] = ()
    when: Callable[[QuantConfig], bool] | None = None  # None: always
    empty: dict | None = None  # the counts reported when ``when`` is false


def _brief(counts: dict) -> dict:
    """A pass's counts for the log: per-linear tables (MDQFO's losses, one entry a linear) as their size only; the
    whole table stays in the report (``QuantizedProgram.report``)."""
    return {k: f"<{len(v)} linears>" if isinstance(v, dict) and len(v) > 8 else v for k, v in counts.items()}


def _has(kind: type) -> Callable[[QuantConfig], bool]:
    return lambda config: config.algorithm(kind) is not None


def _calibrated(config: QuantConfig) -> bool:
    return config.needs_calibration


PIPELINE: tuple[Pass, ...] = (
    Pass("check_program", check_program.run),
    Pass("canonicalize_linears", canonicalize_linears.run, ("check_program",)),
    Pass("find_linears", find_linears.run, ("canonicalize_linears",)),
    Pass("tag_modality", tag_modality.run, ("find_linears",)),
    Pass("select_schemes", select_schemes.run, ("tag_modality",)),
    Pass("insert_modality_ids", insert_modality_ids.run, ("select_schemes",)),
    Pass("rotate", rotate.run, ("select_schemes",), _has(recipes.Rotate), rotate.EMPTY),
    Pass("calibrate", calibrate.run, ("tag_modality",), _calibrated, calibrate.EMPTY),
    Pass("smooth_quant", smooth_quant.run, ("calibrate",), _has(recipes.SmoothQuant), smooth_quant.EMPTY),
    Pass("dabc_plan", dabc_plan.run, ("calibrate",), _has(recipes.DABC), dabc_plan.EMPTY),
    Pass("mdqfo", mdqfo.run, ("calibrate",), _has(recipes.MDQFO), mdqfo.EMPTY),
    Pass("mdqfo_block", mdqfo_block.run, ("mdqfo",), _has(recipes.BlockMDQFO), mdqfo_block.EMPTY),
    Pass("gptq", gptq.run, ("calibrate",), _has(recipes.GPTQ), gptq.EMPTY),
    Pass("rewrite_linears", rewrite_linears.run, ("select_schemes",)),
)


def _check(ep: ExportedProgram, name: str) -> None:
    try:
        ep.graph.lint()
        ep.validate()
    except Exception as exc:  # any failure here is a bug in that pass; say which
        raise PassError(f"pass {name!r} left an invalid program: {exc}") from exc


def _renamed(exc: Exception, name: str) -> Exception:
    """The same error with the pass named in front: our own errors keep their type (callers catch them),
    anything else becomes a PassError chained to it."""
    message = f"pass {name!r}: {exc}"
    if isinstance(exc, MQCompileError):
        try:
            return type(exc)(message)
        except TypeError:  # an error class with another constructor
            pass
    return PassError(f"pass {name!r} failed: {type(exc).__name__}: {exc}")


def run_pipeline(
    ep: ExportedProgram,
    ctx: PassContext,
    passes: tuple[Pass, ...] = PIPELINE,
    progress: bool = True,
    until: str | None = None,
) -> tuple[ExportedProgram, dict[str, dict]]:
    """Run ``passes`` in order, through ``until`` (a pass name, inclusive) when given; returns the final program
    and each pass's counts. Raises PassError when a pass runs before one it needs."""
    names = [p.name for p in passes]
    if until is not None and until not in names:
        raise MQCompileError(f"run_pipeline(until={until!r}): no such pass; the passes are {names}")
    if until is not None:
        passes = passes[: names.index(until) + 1]
    report: dict[str, dict] = {}
    ran: set[str] = set()
    running = {p.name for p in passes if p.when is None or p.when(ctx.config)}
    # disable=None: tqdm draws only on a terminal (no escape codes in a piped log; -v logs each pass instead)
    bar = tqdm(total=len(running), desc="mqcompile", unit="pass", disable=None if progress else True, leave=False)
    for entry in passes:
        missing = [need for need in entry.needs if need not in report]
        if missing:
            raise PassError(f"pass {entry.name!r} needs {missing} to run before it; they are not in this pipeline")
        if entry.name not in running:
            report[entry.name] = copy.deepcopy(entry.empty or {})  # EMPTY holds nested dicts: never share them
            continue
        skipped = [need for need in entry.needs if need not in ran]
        if skipped:
            raise PassError(f"pass {entry.name!r} needs {skipped}, which the recipe skipped ({ctx.config.recipe})")
        bar.set_postfix_str(entry.name)
        try:
            result = entry.run(ep, ctx)
        except Exception as exc:
            raise _renamed(exc, entry.name) from exc
        ep = result.program
        report[entry.name] = result.counts
        ran.add(entry.name)
        bar.update()
        log.info("pass %s: %s", entry.name, _brief(result.counts))
        if ctx.config.debug:
            _check(ep, entry.name)
    bar.close()
    return ep, report
