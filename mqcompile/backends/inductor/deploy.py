"""``mqcompile.compile``: deploy a QuantizedProgram through ``torch.compile`` (Inductor).

On a GPU the program's ``mqcompile::quantize_act`` / ``mqcompile::qlinear`` nodes are swapped for their
``triton_op`` twins (:mod:`mqcompile.kernels.triton_ops`), so Inductor sees our Triton kernels and fuses the
surrounding ops (norms, residual adds, rotations) around them. On CPU the ops stay the exact integer CPU path
(:func:`mqcompile.kernels.ops.cpu_int_gemm`; ``cpu_int4pack=True`` moves 4-bit per-channel linears to ATen's
packed-int4 kernel instead, :func:`use_cpu_int4pack`, which only pays at M = 1) and Inductor compiles the rest.
No global Inductor config is changed: options go through ``torch.compile``'s arguments only.

Example:
    >>> fast = mqcompile.compile(qp)            # doctest: +SKIP
    >>> logits = fast(**inputs)                 # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from ...errors import UnsupportedProgramError
from ...kernels.cpu_int4 import available as cpu_int4_available
from ...kernels.ops import QLinearArgs, QuantizeActArgs, arg_position, op_args
from ...kernels.pack import pack_int4_blocked, unpack_int4
from ...kernels.triton_kernels import available as triton_available
from ...program import QuantizedProgram

__all__ = ["compile", "use_triton_ops", "use_w4a4_paths", "use_cpu_int4pack", "detach_to"]

log = logging.getLogger(__name__)


def _require_graph_module(gm, name: str) -> None:
    if not isinstance(gm, fx.GraphModule):
        raise UnsupportedProgramError(
            f"{name} rewrites a graph in place and takes an fx.GraphModule such as qp.exported_program.module() "
            f"(qp.module() wraps it in an input check), got {type(gm).__name__}"
        )


def use_triton_ops(gm: fx.GraphModule, int8_weights: bool = False) -> dict[str, int]:
    """Swap ``mqcompile::`` op nodes for their Triton twins in place (grouped-weight qlinears keep the reference).

    ``int8_weights``: store 4-bit weights unpacked, one value per int8 byte (the op's 8-bit form; the same integers,
    so the same results bit for bit). On an H200 the GEMM on int8 containers measured 1.0-1.3x bf16 at M = 4096
    and 1.3-1.8x at M = 1 on the 7B shapes, against 0.4-0.6x and 0.4-1.2x with in-register nibble unpacking
    (docs/bench_gpu/bench_kernels.md), at twice the weight bytes (0.5x bf16 instead of 0.25x).
    """
    from ...kernels import triton_ops  # noqa: F401  (registers the triton ops; needs triton)

    _require_graph_module(gm, "use_triton_ops")
    ops = torch.ops.mqcompile
    counts = {"quantize_act": 0, "qlinear": 0, "kept": 0, "unpacked": 0}
    unpacked: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == ops.quantize_act.default:
            node.target = ops.quantize_act_triton.default
            counts["quantize_act"] += 1
        elif node.target == ops.quantize_act_asym.default:
            node.target = ops.quantize_act_asym_triton.default
            counts["quantize_act"] += 1
        elif node.target == ops.qlinear.default:
            args = op_args(QLinearArgs, node)
            if args.group_size:
                counts["kept"] += 1
                continue
            node.target = ops.qlinear_triton.default
            counts["qlinear"] += 1
            if int8_weights and args.w_bits == 4:
                _unpack_weight(gm, node, unpacked)
                counts["unpacked"] += 1
    gm.recompile()
    return counts


def use_w4a4_paths(
    gm: fx.GraphModule,
    *,
    fp8_weights: bool = False,
    fp8_min_tokens: int | None = None,
    fast_accum: bool = False,
    fuse_quant: bool = False,
    cublas_scales: bool = False,
) -> dict[str, int]:
    """Fuse each 4-bit ``quantize_act(_asym)`` + 4-bit per-channel ``qlinear`` pair into one
    ``mqcompile::w4a4_linear_triton`` node, which picks its kernel by the token count (the decode kernel up to 16
    tokens, cuBLAS FP8 from ``fp8_min_tokens`` on, see :func:`mqcompile.kernels.w4a4_ops.w4a4_linear_triton`);
    in place. Each weight is repacked once into the blocked layout those kernels read and the old packed copy is
    dropped, so one copy stays (0.25x bf16, plus an e4m3 copy, 0.5x, with ``fp8_weights``). Pairs whose codes feed
    anything else, and 8-bit or grouped linears, are left for :func:`use_triton_ops`. ``fast_accum``,
    ``fuse_quant`` and ``cublas_scales`` are the op's opt-in variants (the last two: faster if the benchmark says so;
    ``cublas_scales`` is not bit-exact).
    """
    from ...kernels import w4a4_ops

    _require_graph_module(gm, "use_w4a4_paths")
    ops = torch.ops.mqcompile
    quantizers = (ops.quantize_act.default, ops.quantize_act_asym.default)
    counts = {"fused": 0, "kept": 0}
    done: dict[str, tuple[str, str | None]] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != ops.qlinear.default:
            continue
        args = op_args(QLinearArgs, node)
        qa = _producer(args.xq)
        act = op_args(QuantizeActArgs, qa) if qa is not None and qa.target in quantizers else None
        only_here = qa is not None and all(set(g.users) == {node} for g in qa.users)
        if act is None or act.bits != 4 or args.w_bits != 4 or args.group_size or not _stored(args.w) or not only_here:
            counts["kept"] += 1
            continue
        if args.w.target not in done:  # a weight shared by several linears is repacked once
            codes = unpack_int4(gm.get_buffer(args.w.target), args.in_features)
            blocked = _buffer_beside(gm, args.w.target, "_blocked", pack_int4_blocked(codes))
            fp8 = None
            if fp8_weights:
                e4m3 = w4a4_ops.expand_int4(gm.get_buffer(blocked), args.in_features, fp8=True)
                fp8 = _buffer_beside(gm, args.w.target, "_e4m3", e4m3)
            done[args.w.target] = (blocked, fp8)
        blocked, fp8 = done[args.w.target]
        with gm.graph.inserting_before(node):
            w_node = gm.graph.get_attr(blocked)
            fp8_node = gm.graph.get_attr(fp8) if fp8 is not None else None
            new = gm.graph.call_function(
                ops.w4a4_linear_triton.default,
                (act.x, act.clip, act.modality_ids, act.shift, qa.target == ops.quantize_act_asym.default, w_node,
                 args.w_scale, args.bias, args.in_features, args.out_dtype, args.comp, args.modality_ids,
                 args.w_colsum, fp8_node, fp8_min_tokens or w4a4_ops.FP8_MIN_TOKENS, fast_accum, fuse_quant,
                 cublas_scales),
            )  # fmt: skip
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        for getter in list(qa.users):
            gm.graph.erase_node(getter)
        gm.graph.erase_node(qa)
        counts["fused"] += 1
    _drop_replaced(gm, done)
    gm.recompile()
    return counts


# the keyword options of use_w4a4_paths that mqcompile.compile passes through (fp8_weights has its own argument)
_W4A4_OPTIONS = tuple(p for p in inspect.signature(use_w4a4_paths).parameters if p not in ("gm", "fp8_weights"))


def use_cpu_int4pack(gm: fx.GraphModule) -> dict[str, int]:
    """Swap 4-bit per-channel ``mqcompile::qlinear`` nodes for ``qlinear_int4pack`` (ATen's packed-int4 CPU kernel,
    :mod:`mqcompile.kernels.cpu_int4`), repacking each weight once; in place. Bit-exact: kept where the fp32
    accumulator could not hold the integer sums exactly (8-bit activation codes with K > 16,384), and for grouped
    or 8-bit weights."""
    from ...kernels import cpu_int4  # registers the op
    from ...kernels.ops import exact_float_chunk

    _require_graph_module(gm, "use_cpu_int4pack")
    counts = {"int4pack": 0, "kept": 0}
    done: dict[str, tuple[str, str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.mqcompile.qlinear.default:
            continue
        args = op_args(QLinearArgs, node)
        xq, w, k = args.xq, args.w, args.in_features
        act = _producer(xq)
        is_act = act is not None and act.target == torch.ops.mqcompile.quantize_act.default
        x_bits = op_args(QuantizeActArgs, act).bits if is_act else 8
        asym = args.x_zero is not None  # ATen's int4pack kernel has no zero-point correction
        if args.w_bits != 4 or args.group_size or k > exact_float_chunk(x_bits, 4) or not _stored(w) or asym:
            counts["kept"] += 1
            continue
        if w.target not in done:
            packed, scale_zeros = cpu_int4.pack_for_cpu(gm.get_buffer(w.target), k)
            done[w.target] = (
                _buffer_beside(gm, w.target, "_int4pack", packed),
                _buffer_beside(gm, w.target, "_int4pack_sz", scale_zeros),
            )
        with gm.graph.inserting_before(node):
            packed_node, sz_node = (gm.graph.get_attr(t) for t in done[w.target])
            new = gm.graph.call_function(
                torch.ops.mqcompile.qlinear_int4pack.default,
                (
                    xq,
                    args.x_scale,
                    packed_node,
                    sz_node,
                    args.w_scale,
                    args.bias,
                    k,
                    args.out_dtype,
                    args.comp,
                    args.modality_ids,
                ),
            )
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        counts["int4pack"] += 1
    _drop_replaced(gm, done)
    gm.recompile()
    return counts


def _drop_replaced(gm: fx.GraphModule, replaced) -> None:
    """Remove the buffers named in ``replaced`` (weights that now live in another layout), unless something else
    still reads them."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and node.target in replaced and not node.users:
            gm.graph.erase_node(node)
    live = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in set(replaced) - live:
        owner_path, _, name = target.rpartition(".")
        delattr(gm.get_submodule(owner_path), name)


def _producer(xq) -> fx.Node | None:
    """The node whose output tuple ``xq`` is an item of (a qlinear's codes: its quantize node), if any."""
    return xq.args[0] if isinstance(xq, fx.Node) and xq.target is operator.getitem else None


def _stored(w) -> bool:
    return isinstance(w, fx.Node) and w.op == "get_attr"


def _buffer_beside(gm: fx.GraphModule, target: str, suffix: str, value: torch.Tensor) -> str:
    """Register ``value`` next to the buffer ``target`` (same owner module), named ``<name><suffix>``."""
    owner_path, _, name = target.rpartition(".")
    gm.get_submodule(owner_path).register_buffer(f"{name}{suffix}", value)
    return f"{target}{suffix}"


def _unpack_weight(gm: fx.GraphModule, node: fx.Node, done: dict[str, str]) -> None:
    args = op_args(QLinearArgs, node)
    w = args.w
    if not _stored(w):
        raise UnsupportedProgramError(f"{node.name}: its weight is not a stored tensor, so it cannot be unpacked")
    if w.target not in done:  # a weight shared by several linears is unpacked once
        done[w.target] = _buffer_beside(gm, w.target, "_int8", unpack_int4(gm.get_buffer(w.target), args.in_features))
    with gm.graph.inserting_before(node):
        node.replace_input_with(w, gm.graph.get_attr(done[w.target]))
    node.update_arg(arg_position(QLinearArgs, "w_bits"), 8)


def detach_to(module: torch.nn.Module, device: str | torch.device | None = None) -> torch.nn.Module:
    """Give ``module`` its own parameters (no grad), buffers and tensor constants on ``device``, in place, and
    point its graph's factory ops (``arange``, ``full``... recorded with the export's device) there too.

    ``ExportedProgram.module()`` returns a fresh module whose parameters are the program's own tensor objects, and
    ``nn.Module.to`` / ``requires_grad_`` change those objects in place: deploying would move or alter the user's
    program. Rebinding new tensors leaves it as it was (without a device, they share storage: nothing is copied).
    """
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(p.detach().to(device), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = b.to(device)
        for name, v in list(vars(sub).items()):  # constants kept as plain tensor attributes
            if isinstance(v, torch.Tensor):
                setattr(sub, name, v.to(device))
        if isinstance(sub, fx.GraphModule) and device is not None:
            _retarget_factories(sub, torch.device(device))
    return module


def _retarget_factories(gm: fx.GraphModule, device: torch.device) -> None:
    # export records the device of factory ops (arange for positions, full/ones for masks) as a constant kwarg;
    # torch.export.passes.move_to_device_pass rewrites them the same way but moves the program's own state in place
    # (the input-metadata asserts export adds name the export's device too; they go, the program keeps them)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    changed = False
    for node in list(gm.graph.nodes):
        old = node.kwargs.get("device") if node.op == "call_function" else None
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            gm.graph.erase_node(node)
            changed = True
        elif isinstance(old, torch.device) and old != device:
            node.update_kwarg("device", device)
            changed = True
    if changed:
        gm.recompile()


def _device(module: torch.nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def compile(  # noqa: A001  (mqcompile.compile, like torch.compile)
    qp: QuantizedProgram,
    *,
    device: str | torch.device | None = None,
    triton: bool | None = None,
    int8_weights: bool = False,
    fp8_weights: bool = False,
    w4a4_paths: bool = True,
    w4a4_options: dict[str, Any] | None = None,
    cpu_int4pack: bool = False,
    warmup: Iterable[dict[str, Any]] = (),
    **compile_kwargs: Any,
):
    """``torch.compile`` the quantized program's module.

    Args:
        qp: from :func:`mqcompile.quantize` or :meth:`QuantizedProgram.load`.
        device: move the module there first (e.g. ``"cuda"``); default: where its weights are.
        triton: use the Triton kernels (default: when the module is on CUDA and triton is installed).
        int8_weights: with the Triton kernels, keep 4-bit weights one per byte (faster GEMM on Hopper, twice the
            weight memory; see :func:`use_triton_ops`). Implies ``w4a4_paths=False``.
        w4a4_paths: with the Triton kernels, run 4-bit W4A4 linears through the token-count dispatching op
            (:func:`use_w4a4_paths`: the decode kernel up to 16 tokens, cuBLAS FP8 above).
        fp8_weights: with ``w4a4_paths``, also keep an e4m3 copy of those weights for the FP8 prefill instead of
            expanding the packed ones per call (0.5x bf16 more weight memory).
        w4a4_options: the dispatching op's opt-in variants, passed to :func:`use_w4a4_paths`: ``fast_accum``,
            ``fuse_quant``, ``cublas_scales`` (not bit-exact), ``fp8_min_tokens``.
        cpu_int4pack: on CPU, run 4-bit per-channel linears on ATen's packed-int4 kernel (weights repacked once;
            bit-exact, see :func:`use_cpu_int4pack`). Off by default: on the AVX2 EPYC it measured ~3.5x faster than
            the default path at M = 1 but 3-30x slower from M = 16 on (``docs/bench_cpu/bench_kernels_int4pack.md``).
        warmup: keyword inputs run eagerly before compiling, at the token counts you will serve: on CUDA the GEMM
            autotuner (:mod:`mqcompile.kernels.autotune`) times its candidates then, which it cannot do while
            ``torch.compile`` traces with fake tensors (untimed shapes get the heuristic configs).
        compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``...).
    """
    # inference deployment (parameters without grad: AOTAutograd would otherwise trace a backward graph, and the
    # integer ops have no derivative), on tensors of its own so the program stays where and as it was
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedProgramError(
            f"mqcompile.compile(device={str(device)!r}): this torch has no usable CUDA device "
            f"(torch {torch.__version__}); compile for device='cpu', or run on a machine with a GPU and a CUDA build"
        )
    module = detach_to(qp.exported_program.module(), device)  # the bare module: no per-call input check
    use = triton if triton is not None else (_device(module).type == "cuda" and triton_available())
    if fp8_weights and (int8_weights or not w4a4_paths):
        raise ValueError("fp8_weights is the FP8 prefill's weight copy: it needs w4a4_paths=True and no int8_weights")
    options = dict(w4a4_options or {})
    unknown = set(options) - set(_W4A4_OPTIONS)
    if unknown:
        raise ValueError(f"w4a4_options {sorted(unknown)} unknown; it takes {_W4A4_OPTIONS}")
    if use:
        if not triton_available():
            raise ModuleNotFoundError("triton=True needs the triton package: pip install triton")
        if w4a4_paths and not int8_weights:
            log.info("W4A4 paths: %s", use_w4a4_paths(module, fp8_weights=fp8_weights, **options))
        log.info("Triton ops: %s", use_triton_ops(module, int8_weights))
    elif int8_weights or fp8_weights or options:
        raise ValueError("int8_weights, fp8_weights and w4a4_options apply to the Triton kernels: pass "
                         "device='cuda' (or triton=True)")  # fmt: skip
    elif cpu_int4pack and _device(module).type == "cpu" and cpu_int4_available():
        log.info("CPU int4 kernel: %s", use_cpu_int4pack(module))
    with torch.no_grad():
        for inputs in warmup:
            module(**inputs)
    return torch.compile(module, **compile_kwargs)
