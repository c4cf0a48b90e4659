"""The contract between the evaluation suite runner and each real-weights task (text LM, Whisper, DINOv2).

A task loads its model and data (cached, offline), exports one or more programs, and scores callables that stand in
for those programs (the float ``ep.module()`` or a ``QuantizedProgram.module()``): the runner quantizes every program
with each method through ``mqcompile.quantize`` and calls ``evaluate`` with the resulting modules, so there is no
evaluation-only side path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.export import ExportedProgram

__all__ = ["ProgramSpec", "Task", "Metric"]


@dataclass
class ProgramSpec:
    """One exported program of a task.

    Attributes:
        program: the float ``ExportedProgram`` (``aten.linear`` nodes).
        calibration: kwargs batches for calibrating methods (disjoint from the evaluation data).
        probe: one kwargs batch from the evaluation data, for per-linear output SQNR.
        config: extra ``QuantConfig`` fields this program needs (``sources``, ``modality_token_ids``); a method's own
            fields win (a method may switch routing off by giving ``modality_token_ids={}``).
        probe_groups: token masks of the probe (name -> bool ``(batch, seq)``): linears whose rows are the probe's
            tokens also get an SQNR per group (``fused/text``, ``fused/vision``, ...).
    """

    program: ExportedProgram
    calibration: list[dict[str, torch.Tensor]]
    probe: dict[str, torch.Tensor]
    config: Mapping[str, Any] = field(default_factory=dict)
    probe_groups: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str  # e.g. "ppl_wiki"
    higher_is_better: bool
    fmt: str = "{:.2f}"


class Task(Protocol):
    name: str  # "qwen2-0.5b", "whisper-base", "dinov2-s14"
    metrics: tuple[Metric, ...]

    def programs(self) -> dict[str, ProgramSpec]: ...

    def evaluate(self, modules: Mapping[str, Callable[..., Any]]) -> dict[str, float]: ...
