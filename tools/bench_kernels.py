"""W4A4 linear kernels vs bf16 and the int8/fp8 baselines, at Qwen2.5-Omni-7B shapes; one command, one run.

    python tools/bench_kernels.py                      # GPU: Triton kernels; CPU: the exact integer CPU path
    python tools/bench_kernels.py --ms 1 16 --no-stack --out /tmp/bench

Per (shape, M) the time of every column is measured in the same run and reported as speedup over bf16
``torch.matmul`` (>1 is faster): ``int_mm`` (``torch._int_mm``, int8), ``scaled_mm`` (``torch._scaled_mm``, fp8 e4m3
rowwise scales; GPU only), ``ours_gemm`` (``mqcompile::qlinear`` on pre-quantized codes; on CUDA its Triton kernel),
``ours_full`` (``quantize_act`` + ``qlinear``: what a quantized linear costs), and on CPU ``fp32`` and ``i4p_gemm`` /
``i4p_full`` (ATen's packed-int4 CPU kernel, ``mqcompile.compile(..., cpu_int4pack=True)``). ``ours_tops`` is
the GEMM's integer TOPS. Then, unless ``--no-stack``: a 4-layer Qwen2 decoder stack at 7B dims (random weights,
small vocabulary) through ``mqcompile.compile`` vs the bf16 (CPU: fp32) model through ``torch.compile``, prefill
(``--prefill`` tokens) and decode (batch 16, one token, no KV cache), and the weight bytes of both.

Writes ``bench_kernels.json`` and ``bench_kernels.md`` under ``--out`` (default ``docs/``), names the device.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mqcompile  # noqa: E402
from mqcompile.evaluation.suite import cpu_name  # noqa: E402
from mqcompile.kernels import (
    autotune,  # noqa: E402
    pack_int4,  # noqa: E402
)
from mqcompile.kernels import reference as ref  # noqa: E402
from mqcompile.metrics import cosine  # noqa: E402

log = logging.getLogger("bench_kernels")

SHAPES = [  # (name, K, N): Qwen2.5-Omni-7B thinker, vision tower, audio tower; the MLP (the targets) first
    ("thinker.gate_up", 3584, 18944),
    ("thinker.down", 18944, 3584),
    ("thinker.qkv", 3584, 4608),
    ("thinker.o", 3584, 3584),
    ("vision.fc1", 1280, 3420),
    ("vision.attn", 1280, 1280),
    ("audio.fc1", 1280, 5120),
    ("audio.fc2", 5120, 1280),
]


def timer(device: torch.device, reps: int):
    """``measure(make, nbytes) -> ms``: ``make()`` returns a call on its own copy of the inputs.

    CUDA: enough copies that their bytes exceed 3x the L2 (so every call reads from HBM, as in a model whose
    weights do not fit the cache), all captured in one CUDA graph (so launch gaps and Python dispatch stay out, for
    every column alike); the median over replays, divided by the copies. CPU: median wall time of one copy.
    """
    if device.type == "cuda":
        l2 = torch.cuda.get_device_properties(device).L2_cache_size

        def cuda(make, nbytes: int) -> float:
            fns = [make() for _ in range(max(1, min(64, math.ceil(3 * l2 / max(nbytes, 1)))))]
            for fn in fns:  # warm-up: JIT compile and autotune happen here, outside the capture
                fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    for fn in fns:
                        fn()
            except RuntimeError as exc:  # not capturable: events around eager calls, launch gaps included
                log.warning("CUDA graph capture failed (%s); timing eagerly", str(exc).splitlines()[0][:100])
                from triton.testing import do_bench

                return do_bench(fns[0], warmup=25, rep=100, return_mode="median")
            graph.replay()
            times = []
            for _ in range(max(reps, 10)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / len(fns))
            del graph
            return sorted(times)[len(times) // 2]

        return cuda

    def cpu(make, nbytes: int) -> float:
        fn = make()
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * sorted(times)[len(times) // 2]

    return cpu


def copies(fn, *tensors: torch.Tensor):
    """A ``make()`` for :func:`timer`: each call binds ``fn`` to fresh copies of ``tensors``."""
    return lambda: functools.partial(fn, *(t.clone() for t in tensors))


def _ops(device: torch.device):
    if device.type == "cuda":
        from mqcompile.kernels import triton_ops  # noqa: F401

        return torch.ops.mqcompile.quantize_act_triton, torch.ops.mqcompile.qlinear_triton
    return torch.ops.mqcompile.quantize_act, torch.ops.mqcompile.qlinear


def _relerr(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def bench_linear(name, k, n, m, device, measure) -> dict:
    g = torch.Generator().manual_seed(k * n + m)
    x = torch.randn(m, k, generator=g).to(device)
    w = (torch.randn(n, k, generator=g) * 0.02).to(device)
    quantize_act, qlinear = _ops(device)
    row = {"shape": name, "K": k, "N": n, "M": m}
    xb, wb = x.bfloat16(), w.bfloat16()
    t_bf16 = measure(copies(lambda a, b: a @ b.T, xb, wb), _nbytes(xb, wb) + 2 * m * n)
    row["bf16_ms"] = t_bf16
    if device.type == "cpu":
        row["fp32"] = t_bf16 / measure(copies(lambda a, b: a @ b.T, x, w), 0)
    x8 = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8).to(device)
    w8 = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8).to(device)
    try:  # CUDA needs M > 16 and K, N multiples of 8
        row["int_mm"] = t_bf16 / measure(copies(lambda a, b: torch._int_mm(a, b.T), x8, w8),
                                         _nbytes(x8, w8) + 4 * m * n)  # fmt: skip
    except RuntimeError as exc:
        row["int_mm"], row["int_mm_note"] = math.nan, str(exc).splitlines()[0][:80]
    if device.type == "cuda":
        try:
            xf, wf = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            sa, sb = torch.ones(m, 1, device=device), torch.ones(1, n, device=device)
            row["scaled_mm"] = t_bf16 / measure(
                copies(lambda a, b: torch._scaled_mm(a, b.T, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16),
                       xf, wf),
                _nbytes(xf, wf) + 2 * m * n,
            )  # fmt: skip
        except RuntimeError as exc:
            row["scaled_mm"], row["scaled_mm_note"] = math.nan, str(exc).splitlines()[0][:80]
    codes, w_scale = ref.quantize_weight_ref(w.float().cpu(), 4)
    wq, ws = pack_int4(codes).to(device), w_scale.to(device)
    clip = torch.ones(1, device=device)
    xq, xs = quantize_act(xb, clip, None, 4)
    out_dtype = torch.bfloat16
    exact = ((xq.double() @ codes.to(device).double().T).float() * xs) * ws.T  # int sums < 2**53: exact in fp64
    got = qlinear(xq, xs, wq, ws, None, 4, 0, k, out_dtype)
    row["exact"] = bool(torch.equal(got, exact.to(out_dtype)))
    gemm_bytes = _nbytes(xq, wq) + 2 * m * n
    t_gemm = measure(copies(lambda a, b: qlinear(a, xs, b, ws, None, 4, 0, k, out_dtype), xq, wq), gemm_bytes)
    row["ours_gemm"] = t_bf16 / t_gemm
    row["ours_tops"] = 2 * m * n * k / (t_gemm * 1e-3) / 1e12
    row["ours_full"] = t_bf16 / measure(
        copies(lambda a, b: qlinear(*quantize_act(a, clip, None, 4), b, ws, None, 4, 0, k, out_dtype), xb, wq),
        gemm_bytes + _nbytes(xb),
    )  # fmt: skip
    if device.type == "cuda":
        row.update(_carriers(xq, xs, codes.to(device), ws, k, exact, out_dtype, measure, t_bf16))
        row.update(_w4a4_paths(xb, codes, ws, k, out_dtype, measure, t_bf16))
    else:
        row.update(_cpu_int4pack(xb, xq, xs, wq, ws, clip, k, exact, out_dtype, measure, t_bf16))
    return row


def _cpu_int4pack(xb, xq, xs, wq, ws, clip, k, exact, out_dtype, measure, t_bf16) -> dict:
    """ATen's packed-int4 kernel on weights repacked once (``mqcompile.compile(..., cpu_int4pack=True)``)."""
    from mqcompile.kernels.cpu_int4 import pack_for_cpu

    quantize_act = torch.ops.mqcompile.quantize_act
    op = torch.ops.mqcompile.qlinear_int4pack
    w4, sz = pack_for_cpu(wq, k)
    ok = bool(torch.equal(op(xq, xs, w4, sz, ws, None, k, out_dtype), exact.to(out_dtype)))
    t_gemm = measure(copies(lambda a, b: op(a, xs, b, sz, ws, None, k, out_dtype), xq, w4), 0)
    t_full = measure(copies(lambda a, b: op(*quantize_act(a, clip, None, 4), b, sz, ws, None, k, out_dtype), xb, w4), 0)
    return {"i4p_gemm": t_bf16 / t_gemm, "i4p_full": t_bf16 / t_full, "i4p_exact": ok}


def _w4a4_paths(xb, codes, ws, k, out_dtype, measure, t_bf16) -> dict:
    """The token-count dispatching op of ``mqcompile.compile`` (issue #20): ``w4a4`` is the full linear from bf16
    input on its default path (decode kernel for M <= 16, cuBLAS FP8 above); ``w4a4_fused`` the decode kernel with
    the activation quantization fused in; ``w4a4_fp8w`` the FP8 path on a stored e4m3 weight copy instead of the
    per-call expansion; ``w4a4_fast`` with ``use_fast_accum``; ``w4a4_cublas`` the inexact epilogue inside
    ``_scaled_mm`` (rowwise scales, bf16 out) on the stored e4m3 weights. ``*_exact``: the output equals the
    reference's bit for bit (the reference ops on the same input, integer sums in int32); ``*_relerr`` its relative
    error."""
    from mqcompile.kernels import w4a4_ops
    from mqcompile.kernels.pack import pack_int4_blocked

    m, device = xb.shape[0], xb.device
    op = torch.ops.mqcompile.w4a4_linear_triton
    wb = pack_int4_blocked(codes.cpu()).to(device)
    clip = torch.ones(1, device=device)
    xq, xs = ref.quantize_act_ref(xb, clip, None, 4)
    want = ref.qlinear_ref(xq, xs, pack_int4(codes.cpu()).to(device), ws, None, 4, 0, k, out_dtype)
    w8 = w4a4_ops.expand_int4(wb, k, fp8=True)
    variants = {"w4a4": {}}
    if m <= w4a4_ops.DECODE_TOKENS:
        variants["w4a4_fused"] = {"fuse_quant": True}
    else:
        variants["w4a4_fp8w"] = {"w_fp8": w8}
        variants["w4a4_fast"] = {"fast_accum": True}
        variants["w4a4_cublas"] = {"w_fp8": w8, "cublas_scales": True}
    row = {}
    nbytes = _nbytes(xb, wb) + 2 * m * codes.shape[0]
    for label, kw in variants.items():

        def call(a, b, kw=kw):
            return op(a, clip, None, None, False, b, ws, None, k, out_dtype, **kw)

        try:
            got = call(xb, wb)
            row[f"{label}_exact"] = bool(torch.equal(got, want))
            row[f"{label}_relerr"] = _relerr(got, want)
            row[label] = t_bf16 / measure(copies(call, xb, wb), nbytes)
        except Exception as exc:  # noqa: BLE001  (record it and go on: one run of the device is all we get)
            row[label], row[f"{label}_note"] = math.nan, f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            log.warning("%s at M=%d failed: %s", label, m, row[f"{label}_note"])
    return row


def _carriers(xq, xs, codes, ws, k, exact, out_dtype, measure, t_bf16) -> dict:
    """The same GEMM on unpacked carriers: int4 values in int8 containers, and in e4m3 (fp32 accumulation)."""
    from mqcompile.kernels.triton_ops import qlinear_launch

    m, n = xq.shape[0], codes.shape[0]
    cfg = autotune.cached(xq, n, k, "w4")  # the packed kernel's tiles: compare carriers, not tunings
    nbytes = _nbytes(xq, codes) + 2 * m * n
    row = {}
    for label, a, b, fp8 in (
        ("w8c", xq, codes, False),
        ("fp8c", xq.to(torch.float8_e4m3fn), codes.to(torch.float8_e4m3fn), True),
    ):
        c = cfg._replace(split_k=1) if cfg is not None and fp8 else cfg
        got = qlinear_launch(a, xs, b, ws, None, None, None, k, False, out_dtype, c, fp8).float()
        row[f"{label}_relerr"] = _relerr(got, exact)
        row[f"{label}_gemm"] = t_bf16 / measure(
            copies(lambda a, b, c=c, f=fp8: qlinear_launch(a, xs, b, ws, None, None, None, k, False, out_dtype, c, f),
                   a, b),
            nbytes,
        )  # fmt: skip
    return row


def decoder_model(layers: int, small: bool, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dims = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4)
    if small:  # for a CPU smoke run of this code path
        dims = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    config = Qwen2Config(vocab_size=1024, num_hidden_layers=layers, max_position_embeddings=8192, **dims)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval().to(dtype)  # exported in the serving dtype: the ops output it too


def bench_stack(device, measure, prefill: int, layers: int, small: bool, rows: list, save=lambda: None) -> list[dict]:
    """Each case is exported at its own static shape and compiled with ``dynamic=False``, for both models alike
    (torch 2.11's export fails to prove a trivially true guard at these dims with a dynamic sequence). The defaults
    of both cases run first, then the variants. Appends to ``rows`` and calls ``save`` after each row, so a run cut
    short keeps what it measured."""
    from mqcompile.backends.inductor.deploy import detach_to, use_triton_ops
    from mqcompile.models.qwen2_text import export_causal_lm

    model = decoder_model(layers, small, torch.bfloat16 if device.type == "cuda" else torch.float32)
    float_bytes = sum(p.numel() * 2 for n, p in model.named_parameters() if "layers." in n)
    cases = {}
    for label, shape in (("prefill", (1, prefill)), ("decode", (16, 1))):
        ids = torch.randint(0, 1024, shape)
        ep = export_causal_lm(model, ids, torch.ones_like(ids), dynamic=False)
        qp = mqcompile.quantize(ep, mqcompile.QuantConfig(), progress=False)  # W4A4 RTN, lm_head float
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        base_mod = detach_to(ep.module(), device)
        eager = detach_to(qp.module(), device)  # the program op by op (Triton ops on CUDA)
        if device.type == "cuda":
            use_triton_ops(eager)
        base = torch.compile(base_mod, dynamic=False)
        w_base = sum(v.numel() * v.element_size() for v in base_mod.state_dict().values())
        with torch.no_grad():
            want, flt = eager(**inputs), base(**inputs)
            t_base = measure(copies(lambda i, m, f=base: f(input_ids=i, attention_mask=m), *inputs.values()), w_base)
        cases[label] = (shape, qp, inputs, want, flt, t_base)
        del eager, base, base_mod
    runs = [("prefill", "", {}), ("decode", "", {})]  # mqcompile.compile's defaults (the W4A4 paths of issue #20)
    if device.type == "cuda":
        runs += [
            ("prefill", "fp8_weights", {"fp8_weights": True}),
            ("decode", "fuse_quant", {"w4a4_options": {"fuse_quant": True}}),
            ("prefill", "fp8_weights + cublas_scales", {"fp8_weights": True, "w4a4_options": {"cublas_scales": True}}),
            ("prefill", "legacy GEMM", {"w4a4_paths": False}),  # issue #5's int8 GEMM for every M
            ("decode", "legacy GEMM", {"w4a4_paths": False}),
        ]
    for label, name, kwargs in runs:
        shape, qp, inputs, want, flt, t_base = cases[label]
        case = f"{label} {name}".strip()
        try:
            ours = mqcompile.compile(qp, device=device, warmup=[inputs], dynamic=False, **kwargs)
            w_ours = sum(v.numel() * v.element_size() for n, v in ours.state_dict().items() if ".layers." in f".{n}")
            with torch.no_grad():
                got = ours(**inputs)
                t_ours = measure(copies(lambda i, m, f=ours: f(input_ids=i, attention_mask=m), *inputs.values()),
                                 w_ours)  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (record it; the other variants still run)
            log.warning("stack %s failed: %s", case, exc)
            rows.append({"case": case, "error": f"{type(exc).__name__}: {exc}"[:300]})
            save()
            continue
        rows.append({"case": case, "tokens": shape, "baseline_ms": t_base, "ours_ms": t_ours,
                     "speedup": t_base / t_ours, "cos_compiled_vs_eager": cosine(want, got),
                     "cos_vs_float": cosine(flt, got), "layer_weight_bytes": w_ours,
                     "layer_weight_ratio": w_ours / float_bytes})  # fmt: skip
        log.info("%s", rows[-1])
        save()
        del ours
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores (CPU mode)"


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _exact_variants(row: dict) -> str:
    tags = [k.removesuffix("_exact") + ("" if v else " NOT") for k, v in row.items() if k.startswith("w4a4")
            and k.endswith("_exact")]  # fmt: skip
    return ", ".join(tags) or "–"


def markdown(data: dict) -> str:
    cpu = "CPU mode" in data["device"]
    cols = ["int_mm", "ours_gemm", "ours_full", "i4p_gemm", "i4p_full", "fp32"] if cpu else [
        "int_mm", "scaled_mm", "ours_gemm", "ours_full", "w8c_gemm", "fp8c_gemm", "w4a4", "w4a4_fused",
        "w4a4_fp8w", "w4a4_fast", "w4a4_cublas"]  # fmt: skip
    lines = [
        f"# Kernel benchmark ({data['device']})",
        "",
        f"torch {data['torch']}, `python tools/bench_kernels.py {' '.join(data['argv'])}`. Speedup over bf16 "
        "`torch.matmul` measured in the same run (>1 is faster); `ours_tops`: integer TOPS of our GEMM. GPU: "
        "each time is the median over CUDA-graph replays of enough input copies to exceed 3x the L2 (cold "
        "weights, no launch gaps), for every column alike. `ours_gemm`: packed int4 weights; `ours_full`: "
        "activation quantization + GEMM from bf16 input; `w8c_gemm` / `fp8c_gemm`: the same GEMM on int4 values "
        "in int8 / e4m3 containers (not packed); `exact`: ours_gemm equals the fp64-accumulated reference bit "
        "for bit; `fp8 err`: relative error of fp8c_gemm (fp32 accumulation) vs exact. CPU: `ours_*` unpack the "
        "int4 weights per call (the op's eager CPU path); `i4p_*`: ATen's packed-int4 CPU kernel on weights "
        "repacked once, `mqcompile.compile(..., cpu_int4pack=True)` (`i4p exact`: bit-equal to the reference). "
        "`w4a4*` (GPU): the token-count dispatching op `mqcompile.compile` deploys (issue #20), the full linear from "
        "bf16 input: decode kernel for M <= 16 (`w4a4_fused`: quantization fused in), cuBLAS FP8 above "
        "(`w4a4_fp8w`: stored e4m3 weights; `w4a4_fast`: `use_fast_accum`; `w4a4_cublas`: rowwise scales and bias "
        "inside `_scaled_mm`, bf16 out, on stored e4m3 weights: not exact); `w4a4 exact` lists the variants whose "
        "output equals the reference bit for bit (their relative errors are in the JSON).",
        "",
        "| shape | K | N | M | bf16 ms | "
        + " | ".join(cols)
        + " | ours TOPS |"
        + (" i4p exact |" if cpu else " exact | fp8 err | w4a4 exact |"),
        "|---" * (len(cols) + 6 + (1 if cpu else 3)) + "|",
    ]
    for r in data["linears"]:
        cells = [_fmt(r.get(c)) for c in cols]
        lines.append(
            f"| {r['shape']} | {r['K']} | {r['N']} | {r['M']} | {r['bf16_ms']:.3f} | "
            + " | ".join(cells)
            + f" | {r['ours_tops']:.1f} |"
            + (
                f" {r.get('i4p_exact')} |"
                if cpu
                else f" {r.get('exact')} | {r.get('fp8c_relerr', math.nan):.1e} | {_exact_variants(r)} |"
            )
        )
    if data.get("stack"):
        lines += ["", "Decoder stack (mqcompile.compile vs torch.compile of the float model):", ""]
        for r in data["stack"]:
            if "speedup" in r:
                lines.append(
                    f"- {r['case']} {tuple(r['tokens'])}: baseline {r['baseline_ms']:.2f} ms, "
                    f"ours {r['ours_ms']:.2f} ms, speedup {r['speedup']:.2f}x (logits cosine: compiled vs eager "
                    f"program {r['cos_compiled_vs_eager']:.4f}, vs float {r['cos_vs_float']:.3f}); decoder-layer "
                    f"weights as deployed {r['layer_weight_bytes'] / 2**20:.1f} MiB, "
                    f"{r['layer_weight_ratio']:.3f}x bf16"
                )
            else:
                lines.append(f"- {r['case']}: failed: {r['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ms", type=int, nargs="+", default=None, help="token counts (GPU default 1 16 256 4096)")
    p.add_argument("--shapes", nargs="+", default=None, help="subset of shape names")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-stack", action="store_true")
    p.add_argument("--no-linears", action="store_true")
    p.add_argument("--prefill", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--small-stack", action="store_true", help="tiny decoder dims (smoke test of the stack path)")
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ms = args.ms or ([1, 16, 256, 4096] if device.type == "cuda" else [1, 16, 256])
    measure = timer(device, args.reps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"device": device_name(device), "torch": torch.__version__, "argv": argv, "linears": []}

    def save():  # after every section, so a run cut short keeps what it measured
        data["autotune"] = autotune.results()
        (out / "bench_kernels.json").write_text(json.dumps(data, indent=2, default=float))
        (out / "bench_kernels.md").write_text(markdown(data))

    for name, k, n in [] if args.no_linears else SHAPES:
        if args.shapes and name not in args.shapes:
            continue
        for m in ms:
            data["linears"].append(bench_linear(name, k, n, m, device, measure))
            log.info(
                "%s", {key: (round(v, 3) if isinstance(v, float) else v) for key, v in data["linears"][-1].items()}
            )
        save()
    if not args.no_stack:
        data["stack"] = []
        bench_stack(device, measure, args.prefill, args.layers, args.small_stack, data["stack"], save)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
