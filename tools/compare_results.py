"""Compare two suite result files (``mqcompile eval`` JSON) bit for bit, timings aside.

Every metric, per-modality SQNR and linear count of every task and method must be the same float (``==``, so
``OMP_NUM_THREADS=1`` runs are needed for a fair "bit-identical" check: docs/method.md). Prints one line per
value compared and exits 1 on any difference (or a task / method present in only one file).

Example::

    python tools/compare_results.py docs/refactor/before.json docs/refactor/after.json
"""

from __future__ import annotations

import argparse
import json
import sys

FIELDS = ("metrics", "layer_sqnr_db", "linears")  # not quantize_s / eval_s: wall time


def _values(data: dict) -> dict[tuple[str, ...], object]:
    out = {}
    for task, block in data["results"].items():
        for method, result in block["methods"].items():
            for field in FIELDS:
                for key, value in (result.get(field) or {}).items():
                    out[(task, method, field, key)] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args(argv)
    with open(args.before) as f:
        before = _values(json.load(f))
    with open(args.after) as f:
        after = _values(json.load(f))
    bad = 0
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, "<missing>"), after.get(key, "<missing>")
        same = a == b and type(a) is type(b)
        bad += not same
        sys.stdout.write(f"{'same' if same else 'DIFF'}  {' / '.join(key)}: {a!r} -> {b!r}\n")
    sys.stdout.write(f"{len(set(before) | set(after))} values compared, {bad} differ\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
