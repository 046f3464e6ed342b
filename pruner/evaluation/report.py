"""Readable output: the table `subcoder eval` prints, and docs/RESULTS.md + plots for the study."""

from __future__ import annotations

import math
import time
from pathlib import Path

from subcoder.pruner import paths

from .runner import METRICS, headline, summary
from .study import metrics_for, model_slug

LOWER_IS_BETTER = {"ppl"}
METRIC_TITLE = {"ppl": "held-out perplexity (lower is better)", "nextline": "next-line exact match, %",
                "humaneval": "HumanEval-X pass@1 (greedy, by execution), %",
                "singleline": "HumanEval-X single-line exact match, %", "infill": "HumanEval single-line infilling pass@1, %"}
EXTRA = {"nextline": ("edit_similarity", "next-line edit similarity, %"),
         "singleline": ("pass@1", "HumanEval-X single-line pass@1 by execution, %"),
         "infill": ("exact_match", "HumanEval single-line infilling exact match, %")}


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


# --------------------------------------------------------------------------- study values


def value(evals: dict, key: str, lang: str, metric: str, field: str | None = None):
    cell = (evals.get(key) or {}).get("results", {}).get(lang, {}).get(metric)
    if not cell or cell.get("skipped"):
        return None
    return cell.get(field or headline(metric))


def count(evals: dict, key: str, lang: str, metric: str) -> int:
    cell = (evals.get(key) or {}).get("results", {}).get(lang, {}).get(metric) or {}
    return int(cell.get("n") or 0)


def fmt(metric: str, v, field: str | None = None) -> str:
    if v is None:
        return "–"
    if metric == "ppl" and field is None:
        return f"{v:.2f}"
    return f"{100 * v:.1f}"


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _shape(pattern: str, sparsity: float) -> str:
    return pattern if pattern != "unstructured" else f"u{round(sparsity * 100)}"


def verdicts(study: dict) -> list[dict]:
    """One verdict per (model, pattern, language, metric): does own-language calibration win, beyond noise?"""
    plan = study["plan"]
    out = []
    for model, entry in study["models"].items():
        ev = entry["evals"]
        for pattern in plan["patterns"]:
            shape = _shape(pattern, 0.5 if pattern == "2:4" else plan["sparsity"])
            for lang in plan["languages"]:
                for metric in metrics_for(plan, pattern):
                    if metric == "infill" and lang != "python":
                        continue
                    own = value(ev, f"{lang}@{shape}", lang, metric)
                    rivals = {r: value(ev, f"{r}@{shape}", lang, metric)
                              for r in ("prose", *[x for x in plan["languages"] if x != lang])}
                    rivals = {r: v for r, v in rivals.items() if v is not None}
                    if own is None or not rivals:
                        continue
                    best_r = min(rivals, key=rivals.get) if metric in LOWER_IS_BETTER else max(rivals, key=rivals.get)
                    margin = (rivals[best_r] - own) if metric in LOWER_IS_BETTER else (own - rivals[best_r])
                    if metric in LOWER_IS_BETTER:
                        margin_rel = margin / rivals[best_r]
                    else:
                        margin_rel = margin
                    # Noise: the same language from disjoint halves (measured at 50% unstructured).
                    h0 = value(ev, f"{lang}/h0@u{round(plan['sparsity'] * 100)}", lang, metric)
                    h1 = value(ev, f"{lang}/h1@u{round(plan['sparsity'] * 100)}", lang, metric)
                    noise = abs(h0 - h1) / (min(h0, h1) if metric in LOWER_IS_BETTER else 1) if None not in (h0, h1) else None
                    se = None
                    if metric not in LOWER_IS_BETTER:
                        n = count(ev, f"{lang}@{shape}", lang, metric)
                        p = (own + rivals[best_r]) / 2
                        se = math.sqrt(2 * p * (1 - p) / n) if n else None
                    threshold = max([x for x in (noise, se) if x is not None], default=0.0)
                    if margin < 0:
                        verdict = "does not hold"
                    elif margin == 0:
                        verdict = "tie"
                    elif noise is None and se is None:
                        verdict = "no noise control"  # a win, but nothing says it exceeds sampling noise
                    elif margin_rel > threshold:
                        verdict = "holds"
                    else:
                        verdict = "within noise"
                    prose = rivals.get("prose")
                    out.append({"model": model, "pattern": pattern, "language": lang, "metric": metric, "own": own,
                                "best_rival": best_r, "rival": rivals[best_r], "prose": prose, "margin": margin_rel,
                                "noise": noise, "se": se, "verdict": verdict,
                                "beats_prose": prose is not None and _better(metric, own, prose)})
    return out


def jaccard_summary(study: dict) -> list[dict]:
    """Within-language (half vs half) distance against the distances to other languages' masks."""
    rows = []
    for model, entry in study["models"].items():
        pairs = (entry.get("overlap") or {}).get("unstructured", {}).get("pairs", [])
        d = {(p["a"], p["b"]): p["model"] for p in pairs}
        d.update({(b, a): v for (a, b), v in list(d.items())})
        langs = study["plan"]["languages"]
        for lang in study["plan"]["noise_languages"]:
            within = d.get((f"{lang}/h0", f"{lang}/h1"))
            cross = [d[(lang, o)] for o in langs if o != lang and (lang, o) in d]
            to_prose = d.get((lang, "prose"))
            if within is None or not cross:
                continue
            rows.append({"model": model, "language": lang, "within": within, "cross_min": min(cross),
                         "cross_mean": sum(cross) / len(cross), "to_prose": to_prose,
                         "real": min(cross) > within})
    return rows


# --------------------------------------------------------------------------- plots


def sweep_plot(study: dict, model: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = study["plan"]
    ev = study["models"][model]["evals"]
    sps = sorted(set(plan["sweep_sparsities"]) | {plan["sparsity"]})
    metrics = [m for m in plan["sweep_metrics"] if m in ("ppl", "nextline")]
    langs = plan["sweep_languages"]
    if not metrics or not langs:
        return None
    fig, axes = plt.subplots(len(metrics), len(langs), figsize=(max(3.4 * len(langs), 4.8), 2.9 * len(metrics) + 0.4), squeeze=False)
    for mi, metric in enumerate(metrics):
        for li, lang in enumerate(langs):
            ax = axes[mi][li]
            for calib, style in ((lang, "o-"), ("prose", "s--")):
                ys = [value(ev, f"{calib}@u{round(s * 100)}", lang, metric) for s in sps]
                xs = [100 * s for s, y in zip(sps, ys) if y is not None]
                ys = [(y if metric == "ppl" else 100 * y) for y in ys if y is not None]
                ax.plot(xs, ys, style, label=f"Wanda-{calib}", markersize=4)
            dense = value(ev, "dense", lang, metric)
            if dense is not None:
                ax.axhline(dense if metric == "ppl" else 100 * dense, color="grey", lw=0.8, ls=":", label="dense")
            if metric == "ppl":
                ax.set_yscale("log")
            ax.set_title(f"{lang}", fontsize=9)
            ax.set_xlabel("sparsity, %", fontsize=8)
            ax.set_ylabel("perplexity" if metric == "ppl" else "next-line EM, %", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    # two lines: with one language the figure is narrower than the title
    fig.suptitle(f"{model}\nown-language vs prose calibration, in the language itself", fontsize=10)
    fig.tight_layout()
    try:
        with paths.atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------- RESULTS.md


def _matrix(study: dict, model: str, pattern: str, metric: str, field: str | None, title: str) -> list[str]:
    plan = study["plan"]
    ev = study["models"][model]["evals"]
    shape = _shape(pattern, 0.5 if pattern == "2:4" else plan["sparsity"])
    langs = [lang for lang in plan["languages"] if not (metric == "infill" and lang != "python")]
    rows = ["dense", "magnitude", "prose", *plan["languages"]]
    keys = {r: ("dense" if r == "dense" else f"{r}@{shape}") for r in rows}
    ns = {lang: count(ev, keys[plan["languages"][0]], lang, metric) for lang in langs}
    head = "| calibration ↓ / evaluated on → | " + " | ".join(f"{lang} (n={ns[lang]})" if metric != "ppl" else lang
                                                          for lang in langs) + " |"
    lines = [f"**{title}**", "", head, "|---" * (len(langs) + 1) + "|"]
    lower = metric in LOWER_IS_BETTER and field is None
    best = {}
    for lang in langs:
        vals = [(value(ev, keys[r], lang, metric, field), r) for r in rows[1:]]
        vals = [x for x in vals if x[0] is not None]
        if vals:
            best[lang] = (min if lower else max)(vals)[0]
    for r in rows:
        label = {"dense": "dense (reference)", "magnitude": "magnitude", "prose": "Wanda, prose"}.get(r, f"Wanda, {r}")
        cells = []
        for lang in langs:
            v = value(ev, keys[r], lang, metric, field)
            text = fmt(metric, v, field)
            if r != "dense" and v is not None and best.get(lang) == v:
                text = f"**{text}**"
            if r == lang:
                text = f"{text} ◆"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "◆ own-language calibration; **bold**: best pruned model in the column.", ""]
    return lines


def _env(study: dict) -> dict:
    for entry in study["models"].values():
        for data in entry["evals"].values():
            if data.get("environment"):
                return data["environment"]
    return {}


def _device(study: dict) -> str:
    dtypes = sorted({d.get("dtype") for e in study["models"].values() for d in e["evals"].values() if d.get("dtype")})
    return f"evaluated on the CPU in {', '.join(dtypes) or 'the default dtype'} (float32 where the CPU has no native bf16)"


def _recorded_s(entry: dict) -> float:
    """Seconds a model's part of the study costs without any cache: every sub-model's recorded build
    time plus every evaluation cell's own time (a re-run that reuses both takes minutes)."""
    build = sum(c.get("extract_s") or 0 for k, c in entry.get("costs", {}).items() if k != "dense")
    cells = sum(res.get("seconds") or 0 for data in entry.get("evals", {}).values()
                for cells in data.get("results", {}).values() for res in cells.values())
    return build + cells


def write_results(study: dict, docs_dir: Path) -> Path:
    """RESULTS.md (and the sweep plots) in `docs_dir`, from what `study.run_study` returned."""
    docs_dir = Path(docs_dir)
    paths.ensure_writable(docs_dir)
    plan = study["plan"]
    env = _env(study)
    vs = verdicts(study)
    js = jaccard_summary(study)
    L = []
    L += ["# Results: language-specific pruning on subcoder's presets", "",
          "_Generated by `subcoder eval study`; do not edit by hand. Re-running the command below reproduces it_",
          "_(sub-models and finished evaluation cells are reused from the cache)._", ""]
    if plan.get("quick"):
        L += ["> **Quick mode (smoke check).** Tiny limits: the numbers below carry large sampling error and must not "
              "be read as results. Run the full study for numbers worth quoting.", ""]
    L += ["## Setup", "",
          f"- command: `{study['command']}`",
          f"- started {study['started']}; total wall time {study['wall_s'] / 60:.1f} min ("
          + "; ".join(f"{m}: {e['wall_s'] / 60:.1f} min" for m, e in study["models"].items()) + "); "
          + "from nothing, the recorded build and evaluation times add up to "
          + "; ".join(f"{m}: {_recorded_s(e) / 60:.0f} min" for m, e in study["models"].items()),
          f"- versions: subcoder {env.get('subcoder')}, Python {env.get('python')}, torch {env.get('torch')}, "
          f"transformers {env.get('transformers')}",
          f"- machine: {env.get('processor')}, {env.get('cpus')} CPUs ({env.get('threads')} torch threads), "
          f"{env.get('platform')}; {_device(study)}; shared with other jobs, so wall times are upper bounds",
          f"- pruning: " + " and ".join("50% unstructured (per-row)" if p == "unstructured" else p for p in plan["patterns"])
          + f", every linear layer of every decoder block; calibration "
          f"{plan['calib_samples']} × {plan['calib_seq_len']} tokens of the shipped `calibration` split (seed {plan['seed']}); "
          f"`prose` is the general, non-code baseline (the role C4 plays in the Wanda paper); magnitude needs no data",
          f"- evaluation: held-out split only (packages disjoint from calibration); greedy decoding; limits per "
          f"(model, language) cell: " + ", ".join(f"{m} {plan['limits'].get(m)}" for m in plan["metrics"])
          + f" (perplexity: windows of {plan.get('ppl_seq_len', 512)} tokens); HumanEval-X bodies capped at {plan['max_new_tokens']} new tokens; "
          f"task samples are seeded (seed {plan['seed']}) and identical for every model",
          "- single-line tasks use fill-in-the-middle (prompt + suffix) when the model has FIM tokens, the prefix "
          "alone otherwise; HumanEval-X and next-line use the prefix alone", ""]

    # ------------------------------------------------------------ verdict
    L += ["## Does the paper's claim hold here?", ""]
    if vs:
        n = len(vs)
        holds = sum(v["verdict"] == "holds" for v in vs)
        weak = sum(v["verdict"] in ("within noise", "no noise control") for v in vs)
        no = sum(v["verdict"] == "does not hold" for v in vs)
        ties = sum(v["verdict"] == "tie" for v in vs)
        prose_beaten = sum(v["beats_prose"] for v in vs)
        L += [f"Claim 1 — *calibrating on a language keeps that language best*. Over {n} (model, pattern, language, "
              f"metric) cells, own-language calibration beat prose calibration in {prose_beaten}, and beat **every** "
              f"other calibration (prose and the other three languages) in {holds + weak}; in {holds} of those the "
              f"margin exceeded the noise (half-vs-half difference, and for rates the binomial standard error of a "
              f"difference); {weak} {'is' if weak == 1 else 'are'} within noise or {'has' if weak == 1 else 'have'} no noise control "
              f"for {'its' if weak == 1 else 'their'} language; {ties} {'is a tie' if ties == 1 else 'are ties'} (mostly rates of 0 "
              f"on tiny samples: no signal either way); in {no} another calibration did better.", ""]
        by_metric = {}
        for v in vs:
            by_metric.setdefault(v["metric"], []).append(v)
        L += ["| metric | cells | own wins beyond noise | own wins within or without measured noise | tie | does not hold | own beats prose |",
              "|---|---|---|---|---|---|---|"]
        for metric, items in by_metric.items():
            L.append(f"| {metric} | {len(items)} | {sum(i['verdict'] == 'holds' for i in items)} | "
                     f"{sum(i['verdict'] in ('within noise', 'no noise control') for i in items)} | {sum(i['verdict'] == 'tie' for i in items)} | "
                     f"{sum(i['verdict'] == 'does not hold' for i in items)} | {sum(i['beats_prose'] for i in items)} |")
        L += ["", "Per cell (margin: relative perplexity reduction against the best rival, or points of rate):", "",
              "| model | pattern | language | metric | own | best rival | margin | noise | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
        for v in vs:
            lower = v["metric"] in LOWER_IS_BETTER
            margin = f"{100 * v['margin']:+.1f}%" if lower else f"{100 * v['margin']:+.1f} pt"
            noise = [x for x in (v["noise"], v["se"]) if x is not None]
            noise_s = (f"{100 * max(noise):.1f}{'%' if lower else ' pt'}") if noise else "–"
            L.append(f"| {v['model']} | {v['pattern']} | {v['language']} | {v['metric']} | {fmt(v['metric'], v['own'])} "
                     f"| {v['best_rival']} {fmt(v['metric'], v['rival'])} | {margin} | {noise_s} | {v['verdict']} |")
        L.append("")
    if js:
        real = sum(r["real"] for r in js)
        L += [f"Claim 2 — *different languages keep measurably different weights*. In {real} of {len(js)} (model, "
              f"language) cases the mask of a language is further from every other language's mask than two masks "
              f"of that same language calibrated on disjoint halves of its data are from each other "
              f"(50% unstructured).", "",
              "| model | language | within language (h0 vs h1) | nearest other language | mean to other languages | to prose | beyond noise |",
              "|---|---|---|---|---|---|---|"]
        for r in js:
            L.append(f"| {r['model']} | {r['language']} | {r['within']:.4f} | {r['cross_min']:.4f} | {r['cross_mean']:.4f} "
                     f"| {'–' if r['to_prose'] is None else format(r['to_prose'], '.4f')} "
                     f"| {'yes' if r['real'] else 'no'} |")
        L.append("")
    L += ["How to read this: a difference between calibrations only counts where it is larger than what two "
          "draws of calibration data from the *same* language produce. The paper did not run this control.", ""]

    # ------------------------------------------------------------ per model
    for model, entry in study["models"].items():
        slug = model_slug(model)
        L += [f"## {model}", ""]
        for pattern in plan["patterns"]:
            L += [f"### {pattern}" + (" (50%)" if pattern == "unstructured" else ""), ""]
            skipped = [m for m in plan["metrics"] if m not in metrics_for(plan, pattern)]
            if skipped:
                L += [f"Not evaluated at {pattern} in this run: {', '.join(skipped)} (the plan's `pattern_metrics`; "
                      f"`--pattern-metrics {pattern}=all` adds them).", ""]
            for metric in metrics_for(plan, pattern):
                L += _matrix(study, model, pattern, metric, None, METRIC_TITLE[metric])
                if metric in EXTRA:
                    field, title = EXTRA[metric]
                    if any(value(entry["evals"], k, lang, metric, field) is not None
                           for k in entry["evals"] for lang in plan["languages"]):
                        L += _matrix(study, model, pattern, metric, field, title)
            ov = (entry.get("overlap") or {}).get(pattern) or {}
            if ov.get("pairs"):
                main = [p for p in ov["pairs"] if "/" not in p["a"] and "/" not in p["b"]]
                names = list(dict.fromkeys([p["a"] for p in main] + [p["b"] for p in main]))
                d = {(p["a"], p["b"]): p["model"] for p in main}
                L += ["**Jaccard distance between kept-weight masks (whole model)**; two random 50% masks would be "
                      "at ≈ 0.667.", "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
                for a in names:
                    L.append(f"| {a} | " + " | ".join("0" if a == b else f"{d.get((a, b), d.get((b, a), float('nan'))):.4f}"
                                                      for b in names) + " |")
                subs = list(main[0]["per_sublayer"]) if main else []
                L += ["", "Per sublayer type (all decoder layers):", "",
                      "| pair | " + " | ".join(subs) + " |", "|---" * (len(subs) + 1) + "|"]
                for p in main:
                    L.append(f"| {p['a']} – {p['b']} | " + " | ".join(f"{p['per_sublayer'][s]:.4f}" for s in subs) + " |")
                noise_pairs = [p for p in ov["pairs"] if "/" in p["a"] and "/" in p["b"]
                               and p["a"].split("/")[0] == p["b"].split("/")[0]]
                if noise_pairs:
                    L += ["", "Noise control (same language, disjoint halves of its calibration packages):", "",
                          "| pair | whole model | min layer | max layer |", "|---|---|---|---|"]
                    for p in noise_pairs:
                        pl = list(p["per_layer"].values())
                        L.append(f"| {p['a']} – {p['b']} | {p['model']:.4f} | {min(pl):.4f} | {max(pl):.4f} |")
                if ov.get("png"):
                    L += ["", f"![Jaccard heatmap, {model}, {pattern}]({ov['png']})", ""]
                L.append("")
        # noise-control quality
        noise_keys = [k for k, v in entry["variants"].items() if v["group"] == "noise"]
        if noise_keys:
            L += ["### Noise control: quality of same-language sub-models from disjoint halves", "",
                  "| sub-model | evaluated on | " + " | ".join(plan["noise_metrics"]) + " |",
                  "|---" * (len(plan["noise_metrics"]) + 2) + "|"]
            for k in noise_keys:
                lang = entry["variants"][k]["language"]
                L.append(f"| {k} | {lang} | " + " | ".join(fmt(m, value(entry["evals"], k, lang, m))
                                                            for m in plan["noise_metrics"]) + " |")
            L.append("")
        png = sweep_plot(study, model, docs_dir / f"study-{slug}-sparsity.png")
        if png:
            L += ["### Quality vs sparsity (unstructured), own language vs prose calibration", "",
                  f"![quality vs sparsity, {model}]({png.name})", ""]
            sps = sorted(set(plan["sweep_sparsities"]) | {plan["sparsity"]})
            for metric in plan["sweep_metrics"]:
                L += [f"| {metric} | calibration | " + " | ".join(f"{round(100 * s)}%" for s in sps) + " |",
                      "|---" * (len(sps) + 2) + "|"]
                for lang in plan["sweep_languages"]:
                    for calib in (lang, "prose"):
                        L.append(f"| {lang} | {calib} | " + " | ".join(
                            fmt(metric, value(entry["evals"], f"{calib}@u{round(100 * s)}", lang, metric)) for s in sps) + " |")
                L.append("")
        # costs
        L += ["### Cost", "", "Sub-model extraction (seconds the build took, as recorded in its manifest; cached = reused from the "
              "sub-model cache in this run):", "",
              "| sub-model | extraction s | cached now |", "|---|---|---|"]
        for k, c in entry["costs"].items():
            if k != "dense":
                L.append(f"| {k} | {'–' if c.get('extract_s') is None else c['extract_s']} | {'yes' if c.get('cached') else 'no'} |")
        per_cell: dict[tuple, list] = {}
        for data in entry["evals"].values():
            for lang, cells in data.get("results", {}).items():
                for metric, res in cells.items():
                    per_cell.setdefault((metric, lang), []).append((res.get("seconds") or 0, res.get("n") or res.get("windows") or 0))
        L += ["", "Evaluation cost per (model, language, metric) cell, mean over the models evaluated:", "",
              "| metric | language | cells | mean s per cell | items per cell |", "|---|---|---|---|---|"]
        for (metric, lang), xs in sorted(per_cell.items()):
            L.append(f"| {metric} | {lang} | {len(xs)} | {sum(x[0] for x in xs) / len(xs):.1f} | {xs[0][1]} |")
        L.append("")

    # ------------------------------------------------------------ exclusions
    notes = set()
    for entry in study["models"].values():
        for data in entry["evals"].values():
            for lang, cells in data.get("results", {}).items():
                for metric, res in cells.items():
                    for d in res.get("excluded", []) + res.get("skipped_tasks", []):
                        notes.add(f"- {d['task_id']} ({metric}): {d['status']} — {d['reason']}")
                    if res.get("skipped"):
                        notes.add(f"- {metric} on {lang}: skipped — {res.get('reason')}")
    if notes:
        L += ["## Excluded and skipped tasks", "", *sorted(notes), ""]
    L += ["## Limitations", "",
          "- Small models (135 M, 494 M) lose much more to 50% pruning than the 7B models of the paper; absolute "
          "pass rates of pruned models are low, so differences between calibrations are a few tasks.",
          "- HumanEval-X and single-line results are on seeded subsets (see limits); the noise column is what decides.",
          "- Perplexities are comparable within one base model only (different tokenizers).",
          f"- Generated {time.strftime('%Y-%m-%d %H:%M %Z')}.", ""]
    path = docs_dir / "RESULTS.md"
    paths.atomic_write_bytes(path, "\n".join(L).encode())
    return path
