"""Qwen2-0.5B W4A4 perplexity against calibration size (issue #16 item 3): batches of 256-token sequences, and the
reservoir of tokens per linear that MDQFO and GPTQ see.

Each point quantizes the suite's program with one suite method (``--method``, its knobs unchanged except the
reservoir) on the first ``batches`` calibration sequences of the suite's calibration split, then scores the suite's
wiki, pydoc and news chunks (pydoc and news: text the calibration never drew from). Perplexity only: the
multiple-choice questions would triple the time per point. Prints a Markdown table, written (with JSON) by
``--out``.

Example::

    OMP_NUM_THREADS=2 python tools/calibration_curve.py --method W4A4-MorphoQuant+Rot \\
        --points 2:256 8:256 32:256 8:64 8:1024 --out docs/calibration_curve.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import time

import torch

from mqcompile import quantize
from mqcompile.evaluation.suite import METHODS, method_config
from mqcompile.evaluation.text_lm import CALIB_SOURCES, TextLMTask, chunk_nll

log = logging.getLogger("calibration_curve")


def _point(text: str) -> tuple[int, int]:
    batches, _, reservoir = text.partition(":")
    return int(batches), int(reservoir or 256)


SPLITS = ("wiki", "pydoc", "news")


def _perplexities(module, data: dict, batch: int) -> tuple[float, ...]:
    chunks = [data[s] for s in SPLITS]
    with torch.inference_mode():
        sums = chunk_nll(module, torch.cat(chunks), batch)
    per, out, start = chunks[0].shape[1] - 1, [], 0
    for c in chunks:
        out.append(math.exp(float(sums[start : start + len(c)].sum()) / (len(c) * per)))
        start += len(c)
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="W4A4-MorphoQuant+Rot", choices=[m for m in METHODS if METHODS[m]])
    parser.add_argument("--points", nargs="+", default=["2:256", "8:256", "32:256", "8:64", "8:1024"],
                        help="BATCHES:RESERVOIR_TOKENS pairs")  # fmt: skip
    parser.add_argument("--calib-sources", nargs="+", default=list(CALIB_SOURCES), choices=CALIB_SOURCES,
                        help="calibration sources, taken in turn (default: all, as the suite)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="QuantConfig.seed (the reservoir's sampling)")
    parser.add_argument("--out", default=None, help="write the table here (.md; the JSON beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    points = [_point(p) for p in args.points]
    task = TextLMTask(calib_batches=max(b for b, _ in points), calib_sources=args.calib_sources)
    spec = task.programs()["lm"]
    data = task.data()
    float_ppl = _perplexities(spec.program.module(), data, task.ppl_batch)
    rows = []
    for batches, reservoir in points:
        config = method_config(spec, {**METHODS[args.method], "reservoir_tokens": reservoir, "seed": args.seed})
        start = time.perf_counter()
        qp = quantize(spec.program, config, calibration=spec.calibration[:batches], progress=False)
        quantize_s = time.perf_counter() - start
        ppl = dict(zip((f"ppl_{s}" for s in SPLITS), _perplexities(qp.module(), data, task.ppl_batch)))
        rows.append({"batches": batches, "tokens": batches * task.seq_len, "reservoir": reservoir, **ppl,
                     "quantize_s": quantize_s,
                     "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})  # fmt: skip
        log.info("%s", rows[-1])
        del qp
    lines = [
        f"Method `{args.method}` on Qwen2.5-Coder-0.5B, float perplexity "
        + " / ".join(f"{v:.2f} ({s})" for s, v in zip(SPLITS, float_ppl))
        + f"; {task.seq_len}-token calibration sequences ({' + '.join(task.calib_sources)}, taken in turn); seed "
        f"{args.seed}; one run per point.",
        "",
        "| batches | tokens | reservoir per linear | "
        + " | ".join(f"ppl_{s} (x float)" for s in SPLITS)
        + " | quantize s | peak RSS GB |",
        "|---|---|---|" + "---|" * len(SPLITS) + "---|---|",
    ]
    for r in rows:
        ppl = " | ".join(f"{r[f'ppl_{s}']:.2f} ({r[f'ppl_{s}'] / f:.3f})" for s, f in zip(SPLITS, float_ppl))
        lines.append(
            f"| {r['batches']} | {r['tokens']} | {r['reservoir']} | {ppl} | {r['quantize_s']:.0f} "
            f"| {r['peak_rss_gb']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            record = {"method": args.method, "calib_sources": task.calib_sources, "seed": args.seed}
            json.dump({**record, "float": float_ppl, "points": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
