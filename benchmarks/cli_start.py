"""How fast the command line answers a first contact: `--help` and an argument error.

    python benchmarks/cli_start.py [--runs 10]

Each command runs as a fresh process (what a user waits for), `--runs` times; prints the median and
the worst wall time next to a bare `python -c pass` measured in the same run (the interpreter's own
start-up, the floor). Target: under 0.5 s for both.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUBCODER = Path(sys.executable).with_name("subcoder")
COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "subcoder --help": [str(SUBCODER), "--help"],
    "subcoder prune --help": [str(SUBCODER), "prune", "--help"],
    "subcoder prune --device tpu (error)": [str(SUBCODER), "prune", "--device", "tpu"],
    "subcoder generate --file MISSING (error)": [str(SUBCODER), "generate", "--file", "/nonexistent.py"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per command (default: 10)")
    args = ap.parse_args()
    print(f"| command | median | worst |  (python {sys.version.split()[0]}, {args.runs} runs each)")
    print("|---|---:|---:|")
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True)
            times.append(time.perf_counter() - t0)
        print(f"| `{name}` | {statistics.median(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
