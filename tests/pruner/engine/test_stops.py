"""subcoder.pruner.engine.stops: stop rules on the text, the final trim, a model's stop tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from subcoder.pruner.engine.stops import StopRule, postprocess, stop_ids
from tinymodel import make_tokenizer


def test_single_line_stops_at_first_line_with_content():
    rule = StopRule("single-line", "x = 1", "")
    assert rule.check("2 + 3") is None
    assert rule.check("2 + 3\ny") == 5
    at_end = StopRule("single-line", "def f():", "")
    assert at_end.check("\n    return 1\n") == len("\n    return 1")
    mid = StopRule("single-line", "foo(", "bar)")
    assert mid.check("\nx") == 0


def test_multi_line_stops_at_block_end_and_suffix_repeat():
    rule = StopRule("multi-line", "def f(x):\n    ", "\n\ndef g():\n    pass\n")
    text = "y = x\n    return y\n\ndef h():\n"
    assert text[: rule.check(text)] == "y = x\n    return y\n"
    brace = StopRule("multi-line", "if (x) {\n", "")
    text = "    foo();\n}\nbar();\n"
    assert text[: brace.check(text)] == "    foo();\n}"
    repeat = StopRule("multi-line", "    ", "    return total\n")
    text = "total = a + b\n    return total\n"
    assert text[: repeat.check(text)] == "total = a + b"
    blanks = StopRule("multi-line", "", "")
    assert blanks.check("a = 1\n\n\nb") == len("a = 1\n")


def test_function_end_cuts_at_column_zero_and_keeps_a_closing_brace():
    py = StopRule.function_end(closing_brace=False)
    text = "    return 1\n\n\ndef other():\n"
    assert text[: py.check(text)] == "    return 1\n\n"
    brace = StopRule.function_end(closing_brace=True)
    text = "    return 1;\n}\nint main(){"
    assert text[: brace.check(text)] == "    return 1;\n}"
    assert brace.check("    return 1;\n") is None  # the next line has not started
    assert py.check("    return 1\n}") == len("    return 1")


def test_unknown_rule():
    with pytest.raises(ValueError, match="stop rule"):
        StopRule("auto")


def test_postprocess_trims_overlap_and_drops_duplicates():
    assert postprocess("a, b)", ")\n", "single-line") == "a, b"
    assert postprocess("   \n", "", "multi-line") == ""
    assert postprocess("bar()", "bar()\n", "single-line") == ""
    assert postprocess("x = 1  ", "", "single-line") == "x = 1"


def test_undecodable_bytes_are_never_suggested():
    assert postprocess("x = 1\ufffd\ufffd", "", "single-line") == "x = 1"
    assert postprocess("\ufffdabc", "", "single-line") == ""


def test_stop_ids_gather_specials_eos_end_markers_and_fim_markers():
    tokenizer = make_tokenizer(fim=True)
    vocab = tokenizer.get_vocab()
    model = SimpleNamespace(config=SimpleNamespace(eos_token_id=[7, 8]), generation_config=SimpleNamespace(eos_token_id=9))
    ids = stop_ids(tokenizer, model, (101, 102, 103))
    assert {7, 8, 9, 101, 102, 103, vocab["<|endoftext|>"]} <= ids
    assert set(tokenizer.all_special_ids) <= ids
    assert all(isinstance(i, int) for i in ids)
    plain = stop_ids(tokenizer, SimpleNamespace(config=SimpleNamespace()))
    assert 7 not in plain and vocab["<|endoftext|>"] in plain
