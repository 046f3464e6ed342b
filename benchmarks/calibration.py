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
from pathlib import Path

import torch

from subcoder.pruner.calibration import CalibrationSpec, build_calibration
from subcoder.pruner.config import PruneConfig
from subcoder.pruner.evaluation.perplexity import file_windows, window_losses
from subcoder.pruner.evaluation.stats import cluster_bootstrap, paired_bootstrap
from subcoder.pruner.loaded import resolve_dtype
from subcoder.pruner.loader import load_model
from subcoder.pruner.presets import DEFAULT_PRESET
from subcoder.pruner.prune import prune_model


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def heldout_score(model, windows: list[dict], pad_id: int, batch_size: int) -> dict:
    """Perplexity over the windows and its 95% interval, resampling held-out files; the per-window
    mean losses are kept so that any two rows can be compared paired, window by window."""
    losses = window_losses(model, [w["ids"] for w in windows], batch_size=batch_size, pad_id=pad_id)
    per_token = [s / c for s, c in losses]
    interval = cluster_bootstrap(per_token, [w["file"] for w in windows], weights=[c for _, c in losses])
    return {"ppl": round(math.exp(interval.estimate), 3), "ppl_low": round(math.exp(interval.low), 3),
            "ppl_high": round(math.exp(interval.high), 3), "tokens": sum(c for _, c in losses),
            "files": len({w["file"] for w in windows}), "window_nll": [round(x, 5) for x in per_token],
            "window_tokens": [c for _, c in losses]}


def paired_ratio(row: dict, reference: dict, files: list) -> tuple[float, float, float]:
    """Perplexity ratio row / reference on the same windows, 95% interval resampling files."""
    diff = paired_bootstrap(row["window_nll"], reference["window_nll"], files, weights=row["window_tokens"])
    return math.exp(diff.estimate), math.exp(diff.low), math.exp(diff.high)


def _label(cfg) -> str:
    if isinstance(cfg, str):
        return cfg
    fim = f", FIM {cfg['fim']:.0%}" if cfg.get("fim") else ""
    return f"{cfg['sampling']} {cfg['n_samples']} x {cfg['seq_len']}{fim}, seed {cfg['seed']}"


def report(result: dict, reference: dict | None) -> str:
    """A markdown table: each row's perplexity, its ratio to the reference calibration, and its cost."""
    rows = result["rows"]
    files = result["window_files"]
    ref = next((r for r in rows if r["config"] == reference), None) if reference else None
    lines = [f"Model `{result['model']}`, {result['language']}, {result['sparsity']:.0%} unstructured Wanda, "
             f"{result['threads']} threads, dtype {result['dtype']}. Held-out: {result['eval_windows']} windows of "
             f"{result['eval_seq_len']} tokens from {len(set(files))} files. Intervals 95%, bootstrap over held-out "
             f"files; the ratio is paired window by window against " + (f"**{_label(reference)}**" if ref else "–") + ".",
             "", "| calibration | tokens | perplexity | ratio to reference | set s | prune s |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–"
        if ref is not None and r is not ref:
            est, lo, hi = paired_ratio(r, ref, files)
            ratio = f"{est:.3f} [{lo:.3f}, {hi:.3f}]"
        lines.append(f"| {_label(r['config'])} | {r.get('calibration_tokens', '–')} | {r['ppl']:.3f} "
                     f"[{r['ppl_low']:.3f}, {r['ppl_high']:.3f}] | {ratio} | {r.get('calibration_set_s', '–')} | "
                     f"{r.get('prune_s', '–')} |")
    return "\n".join(lines) + "\n"


def configurations(args) -> list[dict]:
    grid = itertools.product(args.samplings, args.samples, args.seq_lens, args.fim, args.seeds)
    return [{"sampling": s, "n_samples": n, "seq_len": L, "fim": f, "seed": seed} for s, n, L, f, seed in grid
            if not (f and s != "files")]  # FIM windows exist only in the files sampler


def run(args, done: dict | None = None, save=lambda result: None) -> dict:
    """`done`: an earlier run's result for the same model, language, source and sparsity, whose rows
    are kept (a long grid resumes); `save(result)` is called after every row."""
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    loaded = load_model(args.model, dtype=dtype, sparse=False)  # pruning hooks torch's nn.Linear
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    windows = file_windows(tok, args.language, n_windows=args.eval_windows, seq_len=args.eval_seq_len)
    result = {"model": args.model, "language": args.language, "source": args.source, "sparsity": args.sparsity,
              "dtype": dtype, "threads": args.threads, "eval_seq_len": args.eval_seq_len,
              "eval_windows": len(windows), "window_files": [w["file"] for w in windows], "rows": []}
    kept = {json.dumps(r["config"], sort_keys=True): r for r in (done or {}).get("rows", [])
            if (done or {}).get("window_files") == result["window_files"]}
    rows = result["rows"]
    rows.extend(kept.values())  # rows of other grids on the same windows stay too
    if json.dumps("dense") not in kept:
        rows.insert(0, {"config": "dense", **heldout_score(loaded.model, windows, pad, args.batch_size)})
        save(result)
    for row in rows:
        _say(args, row)
    for cfg in configurations(args):
        if json.dumps(cfg, sort_keys=True) in kept:
            continue
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
        save(result)
        _say(args, row)
    return result


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
    ap.add_argument("--json", help="write the results here after every row; rows already there are kept "
                    "(a cut-short grid resumes)")
    ap.add_argument("--reference", default="stream,32,512,0,0", metavar="SAMPLING,N,LEN,FIM,SEED",
                    help="the calibration the others are compared with, paired (default: the library's default set)")
    ap.add_argument("--report", metavar="MD", help="write the markdown table here")
    ap.add_argument("--report-only", action="store_true", help="no pruning: the table from --json's rows")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    sampling, n, length, fim, seed = args.reference.split(",")
    reference = {"sampling": sampling, "n_samples": int(n), "seq_len": int(length), "fim": float(fim), "seed": int(seed)}
    done = None
    if args.json and Path(args.json).is_file():
        done = json.loads(Path(args.json).read_text())
        if (done.get("model"), done.get("language"), done.get("source"), done.get("sparsity")) != \
                (args.model, args.language, args.source, args.sparsity):
            done = None  # another experiment's rows: start afresh

    def save(result: dict) -> None:
        if args.json:  # temp file, then rename: a kill mid-write keeps the previous rows
            tmp = Path(args.json + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.json)

    if args.report_only:
        if done is None:
            raise SystemExit("--report-only needs an existing --json of this model, language, source and sparsity")
        result = done
    else:
        result = run(args, done, save)
    text = report(result, reference)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
