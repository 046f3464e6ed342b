"""Scoring functions, stop rules, perplexity padding, batched vs unbatched greedy decoding, the runner."""

import json
import math

import pytest
import torch

from subcoder.pruner.evaluation.decode import BatchGenerator, Request, stop_after_line, stop_function_end
from subcoder.pruner.evaluation.nextline import edit_similarity, exact_match, levenshtein
from subcoder.pruner.evaluation.perplexity import nll_sum
from subcoder.pruner.loaded import LoadedModel, ModelInfo
from tiny_models import byte_tokenizer, save_tiny_model_dir, tiny_model


def test_levenshtein_and_edit_similarity():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert edit_similarity("  return x  ", "return x") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abcd", "") == 0.0
    assert math.isclose(edit_similarity("return x", "return y"), 1 - 1 / 8)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match("    x = 1\n", "x = 1")
    assert not exact_match("x=1", "x = 1")


def test_stop_rules():
    assert stop_after_line("\n\n    x = 1\n    y") == len("\n\n    x = 1")
    assert stop_after_line("    x = 1") is None
    py = stop_function_end("python")
    text = "    return 1\n\n\ndef other():\n"
    assert text[:py(text)] == "    return 1\n\n"
    cpp = stop_function_end("cpp")
    text = "    return 1;\n}\nint main(){"
    assert text[:cpp(text)] == "    return 1;\n}"
    assert cpp("    return 1;\n") is None  # the next line has not started


def _loaded(family="llama"):
    model = tiny_model(family, seed=1)
    info = ModelInfo(name="tiny", path=None, content_hash="0" * 64, architecture="tiny", fim=None)
    return LoadedModel(model, byte_tokenizer(), info)


def test_perplexity_excludes_padding():
    model = tiny_model("llama", seed=0)
    torch.manual_seed(0)
    a = torch.randint(0, 256, (20,)).tolist()
    b = torch.randint(0, 256, (9,)).tolist()
    together = nll_sum(model, [a, b], batch_size=2, pad_id=256)
    alone = [nll_sum(model, [w], batch_size=1, pad_id=256) for w in (a, b)]
    assert together[1] == 19 + 8 == alone[0][1] + alone[1][1]
    assert math.isclose(together[0], alone[0][0] + alone[1][0], rel_tol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batched_greedy_equals_unbatched(family):
    loaded = _loaded(family)
    prefixes = ["def f(x):\n    return", "int main() {", "a", "const x = [1, 2, 3].map((v) =>", "import os\n"]
    reqs = [Request(p, "", None, 10) for p in prefixes]
    gen = BatchGenerator(loaded, context_tokens=256)
    batched = gen.generate(reqs, batch_size=5)
    single = gen.generate(reqs, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    assert all(g.new_tokens > 0 for g in single)


def test_stop_rule_cuts_each_row(monkeypatch):
    loaded = _loaded()
    gen = BatchGenerator(loaded, context_tokens=128)
    outs = gen.generate([Request("x", "", lambda t: 2 if len(t) >= 3 else None, 20),
                         Request("yy", "", None, 4)], batch_size=2)
    assert len(outs[0].text) == 2 and outs[0].reason == "stop"
    assert outs[1].new_tokens == 4 and outs[1].reason == "length"


def test_runner_writes_json_and_resumes(tmp_path):
    from subcoder.pruner.evaluation.runner import EvalConfig, evaluate

    model_dir = save_tiny_model_dir(tmp_path / "tiny")
    out = tmp_path / "r.json"
    cfg = EvalConfig(languages=("python",), metrics=("ppl", "nextline"), limits={"ppl": 2, "nextline": 3},
                     batch_size=2, seq_len=64, context_tokens=128, dtype="float32")
    data = evaluate(str(model_dir), cfg, out=out, progress=False)
    saved = json.loads(out.read_text())
    assert saved["results"]["python"]["ppl"]["perplexity"] > 1
    assert saved["results"]["python"]["nextline"]["n"] == 3
    assert data["results"] == saved["results"]
    saved["results"]["python"]["ppl"]["marker"] = True  # a resumed run keeps finished cells untouched
    out.write_text(json.dumps(saved))
    again = evaluate(str(model_dir), cfg, out=out, resume=True, progress=False)
    assert again["results"]["python"]["ppl"]["marker"] is True
