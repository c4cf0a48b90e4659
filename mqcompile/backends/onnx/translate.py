"""Translations of the ``mqcompile::`` ops for the torch ONNX exporter: one marker node per op.

Each marker keeps the op's inputs (activations, modality ids and the program's buffers, which the exporter turns into
initializers) and its integer arguments as attributes; :mod:`.lower` replaces it with standard ONNX.
The marker schemas are built locally and never registered with ``onnx.defs``.

Example::

    torch.onnx.export(ep, (), kwargs=inputs, dynamo=True, optimize=False, custom_translation_table=TABLE)
"""

from __future__ import annotations

import onnx
import onnxscript
import torch

from ... import kernels  # noqa: F401  (registers the mqcompile:: ops)
from ...kernels.ops import QLinearArgs, QuantizeActArgs, WLinearArgs

__all__ = [
    "DOMAIN",
    "QUANTIZE_ACT",
    "QUANTIZE_ACT_ASYM",
    "QLINEAR",
    "WLINEAR",
    "MARKER_INPUTS",
    "marker_input",
    "TABLE",
    "translated_ops",
]

DOMAIN = "com.mqcompile.export"
QUANTIZE_ACT, QUANTIZE_ACT_ASYM, QLINEAR, WLINEAR = "QuantizeAct", "QuantizeActAsym", "QLinear", "WLinear"
# Each marker's tensor inputs, in order, by the op records' field names (the integer arguments become attributes).
MARKER_INPUTS = {
    QUANTIZE_ACT: ("x", "clip", "modality_ids", "shift"),
    QUANTIZE_ACT_ASYM: ("x", "clip", "modality_ids", "shift"),
    QLINEAR: ("xq", "x_scale", "w", "w_scale", "bias", "comp", "modality_ids", "x_zero", "w_colsum"),
    WLINEAR: ("x", "w", "w_scale", "bias"),
}


def marker_input(op_type: str, name: str) -> int:
    """Position of the op argument ``name`` among the inputs of marker ``op_type``."""
    return MARKER_INPUTS[op_type].index(name)


_S = onnx.defs.OpSchema
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_OPSET = onnxscript.values.Opset(DOMAIN, 1)


def _param(name: str, type_str: str, optional: bool = False) -> _S.FormalParameter:
    option = _S.FormalParameterOption.Optional if optional else _S.FormalParameterOption.Single
    return _S.FormalParameter(name, type_str, param_option=option)


def _op(name: str, inputs, outputs, attributes) -> onnxscript.values.Op:
    schema = _S(
        name,
        DOMAIN,
        1,
        inputs=[_param(*i) for i in inputs],
        outputs=[_param(*o) for o in outputs],
        type_constraints=[("T", _FLOATS, "activation dtype"), ("W", ["tensor(uint8)", "tensor(int8)"], "codes")],
        attributes=[_S.Attribute(a, _S.AttrType.INT) for a in attributes],
    )
    return onnxscript.values.Op(_OPSET, name, schema)


# ONNX type (and whether optional) of every marker input, by name
_INPUT_TYPES = {
    "x": ("T",),
    "clip": ("tensor(float)",),
    "modality_ids": ("tensor(int64)", True),
    "shift": ("T", True),
    "xq": ("tensor(int8)",),
    "x_scale": ("tensor(float)",),
    "w": ("W",),
    "w_scale": ("tensor(float)",),
    "bias": ("T", True),
    "comp": ("tensor(float)", True),
    "x_zero": ("tensor(int32)", True),
    "w_colsum": ("tensor(int32)", True),
}


def _marker(op_type: str, outputs, attributes) -> onnxscript.values.Op:
    return _op(op_type, [(n, *_INPUT_TYPES[n]) for n in MARKER_INPUTS[op_type]], outputs, attributes)


_QUANTIZE_ACT = _marker(QUANTIZE_ACT, [("codes", "tensor(int8)"), ("scale", "tensor(float)")], ["bits"])
_QUANTIZE_ACT_ASYM = _marker(
    QUANTIZE_ACT_ASYM, [("codes", "tensor(int8)"), ("scale", "tensor(float)"), ("zero", "tensor(int32)")], ["bits"]
)
_QLINEAR = _marker(QLINEAR, [("y", "T")], ["w_bits", "group_size", "in_features", "out_dtype"])
_WLINEAR = _marker(WLINEAR, [("y", "T")], ["w_bits", "group_size", "in_features"])


def _inputs(op_type: str, args) -> list:
    return [getattr(args, name) for name in MARKER_INPUTS[op_type]]


# The translation functions keep the ops' explicit signatures: the exporter reads them to tell inputs from attributes.
def _quantize_act(x, clip, modality_ids=None, bits: int = 4, shift=None):
    args = QuantizeActArgs(x, clip, modality_ids, bits, shift)
    return _QUANTIZE_ACT(*_inputs(QUANTIZE_ACT, args), bits=args.bits)


def _quantize_act_asym(x, clip, modality_ids=None, bits: int = 4, shift=None):
    args = QuantizeActArgs(x, clip, modality_ids, bits, shift)
    return _QUANTIZE_ACT_ASYM(*_inputs(QUANTIZE_ACT_ASYM, args), bits=args.bits)


def _qlinear(
    xq,
    x_scale,
    w,
    w_scale,
    bias=None,
    w_bits: int = 4,
    group_size: int = 0,
    in_features: int = 0,
    out_dtype: int = 1,
    comp=None,
    modality_ids=None,
    x_zero=None,
    w_colsum=None,
):
    args = QLinearArgs(
        xq, x_scale, w, w_scale, bias, w_bits, group_size, in_features, out_dtype, comp, modality_ids, x_zero, w_colsum
    )
    return _QLINEAR(
        *_inputs(QLINEAR, args),
        w_bits=args.w_bits,
        group_size=args.group_size,
        in_features=args.in_features,
        out_dtype=int(args.out_dtype),
    )


def _wlinear(x, w, w_scale, bias=None, w_bits: int = 4, group_size: int = 0, in_features: int = 0):
    args = WLinearArgs(x, w, w_scale, bias, w_bits, group_size, in_features)
    return _WLINEAR(
        *_inputs(WLINEAR, args), w_bits=args.w_bits, group_size=args.group_size, in_features=args.in_features
    )


TABLE = {
    torch.ops.mqcompile.quantize_act.default: _quantize_act,
    torch.ops.mqcompile.quantize_act_asym.default: _quantize_act_asym,
    torch.ops.mqcompile.qlinear.default: _qlinear,
    torch.ops.mqcompile.wlinear.default: _wlinear,
}


def translated_ops() -> frozenset[str]:
    """Qualified names (``mqcompile::qlinear``) of the ops this table translates."""
    return frozenset(op.name().split(".")[0] for op in TABLE)
