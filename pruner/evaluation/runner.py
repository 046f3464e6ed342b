"""Evaluate one model (base or sub-model) on several languages and metrics; resumable, JSON out.

Every (language, metric) cell is written to the results file as soon as it finishes (atomically),
so `--resume` picks up where an interrupted run stopped, provided the settings are the same.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from subcoder.pruner.languages import HUMANEVAL_LANGUAGES

log = logging.getLogger(__name__)

METRICS = ("ppl", "nextline", "humaneval", "singleline", "infill")
LANGUAGES = HUMANEVAL_LANGUAGES  # the languages every metric has data for (HumanEval-X's)
# Work per cell when no --limit is given: the whole data set, or a size that measures well.
DEFAULT_LIMITS = {"ppl": 32, "nextline": 200, "humaneval": None, "singleline": None, "infill": None}


@dataclass
class EvalConfig:
    languages: tuple[str, ...] = LANGUAGES
    metrics: tuple[str, ...] = METRICS
    limits: dict = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    seed: int = 0
    batch_size: int = 8
    seq_len: int = 512  # perplexity windows
    context_tokens: int = 1024  # prompt budget for generation
    max_new_tokens: int = 384  # HumanEval-X function bodies
    singleline_exec: bool = True  # run tests for single-line tasks (exact match is always computed)
    dtype: str = "auto"  # bfloat16 where the CPU has native bf16 (AVX-512 BF16 / AMX), else float32

    def key(self) -> dict:
        d = asdict(self)
        d["languages"], d["metrics"] = list(self.languages), list(self.metrics)
        return d


def environment() -> dict:
    import torch
    import transformers

    from subcoder.pruner import __version__

    return {"subcoder": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "processor": _cpu_name()}


def gpu_name(device: str) -> dict:
    """{"gpu": its name} for a cell measured on a GPU, {} on the CPU."""
    if device == "cpu":
        return {}
    import torch

    return {"gpu": torch.cuda.get_device_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def set_threads(threads: int | None = None) -> int:
    """Torch intra-op threads. Default: all cores, but 1 when the machine is already busy: on a shared
    2-core box with a load of ~10, two spinning OpenMP threads made a decode step 8-15x *slower* than one."""
    import torch

    if threads is None:
        cpus = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0] >= cpus
        except OSError:
            busy = False
        threads = 1 if busy else cpus
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def pick_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """bf16 is 1.5-3x faster than fp32 on CPUs with native bf16, and several times slower on AVX2-only ones."""
    from ..loaded import resolve_dtype

    return resolve_dtype(dtype, device)


def _atomic_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    tmp.replace(path)


def finish_cell(out: Path, data: dict, started: float) -> dict:
    """A resumable cell is done: its own time recorded, `complete` set, written atomically."""
    data["seconds"] = round(time.perf_counter() - started, 1)
    data["complete"] = True
    _atomic_json(out, data)
    return data


class Bar:
    """A tqdm bar when tqdm is usable, a no-op otherwise; callable with a step count."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, mininterval=2.0,
                                 dynamic_ncols=True)
            except ImportError:
                pass

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _cell_size(metric: str, language: str, cfg: EvalConfig) -> int:
    from . import humaneval as he

    limit = cfg.limits.get(metric)
    full = {"ppl": limit or 32, "nextline": limit or 200,
            "humaneval": len(he.humanevalx_tasks(language)), "singleline": len(he.singleline_tasks(language)),
            "infill": len(he.infilling_tasks())}[metric]
    return min(full, limit) if limit else full


def evaluate(model, cfg: EvalConfig, *, out: Path | None = None, resume: bool = False, label: str | None = None,
             progress: bool = True, log_fn=None) -> dict:
    """Run every requested cell; `model` is a name/path or a LoadedModel."""
    from subcoder.pruner.loaded import LoadedModel
    from subcoder.pruner.loader import load_model

    from . import humaneval as he
    from .decode import BatchGenerator
    from .nextline import nextline
    from .perplexity import perplexity

    name = label or (model.info.name if isinstance(model, LoadedModel) else str(model))
    data = None
    if resume and out and Path(out).is_file():
        data = json.loads(Path(out).read_text())
        if data.get("model") != name or data.get("config") != cfg.key():
            (log_fn or log.warning)(f"{out} holds a run with other settings; starting afresh")
            data = None
    if data is None:
        data = {"model": name, "config": cfg.key(), "environment": environment(), "results": {}}
    todo = [(lang, m) for lang in cfg.languages for m in cfg.metrics
            if not (m == "infill" and lang != "python") and m not in data["results"].get(lang, {})]
    if not todo:
        return data

    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model), dtype=pick_dtype(cfg.dtype), sparse=False)
    data["load_s"] = round(time.perf_counter() - t0, 2)
    data["dtype"] = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    info = loaded.info
    m = info.manifest or {}
    data["model_info"] = {"architecture": info.architecture, "fim": info.fim is not None,
                          "base_hash": info.content_hash[:16], "language": m.get("language"),
                          "method": m.get("method"), "pattern": m.get("pattern"), "sparsity": m.get("sparsity"),
                          "calibration": (m.get("calibration") or {}).get("description")}
    gens: dict[bool, BatchGenerator] = {}

    def gen(fim: bool) -> BatchGenerator:
        if fim not in gens:
            gens[fim] = BatchGenerator(loaded, context_tokens=cfg.context_tokens, use_fim=fim)
        return gens[fim]

    for lang, metric in todo:
        size = _cell_size(metric, lang, cfg)
        bar = Bar(size, f"{name[:28]} {lang} {metric}", enabled=progress)
        started = time.perf_counter()
        lim = cfg.limits.get(metric)
        kw = dict(seed=cfg.seed, batch_size=cfg.batch_size, bar=bar)
        try:
            if metric == "ppl":
                res = perplexity(loaded, lang, n_windows=lim or 32, seq_len=cfg.seq_len, seed=cfg.seed,
                                 batch_size=max(1, cfg.batch_size // 2), bar=bar)
            elif metric == "nextline":
                res = nextline(gen(False), lang, n=lim or 200, **kw)
            elif metric == "humaneval":
                res = he.humaneval_x(gen(False), lang, limit=lim, max_new_tokens=cfg.max_new_tokens, **kw)
            elif metric == "singleline":
                res = he.singleline(gen(True), lang, limit=lim, run_tests=cfg.singleline_exec, **kw)
            elif metric == "infill":
                res = he.infilling(gen(True), limit=lim, **kw)
            else:
                raise ValueError(metric)
        finally:
            bar.close()
        res["seconds"] = round(time.perf_counter() - started, 2)
        data["results"].setdefault(lang, {})[metric] = res
        if log_fn:
            log_fn(f"{name} {lang} {metric}: {summary(res)} ({res['seconds']:.0f} s)")
        if out:
            _atomic_json(out, data)
    return data


def headline(metric: str) -> str:
    return {"ppl": "perplexity", "nextline": "exact_match", "humaneval": "pass@1", "singleline": "exact_match",
            "infill": "pass@1"}[metric]


def summary(res: dict) -> str:
    if res.get("skipped"):
        return f"skipped ({res.get('reason')})"
    parts = []
    for k in ("perplexity", "exact_match", "edit_similarity", "pass@1"):
        if res.get(k) is not None:
            parts.append(f"{k} {res[k]:.3f}" if k == "perplexity" else f"{k} {100 * res[k]:.1f}%")
    if "n" in res:
        parts.append(f"n={res['n']}")
    if isinstance(res.get("execution"), dict) and res["execution"].get("skipped"):
        parts.append(f"execution skipped: {res['execution']['reason']}")
    return ", ".join(parts)
