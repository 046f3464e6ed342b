"""subcoder.server.settings: camelCase parsing, invalid values fall back with a message, partial updates."""

import dataclasses
import json
from pathlib import Path

from subcoder.server.settings import Settings, _camel, parse_settings


def test_defaults_and_camel_case():
    parsed = parse_settings({"subcoder": {"maxNewTokens": 16, "completionMode": "single-line", "pattern": "2:4"}})
    assert parsed.problems == []
    s = parsed.settings
    assert (s.max_new_tokens, s.completion_mode, s.pattern, s.model) == (16, "single-line", "2:4", Settings().model)


def test_bad_values_fall_back_with_a_message():
    parsed = parse_settings({"sparsity": "lots", "dtype": "int4", "languages": ["python", "cobol"], "device": "cpu"})
    assert parsed.settings.sparsity == Settings().sparsity and parsed.settings.dtype == "auto"
    assert parsed.settings.languages == Settings().languages
    assert len(parsed.problems) == 3 and all("ignored" in p for p in parsed.problems)
    assert parse_settings(["not", "an", "object"]).problems


def test_inconsistent_pattern_and_sparsity():
    parsed = parse_settings({"pattern": "2:4", "sparsity": 0.7})
    assert parsed.problems and (parsed.settings.sparsity, parsed.settings.pattern) == (Settings().sparsity, "unstructured")
    parsed = parse_settings({"pattern": "2:4", "sparsity": 0.7}, Settings(sparsity=0.5))
    assert parsed.problems and parsed.settings.prune_config().sparsity == 0.5, "back to the previous, valid pair"


def test_update_keeps_unmentioned_values():
    first = parse_settings({"maxNewTokens": 10}).settings
    second = parse_settings({"dtype": "float32"}, first).settings
    assert second.max_new_tokens == 10 and second.dtype == "float32"


def test_every_setting_the_extension_declares_is_read():
    """The names clients send (extension/package.json) are the names the server reads."""
    manifest = json.loads((Path(__file__).resolve().parents[2] / "extension" / "package.json").read_text())
    declared = {k.split(".", 1)[1] for k in manifest["contributes"]["configuration"]["properties"]}
    assert parse_settings({"cacheSizeLimitMB": 123}).settings.cache_size_limit_mb == 123
    read = {_camel(f.name) for f in dataclasses.fields(Settings)}
    # every server setting is declared (extension-only ones, such as the server command, may be extra)
    assert read <= declared, read - declared


def test_sparse_kernel_is_the_engine_option(monkeypatch):
    """The environment variable is the default; a setting the client sends wins, and says so when
    the two disagree; the engine options carry the setting's value."""
    monkeypatch.delenv("SUBCODER_SPARSE", raising=False)
    assert Settings().sparse_kernel is True and Settings().engine_options({}).sparse_kernel is True
    off = parse_settings({"sparseKernel": False})
    assert off.problems == [] and off.settings.engine_options({}).sparse_kernel is False

    monkeypatch.setenv("SUBCODER_SPARSE", "0")
    assert parse_settings({}).settings.sparse_kernel is False  # the variable, when nothing is sent
    on = parse_settings({"sparseKernel": True}, Settings())
    assert on.settings.sparse_kernel is True
    assert on.problems == ["setting subcoder.sparseKernel=true overrides SUBCODER_SPARSE=0"]
    options = on.settings.engine_options({"SUBCODER_SPARSE": "0", "SUBCODER_SPECULATE": "0"})
    assert options.sparse_kernel is True and options.speculate is False  # the rest still from the environment


def test_non_finite_and_odd_numbers_fall_back_and_the_rest_applies():
    # What a client's JSON can hold: 1e400 and Infinity decode to inf, NaN to nan.
    for bad in (json.loads("1e400"), float("inf"), float("-inf"), float("nan"), -5, 0, "64", [8], {"n": 8}, True):
        parsed = parse_settings({"maxNewTokens": bad, "sparsity": 0.6, "contextTokens": bad})
        assert parsed.settings.max_new_tokens == Settings().max_new_tokens, bad
        assert parsed.settings.context_tokens == Settings().context_tokens, bad
        assert parsed.settings.sparsity == 0.6, bad
        assert len(parsed.problems) == 2 and all(p.startswith("setting subcoder.") for p in parsed.problems), bad
    raw = json.loads('{"subcoder": {"sparsity": NaN, "mixRatio": Infinity, "maxNewTokens": 1e400, "dtype": "float32"}}')
    parsed = parse_settings(raw)
    assert (parsed.settings.sparsity, parsed.settings.mix_ratio, parsed.settings.dtype) == (Settings().sparsity, 0.5, "float32")
    assert len(parsed.problems) == 3


def test_values_reach_the_build_and_the_engine():
    """`values: int8` quantises a sub-model's kept values (its build key changes) and a dense model's layers."""
    parsed = parse_settings({"values": "int8", "sparsity": 0.5})
    assert parsed.problems == []
    s = parsed.settings
    assert s.prune_config().values == "int8" and s.prune_config().slug().endswith("-int8")
    assert s.engine_options({}).dense_values == "int8"
    assert s.build_fields() != Settings(sparsity=0.5).build_fields(), "a new format is a new build"
    assert s.model_fields() != Settings().model_fields(), "a dense model is loaded again"
    bad = parse_settings({"values": "int4"})
    assert bad.settings.values == "bf16" and bad.problems


def test_suffix_budget_reaches_the_engine_and_reloads_it():
    """`suffixTokens` caps the text after the cursor (0: the engine's share of `contextTokens`); the
    prompt budgets are fixed when an engine is built, so changing either builds it again."""
    assert Settings().suffix_budget is None
    s = parse_settings({"suffixTokens": 32}).settings
    assert s.suffix_budget == 32 and s.build_fields() == Settings().build_fields(), "no new sub-model"
    assert s.model_fields() != Settings().model_fields()
    assert Settings(context_tokens=512).model_fields() != Settings().model_fields()
    for bad in (-1, "32", 40000):
        parsed = parse_settings({"suffixTokens": bad})
        assert parsed.settings.suffix_tokens == 0 and parsed.problems, bad
