"""``mqcompile quantize SOURCE OUT.pt2``: a quantized, saved program from a saved ExportedProgram or a checkpoint
directory, without writing Python (the CLI parses arguments; this module does the work and returns a result).

Example:
    >>> result = quantize_source("model.pt2", "model_w4a4.pt2", recipe="MORPHOQUANT+Rotate",
    ...                          calibration="calib.pt")  # doctest: +SKIP
    >>> print(format_result(result))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import recipes
from .api import quantize
from .config import PATHS, QuantConfig
from .errors import CalibrationError, ConfigError
from .fidelity import output_fidelity

__all__ = ["quantize_source", "format_result", "load_calibration", "build_config"]

log = logging.getLogger(__name__)

_CALIBRATION_HOW = (
    "pass --calibration builtin (data that ships with the eval extra, for the checkpoint directories mqcompile "
    "knows) or --calibration FILE, a .pt list of input batches: torch.save([{'input_ids': ...}, ...], 'calib.pt')"
)


def build_config(recipe: str | None, default: str | None, modality: Sequence[str], token_ids: dict) -> QuantConfig:
    """The QuantConfig the flags describe: ``recipe`` a name (``recipes.parse``) or a QuantConfig JSON file;
    ``default`` and ``modality`` (``PATH=SCHEME``) on top; the source's token ids unless the file sets its own."""
    fields: dict[str, Any] = {}
    if recipe is not None and recipe.endswith(".json"):
        if not os.path.isfile(recipe):
            raise ConfigError(
                f"--recipe {recipe}: no such file; pass a QuantConfig JSON (QuantConfig.to_json) or a name"
            )
        base = QuantConfig.from_json(Path(recipe).read_text())
    else:
        base = QuantConfig(algorithms=recipes.parse(recipe) if recipe else recipes.RTN)
    if default is not None:
        fields["default"] = default
    if modality:
        pairs = {}
        for item in modality:
            path, sep, scheme = item.partition("=")
            if not sep or path not in PATHS:
                raise ConfigError(f"--modality {item!r}: write PATH=SCHEME with PATH one of {list(PATHS)}")
            pairs[path] = scheme
        fields["modality"] = {**dict(base.modality), **pairs}
    if token_ids and not base.modality_token_ids:
        fields["modality_token_ids"] = token_ids
    return dataclasses.replace(base, **fields) if fields else base


def load_calibration(path: str, samples: int | None) -> list:
    """Batches from a ``.pt`` file (a list of kwargs dicts or ``(args, kwargs)`` pairs), loaded with
    ``weights_only=True``: tensors and containers only, never code."""
    if not os.path.isfile(path):
        raise CalibrationError(f"--calibration {path}: no such file; {_CALIBRATION_HOW}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a foreign pickle, a damaged file: torch says which
        raise CalibrationError(
            f"--calibration {path}: not a file of tensors torch.load(weights_only=True) can read ({exc}); "
            "save plain tensors in lists and dicts"
        ) from None
    if isinstance(data, (dict, tuple)):
        data = [data]
    if not isinstance(data, list) or not data:
        raise CalibrationError(
            f"--calibration {path}: holds {type(data).__name__}, expected a non-empty list of batches"
        )
    return data[:samples] if samples else data


def quantize_source(
    source: str,
    out: str,
    recipe: str | None = None,
    default: str | None = None,
    modality: Sequence[str] = (),
    calibration: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    progress: bool = True,
    report: str | None = None,
    kv_cache: bool = False,
) -> dict[str, Any]:
    """Load ``source`` (:func:`mqcompile.models.sources.load_source`), quantize it as the flags say, save to
    ``out``, measure fidelity on the source's held-out batches; returns what :func:`format_result` prints."""
    from .models.sources import load_source

    if not str(out).endswith(".pt2"):
        raise ConfigError(f"OUT {out!r}: name the output file .pt2 (a QuantizedProgram archive)")
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples {samples}: must be >= 1")
    start = time.perf_counter()
    src = load_source(source, seed=seed, kv_cache=kv_cache)
    config = build_config(recipe, default, modality, src.modality_token_ids)
    batches, used = None, "none"
    if calibration == "builtin":
        if src.builtin is None:
            raise CalibrationError(
                f"--calibration builtin: mqcompile has no builtin data for this source ({src.kind}): it cannot "
                "know what the program's inputs mean; pass --calibration FILE"
            )
        batches, used = src.builtin(samples or 8), f"builtin: {src.builtin_what}"
    elif calibration is not None:
        batches, used = load_calibration(calibration, samples), calibration
    if config.needs_calibration and not batches:
        raise CalibrationError(f"recipe {config.recipe} calibrates, and no calibration was given; {_CALIBRATION_HOW}")
    loaded = time.perf_counter()
    qp = quantize(src.program, config, calibration=batches, progress=progress)
    quantized = time.perf_counter()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    qp.save(out)
    fidelity = output_fidelity(src.program.module(), qp.module(), src.held_out, dict(config.modality_token_ids))
    report_path = None
    if report is not None:
        if not src.held_out:
            raise CalibrationError("--report: the source has no held-out batches to measure on")
        report_path = qp.write_report(report, src.program, src.held_out)
    linears: dict[str, int] = {}
    for rec in qp.linears():
        key = f"{rec.modality}/{rec.scheme}"
        linears[key] = linears.get(key, 0) + 1
    return {
        "source": str(source),
        "kind": src.kind,
        "out": str(out),
        "recipe": config.recipe,
        "config": config.to_dict(),
        "calibration": {"batches": len(batches or []), "from": used},
        "linears": linears,
        "float_matmuls": qp.report.get("float_matmuls", []),
        "bytes_before": qp.report["bytes_before"],
        "bytes_after": qp.report["bytes_after"],
        "fidelity": fidelity,
        "held_out_batches": len(src.held_out),
        "report": report_path,
        "seconds": {"load": loaded - start, "quantize": quantized - loaded, "total": time.perf_counter() - start},
        "summary": qp.summary(),
    }


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"{result['source']} ({result['kind']}) -> {result['out']}",
        f"recipe {result['recipe']}, calibration {result['calibration']['batches']} batches "
        f"({result['calibration']['from']})",
        "",
        result["summary"],
        "",
    ]
    if result["fidelity"]:
        lines.append(f"Output fidelity vs float on {result['held_out_batches']} held-out batches")
        lines.append(f"{'tokens':<10}{'rows':>8}{'cosine':>10}{'SQNR dB':>10}")
        for name, f in result["fidelity"].items():
            lines.append(f"{name:<10}{f['rows']:>8}{f['cosine']:>10.4f}{f['sqnr_db']:>10.2f}")
    else:
        lines.append("no held-out batches to measure fidelity on (the source carries no example inputs)")
    if result.get("report"):
        lines += ["", f"report: {result['report']} (and its PNGs)"]
    s = result["seconds"]
    lines += ["", f"load {s['load']:.1f} s, quantize {s['quantize']:.1f} s, total {s['total']:.1f} s"]
    return "\n".join(lines)
