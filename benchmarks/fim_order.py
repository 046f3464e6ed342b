"""Fill-in-the-middle prompt layout: PSM against SPM on HumanEval single-line infilling.

    python benchmarks/fim_order.py [--model python] [--limit 200] [--threads 2]

`--model` is anything `subcoder generate -M` takes: a preset (the dense base), a sub-model directory,
or a language name for the newest cached sub-model. The same seeded tasks are
completed greedily with both layouts (subcoder.pruner.engine.completer.FIM_ORDERS) and executed in the sandbox;
pass@1 and wall time are printed for each. The server's `fimOrder` default rests on this.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="python")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from subcoder.pruner.evaluation import humaneval
    from subcoder.pruner.evaluation.decode import BatchGenerator
    from subcoder.pruner.engine.prompt import FIM_ORDERS
    from subcoder.pruner.loader import load_model
    from subcoder.pruner.paths import submodels_dir

    torch.set_num_threads(args.threads)
    # a language name picks the newest cached sub-model for it, as `subcoder generate -m python` does
    cached = sorted(submodels_dir().glob(f"{args.model}-*"), key=lambda p: p.stat().st_mtime)
    loaded = load_model(str(cached[-1]) if cached else args.model)
    print(f"model {loaded.info.name}; {args.limit} HumanEval single-line infilling tasks", flush=True)
    for order in FIM_ORDERS:
        gen = BatchGenerator(loaded, context_tokens=1024, use_fim=True)
        gen.prompts.order = order
        t0 = time.perf_counter()
        res = humaneval.infilling(gen, limit=args.limit)
        print(f"{order}: pass@1 {res['pass@1']:.3f} over {res['n']} tasks ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
