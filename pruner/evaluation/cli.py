"""`subcoder eval ...` and `subcoder eval study ...`: argument parsing only; the work is in runner/study."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .runner import DEFAULT_LIMITS, LANGUAGES, METRICS


def _csv(allowed):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {text!r})")
        return items

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="subcoder eval",
        description="Evaluate a model or sub-model per language: held-out perplexity, next-line completion, "
                    "HumanEval-X pass@1 by execution, single-line tasks, HumanEval infilling (FIM models). "
                    "`subcoder eval study --help` runs the study that reproduces arXiv 2501.05248.")
    p.add_argument("--model", required=True, help="preset, model directory, sub-model directory, .gguf file or hub id")
    p.add_argument("--languages", type=_csv(LANGUAGES), default=LANGUAGES, help=f"comma list (default {','.join(LANGUAGES)})")
    p.add_argument("--metrics", type=_csv(METRICS), default=METRICS, help=f"comma list (default {','.join(METRICS)})")
    p.add_argument("--limit", type=_positive, help="tasks per (language, metric) cell; perplexity windows for ppl")
    p.add_argument("--seed", type=int, default=0, help="sampling of tasks and windows (default 0)")
    p.add_argument("--batch-size", type=_positive, default=8, help="generation batch size (default 8)")
    p.add_argument("--max-new-tokens", type=_positive, default=384, help="HumanEval-X body length cap (default 384)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="auto: bfloat16 where the CPU computes it natively, else float32")
    p.add_argument("--no-singleline-exec", action="store_true", help="score single-line tasks by exact match only")
    p.add_argument("--threads", type=_positive, help="torch threads (default: all cores, 1 when the machine is busy)")
    p.add_argument("--out", type=Path, help="results JSON (written after every cell)")
    p.add_argument("--resume", action="store_true", help="keep the cells already in --out and run the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(argv: list[str]) -> int:
    argv = list(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if argv and argv[0] == "study":
        from .study import main as study_main

        return study_main(argv[1:])
    args = eval_parser().parse_args(argv)
    if args.resume and not args.out:
        print("subcoder eval: --resume needs --out", file=sys.stderr)
        return 2
    from subcoder.pruner.errors import SubcoderError

    from .report import eval_table
    from .runner import EvalConfig, evaluate, set_threads

    set_threads(args.threads)

    limits = {m: (args.limit if args.limit else DEFAULT_LIMITS[m]) for m in METRICS}
    cfg = EvalConfig(languages=args.languages, metrics=args.metrics, limits=limits, seed=args.seed,
                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                     singleline_exec=not args.no_singleline_exec)
    try:
        data = evaluate(args.model, cfg, out=args.out, resume=args.resume, progress=not args.no_progress,
                        log_fn=lambda s: print(s, file=sys.stderr))
    except SubcoderError as exc:
        print(f"subcoder eval: {exc}", file=sys.stderr)
        return 1
    print(eval_table(data))
    if args.out:
        print(f"\nresults written to {args.out}")
    return 0
