"""Calibration size and sampling against quality and cost: for one preset and language, build Wanda
sub-models from calibration sets that differ only in how they are drawn and how large they are, and
report each one's held-out perplexity (with a 95% interval, bootstrap over held-out files) and
extraction time (building the calibration set, then pruning).

    python benchmarks/calibration.py [--model qwen2.5-coder-0.5b] [--language python]
        [--samplings stream,files] [--samples 32,128] [--seq-lens 512,1024,2048] [--fim 0,0.5]
        [--seeds 0] [--sparsity 0.5] [--eval-windows N] [--json out.json]

Every configuration prunes a fresh copy of the same loaded base model; held-out windows come from
`evaluation.perplexity.file_windows` (each window inside one held-out file), so the dense model and
every sub-model are scored on the same tokens. Several seeds give the draw-to-draw spread that a
difference between configurations has to beat. The full grid on the 0.5B preset takes hours on a
2-core machine: start small (--samples 8 --seq-lens 128 --eval-windows 16) to check the setup.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time

import torch

from subcoder.pruner.calibration import CalibrationSpec, build_calibration
from subcoder.pruner.config import PruneConfig
from subcoder.pruner.evaluation.perplexity import file_windows, window_losses
from subcoder.pruner.evaluation.stats import cluster_bootstrap
from subcoder.pruner.loaded import resolve_dtype
from subcoder.pruner.loader import load_model
from subcoder.pruner.presets import DEFAULT_PRESET
from subcoder.pruner.prune import prune_model


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def heldout_score(model, windows: list[dict], pad_id: int, batch_size: int) -> dict:
    """Perplexity over the windows and its 95% interval, resampling held-out files."""
    losses = window_losses(model, [w["ids"] for w in windows], batch_size=batch_size, pad_id=pad_id)
    per_token = [s / c for s, c in losses]
    interval = cluster_bootstrap(per_token, [w["file"] for w in windows], weights=[c for _, c in losses])
    return {"ppl": round(math.exp(interval.estimate), 3), "ppl_low": round(math.exp(interval.low), 3),
            "ppl_high": round(math.exp(interval.high), 3), "tokens": sum(c for _, c in losses),
            "files": len({w["file"] for w in windows})}


def configurations(args) -> list[dict]:
    grid = itertools.product(args.samplings, args.samples, args.seq_lens, args.fim, args.seeds)
    return [{"sampling": s, "n_samples": n, "seq_len": L, "fim": f, "seed": seed} for s, n, L, f, seed in grid
            if not (f and s != "files")]  # FIM windows exist only in the files sampler


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    loaded = load_model(args.model, dtype=dtype, sparse=False)  # pruning hooks torch's nn.Linear
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    windows = file_windows(tok, args.language, n_windows=args.eval_windows, seq_len=args.eval_seq_len)
    rows = [{"config": "dense", **heldout_score(loaded.model, windows, pad, args.batch_size)}]
    _say(args, rows[-1])
    for cfg in configurations(args):
        t0 = time.perf_counter()
        calib = build_calibration(tok, args.language, CalibrationSpec(source=args.source, **cfg))
        t1 = time.perf_counter()
        model = copy.deepcopy(loaded.model)
        prune_model(model, calib.input_ids, calib.attention_mask, PruneConfig(sparsity=args.sparsity),
                    batch_size=args.batch_size)
        t2 = time.perf_counter()
        row = {"config": cfg, "calibration": calib.description, "fingerprint": calib.fingerprint,
               "calibration_tokens": calib.tokens, "calibration_set_s": round(t1 - t0, 2),
               "prune_s": round(t2 - t1, 2), **heldout_score(model, windows, pad, args.batch_size)}
        del model
        rows.append(row)
        _say(args, row)
    return {"model": args.model, "language": args.language, "source": args.source, "sparsity": args.sparsity,
            "dtype": dtype, "threads": args.threads, "eval_seq_len": args.eval_seq_len,
            "eval_windows": len(windows), "rows": rows}


def _say(args, row: dict) -> None:
    if not args.quiet:
        cfg = row["config"] if isinstance(row["config"], str) else " ".join(f"{k}={v}" for k, v in row["config"].items())
        cost = f"  set {row['calibration_set_s']} s, prune {row['prune_s']} s" if "prune_s" in row else ""
        print(f"{cfg:<55} ppl {row['ppl']:.3f} [{row['ppl_low']:.3f}, {row['ppl_high']:.3f}]{cost}", file=sys.stderr,
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_PRESET)
    ap.add_argument("--language", default="python")
    ap.add_argument("--source", default="corpus", help="calibration source (corpus, mixed-code, literature)")
    ap.add_argument("--samplings", type=_list(str), default=["stream", "files"])
    ap.add_argument("--samples", type=_list(int), default=[32, 128])
    ap.add_argument("--seq-lens", type=_list(int), default=[512, 1024, 2048])
    ap.add_argument("--fim", type=_list(float), default=[0.0], help="FIM shares of the windows (files sampling)")
    ap.add_argument("--seeds", type=_list(int), default=[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--eval-windows", type=int, default=None, help="held-out windows (default: all)")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
