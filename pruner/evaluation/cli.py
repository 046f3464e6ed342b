"""`subcoder eval ...`, `subcoder eval study ...` and `subcoder eval frontier ...`: argument parsing only;
the work is in runner/study/frontier, the tables and RESULTS.md in report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .runner import DEFAULT_LIMITS, LANGUAGES, METRICS
from .study import PATTERNS, Plan


def _csv(allowed):
    """An argparse type: a comma list of names from `allowed`, duplicates dropped, order kept."""

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


def _floats(text: str) -> tuple[float, ...]:
    vals = tuple(float(x) for x in text.split(",") if x.strip())
    if not vals or not all(0 < v < 1 for v in vals):
        raise argparse.ArgumentTypeError("sparsities must be in (0, 1)")
    return vals


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
        return study_main(argv[1:])
    if argv and argv[0] == "frontier":
        return frontier_main(argv[1:])
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


def study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="subcoder eval study",
        description="Reproduce arXiv 2501.05248 on subcoder's presets: dense / magnitude / Wanda-prose / Wanda per "
                    "language at 50%% unstructured and 2:4, every one evaluated on every language; Jaccard distances "
                    "between masks; a same-language noise control; quality vs sparsity. Writes docs/RESULTS.md and PNGs.")
    p.add_argument("--quick", action="store_true", help="smoke check in minutes: smollm2-135m, small limits")
    p.add_argument("--model", action="append", help="preset(s) to study (repeatable; default both presets)")
    p.add_argument("--languages", type=_csv(LANGUAGES), help="evaluation and calibration languages")
    p.add_argument("--metrics", type=_csv(METRICS), help="metrics of the main matrix")
    p.add_argument("--limit", type=_positive, help="one limit for every metric (tasks, or perplexity windows)")
    for m in METRICS:
        p.add_argument(f"--limit-{m}", type=_positive, help=f"limit for {m} only")
    p.add_argument("--patterns", type=_csv(PATTERNS), help="unstructured,2:4")
    p.add_argument("--pattern-metrics", action="append", metavar="PATTERN=METRICS",
                   help="metrics for one pattern's sub-models, e.g. 2:4=ppl,nextline,humaneval (default 2:4=ppl,nextline; "
                        "'2:4=all' evaluates every metric)")
    p.add_argument("--sweep-sparsities", type=_floats, help="e.g. 0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--sweep-languages", type=_csv(LANGUAGES))
    p.add_argument("--noise-languages", type=_csv(LANGUAGES))
    p.add_argument("--calib-samples", type=_positive, help="calibration windows (default 32 x 512 tokens)")
    p.add_argument("--calib-seq-len", type=_positive, help="tokens per calibration window (default 512)")
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--max-new-tokens", type=_positive)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=_positive, help="torch threads (default: all cores, 1 when the machine is busy)")
    p.add_argument("--docs-dir", type=Path, default=Path("docs"), help="where RESULTS.md and the PNGs go")
    p.add_argument("--work-dir", type=Path, help="per-cell results (default: <cache>/study)")
    return p


def study_plan(args: argparse.Namespace) -> Plan:
    """The plan the arguments ask for: the full or quick plan, narrowed or widened by each option.

    Raises argparse.ArgumentTypeError for a malformed --pattern-metrics."""
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.model:
        plan.models = tuple(dict.fromkeys(args.model))
    for attr in ("languages", "metrics", "patterns", "sweep_sparsities", "sweep_languages", "noise_languages",
                 "batch_size", "max_new_tokens", "seed"):
        if getattr(args, attr) is not None:
            setattr(plan, attr, getattr(args, attr))
    if args.metrics:
        plan.noise_metrics = tuple(m for m in plan.noise_metrics if m in plan.metrics) or plan.metrics[:1]
        plan.sweep_metrics = tuple(m for m in plan.sweep_metrics if m in plan.metrics) or plan.metrics[:1]
    for item in args.pattern_metrics or ():
        pattern, _, names = item.partition("=")
        if pattern not in PATTERNS or not names:
            raise argparse.ArgumentTypeError(f"--pattern-metrics wants PATTERN=METRICS, got {item!r}")
        try:
            chosen = METRICS if names == "all" else _csv(METRICS)(names)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"--pattern-metrics {item}: {exc}") from None
        plan.pattern_metrics = {**plan.pattern_metrics, pattern: chosen}
    if args.calib_samples:
        plan.calib_samples = args.calib_samples
    if args.calib_seq_len:
        plan.calib_seq_len = args.calib_seq_len
    if args.limit:
        plan.limits = {m: args.limit for m in METRICS}
    for m in METRICS:
        if (v := getattr(args, f"limit_{m}")) is not None:
            plan.limits[m] = v
    if args.languages:
        plan.noise_languages = tuple(x for x in plan.noise_languages if x in args.languages) or args.languages[:1]
        plan.sweep_languages = tuple(x for x in plan.sweep_languages if x in args.languages) or args.languages[:1]
    return plan


def study_main(argv: list[str]) -> int:
    from subcoder.pruner import paths
    from subcoder.pruner.errors import SubcoderError

    from .report import write_results
    from .runner import set_threads
    from .study import run_study

    args = study_parser().parse_args(argv)
    set_threads(args.threads)
    try:
        plan = study_plan(args)
    except argparse.ArgumentTypeError as exc:
        print(f"subcoder eval study: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir or (paths.cache_dir() / "study")
    command = "subcoder eval study " + " ".join(argv)
    try:
        study = run_study(plan, work_dir=Path(work), docs_dir=args.docs_dir, command=command.strip())
        write_results(study, args.docs_dir)
    except SubcoderError as exc:
        print(f"subcoder eval study: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.docs_dir / 'RESULTS.md'} in {study['wall_s'] / 60:.1f} min")
    return 0


def frontier_parser() -> argparse.ArgumentParser:
    from .frontier import LAYOUTS, FrontierPlan

    d = FrontierPlan()
    p = argparse.ArgumentParser(
        prog="subcoder eval frontier",
        description="Quality against cost per language on one engine: a base preset dense and its sub-models "
                    "(own-language calibration), next-line exact match and edit similarity in FIM layouts and "
                    "held-out perplexity with 95%% intervals (bootstrap over files), paired tests against dense, "
                    "decode ms/token, memory and disk. Resumable per cell; writes FRONTIER.md and a plot.")
    p.add_argument("--model", default=d.base, help=f"base preset (default {d.base})")
    p.add_argument("--configs", default=",".join(d.configurations),
                   help="comma list: dense, sparsities (0.5 or 50%%), N:M patterns (default dense,0.5,0.3)")
    p.add_argument("--languages", type=_csv(LANGUAGES), default=d.languages, help="comma list (default python)")
    p.add_argument("--layouts", type=_csv(LAYOUTS), default=d.layouts, help="FIM layouts (default psm,spm)")
    p.add_argument("--cells", type=_csv(("cost", "ppl", "nextline")), default=d.cells,
                   help="what to measure (default cost,ppl,nextline)")
    p.add_argument("--tasks", type=_positive, default=d.tasks, help=f"next-line tasks per language (default {d.tasks})")
    p.add_argument("--windows", type=int, default=d.windows, help=f"perplexity windows per language, 0 = all "
                                                                    f"(default {d.windows})")
    p.add_argument("--context-tokens", type=_positive, default=d.context_tokens,
                   help=f"prompt budget (default {d.context_tokens})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=_positive, help="torch threads (default: all cores, 1 when the machine is busy)")
    p.add_argument("--work-dir", type=Path, default=Path("docs/measurements/frontier"), help="per-cell results")
    p.add_argument("--report", type=Path, default=Path("docs/FRONTIER.md"), help="the report (the plot beside it)")
    p.add_argument("--report-only", action="store_true", help="write the report from the cells on disk, measure nothing")
    p.add_argument("--interleave-cost", type=_positive, metavar="ROUNDS",
                   help="measure every configuration's decode cost in one process, in alternating rounds "
                        "(replaces stored cost cells); for a machine whose load changes")
    return p


def frontier_main(argv: list[str]) -> int:
    from subcoder.pruner.errors import SubcoderError

    from .frontier import Configuration, FrontierPlan, interleaved_cost, run_configuration, write_report
    from .runner import set_threads

    args = frontier_parser().parse_args(argv)
    try:
        configs = [Configuration.parse(args.model, c) for c in args.configs.split(",") if c.strip()]
    except ValueError as exc:
        print(f"subcoder eval frontier: --configs: {exc}", file=sys.stderr)
        return 2
    plan = FrontierPlan(base=args.model, configurations=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
                        languages=args.languages, layouts=args.layouts, tasks=args.tasks, windows=args.windows,
                        context_tokens=args.context_tokens, seed=args.seed, cells=args.cells)
    command = "subcoder eval frontier " + " ".join(argv)
    try:
        if not args.report_only:
            set_threads(args.threads)
            if args.interleave_cost:
                interleaved_cost(plan, configs, args.work_dir, rounds=args.interleave_cost)
                plan.cells = tuple(c for c in plan.cells if c != "cost")
            for cfg in configs:
                run_configuration(plan, cfg, args.work_dir, progress=sys.stderr.isatty())
        write_report(plan, args.work_dir, args.report, command=command.strip())
    except SubcoderError as exc:
        print(f"subcoder eval frontier: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.report}")
    return 0
