"""Command line: ``mqcompile demo`` (the README's main job), ``quantize``, ``eval``, ``export-onnx``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_tables, run_demo
    from .errors import CheckpointError

    result = run_demo(args.out, scheme=args.scheme, seed=args.seed, progress=not args.no_progress)
    sys.stdout.write(format_tables(result) + "\n")
    if args.tiny_only:
        return 0
    from .demo import format_omni_examples, run_omni_demo
    from .evaluation import write_results
    from .evaluation.suite import format_results

    try:
        data = run_omni_demo(progress=not args.no_progress)
    except (CheckpointError, ModuleNotFoundError) as exc:
        sys.stdout.write(f"\nreal-weights mini-omni demo skipped: {exc}\n")
        return 0
    path = os.path.join(args.out, "RESULTS_demo.md")
    write_results(data, path)
    sys.stdout.write("\n" + format_omni_examples(data) + "\n\n" + format_results(data) + f"\nwrote {path}\n")
    sys.stdout.write(
        "(quick calibration: 2 mixed batches, MorphoQuant with 64 tokens per linear and no STE steps; the full "
        "ablation: mqcompile eval --tasks mini-omni, docs/RESULTS_omni.md)\n"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import run_suite, write_results
    from .evaluation.suite import format_results, layer_plots

    # results of a user's run go to the working directory, never into the package's docs/ (--out to choose)
    out = args.out or os.path.join("mqcompile-results", "RESULTS_quick.md" if args.quick else "RESULTS.md")
    command = "mqcompile " + " ".join(args.argv)
    data = run_suite(
        args.tasks,
        args.methods,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        on_task=lambda partial: write_results(partial, out),
        command=command,
    )
    write_results(data, out)
    plots = layer_plots(data, os.path.splitext(out)[0] + "_layers")
    sys.stdout.write(format_results(data) + f"\nwrote {out} and its .json")
    sys.stdout.write(f", and {len(plots)} per-layer plots in {os.path.dirname(plots[0])}\n" if plots else "\n")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import json

    from .quantize_cli import format_result, quantize_source

    result = quantize_source(
        args.source,
        args.output,
        recipe=args.recipe,
        default=args.default,
        modality=args.modality,
        calibration=args.calibration,
        samples=args.samples,
        seed=args.seed,
        progress=not (args.no_progress or args.json),
        report=args.report,
        kv_cache=args.kv_cache,
    )
    if args.json:
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2) + "\n")
    else:
        sys.stdout.write(format_result(result) + "\n")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from . import export_onnx
    from .program import QuantizedProgram

    qp = QuantizedProgram.load(args.program)
    report = export_onnx(qp, args.output, opset=args.opset, variant=args.variant, check=not args.no_check)
    sys.stdout.write(report.summary() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqcompile", description="W4A4 quantization compiler for omni-modal models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each pass")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="tiny Qwen2.5-Omni thinker: export, quantize, fidelity; then real models (quick) with the eval extra",
    )
    demo.add_argument("--out", default="out", help="folder for the saved program (default: out)")
    demo.add_argument("--scheme", default="w4a4", choices=["w4a4", "w4a16", "w8a8"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--tiny-only", action="store_true", help="skip the real-weights quick suite")
    demo.set_defaults(func=_demo)
    from .evaluation.suite import METHODS, TASKS

    ev = sub.add_parser(
        "eval", help="real-weights suite: tasks x methods -> ./mqcompile-results/ (needs the eval extra)"
    )
    ev.add_argument("--quick", action="store_true", help="small slices (minutes), for CI and smoke tests")
    ev.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ev.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ev.add_argument(
        "--out",
        default=None,
        help="markdown path (default mqcompile-results/RESULTS.md, quick: RESULTS_quick.md)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_eval)
    qz = sub.add_parser(
        "quantize",
        help="saved ExportedProgram (.pt2) or checkpoint directory -> saved QuantizedProgram (.pt2), with a summary",
    )
    qz.add_argument(
        "source",
        help="a .pt2 from torch.export.save, a checkpoint directory (Qwen2.5-Omni thinker, Qwen2 causal LM, Whisper, "
        "DINOv2), or mini-omni (the suite's omni model, from the eval extra's weights)",
    )
    qz.add_argument("output", help="the QuantizedProgram .pt2 to write")
    qz.add_argument(
        "--recipe",
        default=None,
        help="presets and algorithms joined by '+' (RTN, SMOOTHQUANT, DABC_ONLY, MDQFO_CLIPS, MORPHOQUANT; Rotate, "
        "SmoothQuant, DABC, MDQFO, BlockMDQFO, GPTQ), e.g. MORPHOQUANT+Rotate; or a QuantConfig JSON file "
        "(default RTN)",
    )
    qz.add_argument("--default", default=None, help="scheme of every linear no other rule names (default w4a4)")
    qz.add_argument(
        "--modality", nargs="+", default=(), metavar="PATH=SCHEME", help="per modality path, e.g. audio=w8a8"
    )
    qz.add_argument(
        "--calibration", default=None, help="'builtin' (offline data of the eval extra) or a .pt list of input batches"
    )
    qz.add_argument("--samples", type=int, default=None, help="calibration batches to use (builtin default 8)")
    qz.add_argument(
        "--report", default=None, metavar="DIR", help="write the error report (HTML + PNGs) there; needs matplotlib"
    )
    qz.add_argument(
        "--kv-cache",
        action="store_true",
        help="Qwen2 causal LM directories: quantize the KV-cache program (prefill and one-token decode in one: "
        "input_ids, attention_mask, past_mask, past_keys, past_values -> logits, keys, values), what an edge "
        "runtime serves after export-onnx",
    )
    qz.add_argument("--seed", type=int, default=0)
    qz.add_argument("--json", action="store_true", help="print the result as JSON (no progress bars)")
    qz.add_argument("--no-progress", action="store_true")
    qz.set_defaults(func=_quantize)
    onx = sub.add_parser(
        "export-onnx",
        help="saved QuantizedProgram (.pt2) -> ONNX INT4 QDQ, checked in ONNX Runtime against the program",
    )
    onx.add_argument("program", help="a .pt2 written by QuantizedProgram.save (or `mqcompile demo`)")
    onx.add_argument("output", help="the .onnx file to write")
    onx.add_argument(
        "--variant",
        default="w4a4",
        choices=[
            "w4a4",
            "w4a8",
            "w4a16",
            "w4a8int",
            "w4a4int",
        ],  # backends.onnx.lower.VARIANTS (lazy import)
        help="w4a16: ORT MatMulNBits; w4a8int: ORT integer GEMMs on per-tensor activations; w4a4int: the program's "
        "own numerics (bit for bit) on ORT's u8s8 integer GEMMs",
    )
    onx.add_argument("--opset", type=int, default=21)
    onx.add_argument("--no-check", action="store_true", help="skip the checker and the ONNX Runtime parity run")
    onx.set_defaults(func=_export_onnx)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from .errors import MQCompileError

    try:
        return args.func(args)
    except MQCompileError as exc:  # our errors already say what to do; a traceback would bury that
        sys.stderr.write(f"mqcompile {args.command}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
