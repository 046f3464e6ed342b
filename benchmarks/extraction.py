"""Extraction cost: wall time and peak memory of building a sub-model, against one dense forward
pass over the same calibration tokens, measured in the same process.

Wanda needs two passes of each decoder layer over the calibration set (observe, then forward the
pruned layer), so the floor is about 2x a dense forward; the target is <= 2.5x.

    python benchmarks/extraction.py [--model qwen2.5-coder-0.5b] [--samples 32] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from subcoder.pruner.calibration import CalibrationSpec, build_calibration
from subcoder.pruner.config import PruneConfig
from subcoder.pruner.loader import load_model
from subcoder.pruner.presets import DEFAULT_PRESET
from subcoder.pruner.units import human_bytes
from subcoder.pruner.prune import prune_model


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_PRESET)
    ap.add_argument("--language", default="python")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU has native bf16, else float32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from subcoder.pruner.loaded import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    loaded = load_model(args.model, dtype=args.dtype, sparse=False)
    rss_model = rss_peak()
    calib = build_calibration(loaded.tokenizer, args.language,
                              CalibrationSpec(n_samples=args.samples, seq_len=args.seq_len))
    ids, mask = calib.input_ids, calib.attention_mask

    # the baseline: one dense forward over the same tokens, same batch size, no KV cache
    with torch.no_grad():
        loaded.model(input_ids=ids[:1, :32], use_cache=False)  # warm-up
        t0 = time.perf_counter()
        for start in range(0, ids.shape[0], args.batch_size):
            loaded.model(input_ids=ids[start:start + args.batch_size],
                         attention_mask=mask[start:start + args.batch_size], use_cache=False)
        dense_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = prune_model(loaded.model, ids, mask, PruneConfig(0.5), batch_size=args.batch_size)
    prune_s = time.perf_counter() - t1
    figures = {
        "model": args.model, "dtype": args.dtype, "threads": args.threads,
        "calibration": f"{args.samples} x {args.seq_len} {args.language} tokens",
        "dense_forward_s": round(dense_s, 2), "extraction_s": round(prune_s, 2),
        "ratio": round(prune_s / dense_s, 2),
        "peak_rss_bytes": rss_peak(), "rss_after_load_bytes": rss_model,
        "linear_sparsity": round(result.report.linear_sparsity, 4),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"model              {args.model} ({args.dtype}, {args.threads} threads)")
    print(f"calibration        {figures['calibration']}")
    print(f"dense forward      {dense_s:7.2f} s")
    print(f"Wanda extraction   {prune_s:7.2f} s   ({prune_s / dense_s:.2f}x the dense forward; floor ~2x, target <= 2.5x)")
    print(f"peak memory (RSS)  {human_bytes(figures['peak_rss_bytes'])}  (after loading: {human_bytes(rss_model)})")
    print(f"sparsity           {result.report.linear_sparsity:.2%} of decoder linear weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
