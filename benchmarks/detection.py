"""Workspace language detection on a synthetic 10,000-file workspace (target: well under a second).

    python benchmarks/detection.py [--files 10000]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from subcoder.server.detect import detect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per = 100
        for d in range(args.files // per):
            folder = root / f"pkg{d}"
            folder.mkdir()
            for f in range(per):
                (folder / f"m{f}.{'py' if f % 4 else 'js'}").write_text("def f(x):\n    return x + 1\n")
        times = []
        for _ in range(5):
            t = time.perf_counter()
            found = detect(root)
            times.append(time.perf_counter() - t)
    print(f"{found.files_seen} files, dominant {found.dominant()}: median {statistics.median(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms over 5 runs")


if __name__ == "__main__":
    main()
