"""What the exported ONNX programs score and how fast ONNX Runtime runs them (issue #18): suite metrics through ORT.

python tools/score_onnx.py                                  # DINOv2-S/14: RTN+Rot and MorphoQuant+Rot, four variants
python tools/score_onnx.py --task whisper --methods W4A4-RTN+Rot --variants w4a4int --out docs/onnx_score_whisper.md
python tools/score_onnx.py --task qwen --variants w4a16 w4a8int w4a4int --out docs/onnx_score_qwen.md

For each suite method (``--methods``, names of ``mqcompile.evaluation.suite.METHODS``) the task's programs are
quantized as the suite does (its calibration data); the one ONNX serves (DINOv2: the ViT; Whisper: the encoder) is
exported as each ``--variant`` (plus its float program), and every file is scored by the task's own ``evaluate`` with
an ONNX Runtime session standing in for that module (DINOv2: LFW probe accuracy and CLS cosine to the float torch
program, 200 images at 112 px; Whisper: WER on the suite's voice and on the harder set, the decoder the method's
quantized torch program; Qwen2-0.5B: perplexity on the suite's chunks, 8 wiki / 4 pydoc / 4 news x 256 tokens), next to
the torch programs' own score. The LM is served as its KV-cache program (``export_causal_lm_with_cache``: one program
for prefill and decode), quantized on the suite's calibration data; its torch score is that quantized program's.
Latency: median of ``--reps`` runs at the task's probe batch (DINOv2: 8 x 112 px; Whisper: one 30 s clip; LM: a
128-token prefill, and one decode step after 255 tokens of a wiki chunk whose cache the float program computed) after
warm-up, every file of a method timed round-robin (``bench_onnx.latencies_ms``), as the float ONNX model's latency
over the file's, measured in the same run.
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
from bench_onnx import INT_GEMMS, latencies_ms

import mqcompile
from mqcompile.backends.onnx.export import export_float_onnx, export_onnx, ort_optimized_op_counts
from mqcompile.evaluation.base import ProgramSpec
from mqcompile.evaluation.suite import METHODS, cpu_name, method_config

log = logging.getLogger("score_onnx")
# task -> (what it is, the program ONNX serves, its metrics)
TASKS = {
    "dinov2": ("DINOv2-S/14", "vit", ("probe_acc", "cls_cosine")),
    "whisper": ("the Whisper-base encoder", "encoder", ("wer", "wer_hard")),
    "qwen": ("Qwen2.5-Coder-0.5B with its KV cache", "lm", ("ppl_wiki", "ppl_pydoc", "ppl_news")),
}


class CachedLMTask:
    """The suite's LM (``TextLMTask``) as the KV-cache program an edge runtime serves: calibrated on the suite's
    calibration sequences, scored on its perplexity chunks (prefill with an empty past), timed at decode too."""

    def __init__(self):
        from mqcompile.evaluation.text_lm import TextLMTask

        self.task = TextLMTask()
        self.config = None
        self.float_module = None

    def _prefill(self, batch: dict) -> dict:
        from mqcompile.models.qwen2_text import empty_cache_inputs

        return empty_cache_inputs(self.config, batch["input_ids"], batch["attention_mask"])

    def programs(self) -> dict[str, ProgramSpec]:
        from mqcompile.models.qwen2_text import export_causal_lm_with_cache

        spec = self.task.programs()["lm"]
        self.config = self.task.model.config
        program = export_causal_lm_with_cache(self.task.model)
        self.float_module = program.module()
        calibration = [self._prefill(b) for b in spec.calibration]
        return {"lm": ProgramSpec(program=program, calibration=calibration, probe=self._prefill(spec.probe))}

    def evaluate(self, modules) -> dict[str, float]:
        module = modules["lm"]

        def logits(input_ids, attention_mask):
            out = module(**self._prefill({"input_ids": input_ids, "attention_mask": attention_mask}))
            return out[0] if isinstance(out, tuple | list) else out

        return self.task.perplexities(logits)

    def decode_probe(self) -> dict:
        """One new token after the first 255 tokens of the first wiki chunk (their cache from the float program)."""
        ids = self.task.data()["wiki"][:1]
        with torch.inference_mode():
            _, keys, values = self.float_module(
                **self._prefill({"input_ids": ids[:, :-1], "attention_mask": torch.ones_like(ids[:, :-1])})
            )
        return {
            "input_ids": ids[:, -1:].clone(),
            "attention_mask": torch.ones((1, 1), dtype=torch.long),
            "past_mask": torch.cat([torch.zeros((1, 1), dtype=torch.long), torch.ones_like(ids[:, :-1])], dim=1),
            "past_keys": keys,
            "past_values": values,
        }


def _task(name: str):
    if name == "qwen":
        return CachedLMTask()
    if name == "dinov2":
        from mqcompile.evaluation.vision import VisionTask

        return VisionTask()
    from mqcompile.evaluation.speech import SpeechTask

    return SpeechTask()


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


def _config(spec, method: str, head: str | None):
    overrides = dict(METHODS[method])
    if head is not None:  # the output head too (it is kept float by default): the decode step reads all its weights
        overrides["overrides"] = (*overrides.get("overrides", ()), ("*lm_head", head))
    return method_config(spec, overrides)


def score_method(
    task,
    key: str,
    method: str,
    variants,
    workdir: Path,
    threads: int,
    reps: int,
    score: bool = True,
    head: str | None = None,
) -> list[dict]:
    specs = task.programs()
    start = time.perf_counter()
    quantized = {
        name: mqcompile.quantize(spec.program, _config(spec, method, head), spec.calibration, progress=False)
        for name, spec in specs.items()
    }
    log.info("%s: quantized in %.0f s", method, time.perf_counter() - start)
    torch_metrics = task.evaluate({name: qp.module() for name, qp in quantized.items()}) if score else None
    spec, qp = specs[key], quantized[key]
    files = [("float", workdir / f"{method}_float.onnx")]
    export_float_onnx(spec.program, files[0][1], spec.probe)
    for variant in variants:
        files.append((variant, workdir / f"{method}_{variant}.onnx"))
        export_onnx(qp, files[-1][1], spec.probe, variant=variant, check=False)
    timed = latencies_ms([f[1] for f in files], spec.probe, threads, reps)
    decode = getattr(task, "decode_probe", None)
    decoded = latencies_ms([f[1] for f in files], decode(), threads, reps) if decode else None
    others = {name: q.module() for name, q in quantized.items() if name != key}
    rows = []
    for i, ((variant, path), (ms, _)) in enumerate(zip(files, timed, strict=True)):
        metrics = task.evaluate({**others, key: OrtModule(path, threads)}) if score else None
        ops = ort_optimized_op_counts(path, workdir / f"{path.stem}.ort.onnx")
        rows.append(
            {
                "method": method + (f", head {head}" if head else ""),
                "variant": variant,
                "ms": ms,
                "ratio": timed[0][0] / ms,
                "int_gemms": sum(ops.get(op, 0) for op in INT_GEMMS),
                "nbits": ops.get("MatMulNBits", 0),
                "ort": metrics,
                "torch": torch_metrics if variant != "float" else None,
                "scored": score,
            }
        )
        if decoded:
            rows[-1].update(decode_ms=decoded[i][0], decode_ratio=decoded[0][0] / decoded[i][0])
        log.info("%s %s: %.1f ms, %s", method, variant, ms, metrics)
    return rows


def _fmt(name: str, value: float) -> str:
    return f"{value:.4f}" if "cosine" in name else f"{value:.2f}"


def table(rows: list[dict], metrics: tuple[str, ...]) -> str:
    names = " / ".join(metrics)
    decode = "decode_ms" in rows[0]
    lines = [
        "| method | ONNX | latency ms | speed vs float ONNX "
        + ("| decode ms | decode speed vs float " if decode else "")
        + "| integer GEMMs | MatMulNBits "
        + "".join(f"| {m} (ORT) " for m in metrics)
        + f"| {names} of the torch programs |",
        "|---|---|---:|---:|" + ("---:|---:|" if decode else "") + "---:|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    for r in rows:
        t = "-" if r["torch"] is None else " / ".join(_fmt(m, r["torch"][m]) for m in metrics)
        ort_metrics = r["ort"] or {}
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['ms']:.1f} | {r['ratio']:.2f}x "
            + (f"| {r['decode_ms']:.1f} | {r['decode_ratio']:.2f}x " if decode else "")
            + f"| {r['int_gemms']} | {r['nbits']} "
            + "".join(f"| {_fmt(m, ort_metrics[m]) if m in ort_metrics else 'not scored'} " for m in metrics)
            + f"| {t} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="dinov2", choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=["W4A4-RTN+Rot", "W4A4-MorphoQuant+Rot"], choices=list(METHODS))
    parser.add_argument("--variants", nargs="+", default=["w4a4", "w4a16", "w4a8int", "w4a4int"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-only", action="store_true", help="time the files, do not score them")
    parser.add_argument(
        "--head", default=None, choices=["w8a8", "w4a16"], help="quantize the output head (lm_head) with this scheme"
    )
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "mqcompile"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    start = time.perf_counter()
    what, key, metrics = TASKS[args.task]
    task = _task(args.task)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows += score_method(
                task, key, method, args.variants, Path(tmp), args.threads, args.reps, not args.latency_only, args.head
            )
    text = table(rows, metrics)
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
                    f"# {what} through ONNX Runtime: speed and what it scores",
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
