"""The study: does calibrating Wanda on one language keep that language better (arXiv 2501.05248)?

For each base model: dense; magnitude; Wanda calibrated on prose; Wanda calibrated on each language
— at 50% unstructured and at 2:4 — each evaluated on every language. Plus what the paper did not
run: a noise control (two sub-models of one language from disjoint halves of its calibration
packages) and a quality-vs-sparsity sweep (the language sub-model against the prose one, in its own
language). Sub-models come from `subcoder.pruner.extract.extract` and are cached by key; every evaluation
cell is kept in a results file keyed by its settings, so a re-run only does what is missing.
`report.py` writes RESULTS.md from what `run_study` returns; `cli.py` parses `subcoder eval study`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runner import LANGUAGES, EvalConfig, evaluate, pick_dtype

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
    return re.sub(r"[^A-Za-z0-9_-]+", "", Path(model).name if "/" in model else model.replace(".", "")) or "model"


def run_study(plan: Plan, *, work_dir: Path, docs_dir: Path, command: str) -> dict:
    """Extract and evaluate every variant of every model; the Jaccard heatmaps go to `docs_dir`.

    Returns the study (plan, per-model variants, costs, evaluations, overlaps), which
    `report.write_results` turns into RESULTS.md.
    """
    from subcoder.pruner import paths

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
