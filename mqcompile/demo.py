"""The main job on an embedded default: export the tiny Qwen2.5-Omni thinker, quantize it, report fidelity."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .api import quantize
from .calibration import token_modality_ids
from .config import MODALITIES, QuantConfig
from .metrics import cosine, sqnr_db
from .program import QuantizedProgram

__all__ = ["DemoResult", "run_demo", "format_tables"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    program: QuantizedProgram
    path: str
    fidelity: dict[str, dict[str, float]]  # token modality -> {"tokens", "cosine", "sqnr_db"}


def run_demo(out_dir: str, scheme: str = "w4a4", seed: int = 0, progress: bool = True) -> DemoResult:
    """Export, quantize with round-to-nearest, compare logits per token modality, save.

    Example:
        >>> result = run_demo("out")  # doctest: +SKIP
        >>> print(format_tables(result))  # doctest: +SKIP
    """
    from .models import build_tiny_thinker, export_thinker, make_sample, modality_token_ids

    steps = tqdm(total=4, desc="demo", unit="step", disable=not progress)
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
    with torch.no_grad():
        ref = ep.module()(**sample)
        test = qp.module()(**sample)
    mods = token_modality_ids(sample["input_ids"], token_ids)
    fidelity = {}
    for index, name in enumerate(MODALITIES):
        mask = mods == index
        if mask.any():
            a, b = ref[mask], test[mask]
            fidelity[name] = {"tokens": int(mask.sum()), "cosine": cosine(a, b), "sqnr_db": sqnr_db(a, b)}
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
        lines.append(f"{name:<10}{f['tokens']:>6}{f['cosine']:>10.4f}{f['sqnr_db']:>10.2f}")
    lines += ["", f"saved: {result.path}"]
    return "\n".join(lines)
