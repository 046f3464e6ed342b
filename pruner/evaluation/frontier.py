"""The frontier: each configuration's quality against its cost, per language, on one engine.

A configuration is a base preset dense, or one of its Wanda sub-models (own-language calibration)
at a sparsity and pattern. For each configuration and language, the cells are:

  ppl          held-out perplexity over windows cut file by file (perplexity.file_windows),
               per-window losses kept
  nextline:L   next-line completion in FIM layout L (psm, spm) over tasks spread across the
               held-out files (nextline.spread_tasks), each task's result kept with its file
  cost-ISA     (per configuration and machine) decode ms/token, the typing replay's request latency
               (replay.py), resident memory, weight and disk bytes; one cell per kernel instruction set
               (avx512-bf16, avx2, none), since the same configuration costs differently on each and
               both paths ship

Every configuration runs on the same engine, `subcoder.pruner.engine.completer.Completer` (the loader
puts a dense model's linears on the kernel's dense bf16 layer, as a sub-model's pruned ones are on
the packed layer), so the differences are the weights and nothing else. Each cell is a JSON file under
the work directory, written atomically and every few tasks, so a run resumes where it stopped.
`summarize` (pure) turns the cells into intervals and paired tests against the dense model
(stats.py); `write_report` writes docs/FRONTIER.md and the plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from subcoder.pruner import paths

from . import stats, text
from .runner import Bar, _atomic_json, environment, gpu_name, pick_dtype

log = logging.getLogger(__name__)

LAYOUTS = ("psm", "spm")


@dataclass(frozen=True)
class Configuration:
    base: str
    sparsity: float = 0.0  # 0: the dense base model
    pattern: str = "unstructured"
    foreign: bool = False  # the base is not the plan's: the frontier's question is a bigger model pruned
    calibration: str = ""  # "" = the default calibration; else CALIBRATION_HELP's words joined by "-"
    values: str = "bf16"  # "int8": kept values (or a dense model's weights) as int8 with per-row scales

    @property
    def dense(self) -> bool:
        return self.sparsity == 0 and self.pattern == "unstructured"

    @property
    def spec(self) -> str:
        values = "" if self.values == "bf16" else f"+{self.values}"
        if self.dense:
            return f"dense{values}"
        spec = (self.pattern if self.pattern != "unstructured" else f"u{round(self.sparsity * 100)}") + values
        return f"{spec}/{self.calibration}" if self.calibration else spec

    def calibration_spec(self):
        """The CalibrationSpec this configuration's sub-models are built with."""
        from subcoder.pruner.calibration import CalibrationSpec

        return CalibrationSpec(**calibration_fields(self.calibration))

    @property
    def name(self) -> str:
        """Unique within a plan: the spec, with the base named when it is not the plan's."""
        return f"{self.spec}@{self.base}" if self.foreign else self.spec

    @classmethod
    def parse(cls, base: str, text: str) -> Configuration:
        """`dense`, a sparsity (`0.5`, `50%`), or an N:M pattern (`2:4`, 50%); then optionally `+int8` (the
        values' format), `/CALIBRATION` (a sub-model's calibration, see `calibration_fields`) and `@PRESET`
        (another base model: `0.5+int8@qwen2.5-coder-1.5b` is the bigger model's 50% sub-model, int8 values)."""
        text = text.strip()
        if "@" in text:
            text, other = (x.strip() for x in text.rsplit("@", 1))
            if not other:
                raise ValueError("nothing after '@': name a base model, e.g. 0.5@qwen2.5-coder-1.5b")
            if other != base:
                return dataclasses.replace(cls.parse(other, text), foreign=True)
        if "/" in text:
            text, calibration = (x.strip() for x in text.split("/", 1))
            if text == "dense":
                raise ValueError("a dense model has no calibration: drop the '/...'")
            calibration_fields(calibration)  # fail early on a word it does not know
            return dataclasses.replace(cls.parse(base, text), calibration=calibration)
        if "+" in text:
            text, values = (x.strip() for x in text.split("+", 1))
            from subcoder.pruner.config import VALUE_FORMATS

            if values not in VALUE_FORMATS:
                raise ValueError(f"values must be one of {', '.join(VALUE_FORMATS)}, not {values!r}")
            return dataclasses.replace(cls.parse(base, text), values=values)
        if text == "dense":
            return cls(base)
        if ":" in text:
            from subcoder.pruner.config import Pattern

            Pattern.parse(text)
            return cls(base, 0.5, text)
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        if not 0 < value < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {text!r}")
        return cls(base, value)


CALIBRATION_HELP = ("files (one window per file), stream (cut from concatenated files), mixed (the four "
                    "languages' code in equal shares instead of the configuration's own language), fimNN (NN%% of "
                    "the windows as FIM prompts), nNN (windows), lenNN (tokens per window)")


def calibration_fields(text: str) -> dict:
    """`files-fim25-n128-len1024` -> CalibrationSpec fields; "" -> {} (the default)."""
    fields: dict = {}
    for word in filter(None, text.split("-")):
        if word in ("files", "stream"):
            fields["sampling"] = word
        elif word == "mixed":
            fields["source"] = "mixed-code"
        elif word.startswith("fim") and word[3:].isdigit():
            fields["fim"] = int(word[3:]) / 100
        elif word.startswith("len") and word[3:].isdigit():
            fields["seq_len"] = int(word[3:])
        elif word.startswith("n") and word[1:].isdigit():
            fields["n_samples"] = int(word[1:])
        else:
            raise ValueError(f"unknown calibration word {word!r}: use {CALIBRATION_HELP % ()}")
    return fields


@dataclass
class FrontierPlan:
    base: str = "qwen2.5-coder-0.5b"
    configurations: tuple[str, ...] = ("dense", "0.5", "0.3")
    languages: tuple[str, ...] = ("python",)
    layouts: tuple[str, ...] = LAYOUTS
    tasks: int = 300  # next-line tasks per language
    windows: int = 64  # perplexity windows per language (None or 0: all)
    seq_len: int = 512
    context_tokens: int = 512  # prompt budget, as the study's; the editor's default is 1024
    suffix_tokens: int | None = None  # suffix budget (None: the engine's share of the prompt budget)
    max_new_tokens: int = 48
    decode_prompts: int = 3  # cost: prompts decoded ...
    decode_tokens: int = 48  # ... this many single-token steps each
    replay_tasks: int = 3  # cost: next-line tasks whose line is typed back (a draw of its own) ...
    replay_every: int = 4  # ... with a request after every this many characters and at the line's end
    seed: int = 0
    cells: tuple[str, ...] = ("cost", "nextline", "ppl")
    # Quality cells may run on a GPU (same weights; pruned layers dense, masked; bf16 arithmetic), each cell
    # recording its device; cost cells are the product's CPU engine and run nowhere else.
    device: str = "cpu"

    def settings(self, cell: str, base: str | None = None) -> dict:
        """What a cell's results depend on: a stored cell with other settings is redone."""
        common = {"seed": self.seed, "base": base or self.base}
        if self.suffix_tokens is not None and cell != "ppl":  # only when set: cells stored before stay valid
            common["suffix_tokens"] = self.suffix_tokens
        if cell == "ppl":
            return {**common, "windows": self.windows, "seq_len": self.seq_len}
        if cell.startswith("nextline"):
            # Not the number of tasks: the first n of a larger draw are the draw for n (spread_tasks),
            # so a cell grows or is cut to the n asked for.
            return {**common, "context_tokens": self.context_tokens, "max_new_tokens": self.max_new_tokens}
        if cell == "replay":
            return {**common, "tasks": self.replay_tasks, "every": self.replay_every,
                    "context_tokens": self.context_tokens, "max_new_tokens": self.max_new_tokens}
        return {**common, "decode_prompts": self.decode_prompts, "decode_tokens": self.decode_tokens,
                "context_tokens": self.context_tokens}


# The machines a cost cell can come from, best first: the kernel's instruction set
# (kernels.native.ISA_NAMES; "none": plain torch), and for AVX-512 whether the CPU also has AMX. The
# kernel itself never uses AMX, but the CPUs that have it (Intel Xeons here) decode at other speeds
# than the AMD EPYCs without it: measured on one, packed int8 rows 2.3-3.5x dense bf16 where an
# EPYC gave 1.4-1.7x (docs/PERFORMANCE.md). Their cells must not overwrite each other.
COST_ISAS = ("avx512-bf16-amx", "avx512-bf16", "avx2", "none")


def engine_isa() -> str:
    """The instruction set the kernel runs here ("none" where it cannot run)."""
    from subcoder.pruner.kernels.native import active_isa

    return active_isa()


def cost_machine() -> str:
    """What this machine's cost cells are keyed by (one of COST_ISAS)."""
    from subcoder.pruner.cpu import machine_kind

    return machine_kind(engine_isa())


def cost_cell(machine: str | None = None) -> str:
    """The cost cell's name on `machine` (one of COST_ISAS; default: this one)."""
    return f"cost-{machine or cost_machine()}"


# --------------------------------------------------------------------------- the engine


def submodel_path(cfg: Configuration, language: str, device: str = "cpu") -> str:
    """The base itself, or the cached sub-model calibrated on `language` (built on first use, on `device`)."""
    if cfg.dense:
        return cfg.base
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract

    res = extract(cfg.base, language, PruneConfig(sparsity=cfg.sparsity, pattern=cfg.pattern, method="wanda",
                                                  values=cfg.values),
                  cfg.calibration_spec(), dtype=pick_dtype("auto", device), device=device)
    return str(res.path)


def dense_kernel_linears(model) -> int:
    """How many linears run on the kernel's dense bf16 layer: the loader puts a dense model's there
    (EngineOptions.dense_kernel), so dense and pruned decode through the same fused step."""
    from subcoder.pruner.kernels.linear import DenseBF16Linear, DenseInt8Linear

    return sum(1 for m in model.modules() if isinstance(m, (DenseBF16Linear, DenseInt8Linear)))


def load_for_engine(path: str, values: str = "bf16", device: str = "cpu"):
    """A model on the engine the server runs; `values` int8 puts a dense model's linears on the kernel's
    int8 layer (a sub-model's format is in its manifest). On a GPU the kernel does not run: pruned layers
    stay dense (masked) and a dense model's int8 values are rounded into its weights (loader)."""
    from subcoder.pruner.engine.options import EngineOptions
    from subcoder.pruner.loader import load_model

    loaded = load_model(path, dtype=pick_dtype("auto", device), device=device,
                        options=EngineOptions.from_env(dense_values=values))
    return loaded, dense_kernel_linears(loaded.model)


def rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def disk_bytes(path: str) -> int:
    from subcoder.pruner.presets import resolve_model

    directory = resolve_model(path)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin"))


def step_bytes(completer) -> int:
    """Weight bytes one decode step reads: every decoder layer's parameters and buffers as held (packed values
    and masks for pruned linears), and the head as the engine reads it (the greedy head's int8 screen where it
    has one, else lm_head). Left out: the embedding (one row per token) and the KV cache (a few MiB at a
    512-token budget)."""
    from subcoder.pruner.kernels import model_bytes
    from subcoder.pruner.layers import decoder_layers

    model = completer.model
    head = getattr(completer.decoder, "head", None)
    rows = getattr(head, "rows", None)
    return model_bytes(decoder_layers(model)[1]) + (rows.nbytes if rows is not None else model_bytes(model.lm_head))


def bandwidth_bound(completer) -> dict:
    """The bytes a step reads, this machine's streaming-read bandwidth (measured now), and the ms/token a
    purely bandwidth-bound step would take: decode at batch 1 cannot beat it, and how close the engine comes
    says whether bytes or work limit it."""
    from subcoder.pruner.cpu import read_bandwidth

    nbytes, bw = step_bytes(completer), read_bandwidth()
    return {"step_bytes": nbytes, "read_gbs": round(bw / 1e9, 1), "bound_ms": round(1000 * nbytes / bw, 2)}


def decode_cost(completer, prompts: list[list[int]], tokens: int) -> dict:
    """Milliseconds per single-token decode step after each prompt (no drafts: the step itself)."""
    return step_summary(decode_steps(completer, prompts, tokens))


def decode_steps(completer, prompts: list[list[int]], tokens: int) -> list[float]:
    import torch

    steps: list[float] = []
    with torch.inference_mode():  # as the Completer decodes: no autograd records (the packed op refuses them)
        for ids in prompts:
            cache = completer.new_cache()
            token = completer.feed(ids, cache)
            for _ in range(tokens):
                t0 = time.perf_counter()
                token = completer.feed([token], cache)
                steps.append((time.perf_counter() - t0) * 1000)
    return steps


def step_summary(steps: list[float]) -> dict:
    steps = sorted(steps)
    return {"ms_per_token": round(statistics.median(steps), 2), "ms_p10": round(steps[len(steps) // 10], 2),
            "ms_p90": round(steps[(9 * len(steps)) // 10], 2), "steps": len(steps)}


def replay_tasks(plan: FrontierPlan, language: str) -> list[dict]:
    """The tasks whose line the cost cells type back: a draw of their own (not the quality tasks' first ones)."""
    from .nextline import spread_tasks

    return spread_tasks(language, plan.replay_tasks, plan.seed + 2)


def replay_cell(plan: FrontierPlan, base: str, requests: list[dict]) -> dict:
    """What a cost cell keeps of its typing replay: the settings, the summary, and every request."""
    from . import replay

    return {"settings": plan.settings("replay", base), **replay.summary(requests), "log": requests}


def _cost_done(plan: FrontierPlan, base: str, stored: dict | None) -> bool:
    return bool(stored and stored.get("complete")
                and (stored.get("replay") or {}).get("settings") == plan.settings("replay", base))


def interleaved_cost(plan: FrontierPlan, configs: list[Configuration], work: Path, *, rounds: int = 4) -> None:
    """Decode cost and typing replay of several configurations in one process, in alternating rounds
    (the order rotated each round; round r replays tasks r, r + rounds, ...), so that a shared machine's
    changing load falls on all of them alike; the resident memory is the one measured in each
    configuration's own process, where there was one. Every model is held at once: mind the memory."""
    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.kernels import model_bytes
    from subcoder.pruner.memory import release_memory

    from . import replay
    from .nextline import spread_tasks

    language = plan.languages[0]
    engines, meta = {}, {}
    for cfg in configs:
        path = submodel_path(cfg, language)
        t0 = time.perf_counter()
        loaded, wrapped = load_for_engine(path, cfg.values)
        c = Completer(loaded, context_tokens=plan.context_tokens, fim_order=LAYOUTS[0], suffix_tokens=plan.suffix_tokens)
        c.warm_up()
        release_memory()  # every model stays loaded: the next one's load buffers must fit beside them
        engines[cfg.name] = c
        meta[cfg.name] = {"model": path, "weight_bytes": model_bytes(loaded.model), "disk_bytes": disk_bytes(path),
                          **bandwidth_bound(c),
                          "load_s": round(time.perf_counter() - t0, 1), "dense_kernel_linears": wrapped,
                          "sparse_kernel": bool(getattr(loaded.info, "sparse_kernel", False))}
        _say(f"cost: {cfg.name} loaded")
    first = next(iter(engines.values()))
    prompts = [list(first.prompt(t["prefix"], t["suffix"]).ids)
               for t in spread_tasks(language, plan.decode_prompts, plan.seed + 1)]
    typing = replay_tasks(plan, language)
    steps: dict[str, list[float]] = {name: [] for name in engines}
    requests: dict[str, list[dict]] = {name: [] for name in engines}
    loads = []
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            steps[name] += decode_steps(engines[name], prompts, plan.decode_tokens // 2)
            requests[name] += replay.replay(engines[name], typing[r::rounds], every=plan.replay_every,
                                            max_new_tokens=plan.max_new_tokens)
        loads.append(os.getloadavg()[0])
    cell, isa = cost_cell(), engine_isa()
    # The machine's speed drifts between groups of rounds, so each cell keeps the dense model's figures from
    # its own rounds: a ratio to that anchor compares across groups, raw milliseconds do not.
    # (no dense model in the rounds: no anchor, and the table falls back on the stored dense cell)
    anchor_figures = {"name": "dense", "ms_per_token": step_summary(steps["dense"])["ms_per_token"],
                      "typing_p50_ms": replay.summary(requests["dense"]).get("p50_ms")} if "dense" in names else None
    for cfg in configs:
        out = _cell_file(work, cfg, language, cell)
        old = _load_cell(out, plan.settings("cost", cfg.base)) or {}
        # One process holds every model here, so the resident memory is the one each measured in its own
        # process before; kept only while the configuration still holds the weights it measured.
        rss = old.get("rss_bytes") if old.get("weight_bytes") == meta[cfg.name].get("weight_bytes") else None
        data = {"configuration": asdict(cfg), "name": cfg.name, "language": language, "cell": cell,
                "settings": plan.settings("cost", cfg.base), "environment": {**environment(), "kernel_isa": isa},
                **meta[cfg.name], **step_summary(steps[cfg.name]),
                "replay": replay_cell(plan, cfg.base, requests[cfg.name]),
                "method": f"interleaved with {', '.join(names)}, {rounds} rounds", "anchor": anchor_figures,
                "rss_bytes": rss, "loadavg": round(statistics.fmean(loads), 1), "complete": True}
        _atomic_json(out, data)
        _say(f"{cfg.name} cost: {cell_summary(data)}")


# --------------------------------------------------------------------------- running cells


def _cell_file(work: Path, cfg: Configuration, language: str, cell: str) -> Path:
    from .study import model_slug

    return work / model_slug(cfg.base) / cfg.spec.replace(":", "of").replace("/", "+") / f"{language}-{cell.replace(':', '-')}.json"


def _load_cell(path: Path, settings: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("settings") == settings else None


def _say(msg: str) -> None:
    print(f"[frontier {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_configuration(plan: FrontierPlan, cfg: Configuration, work: Path, *, progress: bool = True,
                      languages: tuple[str, ...] | None = None) -> None:
    """Every missing cell of one configuration, in every language (or those named); loads each model once."""
    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.kernels import model_bytes
    from subcoder.pruner.memory import release_memory

    from . import replay
    from .nextline import coverage, score, spread_tasks
    from .perplexity import file_windows, window_losses

    for language in languages or plan.languages:
        wanted = missing_cells(plan, cfg, language, work)
        if not wanted:
            continue
        path = submodel_path(cfg, language, plan.device)
        t0 = time.perf_counter()
        loaded, wrapped = load_for_engine(path, cfg.values, plan.device)
        load_s = time.perf_counter() - t0
        _say(f"{cfg.name} {language}: loaded {path} in {load_s:.0f} s"
             + f" ({wrapped} dense linears on the kernel{'' if cfg.dense else ': lm_head'})")
        # one engine per layout a wanted cell uses (each builds its own decoder and greedy-head screen)
        layouts = {name.split(":", 1)[1] if name.startswith("nextline:") else LAYOUTS[0] for name, _ in wanted
                   if name != "ppl"}
        isa = engine_isa()
        completers = {lay: Completer(loaded, context_tokens=plan.context_tokens, fim_order=lay,
                                     suffix_tokens=plan.suffix_tokens) for lay in layouts}
        for name, stored in wanted:
            out = _cell_file(work, cfg, language, name)
            data = {"configuration": asdict(cfg), "name": cfg.name, "language": language, "cell": name,
                    "settings": plan.settings(name, cfg.base), "model": path,
                    "environment": {**environment(), "device": plan.device, **gpu_name(plan.device),
                                    **({"kernel_isa": isa} if name.startswith("cost-") else {})},
                    "complete": False}
            started = time.perf_counter()
            if name.startswith("cost-"):
                c = completers[LAYOUTS[0]]
                c.warm_up()
                prompts = [list(c.prompt(t["prefix"], t["suffix"]).ids)
                           for t in spread_tasks(language, plan.decode_prompts, plan.seed + 1)]
                data.update(decode_cost(c, prompts, plan.decode_tokens))
                data["replay"] = replay_cell(plan, cfg.base, replay.replay(
                    c, replay_tasks(plan, language), every=plan.replay_every, max_new_tokens=plan.max_new_tokens))
                release_memory()  # as the server does once a model is loaded: freed load buffers go back
                data.update({"rss_bytes": rss_bytes(), "weight_bytes": model_bytes(loaded.model),
                             "disk_bytes": disk_bytes(path), "load_s": round(load_s, 1),
                             "dense_kernel_linears": wrapped, "loadavg": os.getloadavg()[0],
                             "sparse_kernel": bool(getattr(loaded.info, "sparse_kernel", False))})
                data.update(bandwidth_bound(c))  # after the RSS: its 1 GiB buffer must not count
            elif name == "ppl":
                tok = loaded.tokenizer
                windows = file_windows(tok, language, n_windows=plan.windows or None, seq_len=plan.seq_len,
                                       seed=plan.seed)
                bar = Bar(len(windows), f"{cfg.name} {language} ppl", enabled=progress)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                losses = window_losses(loaded.model, [w["ids"] for w in windows], batch_size=2, pad_id=pad, bar=bar)
                bar.close()
                data["windows"] = [{"file": w["file"], "nll": round(s, 4), "tokens": c}
                                   for w, (s, c) in zip(windows, losses)]
            else:
                layout = name.split(":", 1)[1]
                items = spread_tasks(language, plan.tasks, plan.seed)
                data["coverage"] = coverage(items)
                c = completers[layout]
                bar = Bar(len(items), f"{cfg.name} {language} {layout}", enabled=progress)

                def save(results, data=data, out=out):
                    data["results"] = results
                    _atomic_json(out, data)

                data["results"] = score(
                    lambda p, s, c=c: c.complete(p, s, max_new_tokens=plan.max_new_tokens, mode="single-line").text,
                    items, layout=layout, done=(stored or {}).get("results"), save=save, bar=bar)
                bar.close()
            data["seconds"] = round(time.perf_counter() - started, 1)
            data["complete"] = True
            _atomic_json(out, data)
            _say(f"{cfg.name} {language} {name}: {cell_summary(data)} ({data['seconds']:.0f} s)")


def missing_cells(plan: FrontierPlan, cfg: Configuration, language: str, work: Path) -> list[tuple[str, dict | None]]:
    """The cells of (cfg, language) still to measure, each with what is stored of it (a cell cut short resumes)."""
    wanted = []
    for cell in plan.cells:
        if cell == "cost":
            # measured with the first language's prompts, on this machine's instruction set
            if language == plan.languages[0]:
                name = cost_cell()
                stored = _load_cell(_cell_file(work, cfg, language, name), plan.settings("cost", cfg.base))
                if not _cost_done(plan, cfg.base, stored):
                    wanted.append((name, None))
            continue
        for name in [f"nextline:{lay}" for lay in plan.layouts] if cell == "nextline" else [cell]:
            stored = _load_cell(_cell_file(work, cfg, language, name), plan.settings(name, cfg.base))
            if stored is None or not stored.get("complete") or len(stored.get("results", ())) < _wanted(plan, name):
                wanted.append((name, stored))
    return wanted


def shard_units(plan: FrontierPlan, configs: list[Configuration], work: Path,
                shard: tuple[int, int]) -> list[tuple[Configuration, str]]:
    """Shard i of n of the (configuration, language) units with cells still to measure, dealt round-robin:
    each unit builds its own sub-model (own-language calibration), so no two shards build the same one."""
    i, n = shard
    units = [(cfg, lang) for cfg in configs for lang in plan.languages if missing_cells(plan, cfg, lang, work)]
    return [u for k, u in enumerate(units) if k % n == i]


def _wanted(plan: FrontierPlan, cell: str) -> int:
    return plan.tasks if cell.startswith("nextline") else 0


def cell_summary(data: dict) -> str:
    if data["cell"].startswith("cost"):
        typing = (data.get("replay") or {}).get("p50_ms")
        return (f"{data['ms_per_token']} ms/token, typing replay p50 {typing} ms, "
                f"weights {data['weight_bytes'] / 2**20:.0f} MiB")
    if data["cell"] == "ppl":
        nll = sum(w["nll"] for w in data["windows"]) / sum(w["tokens"] for w in data["windows"])
        return f"perplexity {2.718281828 ** nll:.3f} over {len(data['windows'])} windows"
    res = data["results"]
    return (f"exact {sum(r['exact'] for r in res)}/{len(res)}, similarity "
            f"{sum(r['similarity'] for r in res) / max(len(res), 1):.3f}")


def load_cells(plan: FrontierPlan, work: Path) -> dict:
    """{language: {configuration name: {cell: data}}} for the cells on disk with the plan's settings: complete
    ones, and next-line cells cut short (their first tasks are a smaller draw of the same kind)."""
    out: dict = {}
    for text in plan.configurations:
        cfg = Configuration.parse(plan.base, text)
        # cost cells are per configuration (the first language's prompts): read once, shown in every language
        costs = {name: data for name in (cost_cell(isa) for isa in COST_ISAS)
                 if (data := _load_cell(_cell_file(work, cfg, plan.languages[0], name),
                                        plan.settings("cost", cfg.base))) is not None and data.get("complete")}
        for language in plan.languages:
            cells = dict(costs)
            for name in ("ppl", *(f"nextline:{lay}" for lay in plan.layouts)):
                data = _load_cell(_cell_file(work, cfg, language, name), plan.settings(name, cfg.base))
                if data is not None and (data.get("complete") or data.get("results")):
                    if "results" in data:
                        data["results"] = data["results"][:plan.tasks]
                    cells[name] = data
            if cells:
                out.setdefault(language, {})[cfg.name] = cells
    return out


# --------------------------------------------------------------------------- statistics (pure)


def _device(cell: dict) -> str:
    """Where a quality cell ran: "cpu", or the GPU's name."""
    env = cell.get("environment") or {}
    return env.get("gpu") or env.get("device") or "cpu"


def _iv(iv: stats.Interval) -> dict:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high}


def own_dense(name: str, present=()) -> str:
    """The dense configuration a row's sub-model was cut from, in the sub-model's value format where `present`
    (the measured rows) has it, so that the pairing shows what the pruning cost and not the quantisation too:
    "u40@Q" -> "dense@Q"; "u40+int8@Q" -> "dense+int8@Q" if measured, else "dense@Q"; "dense+int8@Q" -> "dense@Q"."""
    at = name[name.index("@"):] if "@" in name else ""
    if "+int8" in name and not name.startswith("dense") and f"dense+int8{at}" in present:
        return f"dense+int8{at}"
    return "dense" + at


def _pair_ppl(windows: list[dict], ref_windows: list[dict], seed: int) -> dict | None:
    """Perplexity ratio this / reference over the same windows, bootstrapped over files; None if they differ."""
    import math

    files = [x["file"] for x in windows]
    if [x["file"] for x in ref_windows] != files:
        return None
    per = [x["nll"] / x["tokens"] for x in windows]
    rper = [x["nll"] / x["tokens"] for x in ref_windows]
    d = stats.paired_bootstrap(per, rper, files, weights=[x["tokens"] for x in windows], seed=seed)
    return {"ratio": math.exp(d.estimate), "low": math.exp(d.low), "high": math.exp(d.high)}


def pair_nextline(res: list[dict], rres: list[dict] | None, seed: int) -> dict | None:
    """This minus the reference on the tasks both finished (a common prefix of one draw), or None."""
    n = min(len(res), len(rres or ()))
    if not n or [r["id"] for r in rres[:n]] != [r["id"] for r in res[:n]]:
        return None
    res, rres = res[:n], rres[:n]
    files = [r["file"] for r in res]
    ex, rex = [float(r["exact"]) for r in res], [float(r["exact"]) for r in rres]
    sim, rsim = [r["similarity"] for r in res], [r["similarity"] for r in rres]
    mc = stats.mcnemar_exact([bool(x) for x in ex], [bool(x) for x in rex])
    discordant = (mc.only_a + mc.only_b) / n
    return {"n": n,
            "exact_diff": _iv(stats.paired_bootstrap(ex, rex, files, seed=seed)),
            "similarity_diff": _iv(stats.paired_bootstrap(sim, rsim, files, seed=seed)),
            "only_this": mc.only_a, "only_ref": mc.only_b, "mcnemar_p": mc.p_value,
            # what n paired tasks could detect with this discordance (95%, 80% power)
            "exact_mde": stats.minimum_detectable_effect(n, stats.paired_binary_sd(discordant)),
            "similarity_mde": stats.minimum_detectable_effect(n, statistics.pstdev([a - b for a, b in zip(sim, rsim)]))}


def summarize(cells: dict, *, reference: str = "dense", seed: int = 0) -> dict:
    """Intervals per configuration and paired comparisons per language: against `reference` ("vs_ref") and,
    for a sub-model of another base model, against that model dense ("vs_base": what the pruning cost)."""
    import math

    out: dict = {}
    for language, by_cfg in cells.items():
        # Each configuration's intervals use all the tasks it finished; a comparison uses the tasks both
        # finished (a common prefix: the first n tasks of a draw are the draw for n), so a costly
        # configuration measured on fewer tasks does not cut everyone else's sample.
        rows: dict = {}
        for name, cl in by_cfg.items():
            refs = {} if name == reference else {"ref": by_cfg.get(reference, {})}
            base = own_dense(name, by_cfg)
            if base not in (name, reference) and base in by_cfg:
                refs["base"] = by_cfg[base]
            row: dict = {}
            for cell, data in cl.items():
                if cell.startswith("cost-"):  # {instruction set: figures}
                    typing = data.get("replay") or {}
                    row.setdefault("cost", {})[cell.removeprefix("cost-")] = {
                        **{k: data.get(k) for k in ("ms_per_token", "ms_p10", "ms_p90", "rss_bytes", "weight_bytes",
                                                    "disk_bytes", "loadavg", "method", "step_bytes", "read_gbs",
                                                    "bound_ms", "anchor")},
                        **{f"typing_{k}": typing.get(k) for k in ("p50_ms", "p95_ms", "cold_p50_ms", "extend_p50_ms",
                                                                  "requests", "new_tokens")},
                        "processor": (data.get("environment") or {}).get("processor")}
            if "ppl" in cl:
                w = cl["ppl"]["windows"]
                per = [x["nll"] / x["tokens"] for x in w]
                files, toks = [x["file"] for x in w], [x["tokens"] for x in w]
                iv = stats.cluster_bootstrap(per, files, weights=toks, seed=seed)
                row["ppl"] = {"estimate": math.exp(iv.estimate), "low": math.exp(iv.low), "high": math.exp(iv.high),
                              "windows": len(w), "files": len(set(files)), "tokens": sum(toks),
                              "device": _device(cl["ppl"])}
                for key, ref in refs.items():
                    if "ppl" in ref and (pr := _pair_ppl(w, ref["ppl"]["windows"], seed)):
                        row[f"ppl_vs_{key}"] = pr
            for cell, data in cl.items():
                if not cell.startswith("nextline:"):
                    continue
                res = data["results"]
                files = [r["file"] for r in res]
                entry = {"n": len(res), "files": len(set(files)), "packages": len({f.split(":")[0] for f in files}),
                         "exact": _iv(stats.cluster_bootstrap([float(r["exact"]) for r in res], files, seed=seed)),
                         "similarity": _iv(stats.cluster_bootstrap([r["similarity"] for r in res], files, seed=seed)),
                         "seconds_per_task": statistics.fmean(r.get("seconds", 0.0) for r in res) if res else None,
                         "device": _device(data)}
                for key, ref in refs.items():
                    if vs := pair_nextline(res, (ref.get(cell) or {}).get("results"), seed):
                        entry[f"vs_{key}"] = vs
                row[cell] = entry
            rows[name] = row
        out[language] = rows
    return out


def best_layout(row: dict) -> str | None:
    """The layout in which this configuration scores best (exact match, then edit similarity)."""
    cells = [c for c in row if c.startswith("nextline:")]
    if not cells:
        return None
    return max(cells, key=lambda c: (row[c]["exact"]["estimate"], row[c]["similarity"]["estimate"]))


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats: cost (x) no higher and quality (y) no lower, one strictly."""
    front = []
    for name, x, y in points:
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for _, x2, y2 in points):
            front.append(name)
    return front



# --------------------------------------------------------------------------- the report


def _mib(n) -> str:
    return f"{n / 2**20:.0f}" if n else "–"


def _ratio(r: dict | None) -> str:
    return f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if r else "–"


def verdict(iv: dict) -> str:
    """Worse / better / no difference shown, from a paired interval of (this - reference)."""
    if iv["high"] < 0:
        return "worse"
    if iv["low"] > 0:
        return "better"
    return "no difference shown"


def cost_isas(summary: dict) -> list[str]:
    """The instruction sets some cost cell came from, best first."""
    found = {isa for rows in summary.values() for row in rows.values() for isa in (row.get("cost") or {})}
    return [isa for isa in COST_ISAS if isa in found]


ISA_TITLES = {"avx512-bf16-amx": "AVX-512 BF16 kernel, CPU with AMX", "avx512-bf16": "AVX-512 BF16 kernel", "avx2": "AVX2 kernel, no AVX-512", "none": "no kernel (torch)"}


def plot(summary: dict, path: Path, *, title: str) -> bool:
    """Quality (edit similarity in each configuration's best layout, 95% interval) against decode
    ms/token as a multiple of the dense model's (`relative_ms`: hollow markers where the two came from
    different processes): one panel per language, one row of panels per machine (kernel instruction set),
    the Pareto front drawn; written atomically. False when no configuration has both a cost and a quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid: dict = {}  # (isa, language): points
    for isa in cost_isas(summary):
        for language, rows in summary.items():
            costs = {name: c for name, row in rows.items() if (c := (row.get("cost") or {}).get(isa))}
            for name, row in rows.items():
                layout = best_layout(row)
                rel = relative_ms(costs[name], costs.get("dense")) if name in costs else None
                if layout and rel:
                    grid.setdefault((isa, language), []).append((name, rel, row[layout]["similarity"],
                                                                 layout.split(":")[1]))
    if not grid:
        return False
    isas = [i for i in COST_ISAS if any(k[0] == i for k in grid)]
    languages = [lang for lang in summary if any(k[1] == lang for k in grid)]
    fig, axes = plt.subplots(len(isas), len(languages), figsize=(5.5 * len(languages), 4.5 * len(isas)),
                             squeeze=False)
    for i, isa in enumerate(isas):
        for j, language in enumerate(languages):
            ax, pts = axes[i][j], grid.get((isa, language))
            if not pts:
                ax.axis("off")
                continue
            pts = [(name, rel[0], iv, layout, rel[1]) for name, rel, iv, layout in pts]
            for name, ms, iv, layout, same_rounds in pts:
                bar = ax.errorbar([ms], [iv["estimate"]], yerr=[[iv["estimate"] - iv["low"]],
                                                                [iv["high"] - iv["estimate"]]], fmt="o", capsize=4)
                if not same_rounds:
                    bar.lines[0].set_markerfacecolor("none")
                ax.annotate(f"{name} ({layout})", (ms, iv["estimate"]), textcoords="offset points", xytext=(6, 6),
                            fontsize=8)
            front = set(pareto([(n, ms, iv["estimate"]) for n, ms, iv, _, _ in pts]))
            line = sorted((ms, iv["estimate"]) for n, ms, iv, _, _ in pts if n in front)
            ax.plot([x for x, _ in line], [y for _, y in line], "--", color="grey", label="Pareto front")
            ax.set_xlabel("decode ms/token ÷ dense model's, same rounds")
            ax.set_ylabel("next-line edit similarity")
            ax.set_title(f"{language}, {ISA_TITLES.get(isa, isa)}")
            ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.save_figure(fig, path)
    return True


def _ms(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def relative_ms(cost: dict, dense: dict | None) -> tuple[float, bool] | None:
    """Decode ms/token as a multiple of the dense model's, and whether both came from the same rounds
    (an interleaved cell's anchor); else against the machine's stored dense cell (another process), or None."""
    if cost is dense:
        return 1.0, True
    anchor = cost.get("anchor") or {}
    if anchor.get("name") == "dense" and anchor.get("ms_per_token"):
        return cost["ms_per_token"] / anchor["ms_per_token"], True
    if dense and dense.get("ms_per_token"):
        return cost["ms_per_token"] / dense["ms_per_token"], False
    return None


def render_cost(plan: FrontierPlan, summary: dict) -> list[str]:
    """The cost tables, one per machine (cost is per configuration, measured on the first language's prompts)."""
    isas = cost_isas(summary)
    if not isas:
        return []
    rows = summary[plan.languages[0]] if plan.languages[0] in summary else next(iter(summary.values()))
    lines = ["## Cost, per machine", "",
             f"Each configuration on the same engine, measured with {plan.languages[0]} prompts ({plan.context_tokens}-"
             f"token budget, PSM). Decode: milliseconds per single-token step after each of {plan.decode_prompts} "
             f"prompts, no drafts (median, p10–p90). Typing replay (`pruner/evaluation/replay.py`): "
             f"{plan.replay_tasks} held-out lines typed back at their place, a request after every "
             f"{plan.replay_every} characters and at each line's end, single-line greedy completions with the "
             "engine's drafts and KV reuse (cold: a line's first request; extend: the rest); the engine's cost "
             "per request, without the server's debounce or its reuse of a suggestion the user types through. "
             "Weights: bytes the loaded model holds (packed values and masks for pruned layers). RSS: the "
             "measuring process after load, warm-up and decoding; cells with a typing replay also handed "
             "freed memory back first, as the server does after loading (older cells overstate what a "
             "server holds). Read per token: the weight bytes one decode "
             "step reads (decoder layers as held, the head as the engine reads it: its int8 screen); bound: the "
             "ms/token a step limited by memory bandwidth alone would take at the streaming-read bandwidth "
             "measured in the same process. Load: the 1-minute load average of the 2-core machine while "
             "measuring (about 2 is the measurement itself). × dense: decode ms/token as a multiple of the dense "
             "model's in the same alternating rounds (* the dense cell of another process): this machine's speed "
             "drifts between groups of rounds, so compare raw milliseconds only within a group.", ""]
    for isa in isas:
        cpu = next(((r.get("cost") or {}).get(isa, {}).get("processor") for r in rows.values()
                    if (r.get("cost") or {}).get(isa, {}).get("processor")), None)
        lines += [f"### {ISA_TITLES.get(isa, isa)}" + (f" ({cpu})" if cpu else ""), "",
                  "| configuration | ms/token (p10–p90) | × dense | typing p50 ms | typing p95 ms | cold p50 ms "
                  "| extend p50 ms | requests / tokens decoded | read per token MiB | bound ms (GB/s) | weights MiB "
                  "| disk MiB | RSS MiB | load |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        dense = ((rows.get("dense") or {}).get("cost") or {}).get(isa)
        for name, row in rows.items():
            c = (row.get("cost") or {}).get(isa)
            if not c:
                continue
            typing = (f"{c['typing_requests']} / {c['typing_new_tokens']}" if c.get("typing_requests") else "–")
            bound = "–" if c.get("bound_ms") is None else f"{c['bound_ms']} ({c['read_gbs']})"
            rel = relative_ms(c, dense)
            rel_text = "–" if rel is None else f"{rel[0]:.2f}" + ("" if rel[1] else "*")
            lines.append(f"| {name} | {c['ms_per_token']} ({c['ms_p10']}–{c['ms_p90']}) | {rel_text} "
                         f"| {_ms(c.get('typing_p50_ms'))} "
                         f"| {_ms(c.get('typing_p95_ms'))} | {_ms(c.get('typing_cold_p50_ms'))} "
                         f"| {_ms(c.get('typing_extend_p50_ms'))} | {typing} | {_mib(c.get('step_bytes'))} "
                         f"| {bound} "
                         f"| {_mib(c.get('weight_bytes'))} "
                         f"| {_mib(c.get('disk_bytes'))} | {_mib(c.get('rss_bytes'))} "
                         f"| {'–' if c.get('loadavg') is None else format(c['loadavg'], '.1f')} |")
        methods = sorted({c["method"] for r in rows.values() if (c := (r.get("cost") or {}).get(isa)) and c.get("method")})
        if methods:
            lines += ["", "Measured " + "; ".join(methods) + " (the rest each in its own process)."]
        missing = [name for name, row in rows.items() if not (row.get("cost") or {}).get(isa)]
        if missing:  # a configuration's quality without its cost on this machine is said, not left out silently
            lines += ["", "Not measured on this machine: " + ", ".join(missing) + "."]
        lines.append("")
    return lines


def _paired_table(rows: dict, layouts: list[str], key: str, caption: str) -> list[str]:
    lines = [caption, "",
             "| configuration | layout | paired tasks | exact match | only this / only dense, McNemar p "
             "| edit similarity | MDE exact / similarity | perplexity ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for c in layouts:
            vs = (row.get(c) or {}).get(f"vs_{key}")
            if not vs:
                continue
            lines.append(
                f"| {name} | {c.split(':')[1].upper()} | {vs.get('n', '–')} "
                f"| {text.points(vs['exact_diff'])} ({verdict(vs['exact_diff'])}) "
                f"| {vs['only_this']} / {vs['only_ref']}, p = {vs['mcnemar_p']:.2g} "
                f"| {text.plain(vs['similarity_diff'], signed=True)} ({verdict(vs['similarity_diff'])}) "
                f"| {100 * vs['exact_mde']:.1f} pt / {vs['similarity_mde']:.3f} "
                f"| {_ratio(row.get(f'ppl_vs_{key}'))} |")
    return lines


def render(plan: FrontierPlan, summary: dict, *, command: str, png: str | None) -> str:
    others = sorted({Configuration.parse(plan.base, t).base for t in plan.configurations} - {plan.base})
    title = f"{plan.base}, dense against its sub-models" + (f", and {', '.join(others)}" if others else "")
    lines = [f"# The frontier: {title}", "",
             f"Generated by `{command or 'subcoder eval frontier'}`; raw per-task and per-window results in "
             "`docs/measurements/frontier/`. Every configuration decodes through the same engine "
             "(`Completer`; the dense model's decoder linears on the kernel's dense bf16 layer). Sub-models are "
             "Wanda, calibrated on their own language (the default calibration set). Next-line tasks: a line of a "
             "held-out file with the text before it as prefix and the text after it as suffix, in FIM layout PSM "
             f"or SPM, single-line, greedy, {plan.context_tokens}-token prompt budget; exact match and edit "
             "similarity on stripped text. Intervals: 95%, percentile bootstrap over *files* (2,000 resamples); "
             "comparisons with dense are paired on the same tasks (bootstrap of the difference over files; "
             "exact McNemar test for exact match). MDE: the smallest difference these paired tasks detect at "
             "95% with 80% power, given the discordance observed. Perplexity: windows cut file by file "
             f"({plan.seq_len} tokens), pooled per token.", ""]
    if png:
        lines += [f"![quality against decode cost]({png})", ""]
    lines += render_cost(plan, summary)
    for language, rows in summary.items():
        lines += [f"## {language}", ""]
        n: dict = {}
        for r in rows.values():
            for c in r:
                if c.startswith("nextline:") and r[c]["n"] >= n.get(c, (0,))[0]:
                    n[c] = (r[c]["n"], r[c]["files"], r[c]["packages"])
        if n:
            lines.append("Next-line tasks (the first n of one seeded draw; a comparison uses the tasks both "
                         "configurations finished): "
                         + ", ".join(f"{c.split(':')[1].upper()} up to n={k} from {f} files in {pk} packages"
                                     for c, (k, f, pk) in n.items()) + ".")
        ppl = next((r["ppl"] for r in rows.values() if "ppl" in r), None)
        if ppl:
            lines.append(f"Perplexity: {ppl['windows']} windows from {ppl['files']} files, {ppl['tokens']:,} tokens.")
        lines.append("")
        layouts = [f"nextline:{lay}" for lay in plan.layouts]
        head = ["configuration", "perplexity"]
        for c in layouts:
            head += [f"{c.split(':')[1].upper()} exact", f"{c.split(':')[1].upper()} similarity"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in rows.items():
            if "ppl" not in row and not any(c in row for c in layouts):
                continue  # only a cost cell (shown in every language's plot): nothing measured in this language
            cells = [name, f"{row['ppl']['estimate']:.3f} [{row['ppl']['low']:.3f}, {row['ppl']['high']:.3f}]"
                     if "ppl" in row else "–"]
            for c in layouts:
                cells += ([f"{text.percent(row[c]['exact'])}, n={row[c]['n']}", text.plain(row[c]["similarity"])] if c in row
                          else ["–", "–"])
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + _paired_table(rows, layouts, "ref", "Paired against dense (this minus dense). A difference "
                                      "inside its interval's reach of zero is \"no difference shown\", not \"equal\": "
                                      "the MDE column says how large a difference these tasks could have shown.")
        if any("vs_base" in (row.get(c) or {}) for row in rows.values() for c in layouts):
            lines += [""] + _paired_table(rows, layouts, "base", "Sub-models paired against the dense model they "
                                          "were cut from, when that is not the table above's: a 1.5B row against the "
                                          "dense 1.5B, and an int8-valued sub-model against its dense model with int8 "
                                          "weights where that was measured (what the pruning cost it, the value "
                                          "format held equal).")
        lines.append("")
        gpu = {}
        for n_, r in rows.items():
            for c in ("ppl", *layouts):
                if c in r and r[c].get("device", "cpu") != "cpu":
                    gpu.setdefault(r[c]["device"], []).append(f"{n_} {c.split(':')[-1].upper() if ':' in c else c}")
        for device, cells_ in gpu.items():
            lines += [f"Measured on a GPU ({device}; bf16, pruned layers dense with their masks applied, int8 values "
                      f"rounded into the weights), the rest on the CPU engine: {', '.join(cells_)}.", ""]
        spt = {f"{n} {c.split(':')[1].upper()}": r[c]["seconds_per_task"] for n, r in rows.items() for c in layouts
               if c in r and r[c].get("seconds_per_task") and r[c].get("device", "cpu") == "cpu"}
        if spt:
            lines += ["Seconds per next-line task on the CPU engine (each cell on the machine it ran on): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in spt.items()) + ".", ""]
    return "\n".join(lines) + "\n"


def write_report(plan: FrontierPlan, work: Path, report: Path, *, command: str = "") -> dict:
    """Summarize the cells on disk and write `report` (markdown) and its plot beside it, atomically."""
    from .study import model_slug

    summary = summarize(load_cells(plan, work), seed=plan.seed)
    png = report.with_name(f"frontier-{model_slug(plan.base)}.png")
    drawn = plot(summary, png, title=f"{plan.base}: next-line quality against decode cost")
    report.parent.mkdir(parents=True, exist_ok=True)
    paths.atomic_write_bytes(report, render(plan, summary, command=command, png=png.name if drawn else None).encode())
    return summary
