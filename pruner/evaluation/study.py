"""The study: does calibrating Wanda on one language keep that language better (arXiv 2501.05248)?

For each base model: dense; magnitude; Wanda calibrated on prose; Wanda calibrated on each language
— at 50% unstructured and at 2:4 — each evaluated on every language. Plus what the paper did not
run: a noise control (two sub-models of one language from disjoint halves of its calibration
packages) and a quality-vs-sparsity sweep (the language sub-model against the prose one, in its own
language). Sub-models come from `subcoder.pruner.extract.extract` and are cached by key; every evaluation
cell is kept in a results file keyed by its settings, so a re-run only does what is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runner import LANGUAGES, METRICS, EvalConfig, evaluate

log = logging.getLogger(__name__)

STUDY_MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")
PATTERNS = ("unstructured", "2:4")


@dataclass
class Plan:
    models: tuple[str, ...] = STUDY_MODELS
    languages: tuple[str, ...] = LANGUAGES
    patterns: tuple[str, ...] = PATTERNS
    sparsity: float = 0.5
    metrics: tuple[str, ...] = ("ppl", "nextline", "humaneval", "singleline", "infill")
    # Metrics per pattern where they differ from `metrics`. At 2:4 these small models lose most of
    # their ability to write working code (measured in the quick study and on the dense-vs-2:4
    # perplexities), so the execution metrics there would cost ~40% of the study for rows of zeros;
    # perplexity and next-line similarity still rank the calibrations. `--pattern-metrics` widens it.
    pattern_metrics: dict = field(default_factory=lambda: {"2:4": ("ppl", "nextline")})
    # Sized so the full study fits a few hours of this 2-core CPU (measured per-unit costs on
    # qwen2.5-coder-0.5b in bf16: ~2 s per 512-token perplexity window, ~1.3 s per next-line task at
    # 512 tokens of context, ~2.5 s per HumanEval-X body, ~1 s per single-line task, ~90 s per
    # sub-model). Perplexity is the low-variance signal; the task rates carry their binomial error
    # in the report. Raise the limits with --limit-* where more hours are available.
    limits: dict = field(default_factory=lambda: {"ppl": 8, "nextline": 16, "humaneval": 12, "singleline": 16,
                                                  "infill": 16})
    max_new_tokens: int = 256
    context_tokens: int = 512
    ppl_seq_len: int = 512
    batch_size: int = 8
    seed: int = 0
    calib_samples: int = 32
    calib_seq_len: int = 512
    noise_languages: tuple[str, ...] = LANGUAGES
    noise_metrics: tuple[str, ...] = ("ppl",)
    sweep_sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    sweep_languages: tuple[str, ...] = ("python",)
    sweep_metrics: tuple[str, ...] = ("ppl",)
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> "Plan":
        return cls(models=("smollm2-135m",), metrics=("ppl", "nextline", "humaneval", "singleline"),
                   patterns=("unstructured",),
                   limits={"ppl": 2, "nextline": 4, "humaneval": 2, "singleline": 4, "infill": 4},
                   max_new_tokens=96, context_tokens=384, ppl_seq_len=256, calib_samples=8, calib_seq_len=256,
                   noise_languages=("python",), noise_metrics=("ppl", "nextline"), sweep_sparsities=(0.3, 0.5, 0.7),
                   sweep_languages=("python",), sweep_metrics=("ppl",), quick=True)


@dataclass
class Variant:
    """One model in the study: the base, or a sub-model to extract."""

    name: str  # row label: dense, magnitude, prose, python, ..., python/h0
    method: str | None = None  # None = the dense base
    language: str = "prose"
    pattern: str = "unstructured"
    sparsity: float = 0.5
    half: int | None = None

    @property
    def key(self) -> str:
        if self.method is None:
            return "dense"
        shape = self.pattern if self.pattern != "unstructured" else f"u{round(self.sparsity * 100)}"
        return f"{self.name}@{shape}"


def variants(plan: Plan) -> dict[str, list[Variant]]:
    """Groups, in the order they run: dense, the main matrix at the first pattern (50% unstructured),
    its noise control and sparsity sweep, then the other patterns -- so that a run cut short has
    answered both claims at the paper's main setting first."""
    mains: dict[str, list[Variant]] = {}
    for pattern in plan.patterns:
        sp = 0.5 if pattern == "2:4" else plan.sparsity
        rows = [Variant("magnitude", "magnitude", "prose", pattern, sp), Variant("prose", "wanda", "prose", pattern, sp)]
        rows += [Variant(lang, "wanda", lang, pattern, sp) for lang in plan.languages]
        mains[f"main:{pattern}"] = rows
    first = next(iter(mains), None)
    groups: dict[str, list[Variant]] = {"dense": [Variant("dense")]}
    if first is not None:
        groups[first] = mains.pop(first)
    groups["noise"] = [Variant(f"{lang}/h{h}", "wanda", lang, "unstructured", plan.sparsity, h)
                       for lang in plan.noise_languages for h in (0, 1)]
    groups["sweep"] = [Variant(name, "wanda", name, "unstructured", s)
                       for s in plan.sweep_sparsities if abs(s - plan.sparsity) > 1e-9
                       for name in dict.fromkeys(("prose", *plan.sweep_languages))]
    groups.update(mains)
    return groups


def metrics_for(plan, pattern: str) -> tuple[str, ...]:
    """The main-matrix metrics evaluated at `pattern` (a Plan, or its dict in a results file)."""
    get = plan.get if isinstance(plan, dict) else lambda k, d=None: getattr(plan, k, d)
    metrics = get("metrics")
    chosen = (get("pattern_metrics") or {}).get(pattern)
    return tuple(m for m in metrics if chosen is None or m in chosen)


def _say(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def extract_variant(model: str, v: Variant, plan: Plan) -> tuple[Path, dict]:
    from subcoder.pruner.calibration import CalibrationSpec
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract

    cfg = PruneConfig(sparsity=v.sparsity, pattern=v.pattern, method=v.method)
    spec = CalibrationSpec(n_samples=plan.calib_samples, seq_len=plan.calib_seq_len, seed=plan.seed, half=v.half)
    t0 = time.perf_counter()
    from .runner import pick_dtype

    res = extract(model, v.language, cfg, spec, dtype=pick_dtype("auto"))
    wall = time.perf_counter() - t0
    cost = {"cached": res.cached, "wall_s": round(wall, 1),
            "extract_s": _extraction_seconds(res.manifest.get("timings") or {}),
            "calibration": (res.manifest.get("calibration") or {}).get("description")}
    return res.path, cost


def _extraction_seconds(timings: dict) -> float | None:
    """The build's own time, also for a cached sub-model: its manifest keeps the parts (the total
    is only known to the process that built it)."""
    if timings.get("total_s") is not None:
        return timings["total_s"]
    parts = [timings[k] for k in ("load_s", "calibration_set_s", "prune_s") if timings.get(k) is not None]
    return round(sum(parts), 1) if parts else None


def _cfg(plan: Plan, languages, metrics) -> EvalConfig:
    return EvalConfig(languages=tuple(languages), metrics=tuple(metrics), limits=dict(plan.limits), seed=plan.seed,
                      batch_size=plan.batch_size, max_new_tokens=plan.max_new_tokens,
                      context_tokens=plan.context_tokens, seq_len=plan.ppl_seq_len)


def _results_file(work: Path, model: str, v: Variant, cfg: EvalConfig, source: str) -> Path:
    digest = hashlib.sha256(json.dumps([cfg.key(), source], sort_keys=True).encode()).hexdigest()[:10]
    safe = v.key.replace("/", "-").replace(":", "of").replace("@", "_")
    return work / model_slug(model) / f"{safe}-{digest}.json"


def model_slug(model: str) -> str:
    """A file-name-safe name for a preset or a model directory."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "", Path(model).name if "/" in model else model.replace(".", "")) or "model"


def run_study(plan: Plan, *, work_dir: Path, docs_dir: Path, command: str) -> dict:
    from subcoder.pruner import paths

    from .report import write_results

    started = time.perf_counter()
    study = {"plan": asdict(plan), "command": command, "models": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for model in plan.models:
        m_start = time.perf_counter()
        entry = {"variants": {}, "costs": {}, "evals": {}}
        groups = variants(plan)
        for group, rows in groups.items():
            for v in rows:
                if v.method is None:
                    path = model
                    entry["costs"][v.key] = {"cached": True}
                else:
                    _say(f"{model}: sub-model {v.key} ({v.method}, calibrated on {v.language}"
                         f"{'' if v.half is None else f', half {v.half}'})")
                    p, cost = extract_variant(model, v, plan)
                    path = str(p)
                    entry["costs"][v.key] = cost
                    _say(f"  {'reused from cache' if cost['cached'] else 'extracted'} in {cost['wall_s']:.0f} s: {p}")
                entry["variants"][v.key] = {**asdict(v), "group": group, "path": path}
                if group == "noise":
                    langs, metrics = (v.language,), plan.noise_metrics
                elif group == "sweep":
                    langs, metrics = ((v.language,) if v.language != "prose" else plan.sweep_languages), plan.sweep_metrics
                else:
                    langs, metrics = plan.languages, (plan.metrics if v.method is None else metrics_for(plan, v.pattern))
                cfg = _cfg(plan, langs, metrics)
                out = _results_file(work_dir, model, v, cfg, path if v.method is None else Path(path).name)
                data = evaluate(path, cfg, out=out, resume=True, label=f"{model}:{v.key}",
                                progress=sys.stderr.isatty(), log_fn=_say)
                entry["evals"][v.key] = data
        entry["overlap"] = overlaps(model, entry, plan, docs_dir)
        entry["wall_s"] = round(time.perf_counter() - m_start, 1)
        study["models"][model] = entry
    study["wall_s"] = round(time.perf_counter() - started, 1)
    study["cache_dir"] = str(paths.cache_dir())
    write_results(study, docs_dir)
    return study


def overlaps(model: str, entry: dict, plan: Plan, docs_dir: Path) -> dict:
    """Jaccard distances between the masks of every pruned sub-model (per pattern), with heatmaps."""
    from subcoder.pruner.overlap import compare, heatmap
    from subcoder.pruner.storage import load_masks

    out = {}
    slug = model_slug(model)
    cache: dict[str, dict] = {}

    def masks(key):
        if key not in cache:
            cache[key] = load_masks(Path(entry["variants"][key]["path"]))
        return cache[key]

    for pattern in plan.patterns:
        keys = [v for v, d in entry["variants"].items() if d["group"] == f"main:{pattern}"]
        if pattern == "unstructured":
            keys += [v for v, d in entry["variants"].items() if d["group"] == "noise"]
        pairs = []
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                pairs.append(compare(masks(a), masks(b), entry["variants"][a]["name"], entry["variants"][b]["name"]))
        main = [p for p in pairs if "/" not in p.a and "/" not in p.b]
        png = docs_dir / f"study-{slug}-jaccard-{pattern.replace(':', 'of')}.png"
        if main:
            heatmap(main, png, title=f"{model}, {pattern}: Jaccard distance between kept-weight masks")
        out[pattern] = {"png": png.name if main else None,
                        "pairs": [{"a": p.a, "b": p.b, "model": p.model, "per_layer": p.per_layer,
                                   "per_sublayer": p.per_sublayer} for p in pairs]}
        cache = {k: v for k, v in cache.items() if entry["variants"][k]["group"] == "noise"}
    return out


# --------------------------------------------------------------------------- CLI


def _floats(text: str) -> tuple[float, ...]:
    vals = tuple(float(x) for x in text.split(",") if x.strip())
    if not vals or not all(0 < v < 1 for v in vals):
        raise argparse.ArgumentTypeError("sparsities must be in (0, 1)")
    return vals


def parser() -> argparse.ArgumentParser:
    from .cli import _csv, _positive

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


def main(argv: list[str]) -> int:
    from subcoder.pruner import paths
    from subcoder.pruner.errors import SubcoderError

    args = parser().parse_args(argv)
    from .runner import set_threads

    set_threads(args.threads)
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
    from .cli import _csv

    for item in args.pattern_metrics or ():
        pattern, _, names = item.partition("=")
        if pattern not in PATTERNS or not names:
            print(f"subcoder eval study: --pattern-metrics wants PATTERN=METRICS, got {item!r}", file=sys.stderr)
            return 2
        try:
            chosen = METRICS if names == "all" else _csv(METRICS)(names)
        except argparse.ArgumentTypeError as exc:
            print(f"subcoder eval study: --pattern-metrics {item}: {exc}", file=sys.stderr)
            return 2
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
    work = args.work_dir or (paths.cache_dir() / "study")
    command = "subcoder eval study " + " ".join(argv)
    try:
        study = run_study(plan, work_dir=Path(work), docs_dir=args.docs_dir, command=command.strip())
    except SubcoderError as exc:
        print(f"subcoder eval study: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.docs_dir / 'RESULTS.md'} in {study['wall_s'] / 60:.1f} min")
    return 0
