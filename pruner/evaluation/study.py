"""The study: does calibrating Wanda on one language keep that language best, and do languages prune
distinct regions of the network (arXiv 2501.05248)? Built to decide, so every number has a spread.

Per base model and pruning shape (50% and 30% unstructured, 2:4), the matrix is:

  rows     dense (the reference) and magnitude (no data), once each; Wanda calibrated on each
           language, on mixed code (four languages in equal shares) and on neutral prose (books), each drawn
           `seeds` times (a calibration seed picks other files: CalibrationSpec(seed=k), file-sampled
           where calibration.py offers it)
  columns  the languages evaluated on
  cells    ppl       per-window losses on windows cut file by file from the held-out split
                     (perplexity.file_windows), each window kept with its file
           nextline  single-line next-line completion over tasks spread across the held-out files
                     (nextline.spread_tasks), PSM for models with FIM tokens, the prefix alone
                     otherwise; each task's outcome kept with its file

Task cells run at `task_shapes` for the first `task_seeds` seeds (paired tests compare one sub-model
with another on the same tasks). Every seed's mask enters the Jaccard distances: pairs of one
language's seeds give the within-language band, pairs of two languages the between-language one.

Each cell is a JSON file under the work directory, written atomically (next-line cells every few
tasks), so a run cut short resumes where it stopped; a cell stored with other settings is redone.
Variants run seed-major (every calibration's seed 0 first), so a run cut short has a full matrix at
fewer seeds. `load_study` reads what is on disk; `report.py` turns it into intervals, verdicts,
figures and RESULTS.md; `cli.py` parses `subcoder eval study`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .runner import LANGUAGES, Bar, _atomic_json, environment, finish_cell, gpu_name, pick_dtype

STUDY_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
MIXED, PROSE = "mixed-code", "prose"
BASELINES = (MIXED, PROSE)
# calibration.py's source for each baseline row: "prose" is neutral English prose (public-domain books,
# corpora/SOURCES.md), not the Python documentation the corpus language "prose" holds.
BASELINE_SOURCES = {MIXED: "mixed-code", PROSE: "literature"}
SHAPES = ("u50", "2:4", "u30")
# Dense next-line exact match below this: the language's task cells say nothing about calibrations (50%
# sub-models of smollm2-135m score 0/100 where dense scores 5/100), so they are left out of the counts
# instead of being called ties, and not run.
FLOOR = 0.10
PATTERNS = ("unstructured", "2:4")  # what `--patterns` accepted before shapes; kept for old scripts


def parse_shape(text: str) -> str:
    """`u50`, `50%`, `0.5` (unstructured) or an N:M pattern, as the canonical `u50` / `2:4`."""
    text = text.strip()
    if ":" in text:
        from subcoder.pruner.config import Pattern

        Pattern.parse(text)
        return text
    percent = text.startswith("u") or text.endswith("%")
    try:
        value = float(text.strip("u%")) / (100 if percent else 1)
    except ValueError:
        raise ValueError(f"not a sparsity or N:M pattern: {text!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {text!r}")
    return f"u{round(value * 100)}"


def shape_config(shape: str) -> tuple[str, float]:
    """(pattern, sparsity) of a canonical shape; N:M patterns prune half."""
    return ("unstructured", int(shape[1:]) / 100) if shape.startswith("u") else (shape, 0.5)


@dataclass
class Plan:
    models: tuple[str, ...] = STUDY_MODELS
    languages: tuple[str, ...] = LANGUAGES
    baselines: tuple[str, ...] = BASELINES
    shapes: tuple[str, ...] = SHAPES
    seeds: int = 5  # calibration draws per (calibration, shape)
    # Task cells: 300 tasks detect a ~7-point exact-match difference at typical discordance (stats.py's
    # MDE); they run for one seed, as paired tests need one sub-model per side.
    task_shapes: tuple[str, ...] = ("u50", "u30")
    task_seeds: int = 1
    tasks: int = 300
    windows: int = 64  # perplexity windows per language, cut file by file, round-robin over the files
    seq_len: int = 512
    context_tokens: int = 512
    max_new_tokens: int = 48
    calib_samples: int = 32
    calib_seq_len: int = 512
    eval_seed: int = 0  # which windows and tasks; the same for every sub-model
    kernel: bool = True  # sub-models on the sparse kernel where the machine runs it (speed only)
    # Where calibration, pruning and evaluation run. Not part of a cell's settings: a GPU gives the same
    # masks and losses up to bf16 rounding, and each cell records the device it ran on.
    device: str = "cpu"
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(models=("smollm2-135m",), shapes=("u50",), seeds=2, task_shapes=("u50",), tasks=20, windows=8,
                   seq_len=256, context_tokens=256, calib_samples=8, calib_seq_len=256, quick=True)

    def calibrations(self) -> tuple[str, ...]:
        return (*self.languages, *self.baselines)

    def calib_settings(self, sampling: str) -> dict:
        return {"samples": self.calib_samples, "seq_len": self.calib_seq_len, "sampling": sampling}

    def settings(self, metric: str, sampling: str | None) -> dict:
        """What a cell depends on besides its sub-model's name: a stored cell with others is redone. Not the
        number of windows or tasks: the first n of a larger draw are the draw for n, so a cell grows."""
        common = {"eval_seed": self.eval_seed, "calibration": self.calib_settings(sampling) if sampling else None}
        if metric == "ppl":
            return {**common, "seq_len": self.seq_len}
        return {**common, "context_tokens": self.context_tokens, "max_new_tokens": self.max_new_tokens}


@dataclass(frozen=True)
class Variant:
    calibration: str  # a language, mixed-code or prose; "dense"; "magnitude"
    shape: str = ""
    seed: int = 0

    @property
    def key(self) -> str:
        if self.calibration == "dense":
            return "dense"
        if self.calibration == "magnitude":
            return f"magnitude-{self.shape}"
        return f"{self.calibration}-{self.shape}-s{self.seed}"

    @property
    def method(self) -> str | None:
        return {"dense": None, "magnitude": "magnitude"}.get(self.calibration, "wanda")


def variants(plan: Plan) -> list[Variant]:
    """Dense, then per shape: magnitude and every calibration, seed by seed (seed 0 of all first)."""
    out = [Variant("dense")]
    for shape in plan.shapes:
        out.append(Variant("magnitude", shape))
        out += [Variant(c, shape, s) for s in range(plan.seeds) for c in plan.calibrations()]
    return out


def metrics_of(plan: Plan, v: Variant) -> tuple[str, ...]:
    # dense next-line cells are the reference of the sub-models' ones: with no sub-model task cells
    # wanted (--task-seeds 0), none run (a perplexity-only pass, e.g. on a GPU)
    wanted = plan.task_seeds > 0 and bool(plan.task_shapes)
    tasks = wanted and (v.method is None or (v.shape in plan.task_shapes and v.seed < plan.task_seeds))
    return ("ppl", "nextline") if tasks else ("ppl",)


def model_slug(model: str) -> str:
    """A file-name-safe name for a preset or a model directory."""
    return re.sub(r"[^A-Za-z0-9_-]+", "", Path(model).name if "/" in model else model.replace(".", "")) or "model"


def _say(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- calibration


def sampling_available() -> str:
    """"files" where calibration.py samples one window per file, else "stream" (its older default)."""
    from subcoder.pruner.calibration import CalibrationSpec

    return "files" if "sampling" in {f.name for f in dataclasses.fields(CalibrationSpec)} else "stream"


def baseline_available(name: str) -> bool:
    """Whether this checkout's calibration.py has the source a baseline row needs."""
    from subcoder.pruner import calibration

    return BASELINE_SOURCES[name] in getattr(calibration, "STUDY_SOURCES", ())


def calibration_for(plan: Plan, v: Variant, sampling: str):
    """(language argument of `extract`, CalibrationSpec) for a Wanda variant. A baseline's sub-model is
    named after the first study language (extract wants one); its windows do not depend on it."""
    from subcoder.pruner.calibration import CalibrationSpec

    kw = {"n_samples": plan.calib_samples, "seq_len": plan.calib_seq_len, "seed": v.seed}
    if sampling == "files":
        kw["sampling"] = "files"
    if v.calibration in BASELINE_SOURCES:
        return plan.languages[0], CalibrationSpec(source=BASELINE_SOURCES[v.calibration], **kw)
    return v.calibration, CalibrationSpec(**kw)


def submodel(model: str, plan: Plan, v: Variant, work: Path, sampling: str) -> dict:
    """The sub-model of a variant (built on first use, then remembered beside its cells): path, what it
    was calibrated on, and what the build cost."""
    meta_file = work / model_slug(model) / v.key / "submodel.json"
    settings = plan.calib_settings(sampling) if v.method == "wanda" else None
    if v.method is None:
        return {"path": model, "described": None, "settings": None}
    meta = _read(meta_file)
    if meta and meta.get("settings") == settings and Path(meta["path"]).is_dir():
        return meta
    from subcoder.pruner.calibration import CalibrationSpec
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract

    pattern, sparsity = shape_config(v.shape)
    cfg = PruneConfig(sparsity=sparsity, pattern=pattern, method=v.method)
    language, spec = (PROSE, CalibrationSpec()) if v.method == "magnitude" else calibration_for(plan, v, sampling)
    _say(f"{model}: sub-model {v.key}")
    t0 = time.perf_counter()
    res = extract(model, language, cfg, spec, dtype=pick_dtype("auto", plan.device), device=plan.device)
    timings = res.manifest.get("timings") or {}
    meta = {"path": str(res.path), "settings": settings, "cached": res.cached,
            "described": (res.manifest.get("calibration") or {}).get("description") if v.method == "wanda" else None,
            "extract_s": timings.get("total_s") or round(time.perf_counter() - t0, 1)}
    _atomic_json(meta_file, meta)
    return meta


# --------------------------------------------------------------------------- cells


def cell_file(work: Path, model: str, v: Variant, language: str, metric: str) -> Path:
    return work / model_slug(model) / v.key / f"{language}-{metric}.json"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _stored(path: Path, settings: dict) -> dict | None:
    data = _read(path)
    return data if data and data.get("settings") == settings else None


def _wanted(plan: Plan, metric: str) -> int:
    return plan.windows if metric == "ppl" else plan.tasks


def dense_at_floor(model: str, plan: Plan, language: str, work: Path) -> bool:
    """Dense scores under FLOOR exact on this language's tasks: its sub-models' task cells would say
    nothing about calibration (the report leaves the language out), so they are not run."""
    data = _stored(cell_file(work, model, Variant("dense"), language, "nextline"), plan.settings("nextline", None))
    if not _done(data, plan, "nextline"):
        return False
    results = data["results"][:plan.tasks]
    return sum(r["exact"] for r in results) < FLOOR * len(results)


def _done(data: dict | None, plan: Plan, metric: str) -> bool:
    if not data or not data.get("complete"):
        return False
    items = data.get("windows" if metric == "ppl" else "results") or []
    # a split smaller than asked for is done when it has all it has
    return len(items) >= _wanted(plan, metric) or data.get("exhausted", False)


def _readable(data: dict | None, plan: Plan, metric: str) -> bool:
    """What the report reads: a done cell, or a finished task cell with fewer tasks than the plan asks
    (the report prints n): one plan reads both models, whose task runs may have asked for different
    numbers. Runs still grow such a cell (`_done`)."""
    return _done(data, plan, metric) or bool(metric == "nextline" and data and data.get("complete"))


def cell_settings(plan: Plan, v: Variant, sampling: str) -> dict[str, dict]:
    """What each metric's cells of `v` depend on (a stored cell with other settings is redone)."""
    return {m: plan.settings(m, sampling if v.method == "wanda" else None) for m in ("ppl", "nextline")}


def missing_cells(model: str, plan: Plan, v: Variant, work: Path, sampling: str,
                  languages: tuple[str, ...]) -> list[tuple[str, str, dict | None]]:
    """(language, metric, what is stored of it) for each cell of `v` still to measure in `languages`."""
    settings = cell_settings(plan, v, sampling)
    todo = []
    for lang in languages:
        for metric in metrics_of(plan, v):
            if metric == "nextline" and v.method is not None and dense_at_floor(model, plan, lang, work):
                continue
            stored = _stored(cell_file(work, model, v, lang, metric), settings[metric])
            if not _done(stored, plan, metric):
                todo.append((lang, metric, stored))
    return todo


def run_variant(model: str, plan: Plan, v: Variant, work: Path, sampling: str, *, inputs: dict,
                progress: bool = False, languages: tuple[str, ...] | None = None) -> None:
    """Every missing cell of one variant, in every language (or those named); loads the model once."""
    settings = cell_settings(plan, v, sampling)
    todo = missing_cells(model, plan, v, work, sampling, languages or plan.languages)
    if not todo:
        return
    meta = submodel(model, plan, v, work, sampling)
    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.loader import load_model

    from .nextline import score
    from .perplexity import window_losses

    # the sparse kernel is a CPU kernel: on a GPU the pruned layers stay dense (masked weights, same numbers)
    kernel = plan.kernel and plan.device == "cpu"
    loaded = load_model(meta["path"], dtype=pick_dtype("auto", plan.device), device=plan.device,
                        sparse=None if kernel else False)
    tok = loaded.tokenizer
    layout = "psm" if loaded.info.fim is not None else "prefix"
    completer = None
    if any(metric == "nextline" for _, metric, _ in todo):  # the engine is built only where tasks need it
        completer = Completer(loaded, context_tokens=plan.context_tokens, fim_order="psm")
    for lang, metric, stored in todo:
        out = cell_file(work, model, v, lang, metric)
        data = {"variant": v.key, "model": model, "language": lang, "metric": metric, "settings": settings[metric],
                "submodel": meta["path"], "described": meta.get("described"),
                "environment": {**environment(), "device": plan.device, **gpu_name(plan.device)},
                "complete": False}
        started = time.perf_counter()
        if metric == "ppl":
            windows = inputs.setdefault(("ppl", lang), _windows(tok, plan, lang))
            bar = Bar(len(windows), f"{v.key} {lang} ppl", enabled=progress)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            losses = window_losses(loaded.model, [w["ids"] for w in windows], batch_size=2, pad_id=pad, bar=bar)
            bar.close()
            data["windows"] = [{"file": w["file"], "nll": round(s, 4), "tokens": c} for w, (s, c) in zip(windows, losses)]
            data["exhausted"] = len(windows) < plan.windows
        else:
            items = inputs.setdefault(("nextline", lang), _tasks(plan, lang))
            data["layout"] = layout
            data["exhausted"] = len(items) < plan.tasks
            bar = Bar(len(items), f"{v.key} {lang} nextline", enabled=progress)

            def save(results, data=data, out=out):
                data["results"] = results
                _atomic_json(out, data)

            suffix_of = (lambda s: s) if layout == "psm" else (lambda s: "")
            data["results"] = score(
                lambda p, s: completer.complete(p, suffix_of(s), max_new_tokens=plan.max_new_tokens,
                                                mode="single-line").text,
                items, layout=layout, done=(stored or {}).get("results"), save=save, bar=bar)
            bar.close()
        finish_cell(out, data, started)
        _say(f"{v.key} {lang} {metric}: {cell_summary(data)} ({data['seconds']:.0f} s)")


def _windows(tok, plan: Plan, lang: str) -> list[dict]:
    from .perplexity import file_windows

    return file_windows(tok, lang, n_windows=plan.windows, seq_len=plan.seq_len, seed=plan.eval_seed)


def _tasks(plan: Plan, lang: str) -> list[dict]:
    from .nextline import spread_tasks

    return spread_tasks(lang, plan.tasks, plan.eval_seed)


def cell_summary(data: dict) -> str:
    import math

    if data["metric"] == "ppl":
        w = data["windows"]
        return (f"perplexity {math.exp(sum(x['nll'] for x in w) / max(sum(x['tokens'] for x in w), 1)):.3f} over "
                f"{len(w)} windows from {len({x['file'] for x in w})} files")
    res = data["results"]
    return f"exact {sum(r['exact'] for r in res)}/{len(res)} ({data.get('layout')})"


# --------------------------------------------------------------------------- masks


def _same_submodels(pair: dict, a: dict, b: dict) -> bool:
    """Whether a stored pair measured these sub-models: the same directories, or (a sub-model built again
    on another machine, whose cache key differs) the same calibration settings, which are what the mask
    depends on besides bf16 rounding. Pairs stored before settings were recorded match by path only."""
    if pair.get("paths") == [a["path"], b["path"]]:
        return True
    return pair.get("settings") is not None and pair["settings"] == [a.get("settings"), b.get("settings")]


def jaccard_pairs(model: str, plan: Plan, shape: str, work: Path, metas: dict[str, dict]) -> list[dict]:
    """Per-layer Jaccard distances between every pair of one shape's language sub-models (all seeds),
    each pair computed once and kept in the work directory. A pair whose sub-models are neither stored
    in the work directory's Jaccard file nor on this machine is left out."""
    from subcoder.pruner.overlap import compare
    from subcoder.pruner.storage import load_mask_words

    keys = [k for k, m in metas.items() if m["shape"] == shape and m["calibration"] in plan.languages]
    store = work / model_slug(model) / f"jaccard-{shape.replace(':', 'of')}.json"
    known = {(p["a"], p["b"]): p for p in (_read(store) or {}).get("pairs", [])}
    masks: dict[str, dict] = {}
    pairs = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            p = known.get((a, b))
            if p is not None and not _same_submodels(p, metas[a], metas[b]):
                p = None
            if p is None:
                if not all(Path(metas[k]["path"]).is_dir() for k in (a, b)):
                    continue  # built on another machine (a lent GPU) and not stored here: the pair is not measured
                for k in (a, b):
                    if k not in masks:  # stored words: a 0.5B pair counts in 0.05 s, twenty masks fit in memory
                        masks[k] = load_mask_words(Path(metas[k]["path"]))
                d = compare(masks[a], masks[b], a, b)
                p = {"a": a, "b": b, "paths": [metas[a]["path"], metas[b]["path"]],
                     "settings": [metas[a].get("settings"), metas[b].get("settings")], "model": d.model,
                     "per_layer": {str(k): v for k, v in d.per_layer.items()}}
                known[(a, b)] = p
                _atomic_json(store, {"pairs": list(known.values())})
            pairs.append({**p, "a_calibration": metas[a]["calibration"], "b_calibration": metas[b]["calibration"]})
        masks.pop(a, None)  # later pairs never need it again
    return pairs


# --------------------------------------------------------------------------- the run


def shard_of(plan: Plan, vs: list[Variant], shard: tuple[int, int],
             pending: Callable[[Variant, tuple[str, ...]], bool] | None = None) -> list[tuple[Variant, tuple[str, ...]]]:
    """Shard i of n, as (variant, evaluated languages) units. A variant with task cells (minutes per
    language) is split into one unit per language and these are dealt round-robin first; the others
    (seconds) follow whole, so n processes sharing one GPU finish at about the same time. Units of one
    variant land in different shards, and each builds the sub-model unless an earlier pass has: run the
    perplexity-only pass (`task_seeds` 0) first. With `pending`, only units it says have cells still to
    measure are dealt, so a resumed run's shards share the work left rather than the work done."""
    i, n = shard
    heavy = [(v, (lang,)) for v in vs if "nextline" in metrics_of(plan, v) for lang in plan.languages]
    light = [(v, plan.languages) for v in vs if "nextline" not in metrics_of(plan, v)]
    units = [u for u in heavy + light if pending is None or pending(*u)]
    return [u for k, u in enumerate(units) if k % n == i]


def run_study(plan: Plan, *, work_dir: Path, command: str, progress: bool | None = None,
              shard: tuple[int, int] | None = None, rebuild_masks: bool = False,
              evaluate: tuple[str, ...] | None = None) -> dict | None:
    """Every missing cell of every model; then the study as `load_study` reads it. With `shard` (i, n), only
    that shard's variants run and nothing is read back (the shards' cells meet in the work directory, and
    `--report-only` writes the report once all have finished). With `rebuild_masks`, a language sub-model
    whose cells were measured elsewhere (its directory is not on this machine) is built again here, so its
    Jaccard pairs are measured: same calibration seed, same mask up to bf16 rounding. With `evaluate`, only
    those languages' cells are measured (every language is still a calibration row)."""
    progress = sys.stderr.isatty() if progress is None else progress
    sampling = sampling_available()
    work = Path(work_dir)
    for model in plan.models:
        inputs: dict = {}
        todo = [v for v in variants(plan) if v.calibration not in plan.baselines or baseline_available(v.calibration)]
        # with masks to rebuild, every language variant is work, whatever its cells
        pending = None if rebuild_masks else (
            lambda v, langs, model=model: bool(missing_cells(model, plan, v, work, sampling, langs)))
        for v, languages in shard_of(plan, todo, shard, pending) if shard else [(v, plan.languages) for v in todo]:
            if evaluate:
                languages = tuple(lang for lang in languages if lang in evaluate)
            if languages:
                run_variant(model, plan, v, work, sampling, inputs=inputs, progress=progress, languages=languages)
            if rebuild_masks and v.calibration in plan.languages:
                submodel(model, plan, v, work, sampling)
    if shard:
        return None
    return load_study(plan, work_dir=work_dir, command=command, masks=True)


def load_study(plan: Plan, *, work_dir: Path, command: str, masks: bool = True) -> dict:
    """The finished cells on disk under the plan's settings (a cell cut short is left out), the sub-models
    behind them and, with `masks`, the Jaccard pairs of the sub-models there are."""
    work = Path(work_dir)
    sampling = sampling_available()
    study = {"plan": asdict(plan), "command": command, "sampling": sampling,
             "unavailable": [b for b in plan.baselines if not baseline_available(b)], "models": {}}
    for model in plan.models:
        entry: dict = {"variants": {}, "cells": {}, "jaccard": {}}
        for v in variants(plan):
            meta = _read(work / model_slug(model) / v.key / "submodel.json") if v.method else {"path": model}
            cells = {}
            for lang in plan.languages:
                for metric in metrics_of(plan, v):
                    data = _stored(cell_file(work, model, v, lang, metric),
                                   plan.settings(metric, sampling if v.method == "wanda" else None))
                    if _readable(data, plan, metric):
                        key = "windows" if metric == "ppl" else "results"
                        cells.setdefault(lang, {})[metric] = {**data, key: data[key][:_wanted(plan, metric)]}
            if cells and meta:
                entry["variants"][v.key] = {**asdict(v), "method": v.method, **meta}
                entry["cells"][v.key] = cells
        if masks:
            for shape in plan.shapes:
                pairs = jaccard_pairs(model, plan, shape, work, entry["variants"])
                if pairs:
                    entry["jaccard"][shape] = pairs
        study["models"][model] = entry
    return study
