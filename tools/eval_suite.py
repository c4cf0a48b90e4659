"""Run the real-weights evaluation suite and write docs/RESULTS.md (+ .json). Same as `mqcompile eval`.

python tools/eval_suite.py            # full suite
python tools/eval_suite.py --quick    # minutes
"""

import sys

from mqcompile.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
