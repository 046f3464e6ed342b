"""The study: its plan and options, verdicts and Jaccard bands from intervals, RESULTS.md rendered from
synthetic cells, and one end-to-end run on a tiny model (sub-models, cells, resume, figures)."""

import random

import pytest

from subcoder.pruner.evaluation import report
from subcoder.pruner.evaluation.cli import study_main, study_parser, study_plan
from subcoder.pruner.evaluation.study import Plan, Variant, load_study, parse_shape, run_study, variants
from tiny_models import save_tiny_model_dir


def test_shapes_parse_to_one_spelling():
    assert [parse_shape(x) for x in ("0.5", "50%", "u30", "2:4", "0.3")] == ["u50", "u50", "u30", "2:4", "u30"]
    with pytest.raises(ValueError):
        parse_shape("1.5")


def test_variants_run_seed_by_seed_so_a_short_run_has_a_whole_matrix():
    plan = Plan(languages=("python", "java"), baselines=("prose",), shapes=("u50",), seeds=2)
    keys = [v.key for v in variants(plan)]
    assert keys == ["dense", "magnitude-u50", "python-u50-s0", "java-u50-s0", "prose-u50-s0",
                    "python-u50-s1", "java-u50-s1", "prose-u50-s1"]
    assert Variant("dense").method is None and Variant("prose", "u50").method == "wanda"


def test_study_options_shape_the_plan():
    plan = study_plan(study_parser().parse_args(["--quick", "--languages", "java,python", "--shapes", "0.5,2:4",
                                                 "--seeds", "3", "--task-shapes", "0.5,0.3", "--tasks", "40"]))
    assert plan.quick and plan.languages == ("java", "python") and plan.shapes == ("u50", "2:4")
    assert plan.seeds == 3 and plan.tasks == 40
    assert plan.task_shapes == ("u50",)  # a task shape outside the study's shapes is dropped
    assert study_plan(study_parser().parse_args(["--no-kernel"])).kernel is False
    assert study_plan(study_parser().parse_args([])).device == "cpu"
    assert study_plan(study_parser().parse_args(["--device", "cuda"])).device == "cuda"


def test_no_task_seeds_means_no_task_cells_at_all():
    """--task-seeds 0 is a perplexity-only pass (e.g. on a GPU): not even the dense reference's tasks run."""
    from subcoder.pruner.evaluation.study import metrics_of

    plan = Plan(shapes=("u50",), task_shapes=("u50",), task_seeds=0)
    assert metrics_of(plan, Variant("dense")) == ("ppl",) and metrics_of(plan, Variant("python", "u50")) == ("ppl",)
    plan.task_seeds = 1
    assert metrics_of(plan, Variant("dense")) == ("ppl", "nextline")
    assert metrics_of(plan, Variant("python", "u50", 0)) == ("ppl", "nextline")


@pytest.mark.parametrize("argv, words", [(["--shapes", "1.5"], "sparsity must be in (0, 1)"),
                                         (["--shapes", "3:2"], "shapes:"),
                                         (["--baselines", "c4"], "choose from")])
def test_bad_study_options_are_one_line(capsys, tmp_path, argv, words):
    with pytest.raises(SystemExit) as exc:
        study_main([*argv, "--work-dir", str(tmp_path / "w"), "--docs-dir", str(tmp_path / "d")])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("usage: ") is False and words in err[-1]
    assert not (tmp_path / "d").exists()


def test_interval_verdicts():
    assert report.interval_verdict({"low": -0.2, "high": -0.1}, better_below=True) == "holds"
    assert report.interval_verdict({"low": -0.2, "high": 0.1}, better_below=True) == "not shown"
    assert report.interval_verdict({"low": 0.1, "high": 0.2}, better_below=True) == "does not hold"
    assert report.interval_verdict({"low": 0.1, "high": 0.2}, better_below=False) == "holds"


def _pair(a, b, per_layer):
    return {"a": a, "b": b, "a_calibration": a.split("-")[0], "b_calibration": b.split("-")[0],
            "model": sum(per_layer) / len(per_layer), "per_layer": {str(i): d for i, d in enumerate(per_layer)}}


def test_jaccard_bands_call_layers_distinct_only_beyond_the_within_band():
    pairs = [_pair("python-s0", "python-s1", [0.10, 0.30]), _pair("java-s0", "java-s1", [0.12, 0.28]),
             _pair("python-s0", "java-s0", [0.20, 0.29]), _pair("python-s1", "java-s1", [0.22, 0.31])]
    bands = report.jaccard_bands(pairs)
    assert bands["distinct_layers"] == [0]  # layer 1's between band overlaps its within band
    assert bands["layers"][0]["within"]["max"] == 0.12 and bands["layers"][0]["between"]["min"] == 0.20
    assert bands["within_pairs"] == 2 and bands["between_pairs"] == 2
    assert bands["verdict"] == "distinct"  # whole model: 0.245, 0.265 against 0.2, 0.2
    one_seed = report.jaccard_bands([_pair("python-s0", "java-s0", [0.2, 0.3])])
    assert one_seed["verdict"].startswith("no within-language band") and one_seed["distinct_layers"] == []


def synthetic_study(effect=-0.1, seeds=3, files=12, tasks=60, task_seeds=1):
    """Cells as load_study returns them: own-language calibration lowers the loss by `effect` (log); the
    first `task_seeds` seeds of each row have next-line cells."""
    rng = random.Random(0)
    langs = ("python", "java")
    plan = Plan(models=("m",), languages=langs, baselines=("mixed-code", "prose"), shapes=("u50",), seeds=seeds,
                task_shapes=("u50",), tasks=tasks)
    from dataclasses import asdict

    entry = {"variants": {}, "cells": {}, "jaccard": {}}
    base = {lang: [1.0 + rng.random() for _ in range(files)] for lang in langs}

    def ppl(loss_shift, lang):
        return {"windows": [{"file": f"{lang}{i}", "nll": (b + loss_shift + rng.gauss(0, 0.005)) * 100, "tokens": 100}
                            for i, b in enumerate(base[lang])]}

    def nextline(p, lang):
        return {"layout": "psm", "results": [{"id": f"{lang}{i}", "file": f"{lang}{i % files}", "exact": rng.random() < p}
                                             for i in range(tasks)]}

    for v in variants(plan):
        entry["variants"][v.key] = {**asdict(v), "method": v.method, "path": v.key,
                                    "described": f"{v.calibration}, 32 x 512 tokens: 32 windows from 9 shipped files"
                                    if v.method == "wanda" else None}
        cells = {}
        for lang in langs:
            shift = 0.0 if v.method is None else 0.3 + (effect if v.calibration == lang else 0.0) \
                + (effect / 2 if v.calibration == "mixed-code" else 0.0) + rng.gauss(0, 0.01)
            cells[lang] = {"ppl": ppl(shift, lang)}
            if v.method is None or v.seed < task_seeds:
                hit = 0.02 if lang == "java" else (0.6 if v.calibration in ("dense", lang) else 0.3)
                cells[lang]["nextline"] = nextline(hit, lang)
        entry["cells"][v.key] = cells
    keys = [k for k, v in entry["variants"].items() if v["calibration"] in langs]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            same = entry["variants"][a]["calibration"] == entry["variants"][b]["calibration"]
            entry["jaccard"].setdefault("u50", []).append(
                _pair(a, b, [0.1 + rng.random() * 0.01 + (0 if same else 0.05) for _ in range(4)]))
    return {"plan": asdict(plan), "command": "subcoder eval study (synthetic)", "sampling": "files", "unavailable": [],
            "models": {"m": entry}}


def test_summary_and_results_from_synthetic_cells(tmp_path):
    study = synthetic_study()
    s = report.summarize(study)["m"]["u50"]
    assert s["ppl"]["own"]["python"]["verdict"] == "holds" and s["ppl"]["own"]["java"]["verdict"] == "holds"
    assert s["ppl"]["match"]["high"] < 0 and s["ppl"]["table"]["python"]["python"]["seeds"] == 3
    assert s["ppl"]["table"]["python"]["python"]["calibration_files"] == 9
    assert s["ppl"]["baselines"]["prose"]["python"]["verdict"] == "holds"
    assert s["tasks"]["java"]["excluded"].startswith("dense at the floor")
    assert "verdict" in s["tasks"]["python"] and s["jaccard"]["verdict"] == "distinct"
    path = report.write_results(study, tmp_path, later="qwen2.5-coder-0.5b, for a later session")
    text = path.read_text()
    for needle in ("## Answers", "Own language best (perplexity)**: holds in 2 of 2", "Language-match effect",
                   "Mixed-code calibration", "left out (dense at the floor): java", "Distinct regions (Jaccard)**: distinct",
                   "psm layout, 60 tasks from 12 files", "12 windows from 12 files", "qwen2.5-coder-0.5b, for a later session",
                   "one window per file"):
        assert needle in text, needle
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["study-m-jaccard-u50.png"]


def test_a_second_calibration_draw_enters_the_task_rows_and_their_differences(tmp_path):
    study = synthetic_study(task_seeds=2, tasks=120)
    t = report.summarize(study)["m"]["u50"]["tasks"]["python"]
    assert t["seeds"]["python"] == 2 and t["seeds"]["dense"] == 1 and t["seeds"]["magnitude"] == 1
    cells, variants = study["models"]["m"]["cells"], study["models"]["m"]["variants"]
    rates = [sum(r["exact"] for r in cells[k]["python"]["nextline"]["results"]) / 120
             for k, v in variants.items() if v["calibration"] == "python" and v["seed"] < 2]
    assert t["rows"]["python"]["estimate"] == pytest.approx(sum(rates) / 2)  # the draws' mean, per task
    java = t["rivals"]["java"]
    assert java["diff"]["low"] < java["diff"]["estimate"] < java["diff"]["high"] and java["diff"]["low"] > 0
    text = report.write_results(study, tmp_path).read_text()
    assert "Wanda, java (2 draws)" in text and "up to 2 calibration draws per row" in text


def test_no_effect_is_not_called_a_win(tmp_path):
    s = report.summarize(synthetic_study(effect=0.0))["m"]["u50"]
    assert all(o["verdict"] != "holds" for o in s["ppl"]["own"].values())
    assert abs(s["ppl"]["match"]["estimate"]) < 0.01  # against the -0.1 the other test finds
    assert all(m["inside_own"] for m in s["ppl"]["baselines"]["mixed-code"].values())


@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    from subcoder.pruner.evaluation import study as study_module

    monkeypatch.setattr(study_module, "FLOOR", 0.0)  # the tiny model scores 0: judge its tasks all the same
    model = str(save_tiny_model_dir(tmp_path / "tiny-llama"))
    plan = Plan(models=(model,), languages=("python", "java"), baselines=("prose",), shapes=("u50", "u30"), seeds=2,
                task_shapes=("u50",), tasks=3, windows=3, seq_len=32, context_tokens=64, max_new_tokens=8,
                calib_samples=2, calib_seq_len=32, kernel=False)
    work, docs = tmp_path / "work", tmp_path / "docs"
    study = run_study(plan, work_dir=work, command="subcoder eval study (test)", progress=False)
    entry = study["models"][model]
    assert set(entry["variants"]) == {v.key for v in variants(plan)}
    assert len(entry["cells"]["python-u50-s0"]["java"]["ppl"]["windows"]) == 3
    assert "nextline" in entry["cells"]["prose-u50-s0"]["python"] and "nextline" not in entry["cells"]["prose-u50-s1"]["python"]
    assert entry["jaccard"]["u50"] and entry["jaccard"]["u30"]
    monkeypatch.setattr(study_module, "FLOOR", 0.1)
    assert study_module.dense_at_floor(model, plan, "python", work)  # a real run would not have run those cells
    report.write_results(study, docs)
    text = (docs / "RESULTS.md").read_text()
    assert "## Answers" in text and "Held-out perplexity" in text
    assert sorted(p.name for p in docs.glob("*.png")) == ["study-tiny-llama-jaccard-u30.png",
                                                          "study-tiny-llama-jaccard-u50.png",
                                                          "study-tiny-llama-sparsity.png"]
    # a finished study re-reads from disk without building or evaluating anything, and so does a bigger plan's
    # finished part (seeds are added, not redone)
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*-ppl.json")}
    again = load_study(plan, work_dir=work, command="again")
    assert again["models"][model]["cells"].keys() == entry["cells"].keys()
    plan.tasks = 10  # a plan asking for more tasks still reads the finished 3-task cells (the report prints n)
    more = load_study(plan, work_dir=work, command="more tasks", masks=False)["models"][model]["cells"]
    assert len(more["python-u50-s0"]["python"]["nextline"]["results"]) == 3 and "ppl" in more["python-u50-s0"]["python"]
    plan.tasks = 3
    plan.seeds = 3
    plan.shapes = ("u50",)
    partial = load_study(plan, work_dir=work, command="more seeds", masks=False)
    assert "python-u50-s2" not in partial["models"][model]["cells"] and "python-u50-s1" in partial["models"][model]["cells"]
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*-ppl.json")}
    # sub-models built elsewhere (a lent GPU) and not here: their unmeasured mask pairs are left out
    import shutil

    plan.seeds, plan.shapes = 2, ("u50", "u30")
    shutil.rmtree(entry["variants"]["java-u30-s1"]["path"])
    (work / "tiny-llama" / "jaccard-u30.json").unlink()
    later = load_study(plan, work_dir=work, command="elsewhere")["models"][model]["jaccard"]["u30"]
    assert later and all("java-u30-s1" not in (p["a"], p["b"]) for p in later)
    # --rebuild-masks builds it again here, so its pairs are measured; the cells stay as they were
    assert run_study(plan, work_dir=work, command="rebuild", progress=False, shard=(0, 1), rebuild_masks=True) is None
    rebuilt = load_study(plan, work_dir=work, command="rebuilt")["models"][model]["jaccard"]["u30"]
    assert any("java-u30-s1" in (p["a"], p["b"]) for p in rebuilt)
    # built again on another machine (another cache path, the same calibration settings): its pairs stand
    import json

    meta_file = work / "tiny-llama" / "python-u30-s0" / "submodel.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "path": str(tmp_path / "elsewhere")}))
    moved = load_study(plan, work_dir=work, command="moved")["models"][model]["jaccard"]["u30"]
    assert sum("python-u30-s0" in (p["a"], p["b"]) for p in moved) == 3  # paired with the other three
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*-ppl.json")}


def test_shards_split_the_variants_and_deal_the_slow_ones_first():
    from subcoder.pruner.evaluation.study import metrics_of, shard_of

    plan = Plan(shapes=("u50", "2:4", "u30"), task_shapes=("u50", "u30"), seeds=5)
    vs = variants(plan)
    shards = [shard_of(plan, vs, (i, 7)) for i in range(7)]
    cells = sorted((v.key, lang) for s in shards for v, langs in s for lang in langs)
    assert cells == sorted((v.key, lang) for v in vs for lang in plan.languages)  # each (variant, language) once
    slow = [sum("nextline" in metrics_of(plan, v) for v, _ in s) for s in shards]
    assert max(slow) - min(slow) <= 1 and sum(slow) == 15 * 4  # dense, then magnitude and 6 rows at two shapes
    assert all(len(langs) == 1 for s in shards for v, langs in s if "nextline" in metrics_of(plan, v))


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_one_line(capsys, tmp_path, text):
    with pytest.raises(SystemExit) as exc:
        study_main(["--shard", text, "--work-dir", str(tmp_path / "w"), "--docs-dir", str(tmp_path / "d")])
    assert exc.value.code == 2 and "shard" in capsys.readouterr().err.splitlines()[-1]


def test_one_seed_is_not_judged_however_narrow_its_interval():
    s = report.summarize(synthetic_study(seeds=1))["m"]["u50"]
    assert {o["verdict"] for o in s["ppl"]["own"].values()} == {report.ONE_SEED}


def test_results_name_every_machine_and_say_when_masks_are_missing(tmp_path):
    """Perplexity cells from a lent GPU and next-line cells from the CPU: RESULTS.md names both; a shape
    whose mask pairs could not be measured says so rather than leaving the claim out."""
    study = synthetic_study()
    gpu = {"device": "cuda", "gpu": "NVIDIA H200", "processor": "Xeon", "torch": "2.11", "transformers": "5.17",
           "subcoder": "0.1.0"}
    cpu = {"processor": "AMD EPYC", "cpus": 2, "threads": 2, "torch": "2.13", "transformers": "5.24", "subcoder": "0.1.0"}
    for cells in study["models"]["m"]["cells"].values():
        for metrics in cells.values():
            metrics["ppl"]["environment"] = gpu
            if "nextline" in metrics:
                metrics["nextline"]["environment"] = cpu
    study["models"]["m"]["jaccard"] = {}
    text = report.write_results(study, tmp_path).read_text()
    assert "perplexity cells on NVIDIA H200 (CUDA" in text and "next-line cells on AMD EPYC, 2 CPUs" in text
    assert "Distinct regions (Jaccard)**: not measured" in text


def test_a_resumed_run_deals_only_the_units_with_work_left():
    from subcoder.pruner.evaluation.study import metrics_of, shard_of

    plan = Plan(shapes=("u50", "u30"), task_shapes=("u50",), seeds=2)
    vs = variants(plan)
    left = {(v.key, lang) for v in vs if "nextline" in metrics_of(plan, v) for lang in plan.languages[:1]}
    pending = lambda v, langs: any((v.key, lang) in left for lang in langs)  # noqa: E731
    shards = [shard_of(plan, vs, (i, 3), pending) for i in range(3)]
    dealt = sorted((v.key, langs[0]) for s in shards for v, langs in s)
    assert dealt == sorted(left)  # every unit with work once, none without
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
