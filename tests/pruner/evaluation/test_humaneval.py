"""HumanEval-X execution: a correct and a wrong solution per language, gating of known-broken tasks,
skipped-with-reason when a toolchain is missing."""

import pytest

from subcoder.pruner.evaluation import humaneval as he

WRONG = {"python": "    return False\n", "cpp": "    return false;\n}\n",
         "java": "        return false;\n    }\n}\n", "javascript": "  return false;\n}\n"}


def _task0(lang):
    return he.humanevalx_tasks(lang)[0]


@pytest.mark.parametrize("lang", he.LANGUAGES)
def test_canonical_passes_and_wrong_fails(lang):
    tc = he.detect_toolchain(lang)
    if not tc.available:
        pytest.skip(tc.reason)
    task = _task0(lang)
    ok, why = he.execute(lang, he.program_for(lang, task, task["canonical_solution"]), tc)
    assert ok, why
    ok, why = he.execute(lang, he.program_for(lang, task, WRONG[lang]), tc)
    assert not ok
    if lang == "javascript":
        assert why == "assertion output on stderr"  # console.assert only prints: stderr means failure


def test_infinite_loop_times_out():
    tc = he.detect_toolchain("python")
    ok, why = he.execute("python", "while True:\n    pass\n", tc, timeout=1.0)
    assert not ok and why == "timeout"


def test_data_sets_are_complete():
    for lang in he.LANGUAGES:
        assert len(he.humanevalx_tasks(lang)) == 164
        assert len(he.singleline_tasks(lang)) > 1000
    assert len(he.infilling_tasks()) == 1033
    t = he.singleline_tasks("python")[0]
    base = next(x for x in he.humanevalx_tasks("python") if x["task_id"] == t["base_task_id"])
    assert t["prompt"] + t["target"] + t["suffix"] == base["prompt"] + base["canonical_solution"]


def test_known_broken_tasks_are_gated_explicitly():
    tc = he.Toolchain("javascript", True)
    assert he.task_gate("JavaScript/112", tc)[0] == "excluded"
    assert he.task_gate("JavaScript/155", tc)[0] == "excluded"
    assert he.task_gate("JavaScript/162", tc) == ("skipped", "needs the npm module js-md5, which node cannot load here")
    assert he.task_gate("JavaScript/162", he.Toolchain("javascript", True, node_path="/x")) is None
    assert he.task_gate("CPP/22", he.Toolchain("cpp", True))[0] == "skipped"
    assert he.task_gate("CPP/137", he.Toolchain("cpp", True, boost=True)) is None
    kept, dropped = he.select(he.humanevalx_tasks("javascript"), "javascript", tc, None, 0)
    assert len(kept) == 161 and {d["task_id"] for d in dropped} == {"JavaScript/112", "JavaScript/155", "JavaScript/162"}
    # single-line tasks inherit the gate of their base task
    kept, dropped = he.select(he.singleline_tasks("javascript"), "javascript", tc, None, 0, base_key="base_task_id")
    assert dropped and all(d["task_id"].rsplit("/", 1)[0] in ("JavaScript/112", "JavaScript/155", "JavaScript/162")
                           for d in dropped)


def test_limit_is_a_seeded_subset():
    tc = he.Toolchain("python", True)
    a, _ = he.select(he.humanevalx_tasks("python"), "python", tc, 10, 0)
    b, _ = he.select(he.humanevalx_tasks("python"), "python", tc, 10, 0)
    c, _ = he.select(he.humanevalx_tasks("python"), "python", tc, 10, 1)
    assert [t["task_id"] for t in a] == [t["task_id"] for t in b] != [t["task_id"] for t in c]


@pytest.mark.parametrize("lang,reason", [("cpp", "g++ not found"), ("java", "javac and java not found"),
                                         ("javascript", "node not found")])
def test_missing_toolchain_skips_with_reason(lang, reason, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no compilers, no node
    tc = he.detect_toolchain(lang)
    assert not tc.available and reason in tc.reason
    res = he.humaneval_x(None, lang, limit=2)  # skipped before any generation
    assert res == {"skipped": True, "reason": tc.reason}
