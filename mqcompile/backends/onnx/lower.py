"""Lower the ``com.mqcompile.export`` markers to standard opset-21 ONNX (QDQ).

Per quantized linear ``L`` (activation ``x [..., K]``, weight ``[N, K]``), numerics as in
:mod:`mqcompile.kernels.reference`::

    x2 = Reshape(x, [-1, K])                       # tokens x K, fp32 (no Reshape when x is 2-D already)
    x2 = Sub(x2, shift)                            # DABC shift: a [K] row, or Gather(shift [M, K], ids) when routed
    s  = Div(Mul(clip, ReduceMax(Abs(x2))), qmax)  # per-token scale [T]; clip scalar (no Mul when 1) or Gather
    s  = Where(s == 0, 1, s)                       # NaN/Inf scales stay (as in the reference)
    xd = DequantizeLinear(QuantizeLinear(x2, s, axis=0, output_dtype=INT4), s, axis=0)
    y  = MatMul(xd, DequantizeLinear(L.qweight [K, N] INT4, L.w_scale))  # per-channel axis=1, or blocked axis=0
    y  = Add(Add(y, bias), Gather(comp [M, N], ids))                   # DABC compensation when routed
    y  = Reshape(y, [..., N])

QuantizeLinear divides and rounds half to even, then saturates to [-8, 7], like ``torch.round`` + ``clamp`` in the
reference (checked bit for bit in the tests). Asymmetric activations (``w4a4asym``, ``mqcompile::quantize_act_asym``)
take the range ``clip * [Min(ReduceMin(x2), 0), Max(ReduceMax(x2), 0)]``, ``s = (hi - lo) / 15`` and a per-token
zero point ``QuantizeLinear(qmin - lo / s, 1, output_dtype=INT4)`` (rounding and saturating exactly as the reference),
given to both QuantizeLinear and DequantizeLinear; the GEMM then sees ``s (q - z)`` and needs no correction.
Variants change only the activation side: ``w4a8`` quantizes the 4-bit activations to INT8 with ``qmax = 127``;
``w4a16`` drops the activation Q/DQ. ``w4a16`` also stores per-channel 4-bit weights blocked along K (block 16..128,
the channel scale repeated per block, same dequantized values) so ONNX Runtime can fuse ``DequantizeLinear + MatMul``
into ``MatMulNBits``. ``w4a8int`` computes in integers instead of Q/DQ::

    xq, xs, xz = DynamicQuantizeLinear(x2)          # per-tensor UINT8, asymmetric (ONNX's only dynamic quantizer)
    y  = Mul(Cast(MatMulInteger(xq, Cast(L.qweight INT4 -> INT8), xz), FLOAT), Mul(L.w_scale, xs))

which ONNX Runtime fuses into ``MatMulIntegerToFloat`` on its u8s8 integer GEMMs (the weight ``Cast`` is folded
when the session loads, so the file keeps INT4 weights). Per-token scales and the activation clip are not
expressible there (``MatMulIntegerToFloat`` takes one activation scale per tensor), so this variant's numerics
differ from the program's more than ``w4a8``'s; the DABC shift and compensation stay.

``w4a4int`` keeps the program's own arithmetic (per-token scales, clips, DABC, asymmetric zero points) and runs the
GEMM on ONNX Runtime's u8s8 integer kernels: the b-bit codes are offset into UINT8 (``o = 2^(b-1)``), which
``MatMulInteger`` takes back off with its scalar zero point, so the int32 accumulators are the reference's::

    u   = Clip(QuantizeLinear(x2, s, o [+ z], axis=0, output_dtype=UINT8), 0, 2^b - 1)  # = q + o
    acc = MatMulInteger(u, Cast(L.qweight INT4 -> INT8), o)                              # = sum q w
    acc = Sub(acc, Mul(z, L.w_colsum))                                                   # asymmetric only
    y   = Mul(Mul(Cast(acc, FLOAT), s [T, 1]), L.w_scale [N])                            # the reference's order

``QuantizeLinear`` to UINT8 with the zero point ``o + z`` saturates at 0 and 255 and ``Clip`` then at the b-bit range,
which is ``sat(round(x / s) + z, -2^(b-1), 2^(b-1) - 1) + o``, the reference's codes offset by ``o``: outputs equal
the torch program's bit for bit (tests). ``MatMulInteger`` has no per-row activation scale, so the per-token scales
multiply its int32 output (three elementwise passes over ``[T, N]`` that ORT does not fuse); weights with groups
are refused as in ``w4a8int``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch

from ...errors import UnsupportedProgramError
from ...kernels.pack import unpack_int4
from .translate import DOMAIN, QLINEAR, QUANTIZE_ACT, QUANTIZE_ACT_ASYM, WLINEAR, marker_input

__all__ = ["VARIANTS", "LoweringStats", "lower_markers", "linear_name", "nbits_block"]

VARIANTS: tuple[str, ...] = ("w4a4", "w4a8", "w4a16", "w4a8int", "w4a4int")
# variants without per-token activation Q/DQ in front of their MatMuls
_NO_ACT_QDQ = ("w4a16", "w4a8int", "w4a4int")
_FLOAT = ir.DataType.FLOAT


@dataclass
class LoweringStats:
    """What the lowering emitted (counted before graph optimization)."""

    qlinear: int = 0
    wlinear: int = 0
    act_quant: int = 0
    linears: list[str] = field(default_factory=list)


def linear_name(node: ir.Node) -> str:
    """The source linear's name (the fx node meta the exporter recorded), else the node's name."""
    from ...graph import meta

    fx_node = node.meta.get("node")
    name = meta.get(fx_node).get("name") if fx_node is not None else None
    return str(name or node.name or node.op_type)


def nbits_block(k: int) -> int:
    """Block size for MatMulNBits-friendly storage of a per-channel weight: a power of two in [16, 128], <= K."""
    if k < 16:
        return 0
    return min(128, 1 << (k.bit_length() - 1))


def _attr(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def _const(value: ir.Value | None, what: str, node: ir.Node) -> np.ndarray:
    if value is None or value.const_value is None:
        raise UnsupportedProgramError(
            f"{linear_name(node)}: the {what} of {node.op_type} is computed in the graph, not a constant buffer; "
            "ONNX export needs the quantized program's buffers as they come from mqcompile.quantize"
        )
    return value.const_value.numpy()


def _input(node: ir.Node, name: str) -> ir.Value | None:
    """A marker's input by the op argument's name (None when absent): the layout is ``translate.MARKER_INPUTS``."""
    i = marker_input(node.op_type, name)
    return node.inputs[i] if i < len(node.inputs) else None


class _Lowerer:
    def __init__(self, model: ir.Model, variant: str) -> None:
        self.graph = model.graph
        self.variant = variant
        self.stats = LoweringStats()
        self.acts: dict[ir.Node, dict] = {}
        self._names: set[str] = set()

    # --- construction helpers ---------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=self._unique(name), const_value=ir.tensor(array, name=name))
        value.const_value.name = value.name
        self.graph.register_initializer(value)
        return value

    def op(self, anchor: ir.Node, prefix: str, op_type: str, inputs, **attrs) -> ir.Value:
        return self.op_outputs(anchor, prefix, op_type, inputs, 1, **attrs)[0]

    def op_outputs(self, anchor: ir.Node, prefix: str, op_type: str, inputs, n: int, **attrs) -> list[ir.Value]:
        node = ir.Node(
            "",
            op_type,
            inputs,
            attributes=ir.convenience.convert_attributes(attrs),
            num_outputs=n,
            name=self._unique(f"{prefix}/{op_type}"),
        )
        self.graph.insert_before(anchor, node)
        return list(node.outputs)

    def ints(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    # --- activations ------------------------------------------------------------------------------------------
    def lower_act(self, qa: ir.Node, k: int | None = None) -> dict:
        """Shared per QuantizeAct marker: flattened (shifted) activations, per-token scale, and Q/DQ values.
        ``k``: in_features from the consuming qlinear (the activation's last dim may be a symbolic expression)."""
        if qa in self.acts:
            return self.acts[qa]
        name = linear_name(qa)
        p = f"{name}/act"
        x, clip_v, ids, shift_v = (_input(qa, n) for n in ("x", "clip", "modality_ids", "shift"))
        bits = _attr(qa, "bits", 4)
        if k is None and x.shape is not None and isinstance(x.shape[-1], int):
            k = x.shape[-1]
        if not isinstance(k, int):
            raise UnsupportedProgramError(f"{name}: the activation's last dim (in_features) must be static, got {k}")
        clip = _const(clip_v, "clip table", qa).astype(np.float32)
        act_bits = 8 if (self.variant == "w4a8" and bits == 4) else bits
        qmax = float((1 << (act_bits - 1)) - 1)
        x2 = x if x.type is None or x.type.dtype == _FLOAT else self.op(qa, p, "Cast", [x], to=_FLOAT)
        if x.shape is None or x.shape.rank() != 2:  # tokens x K: per-token scales are per-axis (axis 0) scales
            x2 = self.op(qa, p, "Reshape", [x2, self.init(f"{name}.act_shape", self.ints([-1, k]))])
        ids_flat = None
        if ids is not None:
            ids_flat = self.op(qa, p, "Reshape", [ids, self.init(f"{name}.ids_shape", self.ints([-1]))])
        if shift_v is not None:
            x2 = self.op(
                qa, p, "Sub", [x2, self.table_rows(qa, p, shift_v, "DABC shift", f"{name}.act_shift", ids_flat)]
            )
        asym = qa.op_type == QUANTIZE_ACT_ASYM
        axes = self.init(f"{name}.axes", self.ints([1]))
        zero = self.init(f"{name}.zero", np.asarray(0.0, np.float32))
        one = self.init(f"{name}.one", np.asarray(1.0, np.float32))
        if asym:  # range clip * [min(x, 0), max(x, 0)] over all 2^b codes (reference.quantize_act_asym_ref)
            lo = self.op(qa, p, "Min", [self.op(qa, p, "ReduceMin", [x2, axes], keepdims=0), zero])
            hi = self.op(qa, p, "Max", [self.op(qa, p, "ReduceMax", [x2, axes], keepdims=0), zero])
            lo, hi = self._clipped(qa, p, name, clip, ids_flat, lo), self._clipped(qa, p, name, clip, ids_flat, hi)
            span = self.op(qa, p, "Sub", [hi, lo])
            levels = np.asarray(float((1 << act_bits) - 1), np.float32)
            scale = self.op(qa, p, "Div", [span, self.init(f"{name}.act_levels", levels)])
        else:
            amax = self.op(qa, p, "ReduceMax", [self.op(qa, p, "Abs", [x2]), axes], keepdims=0)
            amax = self._clipped(qa, p, name, clip, ids_flat, amax)
            scale = self.op(qa, p, "Div", [amax, self.init(f"{name}.act_qmax", np.asarray(qmax, np.float32))])
        scale = self.op(qa, p, "Where", [self.op(qa, p, "Equal", [scale, zero]), one, scale])
        qtype = ir.DataType.INT4 if act_bits == 4 else ir.DataType.INT8
        zp = None
        if asym:  # qmin - round(lo / s), saturated to the code range: QuantizeLinear with scale 1 does exactly that
            qmin = self.init(f"{name}.act_qmin", np.asarray(-qmax - 1.0, np.float32))
            zf = self.op(qa, p, "Sub", [qmin, self.op(qa, p, "Div", [lo, scale])])
            zp = self.op(qa, p, "QuantizeLinear", [zf, one], output_dtype=qtype)
        info = {"x": x, "x2": x2, "scale": scale, "ids_flat": ids_flat, "bits": bits, "k": k, "q": None, "xd": None}
        needs_codes = any(
            v.is_graph_output() or any(not (c.domain == DOMAIN and c.op_type == QLINEAR) for c in v.consumers())
            for v in qa.outputs
        )
        info["zp"] = zp
        if self.variant not in _NO_ACT_QDQ or needs_codes:
            qdq = [x2, scale] if zp is None else [x2, scale, zp]
            info["q"] = self.op(qa, p, "QuantizeLinear", qdq, axis=0, output_dtype=qtype)
            self.stats.act_quant += 1
        if needs_codes:  # codes used outside a qlinear: materialize the op's own outputs
            codes = self.op(qa, p, "Cast", [info["q"]], to=ir.DataType.INT8)
            codes = self.op(qa, p, "Reshape", [codes, self.op(qa, p, "Shape", [x])])
            lead = self.op(qa, p, "Shape", [x], start=0, end=-1)
            one_shape = self.init(f"{name}.one_dim", self.ints([1]))
            scale_shape = self.op(qa, p, "Concat", [lead, one_shape], axis=0)
            scale_out = self.op(qa, p, "Reshape", [scale, scale_shape])
            self._replace(qa.outputs[0], codes)
            self._replace(qa.outputs[1], scale_out)
            if zp is not None:
                zero_out = self.op(qa, p, "Cast", [zp], to=ir.DataType.INT32)
                self._replace(qa.outputs[2], self.op(qa, p, "Reshape", [zero_out, scale_shape]))
        self.acts[qa] = info
        return info

    def _clipped(self, qa: ir.Node, p: str, name: str, clip: np.ndarray, ids_flat, value: ir.Value) -> ir.Value:
        """``clip[m(t)] * value`` per token (``value`` itself when the one clip is 1, exactly as the reference)."""
        if ids_flat is not None:
            table = self.init(f"{name}.act_clip", clip)
            return self.op(qa, p, "Mul", [self.op(qa, p, "Gather", [table, ids_flat]), value])
        if clip[0] != 1.0:
            return self.op(qa, p, "Mul", [self.init(f"{name}.act_clip", np.asarray(clip[0], np.float32)), value])
        return value

    def dequantized_act(self, qa: ir.Node, info: dict) -> ir.Value:
        if self.variant in _NO_ACT_QDQ or info["q"] is None:
            return info["x2"]
        if info["xd"] is None:
            p = f"{linear_name(qa)}/act"
            dq = [info["q"], info["scale"]] + ([] if info["zp"] is None else [info["zp"]])
            info["xd"] = self.op(qa, p, "DequantizeLinear", dq, axis=0)
        return info["xd"]

    # --- weights ----------------------------------------------------------------------------------------------
    def _weight_arrays(self, node: ir.Node, w_v, ws_v, bits: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The weight's integer values ``[K, N]`` (MatMul's B layout, int8) and its scales (fp32, as stored)."""
        codes = _const(w_v, "quantized weight", node)
        scale = _const(ws_v, "weight scale", node).astype(np.float32)
        q = unpack_int4(torch.from_numpy(codes), k).numpy() if bits == 4 else codes.astype(np.int8)
        return np.ascontiguousarray(q.T), scale

    def int_weight(
        self, node: ir.Node, name: str, w_v, ws_v, bits: int, group: int, k: int
    ) -> tuple[ir.Value, ir.Value]:
        """INT8 weight values for ``MatMulInteger`` (an INT4 initializer cast in the graph, so the file stays 4-bit)
        and the per-channel scale ``[N]``; grouped weights are refused (MatMulInteger has no per-block scales)."""
        if group:
            raise UnsupportedProgramError(
                f"{name}: variant '{self.variant}' needs one weight scale per output channel (MatMulInteger has no "
                f"per-block scales), but this linear's weights use groups of {group}; export variant='w4a4' (or "
                "'w4a8', 'w4a16'), or quantize with weight_group_size=None"
            )
        qt, scale = self._weight_arrays(node, w_v, ws_v, bits, k)
        if bits == 4:
            w = self.op(
                node, name, "Cast", [self.init(f"{name}.qweight", qt.astype(ml_dtypes.int4))], to=ir.DataType.INT8
            )
        else:
            w = self.init(f"{name}.qweight", qt)
        return w, self.init(f"{name}.w_scale", scale.reshape(-1))

    def weight(self, node: ir.Node, anchor: ir.Node, name: str, w_v, ws_v, bits: int, group: int, k: int):
        qt, scale = self._weight_arrays(node, w_v, ws_v, bits, k)
        n = qt.shape[1]
        attrs: dict = {}
        if group:
            scale_t = np.ascontiguousarray(scale.T)  # [G, N]
            attrs = {"axis": 0, "block_size": group}
        elif self.variant == "w4a16" and bits == 4 and nbits_block(k):
            block = nbits_block(k)
            scale_t = np.ascontiguousarray(np.repeat(scale.reshape(1, n), -(-k // block), axis=0))
            attrs = {"axis": 0, "block_size": block}
        else:
            scale_t = scale.reshape(n)
            attrs = {"axis": 1}
        dtype = ml_dtypes.int4 if bits == 4 else np.int8
        w_init = self.init(f"{name}.qweight", qt.astype(dtype))
        s_init = self.init(f"{name}.w_scale", scale_t)
        return self.op(anchor, name, "DequantizeLinear", [w_init, s_init], **attrs)

    # --- linears ----------------------------------------------------------------------------------------------
    def _replace(self, old: ir.Value, new: ir.Value) -> None:
        new.type, new.shape = old.type, old.shape
        was_output = old.is_graph_output()
        name = old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        if was_output:
            old.name = None
            new.name = name

    def table_rows(self, node: ir.Node, p: str, value: ir.Value, what: str, init_name: str, ids_flat) -> ir.Value:
        """A per-modality table ``[M, X]`` as per-token rows: row 0 as a constant, or ``Gather`` on the ids."""
        table = _const(value, what, node).astype(np.float32)
        if ids_flat is None:
            return self.init(init_name, table[0])
        return self.op(node, p, "Gather", [self.init(init_name, table), ids_flat], axis=0)

    def _epilogue(self, node, p, y, bias, comp_v, ids_flat, name):
        if bias is not None:
            b = bias
            if bias.type is not None and bias.type.dtype != _FLOAT:
                b = self.op(node, p, "Cast", [bias], to=_FLOAT)
            y = self.op(node, p, "Add", [y, b])
        if comp_v is not None:
            y = self.op(
                node, p, "Add", [y, self.table_rows(node, p, comp_v, "DABC compensation", f"{name}.comp", ids_flat)]
            )
        return y

    def int_matmul(self, ql: ir.Node, name: str, x2: ir.Value, bits: int, group: int, k: int) -> ir.Value:
        """``w4a8int``: ``x2 @ W.T`` through DynamicQuantizeLinear + MatMulInteger, scaled back to fp32."""
        w, w_scale = self.int_weight(ql, name, _input(ql, "w"), _input(ql, "w_scale"), bits, group, k)
        xq, xs, xz = self.op_outputs(ql, name, "DynamicQuantizeLinear", [x2], 3)
        acc = self.op(ql, name, "MatMulInteger", [xq, w, xz])
        # Cast -> Mul(acc, Mul(b_scale, a_scale)) is the pattern ORT fuses into MatMulIntegerToFloat
        scale = self.op(ql, name, "Mul", [w_scale, xs])
        return self.op(ql, name, "Mul", [self.op(ql, name, "Cast", [acc], to=_FLOAT), scale])

    def offset_codes(self, qa: ir.Node, info: dict) -> None:
        """``w4a4int``'s activation side, once per QuantizeAct: the codes offset into UINT8 (``info["u8"]``), the
        offset as ``MatMulInteger``'s zero point and, when asymmetric, the int32 zero points for the correction."""
        if info.get("u8") is not None:
            return
        name, bits = linear_name(qa), info["bits"]
        p, offset = f"{name}/act", 1 << (bits - 1)
        info["a_zp"] = self.init(f"{name}.act_offset", np.asarray(offset, np.uint8))
        if info["zp"] is not None:  # o + z per token: z is INT4/INT8, so add in int32, then UINT8
            info["z32"] = self.op(qa, p, "Cast", [info["zp"]], to=ir.DataType.INT32)
            o32 = self.init(f"{name}.act_offset32", np.asarray(offset, np.int32))
            zp = self.op(qa, p, "Cast", [self.op(qa, p, "Add", [info["z32"], o32])], to=ir.DataType.UINT8)
        else:  # per-axis QuantizeLinear wants a zero point of the scales' shape
            zp = self.op(qa, p, "Expand", [info["a_zp"], self.op(qa, p, "Shape", [info["scale"]])])
        u8 = ir.DataType.UINT8
        u = self.op(qa, p, "QuantizeLinear", [info["x2"], info["scale"], zp], axis=0, output_dtype=u8)
        if bits < 8:
            lo = self.init(f"{name}.act_umin", np.asarray(0, np.uint8))
            u = self.op(qa, p, "Clip", [u, lo, self.init(f"{name}.act_umax", np.asarray((1 << bits) - 1, np.uint8))])
        info["u8"] = u
        self.stats.act_quant += 1

    def exact_int_matmul(self, ql: ir.Node, qa: ir.Node, info: dict, bits: int, group: int, k: int) -> ir.Value:
        """``w4a4int``: ``MatMulInteger`` u8s8 on the offset codes, the zero-point correction in int32, then the
        per-token and per-channel scales in the reference's order (see the module doc)."""
        name = linear_name(ql)
        w, w_scale = self.int_weight(ql, name, _input(ql, "w"), _input(ql, "w_scale"), bits, group, k)
        self.offset_codes(qa, info)
        acc = self.op(ql, name, "MatMulInteger", [info["u8"], w, info["a_zp"]])
        axis1 = self.init(f"{name}.axis1", self.ints([1]))
        if info["zp"] is not None:
            colsum = _const(_input(ql, "w_colsum"), "weight column sums", ql).astype(np.int32).reshape(1, -1)
            z_col = self.op(ql, name, "Unsqueeze", [info["z32"], axis1])
            correction = self.op(ql, name, "Mul", [z_col, self.init(f"{name}.w_colsum", colsum)])
            acc = self.op(ql, name, "Sub", [acc, correction])
        s_col = self.op(ql, name, "Unsqueeze", [info["scale"], axis1])
        y = self.op(ql, name, "Mul", [self.op(ql, name, "Cast", [acc], to=_FLOAT), s_col])
        return self.op(ql, name, "Mul", [y, w_scale])

    def lower_qlinear(self, ql: ir.Node) -> None:
        qa = _input(ql, "xq").producer() if _input(ql, "xq") is not None else None
        name = linear_name(ql)
        if (
            qa is None
            or qa.domain != DOMAIN
            or qa.op_type not in (QUANTIZE_ACT, QUANTIZE_ACT_ASYM)
            or _input(ql, "x_scale").producer() is not qa
            or (qa.op_type == QUANTIZE_ACT_ASYM and _input(ql, "x_zero").producer() is not qa)
        ):
            raise UnsupportedProgramError(
                f"{name}: mqcompile::qlinear does not take its codes and scales straight from mqcompile::quantize_act; "
                "ONNX export supports the graphs mqcompile.quantize writes"
            )
        k, bits, group = _attr(ql, "in_features"), _attr(ql, "w_bits", 4), _attr(ql, "group_size")
        info = self.lower_act(qa, k)
        if self.variant == "w4a8int":
            y = self.int_matmul(ql, name, info["x2"], bits, group, k)
        elif self.variant == "w4a4int":
            y = self.exact_int_matmul(ql, qa, info, bits, group, k)
        else:
            xd = self.dequantized_act(qa, info)
            wd = self.weight(ql, ql, name, _input(ql, "w"), _input(ql, "w_scale"), bits, group, k)
            y = self.op(ql, name, "MatMul", [xd, wd])
        ids_flat = info["ids_flat"]
        ids = _input(ql, "modality_ids")
        if ids is not None and ids_flat is None:
            ids_flat = self.op(ql, name, "Reshape", [ids, self.init(f"{name}.ids_shape", self.ints([-1]))])
        y = self._epilogue(ql, name, y, _input(ql, "bias"), _input(ql, "comp"), ids_flat, name)
        out = ql.outputs[0]
        if info["x"].shape is None or info["x"].shape.rank() != 2:
            n = int(_input(ql, "w").shape[0])
            lead = self.op(ql, name, "Shape", [info["x"]], start=0, end=-1)
            shape = self.op(ql, name, "Concat", [lead, self.init(f"{name}.out_features", self.ints([n]))], axis=0)
            y = self.op(ql, name, "Reshape", [y, shape])
        out_dtype = _attr(ql, "out_dtype", int(_FLOAT))
        if out_dtype != int(_FLOAT):
            y = self.op(ql, name, "Cast", [y], to=ir.DataType(out_dtype))
        self._replace(out, y)
        self.stats.qlinear += 1
        self.stats.linears.append(name)

    def lower_wlinear(self, wl: ir.Node) -> None:
        name = linear_name(wl)
        x = _input(wl, "x")
        k, bits, group = _attr(wl, "in_features"), _attr(wl, "w_bits", 4), _attr(wl, "group_size")
        wd = self.weight(wl, wl, name, _input(wl, "w"), _input(wl, "w_scale"), bits, group, k)
        x_dtype = x.type.dtype if x.type is not None else _FLOAT
        if x_dtype != _FLOAT:
            wd = self.op(wl, name, "Cast", [wd], to=x_dtype)
        y = self.op(wl, name, "MatMul", [x, wd])
        bias = _input(wl, "bias")
        if bias is not None:
            y = self.op(wl, name, "Add", [y, bias])
        self._replace(wl.outputs[0], y)
        self.stats.wlinear += 1
        self.stats.linears.append(name)

    def run(self) -> LoweringStats:
        self._names = {n.name for n in self.graph if n.name} | set(self.graph.initializers)
        markers = [n for n in self.graph if n.domain == DOMAIN]
        for node in markers:
            if node.op_type == QLINEAR:
                self.lower_qlinear(node)
            elif node.op_type == WLINEAR:
                self.lower_wlinear(node)
        for node in markers:  # quantize_act markers whose codes leave the qlinears (standalone quantize_act)
            in_use = any(v.uses() or v.is_graph_output() for v in node.outputs)
            if node.op_type in (QUANTIZE_ACT, QUANTIZE_ACT_ASYM) and node not in self.acts and in_use:
                self.lower_act(node)
        for node in reversed(markers):
            if any(v.uses() or v.is_graph_output() for v in node.outputs):
                raise UnsupportedProgramError(
                    f"internal: {node.op_type} marker {node.name} still in use after lowering"
                )
            self.graph.remove(node, safe=True)
        self.graph.opset_imports.pop(DOMAIN, None)
        return self.stats


def lower_markers(model: ir.Model, variant: str) -> LoweringStats:
    """Replace every ``com.mqcompile.export`` marker in ``model`` (in place) with standard ONNX nodes."""
    return _Lowerer(model, variant).run()
