"""The study end to end on a tiny model: sub-models, matrices, Jaccard heatmap, noise control, sweep, RESULTS.md."""

import pytest

from subcoder.pruner.evaluation.cli import study_main, study_parser, study_plan
from subcoder.pruner.evaluation.report import write_results
from subcoder.pruner.evaluation.runner import METRICS
from subcoder.pruner.evaluation.study import Plan, run_study
from tiny_models import save_tiny_model_dir


@pytest.mark.slow
def test_study_on_a_tiny_model(tmp_path):
    model = str(save_tiny_model_dir(tmp_path / "tiny-llama"))
    plan = Plan(models=(model,), languages=("python", "java"), patterns=("unstructured", "2:4"), metrics=("ppl",),
                limits={"ppl": 1}, calib_samples=2, calib_seq_len=32, ppl_seq_len=32, context_tokens=64,
                noise_languages=("python",), noise_metrics=("ppl",), sweep_sparsities=(0.3, 0.5),
                sweep_languages=("python",), sweep_metrics=("ppl",), batch_size=2)
    docs = tmp_path / "docs"
    study = run_study(plan, work_dir=tmp_path / "work", docs_dir=docs, command="subcoder eval study (test)")
    write_results(study, docs)
    text = (docs / "RESULTS.md").read_text()
    for needle in ("## Does the paper's claim hold here?", "Wanda, python", "Noise control", "Quality vs sparsity",
                   "### Cost", "dense (reference)"):
        assert needle in text, needle
    pngs = sorted(p.name for p in docs.glob("*.png"))
    assert pngs == ["study-tiny-llama-jaccard-2of4.png", "study-tiny-llama-jaccard-unstructured.png",
                    "study-tiny-llama-sparsity.png"]
    entry = study["models"][model]
    assert "python/h0@u50" in entry["variants"] and "python@u30" in entry["variants"]
    # a second run reuses every sub-model and every finished cell
    again = run_study(plan, work_dir=tmp_path / "work", docs_dir=docs, command="again")
    write_results(again, docs)
    assert all(c["cached"] for c in again["models"][model]["costs"].values())
    # ... and still reports what each sub-model cost to build, from its manifest
    assert all(c["extract_s"] is not None for k, c in again["models"][model]["costs"].items() if k != "dense")
    assert "recorded build and evaluation times add up to" in (docs / "RESULTS.md").read_text()


def test_study_options_shape_the_plan():
    args = study_parser().parse_args(["--quick", "--languages", "java,python", "--limit", "3", "--limit-ppl", "1",
                                      "--pattern-metrics", "2:4=all", "--sweep-sparsities", "0.2,0.6"])
    plan = study_plan(args)
    assert plan.quick and plan.languages == ("java", "python")
    assert plan.limits == {"ppl": 1, "nextline": 3, "humaneval": 3, "singleline": 3, "infill": 3}
    assert plan.pattern_metrics["2:4"] == METRICS and plan.sweep_sparsities == (0.2, 0.6)
    assert plan.noise_languages == ("python",) and plan.sweep_languages == ("python",)
    narrowed = study_plan(study_parser().parse_args(["--languages", "cpp", "--metrics", "nextline"]))
    assert narrowed.noise_languages == ("cpp",) and narrowed.noise_metrics == ("nextline",)


@pytest.mark.parametrize("argv, words", [
    (["--pattern-metrics", "3:4=ppl"], "wants PATTERN=METRICS"),
    (["--pattern-metrics", "2:4=bleu"], "choose from"),
])
def test_bad_study_options_are_one_line(capsys, tmp_path, argv, words):
    assert study_main([*argv, "--work-dir", str(tmp_path / "w"), "--docs-dir", str(tmp_path / "d")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("subcoder eval study: ") and words in err[0]
    assert not (tmp_path / "d").exists()
