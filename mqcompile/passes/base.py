"""What every pass receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.export import ExportedProgram

from ..config import QuantConfig
from .plan import LinearPlan

__all__ = ["PassContext", "PassResult"]


@dataclass
class PassContext:
    """Inputs shared by the passes of one ``quantize`` call (not a config: it carries tensors)."""

    config: QuantConfig
    example_inputs: tuple[tuple, dict] | None = None
    calibration: list[tuple[tuple, dict]] | None = None
    progress: bool = True
    # filled by passes: calibration statistics by linear name, and each linear's plan for the rewrite
    stats: dict[str, Any] | None = None
    plans: dict[str, LinearPlan] = field(default_factory=dict)

    def plan(self, name: str) -> LinearPlan:
        """The plan of linear ``name``, created empty on first use."""
        return self.plans.setdefault(name, LinearPlan())


@dataclass
class PassResult:
    """A pass's output program and the counts it matched/changed (tests assert them)."""

    program: ExportedProgram
    counts: dict[str, Any] = field(default_factory=dict)
