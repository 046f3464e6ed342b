"""`subcoder eval ...`, `subcoder eval study ...` and `subcoder eval frontier ...`: argument parsing only;
the work is in runner/study/frontier, the tables and RESULTS.md in report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .runner import DEFAULT_LIMITS, LANGUAGES, METRICS
from subcoder.pruner.errors import SubcoderError

from .study import BASELINES, Plan


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


def _shapes(text: str) -> tuple[str, ...]:
    from .study import parse_shape

    try:
        shapes = tuple(dict.fromkeys(parse_shape(x) for x in text.split(",") if x.strip()))
    except (ValueError, SubcoderError) as exc:
        raise argparse.ArgumentTypeError(f"{exc} (shapes: 0.5, 50%, u50 or an N:M pattern such as 2:4)") from None
    if not shapes:
        raise argparse.ArgumentTypeError("name at least one shape, e.g. 0.5,0.3,2:4")
    return shapes


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shard is I/N, e.g. 0/4, not {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text}: I must be 0 to N-1")
    return i, n


def study_parser() -> argparse.ArgumentParser:
    d = Plan()
    p = argparse.ArgumentParser(
        prog="subcoder eval study",
        description="Does calibrating on a language keep it best, and do languages prune distinct weights (arXiv "
                    "2501.05248)? Dense, magnitude and Wanda calibrated on each language, on mixed code and on "
                    "neutral prose, several calibration seeds each, evaluated on every language: perplexity and "
                    "next-line exact match with 95%% intervals over files and seeds, paired tests, the fitted "
                    "language-match effect, per-layer Jaccard bands. Resumable per cell; writes RESULTS.md and PNGs.")
    p.add_argument("--quick", action="store_true", help="smoke check in minutes: smollm2-135m, tiny sizes")
    p.add_argument("--model", action="append", help=f"preset(s) to study (repeatable; default {', '.join(d.models)})")
    p.add_argument("--languages", type=_csv(LANGUAGES), help="calibration and evaluation languages")
    p.add_argument("--baselines", type=_csv(BASELINES), help=f"extra calibration rows (default {','.join(d.baselines)})")
    p.add_argument("--shapes", type=_shapes, help=f"sparsities and patterns (default {','.join(d.shapes)})")
    p.add_argument("--seeds", type=_positive, help=f"calibration draws per row and shape (default {d.seeds})")
    p.add_argument("--task-shapes", type=_shapes, help=f"shapes with next-line cells (default {','.join(d.task_shapes)})")
    p.add_argument("--task-seeds", type=int, help=f"seeds with next-line cells, 0 = none (default {d.task_seeds})")
    p.add_argument("--tasks", type=_positive, help=f"next-line tasks per language (default {d.tasks})")
    p.add_argument("--windows", type=_positive, help=f"perplexity windows per language (default {d.windows})")
    p.add_argument("--seq-len", type=_positive, help=f"tokens per perplexity window (default {d.seq_len})")
    p.add_argument("--context-tokens", type=_positive, help=f"prompt budget (default {d.context_tokens})")
    p.add_argument("--calib-samples", type=_positive, help=f"calibration windows (default {d.calib_samples})")
    p.add_argument("--calib-seq-len", type=_positive, help=f"tokens per calibration window (default {d.calib_seq_len})")
    p.add_argument("--eval-seed", type=int, help="which windows and tasks (default 0)")
    p.add_argument("--no-kernel", action="store_true", help="keep pruned layers dense (slower; same numbers)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where calibration, pruning and evaluation run (default cpu; cuda: pruned layers stay dense)")
    p.add_argument("--threads", type=_positive, help="torch threads (default: all cores, 1 when the machine is busy)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="run only shard I of N (0-based) and write no report: N processes sharing one machine or "
                        "GPU split the variants between them; --report-only afterwards reads all their cells")
    p.add_argument("--evaluate", type=_csv(LANGUAGES), metavar="LANGUAGES",
                   help="measure only these languages' cells this run (every language stays a calibration row); "
                        "the rest are left for a later run")
    p.add_argument("--rebuild-masks", action="store_true",
                   help="build again the language sub-models whose cells were measured on another machine, so "
                        "their Jaccard pairs are measured here")
    p.add_argument("--docs-dir", type=Path, default=Path("docs"), help="where RESULTS.md and the PNGs go")
    p.add_argument("--work-dir", type=Path, default=Path("docs/measurements/study"), help="per-cell results")
    p.add_argument("--report-only", action="store_true", help="write RESULTS.md from the finished cells, run nothing")
    p.add_argument("--later", metavar="TEXT", help="what RESULTS.md says is left for a later run")
    return p


def study_plan(args: argparse.Namespace) -> Plan:
    """The plan the arguments ask for: the full or quick plan, narrowed or widened by each option."""
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.model:
        plan.models = tuple(dict.fromkeys(args.model))
    for attr in ("languages", "baselines", "shapes", "seeds", "task_shapes", "task_seeds", "tasks", "windows",
                 "seq_len", "context_tokens", "calib_samples", "calib_seq_len", "eval_seed"):
        if getattr(args, attr) is not None:
            setattr(plan, attr, getattr(args, attr))
    if args.task_seeds is not None and args.task_seeds < 0:
        raise argparse.ArgumentTypeError("--task-seeds must be 0 or more")
    plan.task_shapes = tuple(s for s in plan.task_shapes if s in plan.shapes)
    plan.kernel = not args.no_kernel
    plan.device = args.device
    return plan


def study_main(argv: list[str]) -> int:
    from .report import write_results
    from .runner import set_threads
    from .study import load_study, run_study

    args = study_parser().parse_args(argv)
    try:
        plan = study_plan(args)
    except argparse.ArgumentTypeError as exc:
        print(f"subcoder eval study: {exc}", file=sys.stderr)
        return 2
    command = ("subcoder eval study " + " ".join(argv)).strip()
    started = time.perf_counter()
    try:
        if args.report_only:
            study = load_study(plan, work_dir=args.work_dir, command=command)
        else:
            set_threads(args.threads)
            study = run_study(plan, work_dir=args.work_dir, command=command, shard=args.shard,
                              rebuild_masks=args.rebuild_masks, evaluate=args.evaluate)
            if study is None:
                print(f"shard {args.shard[0]}/{args.shard[1]} done in {(time.perf_counter() - started) / 60:.1f} min; "
                      f"write the report with --report-only once every shard has finished")
                return 0
        path = write_results(study, args.docs_dir, later=args.later)
    except SubcoderError as exc:
        print(f"subcoder eval study: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def frontier_parser() -> argparse.ArgumentParser:
    from .frontier import LAYOUTS, FrontierPlan

    d = FrontierPlan()
    p = argparse.ArgumentParser(
        prog="subcoder eval frontier",
        description="Quality against cost per language on one engine: a base preset dense and its sub-models "
                    "(own-language calibration), next-line exact match and edit similarity in FIM layouts and "
                    "held-out perplexity with 95%% intervals (bootstrap over files), paired tests against dense, "
                    "decode ms/token and typing-replay latency per machine (kernel instruction set), memory and "
                    "disk. Resumable per cell; writes FRONTIER.md and a plot.")
    p.add_argument("--model", default=d.base, help=f"base preset (default {d.base})")
    p.add_argument("--configs", default=",".join(d.configurations),
                   help="comma list: dense, sparsities (0.5 or 50%%), N:M patterns (default dense,0.5,0.3); "
                        "/CALIBRATION after a sub-model picks its calibration (0.5/files-fim25: "
                        "one window per file, a quarter as FIM prompts); @PRESET after any names another "
                        "base model (0.5@qwen2.5-coder-1.5b)")
    p.add_argument("--languages", type=_csv(LANGUAGES), default=d.languages, help="comma list (default python)")
    p.add_argument("--layouts", type=_csv(LAYOUTS), default=d.layouts, help="FIM layouts (default psm,spm)")
    p.add_argument("--cells", type=_csv(("cost", "ppl", "nextline")),
                   help="what to measure (default cost,ppl,nextline; ppl,nextline with --device cuda)")
    p.add_argument("--tasks", type=_positive, default=d.tasks, help=f"next-line tasks per language (default {d.tasks})")
    p.add_argument("--windows", type=int, default=d.windows, help=f"perplexity windows per language, 0 = all "
                                                                    f"(default {d.windows})")
    p.add_argument("--context-tokens", type=_positive, default=d.context_tokens,
                   help=f"prompt budget (default {d.context_tokens})")
    p.add_argument("--suffix-tokens", type=_positive, help="at most this many tokens of the text after the cursor in "
                   "a FIM prompt (default: an eighth of the prompt budget); use its own --work-dir")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=_positive, help="torch threads (default: all cores, 1 when the machine is busy)")
    p.add_argument("--work-dir", type=Path, default=Path("docs/measurements/frontier"), help="per-cell results")
    p.add_argument("--report", type=Path, help="the report, the plot beside it (default docs/FRONTIER.md; a "
                   "--interleave-cost run writes it only when this is given: its group is a part of the frontier)")
    p.add_argument("--report-only", action="store_true", help="write the report from the cells on disk, measure nothing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where sub-models are built and quality cells (ppl, nextline) run (default cpu; cuda: "
                        "pruned layers stay dense, int8 values are rounded into the weights; cost cells are "
                        "measured on the CPU only)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="run only shard I of N (0-based) of the (configuration, language) units and write no "
                        "report: N processes sharing one machine or GPU; --report-only afterwards reads all cells")
    p.add_argument("--interleave-cost", type=_positive, metavar="ROUNDS",
                   help="measure every configuration's decode cost and typing replay in one process, in "
                        "alternating rounds (replaces this machine's stored cost cells; holds every model at "
                        "once); for a machine whose load changes")
    return p


def frontier_main(argv: list[str]) -> int:
    from subcoder.pruner.errors import SubcoderError

    from .frontier import Configuration, FrontierPlan, interleaved_cost, run_configuration, shard_units, write_report
    from .runner import set_threads

    args = frontier_parser().parse_args(argv)
    try:
        configs = [Configuration.parse(args.model, c) for c in args.configs.split(",") if c.strip()]
    except ValueError as exc:
        print(f"subcoder eval frontier: --configs: {exc}", file=sys.stderr)
        return 2
    cells = args.cells or tuple(c for c in FrontierPlan.cells if args.device == "cpu" or c != "cost")
    if args.device != "cpu" and not args.report_only and ("cost" in cells or args.interleave_cost):
        print("subcoder eval frontier: cost is measured on the CPU engine only; with --device cuda ask for "
              "--cells ppl,nextline", file=sys.stderr)
        return 2
    plan = FrontierPlan(base=args.model, configurations=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
                        languages=args.languages, layouts=args.layouts, tasks=args.tasks, windows=args.windows,
                        context_tokens=args.context_tokens, suffix_tokens=args.suffix_tokens, seed=args.seed,
                        cells=cells, device=args.device)
    command = "subcoder eval frontier " + " ".join(argv)
    started = time.perf_counter()
    try:
        if not args.report_only:
            set_threads(args.threads)
            if args.interleave_cost:
                interleaved_cost(plan, configs, args.work_dir, rounds=args.interleave_cost)
                plan.cells = tuple(c for c in plan.cells if c != "cost")
            if args.shard:
                for cfg, language in shard_units(plan, configs, args.work_dir, args.shard):
                    run_configuration(plan, cfg, args.work_dir, progress=False, languages=(language,))
                print(f"shard {args.shard[0]}/{args.shard[1]} done in {(time.perf_counter() - started) / 60:.1f} min; "
                      f"write the report with --report-only once every shard has finished")
                return 0
            for cfg in configs:
                run_configuration(plan, cfg, args.work_dir, progress=sys.stderr.isatty())
            if args.interleave_cost and args.report is None:  # one group's report would replace the whole one
                print(f"measured {len(configs)} configurations in {(time.perf_counter() - started) / 60:.1f} min; "
                      "write the report with --report-only and every configuration's --configs")
                return 0
        report = args.report or Path("docs/FRONTIER.md")
        write_report(plan, args.work_dir, report, command=command.strip())
    except SubcoderError as exc:
        print(f"subcoder eval frontier: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report}")
    return 0
