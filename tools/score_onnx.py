"""What the exported ONNX programs score and how fast ONNX Runtime runs them (issue #18): suite metrics through ORT.

python tools/score_onnx.py                                  # DINOv2-S/14: RTN+Rot and MorphoQuant+Rot, every variant
python tools/score_onnx.py --methods W4A4-RTN+Rot --variants w4a4 w4a4int --out docs/onnx_score.md

For each suite method (``--methods``, names of ``mqcompile.evaluation.suite.METHODS``) the vision task's program is
quantized as the suite does (its calibration images), exported as each ``--variant`` (plus the float program), and
every file is scored by the vision task's own ``evaluate`` with an ONNX Runtime session standing in for the module
(LFW probe accuracy and CLS cosine to the float torch program, 200 images at 112 px), next to the torch program's own
score. Latency: median of ``--reps`` runs at the task's batch (8 x 112 px) after warm-up, every file of a method timed
round-robin (``bench_onnx.latencies_ms``), as a ratio to the float ONNX model timed in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from bench_onnx import latencies_ms

import mqcompile
from mqcompile.backends.onnx.export import export_float_onnx, export_onnx, ort_optimized_op_counts
from mqcompile.evaluation.suite import METHODS, cpu_name, method_config
from mqcompile.evaluation.vision import VisionTask

log = logging.getLogger("score_onnx")
INT_GEMMS = ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger")


class OrtModule:
    """An ONNX Runtime session called like the program's module: keyword tensors in, the first output out."""

    def __init__(self, path: Path, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, **kwargs: torch.Tensor) -> torch.Tensor:
        feed = {i.name: kwargs[i.name].numpy() for i in self.session.get_inputs()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def score_method(task: VisionTask, method: str, variants, workdir: Path, threads: int, reps: int) -> list[dict]:
    spec = task.programs()["vit"]
    start = time.perf_counter()
    qp = mqcompile.quantize(spec.program, method_config(spec, METHODS[method]), spec.calibration, progress=False)
    log.info("%s: quantized in %.0f s", method, time.perf_counter() - start)
    torch_metrics = task.evaluate({"vit": qp.module()})
    files = [("float", workdir / f"{method}_float.onnx")]
    export_float_onnx(spec.program, files[0][1], spec.probe)
    for variant in variants:
        files.append((variant, workdir / f"{method}_{variant}.onnx"))
        export_onnx(qp, files[-1][1], spec.probe, variant=variant, check=False)
    timed = latencies_ms([f[1] for f in files], spec.probe, threads, reps)
    rows = []
    for (variant, path), (ms, _) in zip(files, timed, strict=True):
        metrics = task.evaluate({"vit": OrtModule(path, threads)})
        ops = ort_optimized_op_counts(path, workdir / f"{path.stem}.ort.onnx")
        rows.append(
            {
                "method": method,
                "variant": variant,
                "ms": ms,
                "ratio": timed[0][0] / ms,
                "int_gemms": sum(ops.get(op, 0) for op in INT_GEMMS),
                "nbits": ops.get("MatMulNBits", 0),
                "ort": metrics,
                "torch": torch_metrics if variant != "float" else None,
            }
        )
        log.info("%s %s: %.1f ms, %s", method, variant, ms, metrics)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | ONNX | latency ms | speed vs float ONNX | integer GEMMs | MatMulNBits | probe % (ORT) "
        "| CLS cosine (ORT) | probe % / cosine of the torch program |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = "-" if r["torch"] is None else f"{r['torch']['probe_acc']:.1f} / {r['torch']['cls_cosine']:.4f}"
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['ms']:.1f} | {r['ratio']:.2f}x | {r['int_gemms']} | {r['nbits']} "
            f"| {r['ort']['probe_acc']:.1f} | {r['ort']['cls_cosine']:.4f} | {t} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["W4A4-RTN+Rot", "W4A4-MorphoQuant+Rot"], choices=list(METHODS))
    parser.add_argument("--variants", nargs="+", default=["w4a4", "w4a16", "w4a8int", "w4a4int"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "mqcompile"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    start = time.perf_counter()
    task = VisionTask()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows += score_method(task, method, args.variants, Path(tmp), args.threads, args.reps)
    text = table(rows)
    print(text)
    if args.out:
        machine = (
            f"{platform.node()}: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}"
        )
        command = "python tools/score_onnx.py" + (" " + " ".join(argv) if argv else "")
        Path(args.out).write_text(
            "\n".join(
                [
                    "# DINOv2-S/14 through ONNX Runtime: speed and what it scores",
                    "",
                    f"Generated by `{command}` on {datetime.date.today().isoformat()} in "
                    f"{time.perf_counter() - start:.0f} s, one run. Machine: {machine}.",
                    "",
                    __doc__.split("\n\n", 2)[2].strip(),
                    "",
                    text,
                    "",
                ]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
