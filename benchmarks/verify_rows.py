"""What one more token costs in a verification pass: a pass over T new tokens, T = 1..7, split into
the layer stack and the greedy head.

    python benchmarks/verify_rows.py [--model qwen2.5-coder-0.5b] [--language python] [--context 800]
                                     [--repeat 15] [--threads 2]

Speculative decoding verifies a draft of T - 1 guessed tokens in one pass (subcoder.pruner.engine.speculate), and
the editor's extension requests feed the few typed tokens the same way. Whether a longer draft pays
depends on how much a pass grows with T, which this prints: the whole pass (`next_tokens`, what
decoding calls), the layer stack alone (the fused decode step's hidden states) and the greedy head
alone, on the preset's 50% sub-model with a KV cache of `--context` held-out Python tokens. The T
values take turns within each repetition, so a shared machine's drift hits them alike; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--language", default="python")
    p.add_argument("--context", type=int, default=800, help="tokens already in the KV cache")
    p.add_argument("--max-rows", type=int, default=7)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.corpora import read_documents
    from subcoder.pruner.extract import extract
    from subcoder.pruner.engine.completer import Completer, crop_cache
    from subcoder.pruner.loader import load_model

    sub = extract(args.model, args.language, PruneConfig(0.5)).path
    completer = Completer(load_model(str(sub)))
    fast = completer.decoder
    if fast is None or not fast.fused:
        print("the fused decode step is not available here (no sparse kernel?): nothing to measure", file=sys.stderr)
        return 1
    text = "\n".join(r["text"] for r in read_documents(args.language, "heldout"))
    ids = completer.tokenizer(text[: 16 * args.context])["input_ids"][: args.context + args.max_rows]
    if len(ids) < args.context + args.max_rows:
        print(f"not enough held-out text for {args.context} tokens", file=sys.stderr)
        return 1
    cache = completer.new_cache()
    rows = range(1, args.max_rows + 1)
    new = {t: ids[args.context:args.context + t] for t in rows}
    times = {part: {t: [] for t in rows} for part in ("pass", "layers", "head")}
    with torch.inference_mode():
        completer.feed(ids[: args.context], cache)
        hidden = {}
        for t in rows:
            hidden[t] = fast.hidden_states(new[t], cache)[0]
            crop_cache(cache, args.context)
        for _ in range(args.repeat):
            for t in rows:
                t0 = time.perf_counter()
                fast.next_tokens(new[t], cache)
                t1 = time.perf_counter()
                crop_cache(cache, args.context)
                fast.hidden_states(new[t], cache)
                t2 = time.perf_counter()
                crop_cache(cache, args.context)
                fast.head(hidden[t])
                t3 = time.perf_counter()
                times["pass"][t].append(t1 - t0)
                times["layers"][t].append(t2 - t1)
                times["head"][t].append(t3 - t2)
    med = {part: {t: 1e3 * statistics.median(v) for t, v in d.items()} for part, d in times.items()}
    print(f"Sub-model {sub.name}; KV cache of {args.context} tokens; {args.threads} threads; median of {args.repeat}, ms")
    print()
    print("| tokens in the pass | whole pass | layers | greedy head | pass / one-token pass |")
    print("|---:|---:|---:|---:|---:|")
    for t in rows:
        print(f"| {t} | {med['pass'][t]:.1f} | {med['layers'][t]:.1f} | {med['head'][t]:.1f} | "
              f"{med['pass'][t] / med['pass'][1]:.2f} |")
    extra = (med["pass"][args.max_rows] - med["pass"][1]) / (args.max_rows - 1)
    print()
    print(f"Each token beyond the first adds {extra:.1f} ms on average ({extra / med['pass'][1]:.2f} of a one-token pass).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
