"""Readable output: the table `subcoder eval` prints, and the study's RESULTS.md and figures.

The study part is in two layers: `summarize` (pure) turns the cells `study.load_study` read into
intervals and verdicts (stats.py), and `write_results` renders them with the figures. A verdict is
read off an interval, never off one pair of draws: "holds" when the whole 95% interval favours
own-language calibration, "does not hold" when it favours the rival, "not shown" when it spans zero."""

from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path

import numpy as np

from subcoder.pruner import paths

from . import stats, text
from .runner import METRICS, summary
from .study import FLOOR, MIXED, PROSE, model_slug, shape_config


def eval_table(data: dict) -> str:
    rows = [("language", "metric", "result", "seconds")]
    for lang, cells in data.get("results", {}).items():
        for metric in METRICS:
            if metric in cells:
                res = cells[metric]
                rows.append((lang, metric, summary(res), f"{res.get('seconds', 0):.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"model: {data.get('model')}"]
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = []
    for lang, cells in data.get("results", {}).items():
        for metric, res in cells.items():
            for d in res.get("excluded", []) + res.get("skipped_tasks", []):
                notes.append(f"{metric}/{lang}: {d['task_id']} {d['status']}: {d['reason']}")
    if notes:
        lines += ["", "excluded or skipped tasks:"] + sorted(set("  " + n for n in notes))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the study: numbers (pure)

ONE_SEED = "not judged (one seed)"
RESAMPLES = 1000  # per interval; the study has hundreds of them and each is a few ms at this size


def file_losses(cell: dict, files: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A perplexity cell's windows pooled per file: (files, per-token loss, tokens), files sorted (or as given)."""
    nll: dict[str, float] = {}
    tok: dict[str, int] = {}
    for w in cell["windows"]:
        nll[w["file"]] = nll.get(w["file"], 0.0) + w["nll"]
        tok[w["file"]] = tok.get(w["file"], 0) + w["tokens"]
    files = sorted(nll) if files is None else files
    t = np.array([tok[f] for f in files], dtype=np.float64)
    return files, np.array([nll[f] for f in files]) / np.maximum(t, 1), t


def calibration_files(description: str | None) -> int | None:
    """Files a calibration drew on, from its description ('... from 18 shipped python files ...')."""
    found = [int(n) for n in re.findall(r"from (\d+)\b[^;,]*? files", description or "")]
    return sum(found) if found else None


def _iv(iv: stats.Interval, transform=lambda x: x) -> dict:
    return {"estimate": transform(iv.estimate), "low": transform(iv.low), "high": transform(iv.high)}


def interval_verdict(iv: dict, *, better_below: bool) -> str:
    """From an interval of (own - rival): "holds" when all of it favours own, "does not hold" when all of it
    favours the rival, "not shown" when it spans no difference."""
    low, high = (iv["low"], iv["high"]) if better_below else (-iv["high"], -iv["low"])
    return "holds" if high < 0 else "does not hold" if low > 0 else "not shown"


def _rows_of(entry: dict, shape: str, calibrations) -> dict[str, list[str]]:
    """{calibration: its variant keys at `shape`, seed order}."""
    out: dict[str, list[str]] = {}
    for key, v in entry["variants"].items():
        if v.get("shape") == shape and v["calibration"] in calibrations:
            out.setdefault(v["calibration"], []).append(key)
    return {c: sorted(ks, key=lambda k: entry["variants"][k]["seed"]) for c, ks in out.items()}


def ppl_summary(entry: dict, plan: dict, shape: str, *, seed: int = 0) -> dict:
    """Perplexity per (row, language) with intervals over files and seeds; own against every rival; the
    baselines against own; the seed-to-seed spread; the language-match effect fitted across the matrix."""
    calibs = (*plan["languages"], *plan["baselines"])
    rows = _rows_of(entry, shape, (*calibs, "magnitude"))
    cells = entry["cells"]
    out: dict = {"table": {}, "own": {}, "baselines": {}, "spread": None, "match": None}
    spreads, fit_rows = [], []
    for lang in plan["languages"]:
        ref = cells.get("dense", {}).get(lang, {}).get("ppl")
        if ref is None:
            continue
        files, dense_loss, tokens = file_losses(ref)
        losses: dict[str, np.ndarray] = {"dense": dense_loss[None, :]}
        for calib, keys in rows.items():
            got = [cells[k][lang]["ppl"] for k in keys if "ppl" in cells[k].get(lang, {})]
            got = [c for c in got if sorted({w["file"] for w in c["windows"]}) == files]
            if got:
                losses[calib] = np.stack([file_losses(c, files)[1] for c in got])
                descriptions = [entry["variants"][k].get("described") for k in keys]
                cal_files = [n for n in map(calibration_files, descriptions) if n]
                for s, k in enumerate(keys[:len(got)]):
                    if calib in calibs:
                        fit_rows.append({"calibration": calib, "language": lang, "seed": entry["variants"][k]["seed"],
                                         "losses": losses[calib][s], "tokens": tokens})
                if len(got) > 1:
                    pooled = losses[calib] @ tokens / tokens.sum()
                    spreads.append(float(np.std(pooled, ddof=1)))
                out["table"].setdefault(calib, {})[lang] = {
                    **_iv(stats.seeds_files_diff(losses[calib], None, tokens, resamples=RESAMPLES, seed=seed), math.exp),
                    "seeds": len(got), "files": len(files), "windows": len(ref["windows"]),
                    "calibration_files": round(statistics.fmean(cal_files)) if cal_files else None}
        out["table"].setdefault("dense", {})[lang] = {
            **_iv(stats.seeds_files_diff(losses["dense"], None, tokens, resamples=RESAMPLES, seed=seed), math.exp),
            "seeds": 1, "files": len(files), "windows": len(ref["windows"]), "calibration_files": None}
        if lang not in losses:
            continue

        def ratio(a: str, b: str) -> dict:  # (a / b) perplexity ratio with its interval
            return _iv(stats.seeds_files_diff(losses[a], losses[b], tokens, resamples=RESAMPLES, seed=seed), math.exp)

        rivals = {r: ratio(lang, r) for r in calibs if r != lang and r in losses}
        if rivals:
            best = max(rivals, key=lambda r: rivals[r]["estimate"])  # the rival own gains least against
            # One draw per side measures no calibration noise: its interval is the files' alone, too narrow.
            verdicts = [interval_verdict({k: math.log(v) for k, v in iv.items()}, better_below=True)
                        if min(len(losses[lang]), len(losses[r])) > 1 else ONE_SEED for r, iv in rivals.items()]
            verdict = ("does not hold" if "does not hold" in verdicts else "holds" if all(v == "holds" for v in verdicts)
                       else ONE_SEED if ONE_SEED in verdicts else "not shown")
            out["own"][lang] = {"rivals": rivals, "best_rival": best, "verdict": verdict}
        for b in plan["baselines"]:
            if b in losses:
                r = ratio(b, lang)
                # Inside own-language's interval: the paired ratio (same files, seeds resampled) shows no
                # difference. Not the unpaired intervals: their width is mostly which files were evaluated,
                # which every row shares, so any two rows would overlap.
                out["baselines"].setdefault(b, {})[lang] = {
                    "ratio": r, "inside_own": r["low"] <= 1.0 <= r["high"],
                    "verdict": interval_verdict({k: math.log(v) for k, v in r.items()}, better_below=False)}
    if spreads:
        out["spread"] = statistics.median(spreads)
    matched = {r["calibration"] == r["language"] for r in fit_rows}
    if matched == {True, False}:
        out["match"] = _iv(stats.match_effect(fit_rows, resamples=RESAMPLES // 5, seed=seed))
    return out


def _per_file(per_seed: list[list[float]], files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Task outcomes (seeds, tasks) as per-file rates (seeds, files) and the files' task counts: the form
    `stats.seeds_files_diff` resamples (files once, each side's seeds apart)."""
    rates = [stats.group_means(e, files) for e in per_seed]
    return np.stack([r for r, _ in rates]), rates[0][1]


def _draws(tasks) -> str:
    """How many calibration draws the task rows rest on, in words."""
    most = max((k for t in tasks for c, k in t.get("seeds", {}).items() if c != "dense"), default=1)
    if most == 1:
        return "seed-0 sub-models"
    return (f"up to {most} calibration draws per row, averaged per task; intervals resample files and draws, "
            "McNemar pairs the seed-0 sub-models")


def task_summary(entry: dict, plan: dict, shape: str, *, seed: int = 0) -> dict:
    """Next-line exact match per row (intervals over files, and over calibration draws where a row has
    task cells from several seeds) and own against every rival, paired on the same tasks: the difference's
    interval resamples files once for both rows and each row's draws apart; the exact McNemar test pairs
    the seed-0 sub-models. Languages where dense is at the floor are left out."""
    calibs = (*plan["languages"], *plan["baselines"])
    rows = _rows_of(entry, shape, (*calibs, "magnitude"))
    cells = entry["cells"]
    out: dict = {}
    for lang in plan["languages"]:
        dense = cells.get("dense", {}).get(lang, {}).get("nextline")
        if dense is None:
            continue
        got = {"dense": [dense["results"]]}
        for c, keys in rows.items():
            seeds = [cells[k][lang]["nextline"]["results"] for k in keys if "nextline" in cells[k].get(lang, {})]
            if seeds:
                got[c] = seeds
        n = min(len(r) for per in got.values() for r in per)
        ids = [r["id"] for r in got["dense"][0][:n]]
        got = {c: [r[:n] for r in per if [x["id"] for x in r[:n]] == ids] for c, per in got.items()}
        got = {c: per for c, per in got.items() if per}
        files = [r["file"] for r in got["dense"][0]]
        exact = {c: [[float(x["exact"]) for x in r] for r in per] for c, per in got.items()}
        rates = {c: _per_file(e, files) for c, e in exact.items()}

        def row(c: str) -> dict:
            if len(exact[c]) == 1:
                return _iv(stats.cluster_bootstrap(exact[c][0], files, resamples=RESAMPLES, seed=seed))
            return _iv(stats.seeds_files_diff(rates[c][0], None, rates[c][1], resamples=RESAMPLES, seed=seed))

        entry_out = {"n": n, "files": len(set(files)), "layout": dense.get("layout"),
                     "rows": {c: row(c) for c in exact},
                     "seeds": {c: len(e) for c, e in exact.items()}}
        if sum(exact["dense"][0]) < FLOOR * n:
            entry_out["excluded"] = f"dense at the floor ({int(sum(exact['dense'][0]))}/{n} exact)"
        elif lang in exact:
            rivals = {}
            for r in calibs:
                if r == lang or r not in exact:
                    continue
                own0, rival0 = exact[lang][0], exact[r][0]
                if len(exact[lang]) == 1 and len(exact[r]) == 1:
                    diff = stats.paired_bootstrap(own0, rival0, files, resamples=RESAMPLES, seed=seed)
                else:  # the draw-to-draw noise of both rows enters the interval
                    diff = stats.seeds_files_diff(rates[lang][0], rates[r][0], rates[lang][1], resamples=RESAMPLES,
                                                  seed=seed)
                mc = stats.mcnemar_exact([bool(x) for x in own0], [bool(x) for x in rival0])
                rivals[r] = {"diff": _iv(diff), "only_own": mc.only_a, "only_rival": mc.only_b, "p": mc.p_value,
                             # the smallest difference these paired tasks could show (95%, 80% power)
                             "mde": stats.minimum_detectable_effect(
                                 n, stats.paired_binary_sd((mc.only_a + mc.only_b) / n))}
            if rivals:
                best = min(rivals, key=lambda r: rivals[r]["diff"]["estimate"])
                verdicts = [interval_verdict(x["diff"], better_below=False) for x in rivals.values()]
                entry_out.update(rivals=rivals, best_rival=best,
                                 verdict="does not hold" if "does not hold" in verdicts
                                 else "holds" if all(v == "holds" for v in verdicts) else "not shown")
        out[lang] = entry_out
    return out


def jaccard_bands(pairs: list[dict]) -> dict | None:
    """Per layer and for the whole model: the band of within-language distances (two seeds of one
    language) and of between-language ones; a layer is distinct where every between-language pair is
    further apart than every within-language pair."""
    within = [p for p in pairs if p["a_calibration"] == p["b_calibration"]]
    between = [p for p in pairs if p["a_calibration"] != p["b_calibration"]]
    if not between:
        return None
    layers = sorted({int(k) for p in pairs for k in p["per_layer"]})

    def band(ps, layer=None):
        xs = [p["model"] if layer is None else p["per_layer"][str(layer)] for p in ps]
        return {"min": min(xs), "max": max(xs), "mean": statistics.fmean(xs)} if xs else None

    per_layer = [{"layer": k, "within": band(within, k), "between": band(between, k)} for k in layers]
    distinct = [x["layer"] for x in per_layer if x["within"] and x["between"]["min"] > x["within"]["max"]]
    whole = {"within": band(within), "between": band(between)}
    if not within:
        verdict = "no within-language band (one seed per language)"
    elif whole["between"]["min"] > whole["within"]["max"]:
        verdict = "distinct"
    elif whole["between"]["max"] < whole["within"]["min"]:
        verdict = "closer than two draws of one language"
    else:
        verdict = "not distinct"
    return {"layers": per_layer, "distinct_layers": distinct, "whole": whole, "verdict": verdict,
            "within_pairs": len(within), "between_pairs": len(between)}


def summarize(study: dict, *, seed: int = 0) -> dict:
    """{model: {shape: {"ppl": ..., "tasks": ..., "jaccard": ...}}} for every shape with cells."""
    plan = study["plan"]
    out = {}
    for model, entry in study["models"].items():
        shapes = {}
        for shape in plan["shapes"]:
            if not any(v.get("shape") == shape for v in entry["variants"].values()):
                continue
            shapes[shape] = {"ppl": ppl_summary(entry, plan, shape, seed=seed),
                             "tasks": task_summary(entry, plan, shape, seed=seed) if shape in plan["task_shapes"] else {},
                             "jaccard": jaccard_bands(entry.get("jaccard", {}).get(shape, []))}
        out[model] = shapes
    return out


# --------------------------------------------------------------------------- the study: figures


def jaccard_plot(bands: dict, path: Path, *, title: str) -> Path:
    """Per-layer Jaccard distance: the between-language band (and mean) over the within-language band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [x["layer"] for x in bands["layers"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if bands["within_pairs"]:
        ax.fill_between(layers, [x["within"]["min"] for x in bands["layers"]],
                        [x["within"]["max"] for x in bands["layers"]], color="tab:blue", alpha=0.35,
                        label=f"within one language (seeds, {bands['within_pairs']} pairs)")
    ax.fill_between(layers, [x["between"]["min"] for x in bands["layers"]], [x["between"]["max"] for x in bands["layers"]],
                    color="tab:orange", alpha=0.3, label=f"between languages ({bands['between_pairs']} pairs)")
    ax.plot(layers, [x["between"]["mean"] for x in bands["layers"]], color="tab:orange", lw=1)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Jaccard distance of kept weights")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return paths.save_figure(fig, path)


def sweep_plot(model_summary: dict, plan: dict, path: Path, *, title: str) -> Path | None:
    """Perplexity against unstructured sparsity per language: own-language, mixed-code and prose
    calibration with 95% intervals (files and seeds), dense as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted((s for s in model_summary if s.startswith("u")), key=lambda s: shape_config(s)[1])
    if len(shapes) < 2:
        return None
    langs = plan["languages"]
    fig, axes = plt.subplots(1, len(langs), figsize=(3.2 * len(langs), 3.2), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        for calib, style in ((lang, "o-"), (MIXED, "^--"), (PROSE, "s:")):
            pts = [(100 * shape_config(s)[1], model_summary[s]["ppl"]["table"].get(calib, {}).get(lang)) for s in shapes]
            pts = [(x, c) for x, c in pts if c]
            if pts:
                ax.errorbar([x for x, _ in pts], [c["estimate"] for _, c in pts],
                            yerr=[[c["estimate"] - c["low"] for _, c in pts], [c["high"] - c["estimate"] for _, c in pts]],
                            fmt=style, capsize=3, markersize=4, label="own language" if calib == lang else calib)
        dense = model_summary[shapes[0]]["ppl"]["table"].get("dense", {}).get(lang)
        if dense:
            ax.axhline(dense["estimate"], color="grey", lw=0.8, ls=":", label="dense")
        ax.set_yscale("log")
        ax.set_title(lang, fontsize=9)
        ax.set_xlabel("sparsity, %", fontsize=8)
        ax.set_ylabel("held-out perplexity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return paths.save_figure(fig, path)


# --------------------------------------------------------------------------- the study: RESULTS.md


def _ppl(c: dict | None) -> str:
    return "–" if not c else f"{c['estimate']:.2f} [{c['low']:.2f}, {c['high']:.2f}]"


def _ratio(r: dict) -> str:
    return f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _label(calib: str, lang: str | None = None) -> str:
    return {"dense": "dense (reference)", "magnitude": "magnitude", MIXED: "Wanda, mixed code",
            PROSE: "Wanda, prose"}.get(calib, f"Wanda, {calib}" + (" ◆" if calib == lang else ""))


def _machines(study: dict) -> str:
    """Where the cells ran, one clause per machine, naming the metrics each one measured (a study may
    run its perplexity cells on a lent GPU and its next-line cells on the CPU)."""
    seen: dict[tuple, set] = {}
    for entry in study["models"].values():
        for cells in entry["cells"].values():
            for metrics in cells.values():
                for metric, data in metrics.items():
                    env = data.get("environment") or {}
                    if not env:
                        continue
                    device = env.get("device", "cpu")
                    where = (f"{env.get('gpu', 'a GPU')} (CUDA; pruned layers dense, masked), host {env.get('processor')}"
                             if device != "cpu" else
                             f"{env.get('processor')}, {env.get('cpus')} CPUs ({env.get('threads')} torch threads), "
                             "shared with other jobs")
                    key = (where, env.get("torch"), env.get("transformers"), env.get("subcoder"))
                    seen.setdefault(key, set()).add({"ppl": "perplexity", "nextline": "next-line"}.get(metric, metric))
    return "; ".join(f"{' and '.join(sorted(m))} cells on {w}, subcoder {v}, torch {t}, transformers {tr}"
                     for (w, t, tr, v), m in seen.items()) or "unknown"


def _claims(model: str, shape: str, s: dict) -> list[str]:
    """The answers for one (model, shape), each with its interval."""
    L = []
    own = s["ppl"]["own"]
    if own:
        counts = {v: sum(o["verdict"] == v for o in own.values()) for v in ("holds", "not shown", "does not hold", ONE_SEED)}
        L.append(f"- **Own language best (perplexity)**: holds in {counts['holds']} of {len(own)} languages, not shown "
                 f"in {counts['not shown']}, does not hold in {counts['does not hold']}"
                 + (f", {ONE_SEED} in {counts[ONE_SEED]}" if counts[ONE_SEED] else "")
                 + " (own against every other calibration; perplexity ratio own / rival, 95% interval over files and "
                 "seeds).")
    match = s["ppl"]["match"]
    if match:
        L.append(f"- **Language-match effect** fitted across the matrix (log-ppl ~ calibration + language + match + "
                 f"seed): {100 * (math.exp(match['estimate']) - 1):+.1f}% perplexity "
                 f"[{100 * (math.exp(match['low']) - 1):+.1f}, {100 * (math.exp(match['high']) - 1):+.1f}] when the "
                 f"calibration is the evaluated language"
                 + (" (an effect)." if match["high"] < 0 or match["low"] > 0 else " (the interval spans zero: no effect shown)."))
    mixed = s["ppl"]["baselines"].get(MIXED)
    if mixed:
        inside = [lang for lang, m in mixed.items() if m["inside_own"]]
        worst = max(m["ratio"]["high"] for m in mixed.values())
        L.append(f"- **Mixed-code calibration** lands inside own-language's interval (paired ratio mixed / own "
                 f"contains 1) in {len(inside)} of {len(mixed)} languages" + (f" ({', '.join(inside)})" if inside else "")
                 + f"; at worst it costs up to {100 * (worst - 1):+.1f}% perplexity (the highest upper bound)"
                 + (": **one code sub-model serves every language** at this shape." if len(inside) == len(mixed)
                    else "."))
    prose = s["ppl"]["baselines"].get(PROSE)
    if prose:
        worse = sum(p["verdict"] == "holds" for p in prose.values())
        L.append(f"- **Neutral prose calibration** is worse than own-language in {worse} of {len(prose)} languages "
                 f"(ratio interval above 1).")
    tasks = s["tasks"]
    if tasks:
        judged = {lang: t for lang, t in tasks.items() if "verdict" in t}
        excluded = [lang for lang, t in tasks.items() if "excluded" in t]
        if judged:
            L.append(f"- **Next-line exact match** ({_draws(judged.values())}, paired): own language best holds in "
                     f"{sum(t['verdict'] == 'holds' for t in judged.values())} of {len(judged)} judged languages "
                     f"({', '.join(judged)}), not shown in {sum(t['verdict'] == 'not shown' for t in judged.values())}, "
                     f"does not hold in {sum(t['verdict'] == 'does not hold' for t in judged.values())}"
                     + (f"; left out (dense at the floor): {', '.join(excluded)}" if excluded else "") + ".")
        elif excluded:
            L.append(f"- **Next-line exact match**: left out, dense at the floor in {', '.join(excluded)}.")
        else:
            L.append("- **Next-line exact match**: no sub-model task cells at this shape.")
    j = s["jaccard"]
    if j:
        w, b = j["whole"]["within"], j["whole"]["between"]
        L.append(f"- **Distinct regions (Jaccard)**: {j['verdict']}; whole model, between languages "
                 f"{b['min']:.4f}–{b['max']:.4f}" + (f" against within one language {w['min']:.4f}–{w['max']:.4f}" if w else "")
                 + f"; {len(j['distinct_layers'])} of {len(j['layers'])} layers distinct "
                 f"({j['within_pairs']} within-language and {j['between_pairs']} between-language pairs).")
    else:
        L.append("- **Distinct regions (Jaccard)**: not measured (no mask pairs: the sub-models were built on "
                 "another machine and their masks are not here).")
    return L


def _costs(entry: dict) -> str:
    """Mean seconds per sub-model build, perplexity cell and next-line task, from what the cells recorded."""
    builds = [v["extract_s"] for v in entry["variants"].values() if v.get("extract_s")]
    ppl = [m["ppl"]["seconds"] for c in entry["cells"].values() for m in c.values() if m.get("ppl", {}).get("seconds")]
    tasks = [r["seconds"] for c in entry["cells"].values() for m in c.values()
             for r in m.get("nextline", {}).get("results", []) if r.get("seconds") is not None]
    parts = [f"{statistics.fmean(builds):.0f} s per sub-model build ({len(builds)} builds)" if builds else None,
             f"{statistics.fmean(ppl):.0f} s per perplexity cell ({len(ppl)} cells)" if ppl else None,
             f"{statistics.fmean(tasks):.2f} s per next-line task ({len(tasks)} tasks)" if tasks else None]
    return ", ".join(p for p in parts if p) or "nothing recorded"


def write_results(study: dict, docs_dir: Path, *, later: str | None = None) -> Path:
    """RESULTS.md and the figures in `docs_dir`, from the finished cells in `study` (study.load_study)."""
    docs_dir = Path(docs_dir)
    paths.ensure_writable(docs_dir)
    plan = study["plan"]
    summary = summarize(study)
    L = ["# Results: language-specific pruning on subcoder's presets", "",
         "_Generated by `subcoder eval study` from the finished cells in its work directory; do not edit by hand._", ""]
    if plan.get("quick"):
        L += ["> **Quick mode (smoke check).** Tiny sizes: read nothing into these numbers.", ""]
    missing = [m for m in plan["models"] if not study["models"].get(m, {}).get("cells")]
    if later or missing:
        L += [f"> **Not in this run:** {later or ', '.join(missing) + ' (no finished cells yet; a later session runs it)'}.", ""]
    L += ["## How it was measured", "",
          f"- command: `{study['command']}`",
          f"- machines: {_machines(study)}",
          f"- rows: dense; magnitude; Wanda calibrated on each language, on "
          + " and on ".join({MIXED: "mixed code (python, java, cpp, javascript in equal shares)",
                             PROSE: "neutral prose (public-domain books, not about programming)"}.get(b, b)
                            for b in plan["baselines"] if b not in study["unavailable"])
          + f"; {plan['seeds']} calibration draws (seeds) per Wanda row and shape, {plan['calib_samples']} × "
          f"{plan['calib_seq_len']} tokens each, "
          + ("one window per file (file-sampled)" if study["sampling"] == "files"
             else "cut from a stream of concatenated files (this checkout's calibration has no file sampling yet)"),
          f"- shapes: " + ", ".join(f"{round(100 * shape_config(s)[1])}% unstructured" if s.startswith("u") else s
                                    for s in plan["shapes"]),
          f"- perplexity: up to {plan['windows']} windows of {plan['seq_len']} tokens per language cut file by file from "
          "the held-out split (packages disjoint from calibration), pooled per token; the files behind each cell are "
          "in its table",
          (f"- next-line: up to {plan['tasks']} single-line tasks per language spread over the held-out files, greedy, "
           f"{plan['context_tokens']}-token prompt budget, exact match on stripped text; at "
           + ", ".join(plan["task_shapes"]) + f" for seed 0; PSM layout (prefix, suffix, then the line) for a model with "
           "FIM tokens, the prefix alone otherwise (the layout is named per table)"
           if plan.get("task_seeds", 1) > 0 and plan["task_shapes"] else
           "- next-line: not in this pass (`--task-seeds 0`: perplexity cells only)"),
          "- intervals: 95%, percentile bootstrap resampling evaluation files and calibration seeds together "
          f"({RESAMPLES} resamples); comparisons paired on the same files or tasks; exact McNemar for exact match; "
          f"languages where dense scores under {100 * FLOOR:.0f}% exact are left out of the task counts (not ties)",
          ""]
    if study["unavailable"]:
        L += [f"Baselines not run (calibration.py of this checkout lacks them): {', '.join(study['unavailable'])}.", ""]
    L += ["## Answers", ""]
    for model, shapes in summary.items():
        for shape, s in shapes.items():
            claims = _claims(model, shape, s)
            if claims:
                L += [f"**{model}, {shape}**", "", *claims, ""]
    for model, shapes in summary.items():
        if not shapes:
            continue
        slug = model_slug(model)
        L += [f"## {model}", ""]
        png = sweep_plot(shapes, plan, docs_dir / f"study-{slug}-sparsity.png",
                         title=f"{model}: perplexity against sparsity (95% intervals, files and seeds)")
        if png:
            L += [f"![perplexity against sparsity, {model}]({png.name})", ""]
        for shape, s in shapes.items():
            L += [f"### {shape}", ""]
            table = s["ppl"]["table"]
            langs = [lang for lang in plan["languages"] if lang in table.get("dense", {})]
            if langs:
                files = {lang: table["dense"][lang] for lang in langs}
                L += ["**Held-out perplexity** (lower is better), 95% interval; ◆ own language. Evaluation: "
                      + ", ".join(f"{lang} {f['windows']} windows from {f['files']} files" for lang, f in files.items())
                      + ".", "",
                      "| calibration ↓ / evaluated on → | seeds | calibration files | " + " | ".join(langs) + " |",
                      "|---" * (len(langs) + 3) + "|"]
                order = ["dense", "magnitude", *plan["languages"], *plan["baselines"]]
                for calib, row in sorted(table.items(), key=lambda kv: order.index(kv[0])):
                    any_cell = next(iter(row.values()))
                    L.append(f"| {_label(calib)} | {any_cell['seeds'] if calib not in ('dense', 'magnitude') else '–'} "
                             f"| {any_cell['calibration_files'] or '–'} | "
                             + " | ".join(_ppl(row.get(lang)) + (" ◆" if calib == lang else "") for lang in langs) + " |")
                L.append("")
            own = s["ppl"]["own"]
            if own:
                rivals = [c for c in (*plan["languages"], *plan["baselines"]) if any(c in o["rivals"] for o in own.values())]
                L += ["Own-language calibration against each rival: perplexity ratio own / rival (below 1: own better).", "",
                      "| evaluated on | " + " | ".join(_label(r) for r in rivals) + " | verdict |",
                      "|---" * (len(rivals) + 2) + "|"]
                for lang, o in own.items():
                    L.append(f"| {lang} | " + " | ".join(_ratio(o["rivals"][r]) if r in o["rivals"] else "–" for r in rivals)
                             + f" | {o['verdict']} |")
                L.append("")
            for b, per in s["ppl"]["baselines"].items():
                L += [f"{_label(b)} against own-language calibration: ratio {b} / own (above 1: own better).", "",
                      "| evaluated on | ratio | no difference shown (interval contains 1) |", "|---|---|---|"]
                L += [f"| {lang} | {_ratio(x['ratio'])} | {'yes' if x['inside_own'] else 'no'} |" for lang, x in per.items()]
                L.append("")
            if s["ppl"]["spread"] is not None:
                L += [f"Calibration noise measured at {shape}: median standard deviation of log-perplexity across seeds "
                      f"{s['ppl']['spread']:.4f} ({100 * (math.exp(s['ppl']['spread']) - 1):.1f}% in perplexity).", ""]
            floor = {lang: t for lang, t in s["tasks"].items() if "excluded" in t}
            if floor:
                L += ["**Next-line exact match** left out where dense is at the floor: "
                      + "; ".join(f"{lang} ({t['layout']} layout, {t['n']} tasks from {t['files']} files): dense "
                                  f"{text.percent(t['rows']['dense'])}" for lang, t in floor.items()) + ".", ""]
            for lang, t in s["tasks"].items():
                if lang in floor or len(t["rows"]) < 2:  # dense alone: no sub-model ran these tasks at this shape
                    continue
                L += [f"**Next-line exact match, {lang}** ({t['layout']} layout, {t['n']} tasks from {t['files']} files, "
                      f"{_draws([t])})", ""]
                L += ["| row | exact match | own − row | own only / row only, McNemar p | MDE |", "|---|---|---|---|---|"]
                for calib, iv in t["rows"].items():
                    r = (t.get("rivals") or {}).get(calib)
                    paired = f"{r['only_own']} / {r['only_rival']}, p = {r['p']:.2g}" if r else "–"
                    mde = f"{100 * r['mde']:.1f} pt" if r else "–"
                    k = t.get("seeds", {}).get(calib, 1)
                    L.append(f"| {_label(calib, lang)}{f' ({k} draws)' if k > 1 else ''} | {text.percent(iv)} | {text.points(r['diff']) if r else '–'} "
                             f"| {paired} | {mde} |")
                if t.get("rivals"):
                    L.append("\nMDE: the smallest difference these paired tasks detect at 95% with 80% power, given "
                             "the discordant share observed; a difference below it is \"not shown\", not \"equal\".")
                if "verdict" in t:
                    L.append(f"\nVerdict (own best against every rival): {t['verdict']}.")
                L.append("")
            j = s["jaccard"]
            if j:
                png = jaccard_plot(j, docs_dir / f"study-{slug}-jaccard-{shape.replace(':', 'of')}.png",
                                   title=f"{model}, {shape}: Jaccard distance between masks per layer")
                L += [f"![per-layer Jaccard distance, {model}, {shape}]({png.name})", "",
                      f"Jaccard distance of kept-weight masks (random 50% masks: ≈ 0.667): {j['verdict']}; "
                      f"{len(j['distinct_layers'])} of {len(j['layers'])} layers have every between-language pair "
                      f"further apart than every within-language pair ({j['within_pairs']} within-language and "
                      f"{j['between_pairs']} between-language pairs).", ""]
    for model, entry in study["models"].items():
        if entry["cells"]:
            L += [f"Cost on this machine, {model}: {_costs(entry)}.", ""]
    L += ["## Limitations", "",
          "- Small models (135 M, 494 M parameters) lose much more to pruning than the paper's 7B models.",
          "- Perplexities compare within one base model only (different tokenizers).",
          "- Next-line tasks come from held-out files of the shipped corpora; HumanEval-X is not part of this study.",
          f"- Generated {time.strftime('%Y-%m-%d %H:%M %Z')}.", ""]
    path = docs_dir / "RESULTS.md"
    paths.atomic_write_bytes(path, "\n".join(L).encode())
    return path
