"""mqcompile: post-training W4A4 quantization compiler (MorphoQuant) for omni-modal models.

Example:
    >>> import torch, mqcompile
    >>> ep = torch.export.export(torch.nn.Linear(64, 32), (torch.randn(4, 64),))
    >>> qp = mqcompile.quantize(ep, progress=False)
    >>> [r.scheme for r in qp.linears()]
    ['w4a4']
"""

from . import kernels  # noqa: F401  (registers the mqcompile:: ops)
from .api import quantize
from .config import MODALITIES, PATHS, SCHEMES, QuantConfig
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    MQCompileError,
    NonFiniteError,
    ProgramFileError,
    UnsupportedProgramError,
)
from .program import QuantizedProgram

__version__ = "0.1.0"

__all__ = [
    "quantize",
    "QuantConfig",
    "QuantizedProgram",
    "MODALITIES",
    "PATHS",
    "SCHEMES",
    "MQCompileError",
    "ConfigError",
    "UnsupportedProgramError",
    "CalibrationError",
    "NonFiniteError",
    "CheckpointError",
    "ProgramFileError",
]
