"""The frontier: task and window sampling, scoring with resume, the statistics of the cells, and one
real run on a tiny model through the engine to the report."""

import json
import math

import pytest

from subcoder.pruner.evaluation import frontier
from subcoder.pruner.evaluation.frontier import Configuration, FrontierPlan, _cell_file
from subcoder.pruner.evaluation.nextline import coverage, score, spread_tasks
from subcoder.pruner.evaluation.perplexity import file_windows
from subcoder.pruner.evaluation.study import model_slug
from tiny_models import byte_tokenizer, save_tiny_model_dir

DOCS = [{"package": f"pkg{i % 2}", "path": f"f{i}.py",
         "text": "\n".join(f"value_{i}_{k} = compute({k})" for k in range(3 + 4 * (i + 1)))} for i in range(3)]


def test_spread_tasks_cover_every_file_round_robin_and_grow_stably():
    tasks = spread_tasks("python", 9, documents=DOCS)
    assert coverage(tasks) == {"tasks": 9, "files": 3, "packages": 2, "max_per_file": 3}
    assert len({t["file"] for t in tasks[:3]}) == 3  # one per file before any file gives a second
    assert spread_tasks("python", 5, documents=DOCS) == tasks[:5]  # the first n of a larger draw
    for t in tasks:
        doc = next(d for d in DOCS if t["file"] == f"{d['package']}:{d['path']}")
        assert (t["prefix"] + t["target"] + "\n" + t["suffix"]).removesuffix("\n") == doc["text"]
    assert len({t["id"] for t in spread_tasks("python", 100, documents=DOCS)}) == 4 + 8 + 12  # no repeats


def test_file_windows_never_cross_files():
    tok = byte_tokenizer()
    windows = file_windows(tok, "python", n_windows=None, seq_len=64, documents=DOCS)
    for w in windows:
        doc = next(d for d in DOCS if w["file"] == f"{d['package']}:{d['path']}")
        assert tok.decode(w["ids"]) in doc["text"]
    assert len({w["file"] for w in windows[:3]}) == 3
    assert len(file_windows(tok, "python", n_windows=4, seq_len=64, documents=DOCS)) == 4


def test_score_resumes_without_recomputing():
    tasks = spread_tasks("python", 4, documents=DOCS)
    calls = []

    def complete(prefix, suffix):
        calls.append(prefix)
        return tasks[0]["target"] if prefix == tasks[0]["prefix"] else "x"

    saved = []
    first = score(complete, tasks[:2], layout="psm", save=saved.append, save_every=1)
    assert [r["exact"] for r in first] == [True, False] and len(saved) == 3
    calls.clear()
    again = score(complete, tasks, layout="psm", done=first)
    assert len(calls) == 2 and again[:2] == first


def test_configuration_names():
    assert Configuration.parse("m", "dense").dense
    assert Configuration.parse("m", "0.5").name == "u50" and Configuration.parse("m", "30%").name == "u30"
    assert Configuration.parse("m", "2:4").name == "2:4"
    with pytest.raises(ValueError):
        Configuration.parse("m", "1.5")


def test_configurations_name_another_base_and_a_calibration(tmp_path):
    bigger = Configuration.parse("m", "0.5@big")
    assert (bigger.base, bigger.sparsity, bigger.foreign, bigger.name) == ("big", 0.5, True, "u50@big")
    assert not Configuration.parse("m", "dense@m").foreign, "the plan's own base is not foreign"
    assert Configuration.parse("m", "2:4@big").pattern == "2:4"
    tuned = Configuration.parse("m", "0.5/files-fim25-n128-len1024@big")
    assert tuned.name == "u50/files-fim25-n128-len1024@big"
    spec = tuned.calibration_spec()
    assert (spec.sampling, spec.fim, spec.n_samples, spec.seq_len) == ("files", 0.25, 128, 1024)
    assert Configuration.parse("m", "0.5").calibration_spec() == type(spec)(), "no suffix: the default calibration"
    mixed = Configuration.parse("m", "0.3/mixed").calibration_spec()
    assert (mixed.source, mixed.sampling) == ("mixed-code", type(spec)().sampling), "mixed code in the default sampler"
    # Distinct configurations keep distinct cell files.
    paths = {_cell_file(tmp_path, Configuration.parse("m", t), "python", "nextline:psm")
             for t in ("0.5", "0.5/files", "0.5@big", "dense", "dense@big", "2:4", "0.5+int8", "dense+int8")}
    assert len(paths) == 8
    small = Configuration.parse("m", "0.5+int8/files@big")
    assert (small.values, small.calibration, small.base, small.name) == ("int8", "files", "big", "u50+int8/files@big")
    assert Configuration.parse("m", "dense+int8").name == "dense+int8"
    for bad in ("0.5/fim", "dense/files", "0.5@", "0.5/files-wat", "0.5+int4"):
        with pytest.raises(ValueError):
            Configuration.parse("m", bad)


def test_pareto():
    pts = [("a", 10, 0.5), ("b", 20, 0.6), ("c", 20, 0.4), ("d", 5, 0.3)]
    assert frontier.pareto(pts) == ["a", "b", "d"]


def _cell(results):
    return {"results": [{"id": f"t{i}", "file": f"f{i // 2}", "exact": e, "similarity": s}
                        for i, (e, s) in enumerate(results)], "seconds": 1.0}


def test_summarize_pairs_on_common_tasks():
    dense = _cell([(True, 1.0)] * 6 + [(False, 0.5)] * 2)
    sub = _cell([(False, 0.5)] * 5 + [(True, 1.0)])  # cut short: 6 tasks
    windows = [{"file": f"f{i}", "nll": 2.0 * (i + 1), "tokens": 2} for i in range(4)]
    cells = {"python": {"dense": {"nextline:psm": dense, "ppl": {"windows": windows}},
                        "u50": {"nextline:psm": sub, "ppl": {"windows": [{**w, "nll": w["nll"] + 2} for w in windows]}}}}
    out = frontier.summarize(cells)["python"]
    # each configuration's interval uses all its tasks; the comparison, the 6 both finished
    assert (out["dense"]["nextline:psm"]["n"], out["u50"]["nextline:psm"]["n"]) == (8, 6)
    assert out["dense"]["nextline:psm"]["exact"]["estimate"] == pytest.approx(6 / 8)
    vs = out["u50"]["nextline:psm"]["vs_ref"]
    assert vs["n"] == 6
    assert (vs["only_this"], vs["only_ref"]) == (0, 5) and vs["mcnemar_p"] == pytest.approx(0.0625)
    assert vs["exact_diff"]["estimate"] == pytest.approx(-5 / 6)
    # every window's loss is 1 nat/token higher: the ratio is e, exactly, in every resample
    assert out["u50"]["ppl_vs_ref"]["ratio"] == pytest.approx(math.e)
    assert out["u50"]["ppl_vs_ref"]["low"] == pytest.approx(math.e)
    assert out["dense"]["ppl"]["estimate"] == pytest.approx(math.exp(5.0 / 2))


def test_a_sub_model_of_another_base_is_also_paired_with_that_base_dense():
    small = _cell([(False, 0.0)] * 4)
    big = _cell([(True, 1.0)] * 4)
    cut = _cell([(True, 1.0)] * 3 + [(False, 0.0)])
    cells = {"python": {"dense": {"nextline:psm": small}, "dense@big": {"nextline:psm": big},
                        "u40@big": {"nextline:psm": cut}}}
    out = frontier.summarize(cells)["python"]
    assert frontier.own_dense("u40+int8@big") == "dense@big" and frontier.own_dense("u40") == "dense"
    # an int8-valued sub-model pairs with the dense model in int8 when that was measured: the same value format
    assert frontier.own_dense("u40+int8@big", {"dense+int8@big"}) == "dense+int8@big"
    assert frontier.own_dense("u40+int8", {"dense+int8"}) == "dense+int8"
    assert frontier.own_dense("dense+int8@big", {"dense+int8@big"}) == "dense@big"
    cell = out["u40@big"]["nextline:psm"]
    assert cell["vs_ref"]["exact_diff"]["estimate"] == pytest.approx(3 / 4)
    assert cell["vs_base"]["exact_diff"]["estimate"] == pytest.approx(-1 / 4)
    assert (cell["vs_base"]["only_this"], cell["vs_base"]["only_ref"]) == (0, 1)
    assert "vs_base" not in out["dense@big"]["nextline:psm"]  # a dense model is its own base
    lines = frontier._paired_table(out, ["nextline:psm"], "base", "caption")
    assert len([x for x in lines if x.startswith("| u40@big")]) == 1


def test_a_tiny_model_through_the_engine_to_the_report(tmp_path):
    model = str(save_tiny_model_dir(tmp_path / "tiny", "llama"))
    plan = FrontierPlan(base=model, configurations=("dense",), tasks=3, windows=2, seq_len=64, context_tokens=96,
                        max_new_tokens=4, decode_prompts=1, decode_tokens=3)
    work = tmp_path / "work"
    frontier.run_configuration(plan, Configuration(model), work, progress=False)
    files = sorted(p.name for p in work.rglob("*.json"))
    cost_file = f"python-{frontier.cost_cell()}.json"  # keyed by the machine's kernel instruction set
    assert files == sorted([cost_file, "python-nextline-psm.json", "python-nextline-spm.json", "python-ppl.json"])
    psm = json.loads(next(work.rglob("python-nextline-psm.json")).read_text())
    assert psm["complete"] and len(psm["results"]) == 3 and psm["coverage"]["files"] == 3
    report = tmp_path / "docs" / "FRONTIER.md"
    summary = frontier.write_report(plan, work, report, command="subcoder eval frontier --test")
    row = summary["python"]["dense"]
    cost = row["cost"][frontier.cost_machine()]
    assert cost["ms_per_token"] > 0 and row["ppl"]["windows"] == 2
    # the typing replay: one request per 4 typed characters and one at each line's end, the first cold
    lines = [t["target"] for t in frontier.replay_tasks(plan, "python")]
    assert cost["typing_requests"] == sum(len(line) // 4 + (len(line) % 4 > 0) for line in lines if line)
    assert cost["typing_p50_ms"] > 0 and cost["typing_cold_p50_ms"] is not None
    # bytes a step reads: the decoder layers and the head, not the embedding; the bound follows from them
    assert 0 < cost["step_bytes"] < cost["weight_bytes"]
    assert cost["bound_ms"] == pytest.approx(1000 * cost["step_bytes"] / (cost["read_gbs"] * 1e9), rel=0.1, abs=0.01)
    text = report.read_text()
    assert "| dense |" in text and "PSM up to n=3" in text and "## Cost, per machine" in text
    assert (report.parent / f"frontier-{model_slug(model)}.png").is_file()
    # a second run finds every cell done and loads nothing
    frontier.run_configuration(plan, Configuration(model), work, progress=False)
    # costs re-measured in alternating rounds keep the RSS of the configuration's own process
    frontier.interleaved_cost(plan, [Configuration(model)], work, rounds=2)
    again = json.loads(next(work.rglob(cost_file)).read_text())
    assert again["method"].endswith("2 rounds") and again["rss_bytes"] == cost["rss_bytes"]
    assert again["steps"] == 2 * plan.decode_prompts * (plan.decode_tokens // 2)
    assert again["replay"]["requests"] == cost["typing_requests"], "every replay task in one of the rounds"
    assert again["environment"]["kernel_isa"] == frontier.engine_isa()
    # each interleaved cell keeps its rounds' dense figures: here it is its own anchor
    assert again["anchor"] == {"name": "dense", "ms_per_token": again["ms_per_token"],
                               "typing_p50_ms": again["replay"]["p50_ms"]}
    # an RSS measured while the model held other weights (an older engine) is not carried over
    path = next(work.rglob(cost_file))
    path.write_text(json.dumps({**again, "weight_bytes": again["weight_bytes"] + 1}))
    frontier.interleaved_cost(plan, [Configuration(model)], work, rounds=1)
    assert json.loads(path.read_text())["rss_bytes"] is None


def test_a_suffix_budget_is_a_setting_of_its_own_cells_only():
    """Cells measured with a suffix budget are told apart from the default's (which stay valid: their
    settings gain no key); perplexity has no prompt, so its cells are shared."""
    default, small = FrontierPlan(), FrontierPlan(suffix_tokens=32)
    assert "suffix_tokens" not in default.settings("nextline:psm")
    for cell in ("nextline:psm", "replay", "cost-avx2"):
        assert small.settings(cell)["suffix_tokens"] == 32
        assert {k: v for k, v in small.settings(cell).items() if k != "suffix_tokens"} == default.settings(cell)
    assert small.settings("ppl") == default.settings("ppl")


def test_decode_cost_relative_to_the_dense_model_of_the_same_rounds():
    # two groups of rounds on a machine that ran 1.5x slower for the second: the ratios still compare
    early = {"ms_per_token": 80.0, "anchor": {"name": "dense", "ms_per_token": 100.0}}
    late = {"ms_per_token": 120.0, "anchor": {"name": "dense", "ms_per_token": 150.0}}
    assert frontier.relative_ms(early, None) == (pytest.approx(0.8), True)
    assert frontier.relative_ms(late, {"ms_per_token": 100.0}) == (pytest.approx(0.8), True)
    # measured in its own process: against the stored dense cell, and said so
    assert frontier.relative_ms({"ms_per_token": 50.0}, {"ms_per_token": 100.0}) == (pytest.approx(0.5), False)
    assert frontier.relative_ms({"ms_per_token": 50.0}, None) is None
    dense = {"ms_per_token": 70.0}
    assert frontier.relative_ms(dense, dense) == (1.0, True)
    # rounds without the dense model leave no anchor to divide by
    other = {"ms_per_token": 50.0, "anchor": {"name": "u40", "ms_per_token": 25.0}}
    assert frontier.relative_ms(other, {"ms_per_token": 100.0}) == (pytest.approx(0.5), False)


def test_shards_deal_the_units_still_to_measure(tmp_path):
    plan = FrontierPlan(base="base", configurations=("dense", "0.5"), languages=("python", "java", "cpp"),
                        cells=("ppl",))
    configs = [Configuration.parse("base", c) for c in plan.configurations]
    done = _cell_file(tmp_path, configs[0], "java", "ppl")  # dense java: measured already
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"settings": plan.settings("ppl"), "complete": True, "windows": []}))
    shards = [frontier.shard_units(plan, configs, tmp_path, (i, 2)) for i in range(2)]
    units = [(c.name, lang) for shard in shards for c, lang in shard]
    # every unit with work lands in exactly one shard; the done one in none
    assert sorted(units) == sorted([("dense", "python"), ("dense", "cpp"),
                                    ("u50", "python"), ("u50", "java"), ("u50", "cpp")])
    assert [len(s) for s in shards] == [3, 2]


def test_cost_cells_are_refused_on_a_gpu(capsys):
    from subcoder.pruner.evaluation.cli import frontier_main

    assert frontier_main(["--device", "cuda", "--cells", "cost,ppl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPU engine only" in err[0]


def test_an_interleaved_group_leaves_the_whole_report_alone(tmp_path, monkeypatch, capsys):
    """A cost group is part of the frontier: its run must not replace the report of every configuration."""
    from subcoder.pruner.evaluation import frontier as fr
    from subcoder.pruner.evaluation.cli import frontier_main

    groups = []
    monkeypatch.setattr(fr, "interleaved_cost", lambda plan, configs, work, rounds: groups.append(len(configs)))
    monkeypatch.setattr(fr, "run_configuration", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    args = ["--cells", "cost", "--interleave-cost", "1", "--configs", "dense,0.5", "--work-dir", str(tmp_path / "w")]
    assert frontier_main(args) == 0 and groups == [2]
    assert not (tmp_path / "docs").exists() and "--report-only" in capsys.readouterr().out
    assert frontier_main(args + ["--report", str(tmp_path / "group.md")]) == 0  # asked for: written
    assert (tmp_path / "group.md").is_file()


def test_int8_dense_values_round_into_the_weights_where_the_kernel_cannot_run(tmp_path):
    import torch

    from subcoder.pruner.kernels import int8
    from subcoder.pruner.loader import _round_through_int8, load_model

    model = str(save_tiny_model_dir(tmp_path / "tiny", "llama"))
    loaded = load_model(model, dtype="float32", sparse=False)
    before = {n: m.weight.detach().clone() for n, m in loaded.model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    _round_through_int8(loaded)
    head = loaded.model.get_output_embeddings()
    for name, module in loaded.model.named_modules():
        if name not in before:
            continue
        if module is head:  # lm_head stays as it is, as on the kernel
            assert torch.equal(module.weight, before[name])
        else:
            q, scales = int8.quantise_dense(before[name])
            assert torch.equal(module.weight, int8.dequantise_dense(q, scales))


def test_typing_replay_requests_and_their_summary():
    from subcoder.pruner.evaluation import replay

    task = {"id": "t", "prefix": "a = 1\n", "suffix": "\nb = 2", "target": "total = a + 1"}
    assert replay.typed_prefixes(task, 4) == ["a = 1\ntota", "a = 1\ntotal = ", "a = 1\ntotal = a + ",
                                              "a = 1\ntotal = a + 1"]
    assert replay.typed_prefixes({**task, "target": "abcd"}, 4) == ["a = 1\nabcd"], "the line's end, once"
    assert replay.typed_prefixes({**task, "target": ""}, 4) == [], "nothing typed, nothing asked"
    requests = [{"ms": ms, "cold": i % 5 == 0, "new_tokens": 2} for i, ms in enumerate([100, 10, 20, 30, 40] * 2)]
    out = replay.summary(requests)
    # nearest rank: a latency that happened, never an interpolation between two
    assert (out["p50_ms"], out["p95_ms"], out["cold_p50_ms"], out["extend_p50_ms"]) == (30, 100, 100, 25.0)
    assert (out["requests"], out["cold_requests"], out["new_tokens"]) == (10, 2, 20)
    assert replay.summary([]) == {"requests": 0}


def test_a_cpu_with_amx_is_a_machine_of_its_own(monkeypatch):
    monkeypatch.setattr(frontier, "engine_isa", lambda: "avx512-bf16")
    monkeypatch.setattr("subcoder.pruner.cpu.cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert frontier.cost_cell() == "cost-avx512-bf16-amx"
    monkeypatch.setattr("subcoder.pruner.cpu.cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert frontier.cost_cell() == "cost-avx512-bf16"
    monkeypatch.setattr(frontier, "engine_isa", lambda: "avx2")  # AMX without the AVX-512 kernel: the AVX2 machine
    monkeypatch.setattr("subcoder.pruner.cpu.cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert frontier.cost_cell() == "cost-avx2"


def test_cost_cells_of_each_machine_are_kept_apart(tmp_path):
    plan = FrontierPlan(base="base", configurations=("dense",), cells=("cost",), layouts=("psm",))
    cfg = Configuration("base")
    for isa, ms in (("avx512-bf16-amx", 12.0), ("avx512-bf16", 20.0), ("avx2", 90.0)):
        out = _cell_file(tmp_path, cfg, "python", frontier.cost_cell(isa))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"cell": frontier.cost_cell(isa), "settings": plan.settings("cost"), "complete": True,
                                   "ms_per_token": ms, "ms_p10": ms, "ms_p90": ms, "weight_bytes": 2**20,
                                   "environment": {"processor": "cpu " + isa}}))
    row = frontier.summarize(frontier.load_cells(plan, tmp_path))["python"]["dense"]
    assert {isa: c["ms_per_token"] for isa, c in row["cost"].items()} == {
        "avx512-bf16-amx": 12.0, "avx512-bf16": 20.0, "avx2": 90.0}
    text = "\n".join(frontier.render_cost(plan, {"python": {"dense": row}}))
    assert "### AVX-512 BF16 kernel, CPU with AMX (cpu avx512-bf16-amx)" in text
    assert "### AVX-512 BF16 kernel (cpu avx512-bf16)" in text and "### AVX2 kernel" in text
    row["cost"].pop("avx512-bf16-amx")
    assert "| dense | 90.0 (90.0–90.0) | 1.00 | – |" in text, "no replay stored: its columns say so"
    # a configuration with quality cells but no cost on a machine is named under that machine's table
    rows = {"dense": row, "u50": {"cost": {"avx2": row["cost"]["avx2"]}}}
    text = "\n".join(frontier.render_cost(plan, {"python": rows}))
    avx512, avx2 = text.split("### AVX2 kernel")
    assert "Not measured on this machine: u50." in avx512 and "Not measured" not in avx2
    # a configuration with only a cost cell gets no row of dashes in the language's quality table
    plan2 = FrontierPlan(base="base", configurations=("dense", "0.5"), cells=("cost",), layouts=("psm",))
    page = frontier.render(plan2, {"python": rows}, command="", png=None)
    assert "| u50 | – | – | – |" not in page and "| u50 | " in page
    # a cell without a typing replay is measured again on its machine
    assert frontier.missing_cells(plan, cfg, "python", tmp_path) == [(frontier.cost_cell(), None)]
