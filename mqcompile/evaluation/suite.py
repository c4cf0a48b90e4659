"""The real-weights evaluation suite: every task x every method, through ``mqcompile.quantize``.

Example:
    >>> results = run_suite(quick=True)            # doctest: +SKIP
    >>> write_results(results, "docs/RESULTS.md")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import recipes
from ..api import quantize
from ..config import QuantConfig
from .base import Task
from .layer_sqnr import by_modality, layer_sqnr

__all__ = [
    "METHODS",
    "TASKS",
    "MethodResult",
    "method_config",
    "run_task",
    "run_suite",
    "write_results",
    "format_results",
]

log = logging.getLogger(__name__)

# Baselines and methods, all in the same framework on the same calibration data: QuantConfig fields over the task's
# (the recipe in ``algorithms``). None = the float program.
_ROT = (recipes.Rotate(),)
_FAST = {"reservoir_tokens": 64}  # 64 calibration tokens per linear and modality
_FAST_MQ = recipes.DABC(), recipes.MDQFO(ste_steps=0)  # grid search only, no STE steps
METHODS: dict[str, Mapping[str, Any] | None] = {
    "FP": None,
    "W8A8-RTN": {"default": "w8a8"},
    "W4A16-RTN": {"default": "w4a16"},
    # what users deploy instead of W4A4 (issue #16): weight-only int4 in groups of 128 along K, with GPTQ rounding
    # (reservoir as the GPTQ rows below); "W4A4 beats W4A16" is claimed against this row, not per-channel RTN
    "W4A16-g128-RTN": {"default": "w4a16", "weight_group_size": 128},
    "W4A16-g128-GPTQ": {
        "default": "w4a16",
        "weight_group_size": 128,
        "algorithms": (recipes.GPTQ(),),
        "reservoir_tokens": 1024,
    },
    "W4A4-RTN": {"default": "w4a4"},
    "W4A4-SmoothQuant": {"default": "w4a4", "algorithms": recipes.SMOOTHQUANT},
    # ablations of the method: +DABC, +MDQFO (clips only), full MorphoQuant
    "W4A4-DABC": {"default": "w4a4", "algorithms": recipes.DABC_ONLY},
    "W4A4-MDQFO-clips": {"default": "w4a4", "algorithms": recipes.MDQFO_CLIPS},
    "W4A4-MorphoQuant": {"default": "w4a4", "algorithms": recipes.MORPHOQUANT},
    # extra rows, reported separately: an online block Hadamard rotation (QuaRot-style) before quantizing
    "W4A4-RTN+Rot": {"default": "w4a4", "algorithms": _ROT},
    "W4A4-MorphoQuant+Rot": {"default": "w4a4", "algorithms": recipes.MORPHOQUANT + _ROT},
    # the same recipe without modality awareness in fused linears: no per-token routing, one shared parameter set
    # (and one calibration pool) for the tokens of every modality (the ablation of the omni task)
    "W4A4-MorphoQuant+Rot-shared": {
        "default": "w4a4",
        "algorithms": recipes.MORPHOQUANT + _ROT,
        "modality_token_ids": {},
    },
    # a faster MorphoQuant + rotate: measured > 24 min for plain MorphoQuant on mini-omni's 280 linears, so the demo
    # and the quick ablation use this
    "W4A4-MorphoQuant+Rot-fast": {"default": "w4a4", "algorithms": _FAST_MQ + _ROT, **_FAST},
    "W4A4-MorphoQuant+Rot-fast-shared": {
        "default": "w4a4",
        "algorithms": _FAST_MQ + _ROT,
        **_FAST,
        "modality_token_ids": {},
    },
    # MorphoQuant + rotate without MDQFO's activation clips (alpha = 1): docs/method.md measured them hurting decoders
    "W4A4-MorphoQuant+Rot-noActClip": {
        "default": "w4a4",
        "algorithms": (recipes.DABC(), recipes.MDQFO(act_clips=False)) + _ROT,
    },
    # MorphoQuant + rotate with block-wise MDQFO: each layer's clips refined against its float output
    "W4A4-MorphoQuant+Rot+Block": {
        "default": "w4a4",
        "algorithms": recipes.MORPHOQUANT + _ROT + (recipes.BlockMDQFO(steps=10),),
    },
    # the same with Hadamard blocks of at most 64 (a quarter of the online rotation's cost: issue #18's ORT profile)
    "W4A4-MorphoQuant+Rot64": {"default": "w4a4", "algorithms": recipes.MORPHOQUANT + (recipes.Rotate(max_block=64),)},
    "W4A4-MorphoQuant+Rot64+Block": {
        "default": "w4a4",
        "algorithms": recipes.MORPHOQUANT + (recipes.Rotate(max_block=64), recipes.BlockMDQFO(steps=10)),
    },
    # and with a learned Kronecker-factored online transform per input on top of the Hadamard (issue #16 item 1)
    "W4A4-MorphoQuant+Rot+Block+LT": {
        "default": "w4a4",
        "algorithms": recipes.MORPHOQUANT + _ROT + (recipes.BlockMDQFO(steps=10, transform=True),),
    },
    # asymmetric per-token activation codes (a zero point per token, issue #16 item 2), alone and with the best recipes
    "W4A4asym-RTN+Rot": {"default": "w4a4asym", "algorithms": _ROT},
    "W4A4asym-MorphoQuant+Rot+Block": {
        "default": "w4a4asym",
        "algorithms": recipes.MORPHOQUANT + _ROT + (recipes.BlockMDQFO(steps=10),),
    },
    "W4A4asym-MorphoQuant+Rot+Block+LT": {
        "default": "w4a4asym",
        "algorithms": recipes.MORPHOQUANT + _ROT + (recipes.BlockMDQFO(steps=10, transform=True),),
    },
    # and GPTQ weight rounding on the same grids (a larger reservoir: GPTQ's Hessian needs more tokens than K / 4)
    "W4A4-RTN+Rot+GPTQ": {"default": "w4a4", "algorithms": _ROT + (recipes.GPTQ(),), "reservoir_tokens": 1024},
    "W4A4-MorphoQuant+Rot+GPTQ": {
        "default": "w4a4",
        "algorithms": recipes.MORPHOQUANT + _ROT + (recipes.GPTQ(),),
        "reservoir_tokens": 1024,
    },
}


def _text_task(quick: bool, seed: int) -> Task:
    from .text_lm import TextLMTask

    return TextLMTask(quick=quick, seed=seed)


def _speech_task(quick: bool, seed: int) -> Task:
    from .speech import SpeechTask

    return SpeechTask(quick=quick, seed=seed)


def _vision_task(quick: bool, seed: int) -> Task:
    from .vision import VisionTask

    return VisionTask(quick=quick, seed=seed)


def _omni_task(quick: bool, seed: int) -> Task:
    from .omni import OmniTask

    return OmniTask(quick=quick, seed=seed)


TASKS: dict[str, Callable[[bool, int], Task]] = {
    "whisper-base": _speech_task,
    "dinov2-s14": _vision_task,
}
if importlib.util.find_spec(f"{__package__}.text_lm") is not None:  # the text LM task lands separately (issue #3)
    TASKS = {"qwen2-0.5b": _text_task, **TASKS}
TASKS["mini-omni"] = _omni_task


@dataclass
class MethodResult:
    metrics: dict[str, float]
    quantize_s: float
    eval_s: float
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)  # mean per modality path
    linears: dict[str, int] = field(default_factory=dict)  # per modality path
    # per linear in program order: [program/linear name, modality path, SQNR dB] (the per-layer plot)
    layers: list[list] = field(default_factory=list)


def method_config(spec: Any, overrides: Mapping[str, Any]) -> QuantConfig:
    """The config a method quantizes a task's program with: the task's fields, then the method's (which win, so a
    method may switch routing off with ``modality_token_ids={}``)."""
    return QuantConfig(**{**dict(spec.config), **dict(overrides)})


def run_task(
    task: Task,
    methods: Sequence[str],
    progress: bool = True,
    specs: Mapping[str, Any] | None = None,
    on_method: Callable[[str, MethodResult], None] | None = None,
) -> dict[str, MethodResult]:
    """Every method on one task; ``on_method(method, result)`` after each (a long run keeps its finished rows)."""
    specs = task.programs() if specs is None else specs
    out: dict[str, MethodResult] = {}
    for method in methods:
        overrides = METHODS[method]
        start = time.perf_counter()
        modules, sqnr, linears, layers = {}, {}, {}, []
        for name, spec in specs.items():
            if overrides is None:
                modules[name] = spec.program.module()
                continue
            config = method_config(spec, overrides)
            calibration = spec.calibration if config.needs_calibration else None  # RTN rows: nothing to warn about
            qp = quantize(spec.program, config, calibration=calibration, progress=progress)
            modules[name] = qp.module()
            per_linear = layer_sqnr(spec.program, qp.exported_program, spec.probe, config, spec.probe_groups)
            sqnr.update({f"{name}/{k}": v for k, v in per_linear.items()})
            layers += [[f"{name}/{r.name}", *per_linear[r.name]] for r in qp.linears() if r.name in per_linear]
            for rec in qp.linears():
                linears[rec.modality] = linears.get(rec.modality, 0) + 1
        quantize_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = task.evaluate(modules)  # tasks manage grad mode themselves (a probe may need autograd)
        eval_s = time.perf_counter() - start
        out[method] = MethodResult(metrics, quantize_s, eval_s, by_modality(sqnr), linears, layers)
        if on_method is not None:
            on_method(method, out[method])
        log.info("%s %s: %s (quantize %.1fs, eval %.1fs)", task.name, method, metrics, quantize_s, eval_s)
    return out


def run_suite(
    tasks: Sequence[str] = tuple(TASKS),
    methods: Sequence[str] = tuple(METHODS),
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    on_task: Callable[[dict[str, Any]], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run tasks x methods; returns a JSON-ready dict (results, metric directions, timing, machine).

    ``on_task`` gets the partial dict after every method of every task (tasks listed in ``tasks`` but absent from
    ``results`` are still pending, as are a task's ``pending`` methods), so a long run leaves its finished rows on
    disk; ``command`` is recorded as what generated the results.
    """
    start = time.perf_counter()
    results, metric_info = {}, {}
    data = {
        "quick": quick,
        "seed": seed,
        "command": command,
        "tasks": list(tasks),
        "results": results,
        "metrics": metric_info,
        "total_s": 0.0,
        "machine": machine(),
    }
    for name in tasks:
        t0 = time.perf_counter()
        task = TASKS[name](quick, seed)
        specs = task.programs()
        setup_s = time.perf_counter() - t0
        metric_info[name] = [asdict(m) for m in task.metrics]
        done: dict[str, Any] = {}
        results[name] = {"setup_s": setup_s, "methods": done, "pending": list(methods)}

        def finished(method: str, result: MethodResult, done=done, entry=results[name]) -> None:
            done[method] = asdict(result)
            entry["pending"] = [m for m in methods if m not in done]
            data["total_s"] = time.perf_counter() - start
            if on_task is not None:
                on_task(data)

        run_task(task, methods, progress, specs, on_method=finished)
        del results[name]["pending"]
        data["total_s"] = time.perf_counter() - start
        if on_task is not None:
            on_task(data)
    return data


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (platform's name elsewhere): what result files name the machine by."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def format_results(data: Mapping[str, Any]) -> str:
    """Markdown: per task a method x metric table (with times), then mean per-linear SQNR by modality."""
    mode = "quick" if data["quick"] else "full"
    m = data["machine"]
    command = data.get("command") or f"mqcompile eval{' --quick' if data['quick'] else ''}"
    pending = [t for t in data.get("tasks", data["results"]) if t not in data["results"]]
    lines = [
        "# Results: real-weights evaluation suite",
        "",
        f"Mode: {mode}. Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, no GPU. "
        f"Total {data['total_s'] / 60:.1f} min. Generated by `{command}`.",
        "",
    ]
    pending += [f"{t}: {m}" for t, e in data["results"].items() for m in e.get("pending", ())]
    if pending:
        lines += [f"**Partial: still running or not run: {', '.join(pending)}.**", ""]
    if any(method.endswith("+Rot") for entry in data["results"].values() for method in entry["methods"]):
        lines += [
            "Rows ending in `+Rot` add the optional `rotate` pass (online block-diagonal randomized Hadamard "
            "folded into the weights, QuaRot-style); they are extras, not part of MorphoQuant as defined.",
            "",
        ]
    for task, entry in data["results"].items():
        metrics = data["metrics"][task]
        head = [f"{x['name']} ({'↑' if x['higher_is_better'] else '↓'})" for x in metrics]
        lines += [f"## {task}", "", f"Setup (load, data, export): {entry['setup_s']:.1f} s.", ""]
        lines.append("| method | " + " | ".join(head) + " | quantize s | eval s |")
        lines.append("|---" * (len(head) + 3) + "|")
        for method, r in entry["methods"].items():
            cells = [x["fmt"].format(r["metrics"][x["name"]]) if x["name"] in r["metrics"] else "–" for x in metrics]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {r['quantize_s']:.1f} | {r['eval_s']:.1f} |")
        paths = sorted({p for r in entry["methods"].values() for p in r["layer_sqnr_db"]})
        if paths:
            lines += ["", "Mean per-linear output SQNR (dB) by modality tag:", ""]
            lines.append("| method | " + " | ".join(paths) + " |")
            lines.append("|---" * (len(paths) + 1) + "|")
            for method, r in entry["methods"].items():
                if r["layer_sqnr_db"]:
                    cells = [f"{r['layer_sqnr_db'][p]:.2f}" if p in r["layer_sqnr_db"] else "–" for p in paths]
                    lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def layer_plots(data: Mapping[str, Any], folder: str) -> list[str]:
    """One PNG per (task, quantized method) row: its per-linear output SQNR along the depth, by modality path (the
    report's plot); skipped with a log line when matplotlib is missing. Returns the paths written."""
    try:
        from ..report import ReportData, draw_layers
    except ModuleNotFoundError as exc:
        log.info("no per-layer plots (%s)", exc)
        return []
    written = []
    for task, entry in data.get("results", {}).items():
        for method, row in entry.get("methods", {}).items():
            if not row.get("layers"):
                continue
            fig = draw_layers(ReportData(layers=[tuple(x) for x in row["layers"]]), f"{task} {method}")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{task}_{method}.png")
            fig.savefig(path, dpi=100)
            written.append(path)
    return written


def write_results(data: Mapping[str, Any], markdown_path: str, json_path: str | None = None) -> None:
    os.makedirs(os.path.dirname(markdown_path) or ".", exist_ok=True)
    with open(markdown_path, "w") as f:
        f.write(format_results(data))
    json_path = json_path or os.path.splitext(markdown_path)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2, default=float)
