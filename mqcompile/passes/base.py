"""What every pass receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.export import ExportedProgram

from ..config import QuantConfig

__all__ = ["PassContext", "PassResult"]


@dataclass
class PassContext:
    """Inputs shared by the passes of one ``quantize`` call (not a config: it carries tensors)."""

    config: QuantConfig
    example_inputs: tuple[tuple, dict] | None = None
    calibration: list[tuple[tuple, dict]] | None = None
    progress: bool = True
    # filled by passes: calibration statistics by linear name, and per-linear tensors for the rewrite
    # (``weight``: replacement float weight, ``act_multiplier``: per-channel factor applied before quantization,
    # ``gamma``: weight clip [N, 1], ``act_clip``/``shift``: modality key -> clip ratio / DABC shift [K],
    # ``rotation``: [B, B] orthogonal block applied to the input before quantizing)
    stats: dict[str, Any] | None = None
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # linear -> modality -> DabcPlan
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PassResult:
    """A pass's output program and the counts it matched/changed (tests assert them)."""

    program: ExportedProgram
    counts: dict[str, Any] = field(default_factory=dict)
