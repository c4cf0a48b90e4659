"""Real-weights evaluation suite (optional extra ``eval``): tasks, baselines, results tables."""

from .base import Metric, ProgramSpec, Task
from .suite import METHODS, TASKS, format_results, run_suite, run_task, write_results

__all__ = [
    "Metric",
    "ProgramSpec",
    "Task",
    "METHODS",
    "TASKS",
    "run_suite",
    "run_task",
    "format_results",
    "write_results",
]
