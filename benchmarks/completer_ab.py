"""Two ways of decoding compared on the editor replay, paired request by request in one process.

    python benchmarks/completer_ab.py [--compare head|speculate|thread|attention] [--files 2] [--lines 3]

The requests are those of benchmarks/server_latency.py (typing replayed through held-out Python).
Both candidates are `subcoder.pruner.engine.completer.Completer`s on one loaded sub-model, each with its own KV
caches, and they take turns on every request (A then B, then B then A on the next), so the drift of
a shared machine's memory bandwidth -- which moves whole replays by a third from one hour to the
next -- hits both alike. Prints extension-request p50 for each, the median per-request time ratio
B / A, and whether every suggestion came out the same.

  head       A: full logits (head_screen off)         B: the greedy head (int8 screen + exact re-check)
  speculate  A: plain greedy (speculate off)          B: drafts verified several tokens per pass
  thread     A: called on the main thread             B: called on a worker thread, as the server does
  attention  A: torch's SDPA kernel per query          B: the kernel library's decode attention
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SWITCHES = {"head": "head_screen", "speculate": "speculate"}  # --compare -> the EngineOptions field A turns off


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", choices=("head", "speculate", "thread", "attention"), default="head")
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--lines", type=int, default=3)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract
    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.loader import load_model
    from subcoder.pruner.engine.options import EngineOptions
    from subcoder.pruner.kernels import debug
    from server_latency import make_segment, pick_files, plan_requests

    loaded = load_model(str(extract(args.model, "python", PruneConfig(0.5)).path))
    pool = ThreadPoolExecutor(1)
    switch = SWITCHES.get(args.compare)
    completers = {}
    for name, on in (("A", False), ("B", True)):
        options = EngineOptions.from_env(**({switch: on} if switch else {}))
        completers[name] = Completer(loaded, options=options)

    def call(name, req):
        run = lambda: completers[name].complete(req.prefix, req.suffix, max_new_tokens=args.max_new_tokens,
                                                key=f"seg{req.segment}")
        if args.compare == "attention":
            with debug.overrides(decode_attention=name == "B"):
                return run()
        return pool.submit(run).result() if args.compare == "thread" and name == "B" else run()

    requests = []
    for i, record in enumerate(pick_files(args.files)):
        seg = make_segment(record, args.lines)
        plan_requests(seg, i, args.every)
        requests += seg.requests
    got: dict[str, list] = {"A": [], "B": []}
    for n, req in enumerate(requests):
        for name in (("A", "B") if n % 2 == 0 else ("B", "A")):
            t0 = time.perf_counter()
            result = call(name, req)
            got[name].append((req.kind, time.perf_counter() - t0, result))

    def ext_p50(name):
        return 1e3 * statistics.median(t for kind, t, _ in got[name] if kind == "extend")

    decoded = [(a, b) for a, b in zip(got["A"], got["B"]) if a[2].stop_reason != "typed-ahead"]
    ratio = statistics.median(b[1] / a[1] for a, b in decoded)
    same = sum(a[2].text == b[2].text for a, b in zip(got["A"], got["B"]))
    print(f"{args.compare}: {len(requests)} requests, extension p50 A {ext_p50('A'):.0f} ms, B {ext_p50('B'):.0f} ms; "
          f"median per-request ratio B/A {ratio:.3f} over {len(decoded)} decoded requests; "
          f"identical suggestions {same}/{len(requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
