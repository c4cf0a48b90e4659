"""The main job on an embedded default: export the tiny Qwen2.5-Omni thinker, quantize it, report fidelity."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .api import quantize
from .config import QuantConfig
from .fidelity import output_fidelity
from .program import QuantizedProgram

__all__ = ["DemoResult", "run_demo", "format_tables", "run_omni_demo", "format_omni_examples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    program: QuantizedProgram
    path: str
    fidelity: dict[str, dict[str, float]]  # token modality -> {"rows", "cosine", "sqnr_db"}


def run_demo(out_dir: str, scheme: str = "w4a4", seed: int = 0, progress: bool = True) -> DemoResult:
    """Export, quantize with round-to-nearest, compare logits per token modality, save.

    Example:
        >>> result = run_demo("out")  # doctest: +SKIP
        >>> print(format_tables(result))  # doctest: +SKIP
    """
    from .models import build_tiny_thinker, export_thinker, make_sample, modality_token_ids

    steps = tqdm(total=4, desc="demo", unit="step", disable=None if progress else True)
    steps.set_postfix_str("build tiny thinker")
    model = build_tiny_thinker(seed=seed)
    sample = make_sample(model, seed=seed)
    steps.update()
    steps.set_postfix_str("export")
    ep = export_thinker(model, sample)
    steps.update()
    steps.set_postfix_str("quantize")
    token_ids = {k: tuple(v) for k, v in modality_token_ids(model.config).items()}
    qp = quantize(ep, QuantConfig(default=scheme, modality_token_ids=token_ids), progress=progress)
    steps.update()
    steps.set_postfix_str("evaluate + save")
    fidelity = output_fidelity(ep.module(), qp.module(), [sample], token_ids)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"tiny_thinker_{scheme}.pt2")
    qp.save(path)
    steps.update()
    steps.close()
    return DemoResult(qp, path, fidelity)


def format_tables(result: DemoResult) -> str:
    lines = ["Linears by modality path", result.program.summary(), "", "Logit fidelity vs float, by token modality"]
    lines.append(f"{'tokens':<10}{'count':>6}{'cosine':>10}{'SQNR dB':>10}")
    for name, f in result.fidelity.items():
        lines.append(f"{name:<10}{f['rows']:>6}{f['cosine']:>10.4f}{f['sqnr_db']:>10.2f}")
    lines += ["", f"saved: {result.path}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# The real-weights part: mini-omni (needs the eval extra)
# --------------------------------------------------------------------------------------------------------------------

#: the demo's slice of the mini-omni task: 2 sentences (1 transcribed), 6 scenes, 1 text chunk, 2 calibration batches
OMNI_DEMO_SIZES = (2, 1, 2, 6, 1, 2)
#: MorphoQuant + rotate with the quick calibration (64 tokens per linear, no STE steps; the suite's ``-fast`` row)
OMNI_DEMO_METHODS = ("FP", "W4A4-RTN", "W4A4-MorphoQuant+Rot-fast")


def _source_hash() -> str:
    """Of mqcompile's own sources: a cached program is reused only by the code that made it."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_omni_demo(progress: bool = True) -> dict:
    """mini-omni on a few held-out examples: float vs W4A4-RTN vs W4A4-MorphoQuant+Rot (quick calibration).

    Quantized programs are cached under ``cache_dir("demo")`` (keyed by the method, the projector weights and
    mqcompile's sources), so a second run only evaluates. Returns the suite's results dict plus ``examples``.
    """
    from .assets import cache_dir
    from .evaluation.omni import OmniTask
    from .evaluation.suite import METHODS, MethodResult, machine, method_config
    from .models.mini_omni import PROJECTOR_SHA256

    start = time.perf_counter()
    task = OmniTask(quick=True, sizes=OMNI_DEMO_SIZES)
    folder = cache_dir("demo")
    results, examples, spec = {}, {}, None
    steps = tqdm(OMNI_DEMO_METHODS, desc="mini-omni demo", unit="method", disable=None if progress else True)
    for method in steps:
        steps.set_postfix_str(method)
        overrides = METHODS[method]
        t0 = time.perf_counter()
        if overrides is None:
            task.data()
            if task.model is None:
                from .models.mini_omni import build_mini_omni

                task.model = build_mini_omni()
            module = task.model  # the eager model: the exported float program computes the same (tested)
        else:
            key = json.dumps([method, dict(overrides), PROJECTOR_SHA256, OMNI_DEMO_SIZES, _source_hash()], default=str)
            path = folder / f"mini_omni-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt2"
            if path.is_file():
                qp = QuantizedProgram.load(path)
                log.info("loaded the cached %s program %s", method, path)
            else:
                if spec is None:
                    spec = task.programs()["omni"]
                config = method_config(spec, overrides)
                calibration = spec.calibration if config.needs_calibration else None
                qp = quantize(spec.program, config, calibration=calibration, progress=progress)
                qp.save(path)
            module = qp.module()
        quantize_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = task.evaluate({"omni": module})
        results[method] = MethodResult(metrics, quantize_s, time.perf_counter() - t0)
        examples[method] = {"transcripts": list(task.last_transcripts), "answers": list(task.last_answers)}
    steps.close()
    data = task.data()
    return {
        "quick": True,
        "seed": 0,
        "command": "mqcompile demo (mini-omni slice; quick calibration: 2 batches, MorphoQuant+Rot-fast)",
        "tasks": [task.name],
        "results": {task.name: {"setup_s": 0.0, "methods": {m: asdict(r) for m, r in results.items()}}},
        "metrics": {task.name: [asdict(m) for m in task.metrics]},
        "total_s": time.perf_counter() - start,
        "machine": machine(),
        "examples": examples,
        "references": {"transcripts": data["speech"]["texts"], "facts": data["facts"]},
    }


def format_omni_examples(data: dict) -> str:
    """Held-out examples side by side: reference, then each method's transcript / answers."""
    refs, examples = data["references"], data["examples"]
    refs = {**refs, "transcripts": refs["transcripts"][: len(next(iter(examples.values()))["transcripts"])]}
    lines = ["mini-omni held-out examples (speech: transcript; scenes: colour / shape / side)"]
    for i, text in enumerate(refs["transcripts"]):
        lines.append(f"\nspeech {i + 1}  reference: {text}")
        for method, ex in examples.items():
            lines.append(f"  {method:<22} {ex['transcripts'][i]}")
    for i, facts in enumerate(refs["facts"][:3]):
        truth = " / ".join(facts[k] for k in ("color", "shape", "side"))
        lines.append(f"\nscene {i + 1}  truth: {truth}")
        for method, ex in examples.items():
            said = ex["answers"][i]
            lines.append(f"  {method:<22} {' / '.join(said[k] for k in ('color', 'shape', 'side'))}")
    return "\n".join(lines)
