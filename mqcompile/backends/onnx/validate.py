"""Validation in ONNX Runtime: parity against the QuantizedProgram, and the graph ORT actually runs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import onnx
import torch

from ...errors import CalibrationError, UnsupportedProgramError
from .inputs import match_inputs

if TYPE_CHECKING:
    from ...program import QuantizedProgram

__all__ = ["Parity", "parity", "ort_optimized_op_counts"]


class Parity(NamedTuple):
    """ONNX Runtime vs the QuantizedProgram on the same inputs (all floating outputs together)."""

    max_abs_diff: float
    cosine: float
    argmax_agreement: float  # fraction of rows (last dim) of the first output whose argmax agrees


def _session(path: str | os.PathLike, optimized: str | os.PathLike | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()  # defaults (ORT_ENABLE_ALL): what a user of the file gets
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, by_name: Mapping[str, Any]) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in session.get_inputs():
        if inp.name not in by_name:
            raise CalibrationError(f"the ONNX model takes input {inp.name!r}, which the inputs lack")
        value = by_name[inp.name]
        feeds[inp.name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return feeds


def parity(qp: QuantizedProgram, onnx_path: str | os.PathLike, inputs) -> Parity:
    """Run ``onnx_path`` in ONNX Runtime (CPU EP) and ``qp.module()`` on ``inputs``; compare the outputs.

    ``inputs``: a ``{name: tensor}`` dict (or ``(args, kwargs)``). Returns ``(max_abs_diff, cosine,
    argmax_agreement)`` over all floating outputs (argmax along the last dim of the first one).
    """
    inputs = match_inputs(qp.exported_program, inputs)
    session = _session(onnx_path)
    got = session.run(None, _feeds(session, inputs.by_name))
    with torch.no_grad():
        want = qp.module()(*inputs.args, **inputs.kwargs)
    want = [t for t in torch.utils._pytree.tree_leaves(want) if isinstance(t, torch.Tensor)]
    pairs = [(torch.from_numpy(np.asarray(g)).float(), w.float()) for g, w in zip(got, want) if w.is_floating_point()]
    if len(got) != len(want) or not pairs:
        raise UnsupportedProgramError(f"{onnx_path}: {len(got)} ONNX outputs vs {len(want)} program outputs")
    for g, w in pairs:
        if g.shape != w.shape:
            raise UnsupportedProgramError(f"{onnx_path}: output shape {tuple(g.shape)} vs program {tuple(w.shape)}")
    a = torch.cat([g.reshape(-1) for g, _ in pairs]).double()
    b = torch.cat([w.reshape(-1) for _, w in pairs]).double()
    max_abs = float((a - b).abs().max()) if a.numel() else 0.0
    denom = float(a.norm() * b.norm())
    cosine = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    g0, w0 = pairs[0]
    agree = float((g0.argmax(-1) == w0.argmax(-1)).float().mean()) if g0.dim() and g0.shape[-1] else 1.0
    return Parity(max_abs, cosine, agree)


def ort_optimized_op_counts(path: str | os.PathLike, optimized_path: str | os.PathLike) -> dict[str, int]:
    """Op types of the graph ONNX Runtime (CPU EP, default ``ORT_ENABLE_ALL``) actually runs for ``path``.

    Writes ORT's optimized model (``SessionOptions.optimized_model_filepath``) to ``optimized_path`` and counts its
    nodes, e.g. ``MatMulNBits`` when ORT fused ``DequantizeLinear(int4) + MatMul``.
    """
    _session(path, optimized=optimized_path)
    model = onnx.load(str(optimized_path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
