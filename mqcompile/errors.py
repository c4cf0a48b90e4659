"""Exceptions raised by mqcompile. Each message says what was wrong and what to do about it."""

__all__ = [
    "MQCompileError",
    "ConfigError",
    "UnsupportedProgramError",
    "InputError",
    "CalibrationError",
    "NonFiniteError",
    "CheckpointError",
    "ProgramFileError",
    "PassError",
]


class MQCompileError(Exception):
    """Base class of every error mqcompile raises on purpose."""


class ConfigError(MQCompileError, ValueError):
    """A config names an unknown modality or scheme, or has an out-of-range value."""


class UnsupportedProgramError(MQCompileError, TypeError):
    """The input is not an ExportedProgram, or the graph has a shape mqcompile cannot rewrite."""


class InputError(MQCompileError, ValueError):
    """Inputs do not match the program (names, shapes, dtypes, token ids outside the vocabulary)."""


class CalibrationError(InputError):
    """Calibration or example inputs do not match the program, or calibration cannot run on them."""


class NonFiniteError(MQCompileError, ValueError):
    """NaN or Inf found in inputs, weights or activations."""


class CheckpointError(MQCompileError, FileNotFoundError):
    """A model checkpoint path is missing or does not hold the expected model."""


class ProgramFileError(MQCompileError, ValueError):
    """A file is not a saved QuantizedProgram (or was written by an incompatible version)."""


class PassError(MQCompileError, RuntimeError):
    """A pass failed (the message names it) or ran without a pass it needs."""
