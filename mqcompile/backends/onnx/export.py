"""ONNX QDQ export of a :class:`~mqcompile.QuantizedProgram`, checked in ONNX Runtime.

The whole program goes through the torch ONNX exporter (``dynamo=True``, opset 21); the three ``mqcompile::`` ops
become standard QDQ subgraphs (see :mod:`mqcompile.backends.onnx.lower`): INT4 weight initializers ``[K, N]`` feeding
``DequantizeLinear`` (per-channel ``axis=1``, or blocked ``axis=0, block_size=group`` for grouped weights),
per-token dynamic activation scales computed in the graph, INT4 ``QuantizeLinear -> DequantizeLinear``, the DABC shift
as ``Sub`` and the compensation as ``Add`` (``Gather`` on the per-token modality ids for fused linears).

Variants (``variant=``): ``w4a4`` is the program as quantized; ``w4a8`` quantizes 4-bit activations to INT8
(same per-token scales, ``/127``); ``w4a16`` drops the activation Q/DQ and stores weights blocked so that ONNX Runtime
fuses ``DequantizeLinear(int4) + MatMul`` into ``MatMulNBits``; ``w4a8int`` runs the linears on integers
(``DynamicQuantizeLinear`` per-tensor UINT8 activations, ``MatMulInteger`` on the INT4 weights cast to INT8), which ONNX
Runtime fuses into ``MatMulIntegerToFloat`` (docs/onnx.md: the variant that runs faster than float on ORT's CPU
provider); ``w4a4int`` keeps the program's per-token numerics exactly and runs them on ``MatMulInteger`` (u8s8).

Example::

    report = export_onnx(qp, "model.onnx")             # W4A4 QDQ, checked (checker + parity in onnxruntime)
    print(report.summary())
    fast = export_onnx(qp, "model_w4a8int.onnx", variant="w4a8int")
    max_abs, cos, agree = parity(qp, "model.onnx", inputs)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch.export import ExportedProgram

from ...errors import ConfigError, UnsupportedProgramError
from ...program import QuantizedProgram
from .inputs import Inputs, check_static_dims, match_inputs
from .lower import VARIANTS, lower_markers
from .translate import TABLE, translated_ops
from .validate import Parity, ort_optimized_op_counts, parity

__all__ = [
    "MIN_OPSET",
    "VARIANTS",
    "ExportReport",
    "Parity",
    "export_onnx",
    "export_float_onnx",
    "parity",
    "ort_optimized_op_counts",
]

log = logging.getLogger(__name__)

MIN_OPSET = 21  # INT4 QuantizeLinear/DequantizeLinear, blocked quantization, output_dtype
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GiB limit, with headroom
_SAFE_NAMESPACES = ("aten", "prims", "higher_order")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        variant / opset: as requested.
        linears: names of the quantized linears lowered to QDQ (``qlinear``: activations quantized too,
            ``wlinear``: weight-only).
        node_counts: op type -> count in the written graph (after constant folding and de-duplication).
        int4_initializers: INT4 weight initializers; ``weight_bytes``: bytes of all INT4/INT8 initializers.
        file_bytes: size of the file (plus its external data file, if any).
        parity: ORT vs ``qp.module()`` on the example inputs when ``check=True``.
    """

    path: str
    variant: str
    opset: int
    linears: tuple[str, ...]
    qlinear: int
    wlinear: int
    node_counts: dict[str, int]
    int4_initializers: int
    weight_bytes: int
    file_bytes: int
    parity: Parity | None = None
    checked: bool = False
    seconds: float = 0.0

    @property
    def quantize_linear(self) -> int:
        return self.node_counts.get("QuantizeLinear", 0)

    @property
    def dequantize_linear(self) -> int:
        return self.node_counts.get("DequantizeLinear", 0)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.variant}, opset {self.opset}, {self.file_bytes / 2**20:.2f} MiB "
            f"({self.weight_bytes / 2**20:.2f} MiB quantized weights), {self.seconds:.1f} s",
            f"linears: {self.qlinear} qlinear + {self.wlinear} wlinear; QuantizeLinear {self.quantize_linear}, "
            f"DequantizeLinear {self.dequantize_linear}, INT4 initializers {self.int4_initializers}",
        ]
        if self.parity is not None:
            p = self.parity
            lines.append(
                f"parity vs QuantizedProgram: max|diff| {p.max_abs_diff:.3g}, cosine {p.cosine:.6f}, "
                f"argmax agreement {p.argmax_agreement:.4f}"
            )
            if self.variant not in ("w4a4", "w4a4int"):  # parity is against the W4A4 program: these differ by design
                lines.append(
                    f"  ({self.variant} changes the activation side on purpose: "
                    + ("16-bit activations" if self.variant == "w4a16" else "8-bit activations")
                    + ", so it is not bit-exact against the W4A4 program; w4a4 and w4a4int are)"
                )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------------


def _check_args(opset: int, variant: str) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(
            f"opset {opset!r} is too old: INT4 QuantizeLinear/DequantizeLinear and blocked weight scales need "
            f"opset >= {MIN_OPSET}; pass opset={MIN_OPSET}"
        )
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ConfigError(f"opset {opset} is newer than this onnx package knows ({newest}); pass opset={MIN_OPSET}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")


def _check_runnable_in_ort(ep: ExportedProgram, inputs: Inputs) -> None:
    """The parity run needs ONNX Runtime's CPU kernels, which have no bfloat16 versions of most ops (a bf16 program
    failed with ``NOT_IMPLEMENTED: Relu(14)`` only after the file was written): say so before exporting."""
    values = [*ep.state_dict.values(), *inputs.args, *inputs.kwargs.values()]
    if any(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in values):
        raise UnsupportedProgramError(
            "this program computes in bfloat16, which ONNX Runtime's CPU kernels cannot run for the parity check; "
            "quantize and export a float32 program (model.float() before torch.export), or pass check=False to "
            "write the file without the check"
        )


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; pass a file path such as {p / 'model.onnx'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{p}: the directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{p}: not writable; pass a path in a writable directory")
    return p


# loggers that, during our export only, say things about other exports: torch's note that torchvision is absent
# (we never export its ops) and onnxscript's constant folder naming an op the ONNX reference evaluator cannot fold
# (the node stays as it is, and ONNX Runtime folds it when the session loads)
_QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding")


@contextlib.contextmanager
def _quiet_exporter():
    """No third-party noise from our exporter calls: the loggers above at ERROR and torch's own pytree deprecation
    (raised inside the exporter's ``run_decompositions``) ignored, restored on the way out; nothing global."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@functools.lru_cache(maxsize=4)
@_quiet_exporter()
def _registry(opset: int):
    """The exporter's op registry (torchlib) with our translations, built once per opset (1-3 s each time otherwise);
    None when the exporter's internal API moved (then torch.onnx.export builds its own)."""
    try:
        from torch.onnx._internal.exporter import _core, _registration

        if not {"registry", "optimize", "opset_version"} <= set(inspect.signature(_core.export).parameters):
            return None
        registry = _registration.ONNXRegistry.from_torchlib(opset_version=opset)
        for op, fn in TABLE.items():
            registry.register_op(op, fn)
        return registry
    except Exception:
        return None


def _check_ops(ep: ExportedProgram, opset: int) -> None:
    """Name the first op the ONNX exporter has no translation for (before a long export fails on it)."""
    ours = translated_ops()
    for node in ep.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        qualified = target.name().split(".")[0]
        namespace = qualified.split("::")[0]
        if qualified in ours or namespace in _SAFE_NAMESPACES:
            continue
        registry = _registry(opset)
        if namespace == "mqcompile" or (registry is not None and not registry.is_registered(target)):
            raise UnsupportedProgramError(
                f"node {node.name!r} calls {qualified}, which has no ONNX translation; keep it out of the exported "
                "program, or register a translation with torch.onnx.export(custom_translation_table=...)"
            )


def _export_error(exc: BaseException) -> UnsupportedProgramError:
    text, chain, e = str(exc), [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    messages = "\n".join(str(c) for c in chain)
    node = re.search(r"Error when translating node %(\S+) .*?target=([^\]]+)\]", messages)
    if any(type(c).__name__ == "DispatchError" for c in chain) and node:
        return UnsupportedProgramError(
            f"node {node.group(1)!r} calls {node.group(2)}, which has no ONNX translation for this opset; keep it "
            "out of the exported program, or register a translation (custom_translation_table)"
        )
    if re.search(
        r"data-dependent|DataDependent|unbacked|SymInt|SymFloat|symbolic shape|Constraints violated|guard on",
        messages,
        re.IGNORECASE,
    ):
        return UnsupportedProgramError(
            "the ONNX exporter cannot express this program's dynamic shapes "
            f"({text.splitlines()[0] if text else type(exc).__name__}); re-export the model with static shapes "
            "(torch.export without dynamic_shapes, or with fewer dynamic dims) and quantize again"
        )
    where = f" at node {node.group(1)!r} ({node.group(2)})" if node else ""
    last = str(chain[-1]).strip().splitlines()
    return UnsupportedProgramError(
        f"the torch ONNX exporter failed{where}: {type(chain[-1]).__name__}: {last[0] if last else ''}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------------


def _run_exporter(ep: ExportedProgram, inputs: Inputs, opset: int):
    """torch.onnx.export(ep, dynamo=True) with its default optimization (constant folding and onnxscript's rewrite
    rules, which also repair what torchlib emits, e.g. conv3d's zero bias), reusing a cached registry."""
    registry = _registry(opset)
    if registry is None:
        return torch.onnx.export(
            ep,
            inputs.args,
            kwargs=inputs.kwargs,
            dynamo=True,
            opset_version=opset,
            custom_translation_table=TABLE,
            optimize=True,
            verbose=False,
        )
    from torch.onnx._internal.exporter import _core

    return _core.export(
        ep, inputs.args, inputs.kwargs, registry=registry, optimize=True, opset_version=opset, verbose=False
    )


@_quiet_exporter()
def _torch_export(ep: ExportedProgram, inputs: Inputs, opset: int) -> ir.Model:
    """The program as ONNX IR; ``mqcompile::`` ops become markers (untouched by the exporter's optimization)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = _run_exporter(ep, inputs, opset)
    except Exception as exc:
        raise _export_error(exc) from exc
    return program.model


def _keep_int4_casts(node: ir.Node) -> bool | None:
    """Never fold ``Cast(INT4 initializer)`` (``w4a8int``'s weights): folding would store the weights as INT8 in the
    file; ONNX Runtime folds the cast when the session loads."""
    if node.op_type == "Cast" and node.inputs and node.inputs[0] is not None:
        value = node.inputs[0].const_value
        if value is not None and value.dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            return False
    return None


@_quiet_exporter()
def _optimize(model: ir.Model) -> None:
    """After lowering: fold constants (never Q/DQ: the folder keeps them), drop dead nodes, de-duplicate
    initializers and common subexpressions (linears reading the same activation with the same clip share one
    QuantizeLinear). The pattern rewriter already ran in the exporter, before lowering, so it never touches QDQ."""
    import onnxscript.optimizer
    from onnx_ir.passes import common

    common.InlinePass()(model)
    for _ in range(2):
        folded = onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_keep_int4_casts)
        common.RemoveUnusedNodesPass()(model)
        if not folded.modified:
            break
    ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
        common.NameFixPass(),
    )(model)


def _save(model: ir.Model, path: Path) -> int:
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data = path.with_name(path.name + ".data")
    try:
        if data.exists():
            data.unlink()
        if total > _EXTERNAL_DATA_BYTES:
            ir.save(model, path, external_data=data.name)
        else:
            ir.save(model, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the ONNX file ({exc}); pass a path in a writable directory") from exc
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _counts(model: ir.Model) -> tuple[dict[str, int], int, int]:
    counts = Counter(n.op_type for n in model.graph)
    int4 = quant_bytes = 0
    for v in model.graph.initializers.values():
        dtype = v.const_value.dtype if v.const_value is not None else None
        if dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            int4 += 1
            quant_bytes += v.const_value.nbytes
        elif dtype in (ir.DataType.INT8, ir.DataType.UINT8) and any(
            c.op_type in ("DequantizeLinear", "MatMulInteger") for c in v.consumers()
        ):
            quant_bytes += v.const_value.nbytes
    return dict(sorted(counts.items())), int4, quant_bytes


def export_onnx(
    qp: QuantizedProgram,
    path: str | os.PathLike,
    example_inputs: Mapping[str, Any] | None = None,
    opset: int = 21,
    variant: str = "w4a4",
    check: bool = True,
) -> ExportReport:
    """Export a quantized program to an ONNX QDQ model.

    Args:
        qp: from :func:`mqcompile.quantize` (or :meth:`QuantizedProgram.load`).
        path: the ``.onnx`` file to write (weights over ~1.8 GB go to ``<path>.data``).
        example_inputs: ``{input name: tensor}`` for the exporter and the parity check; default the program's own
            example inputs.
        opset: ONNX opset, at least 21 (INT4 Q/DQ).
        variant: ``w4a4`` (as quantized), ``w4a8`` (INT8 activation Q/DQ), ``w4a16`` (no activation Q/DQ; ONNX
            Runtime fuses the INT4 weights into MatMulNBits), ``w4a8int`` (integer MatMulInteger on per-tensor UINT8
            activations; per-channel weights only), ``w4a4int`` (the program's own per-token codes offset into UINT8
            on MatMulInteger: its outputs bit for bit; per-channel weights only).
        check: run ``onnx.checker.check_model(full_check=True)`` and :func:`parity` in ONNX Runtime (CPU).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: opset below 21, unknown variant, unwritable path.
        UnsupportedProgramError: an op without ONNX translation (named with its node), a program the exporter cannot
            express (dynamic shapes), example inputs outside the program's static shapes, grouped weights with
            ``variant="w4a8int"`` or ``"w4a4int"``.
        CalibrationError: example inputs that do not match the program's input names.
    """
    start = time.perf_counter()
    _check_args(opset, variant)
    target = _check_path(path)
    if not isinstance(qp, QuantizedProgram):
        raise UnsupportedProgramError(f"export_onnx takes a QuantizedProgram, got {type(qp).__name__}")
    ep = qp.exported_program
    inputs = match_inputs(ep, example_inputs)
    check_static_dims(ep, inputs)
    _check_ops(ep, opset)
    if check:
        _check_runnable_in_ort(ep, inputs)
    model = _torch_export(ep, inputs, opset)
    stats = lower_markers(model, variant)
    _optimize(model)
    model.producer_name = "mqcompile"
    model.graph.doc_string = f"mqcompile {variant} QDQ export ({stats.qlinear} qlinear, {stats.wlinear} wlinear)"
    counts, int4, quant_bytes = _counts(model)
    file_bytes = _save(model, target)
    report = ExportReport(
        path=str(target),
        variant=variant,
        opset=opset,
        linears=tuple(stats.linears),
        qlinear=stats.qlinear,
        wlinear=stats.wlinear,
        node_counts=counts,
        int4_initializers=int4,
        weight_bytes=quant_bytes,
        file_bytes=file_bytes,
    )
    if check:
        onnx.checker.check_model(str(target), full_check=True)
        report.parity = parity(qp, target, inputs)
        report.checked = True
        if not np.isfinite(report.parity.max_abs_diff):
            raise UnsupportedProgramError(f"{target}: ONNX Runtime returned NaN/Inf where the program does not")
    report.seconds = time.perf_counter() - start
    log.info("%s", report.summary())
    return report


def export_float_onnx(
    ep: ExportedProgram, path: str | os.PathLike, example_inputs: Mapping[str, Any] | None = None, opset: int = 21
) -> int:
    """Export an (unquantized) program with the same exporter settings, for size and latency baselines.

    Returns the file size in bytes.
    """
    _check_args(opset, "w4a4")
    target = _check_path(path)
    inputs = match_inputs(ep, example_inputs)
    check_static_dims(ep, inputs)
    _check_ops(ep, opset)
    model = _torch_export(ep, inputs, opset)
    return _save(model, target)
