"""mqcompile: post-training W4A4 quantization compiler (MorphoQuant) for omni-modal models.

Example:
    >>> import torch, mqcompile
    >>> ep = torch.export.export(torch.nn.Linear(64, 32), (torch.randn(4, 64),))
    >>> qp = mqcompile.quantize(ep, progress=False)
    >>> [r.scheme for r in qp.linears()]
    ['w4a4']
"""

from . import (
    kernels,  # noqa: F401  (registers the mqcompile:: ops)
    recipes,
)
from .api import quantize
from .backends.inductor import compile  # noqa: A004  (mqcompile.compile, like torch.compile)
from .config import MODALITIES, PATHS, SCHEMES, QuantConfig
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    InputError,
    MQCompileError,
    NonFiniteError,
    PassError,
    ProgramFileError,
    UnsupportedProgramError,
)
from .program import QuantizedProgram

__version__ = "0.1.0"


def export_onnx(qp, path, example_inputs=None, opset: int = 21, variant: str = "w4a4", check: bool = True):
    """Export a QuantizedProgram to ONNX QDQ (INT4 weights; ``w4a4``/``w4a8``/``w4a16`` activations) and check parity
    in onnxruntime. Imported lazily: it needs the ``onnx``/``onnxscript``/``onnxruntime`` packages (``dev`` extra).

    Example:
        >>> report = mqcompile.export_onnx(qp, "model.onnx", variant="w4a16")  # doctest: +SKIP
    """
    from .backends.onnx.export import export_onnx as _export

    return _export(qp, path, example_inputs=example_inputs, opset=opset, variant=variant, check=check)


__all__ = [
    "quantize",
    "compile",
    "export_onnx",
    "QuantConfig",
    "recipes",
    "QuantizedProgram",
    "MODALITIES",
    "PATHS",
    "SCHEMES",
    "MQCompileError",
    "ConfigError",
    "UnsupportedProgramError",
    "CalibrationError",
    "InputError",
    "NonFiniteError",
    "CheckpointError",
    "ProgramFileError",
    "PassError",
]
