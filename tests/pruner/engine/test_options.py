"""EngineOptions: the environment read once, "0" turns a switch off, overrides win."""

import dataclasses

import pytest

from subcoder.pruner.engine.options import ENV_NAMES, EngineOptions


def test_defaults_are_all_on():
    options = EngineOptions.from_env({})
    assert options == EngineOptions()
    assert all(getattr(options, f) is True for f in ENV_NAMES)
    assert options.dense_values == "bf16", "int8 changes answers: never the default"


def test_every_field_has_its_variable():
    # every switch has its variable; dense_values is a format, set explicitly by benchmarks and evaluations
    assert set(ENV_NAMES) == {f.name for f in dataclasses.fields(EngineOptions)} - {"dense_values"}


@pytest.mark.parametrize("field, var", sorted(ENV_NAMES.items()))
def test_zero_turns_a_switch_off(field, var):
    options = EngineOptions.from_env({var: " 0 "})
    assert getattr(options, field) is False
    assert all(getattr(options, f) for f in ENV_NAMES if f != field)


@pytest.mark.parametrize("value", ["1", "", "yes", "false", "00"])
def test_anything_else_leaves_the_default(value):
    assert EngineOptions.from_env({"SUBCODER_SPARSE": value}).sparse_kernel is True


def test_overrides_win_over_the_environment():
    options = EngineOptions.from_env({"SUBCODER_SPARSE": "0", "SUBCODER_SPECULATE": "0"}, sparse_kernel=True)
    assert options.sparse_kernel is True and options.speculate is False


def test_unknown_override_is_refused():
    with pytest.raises(TypeError, match="sparse"):
        EngineOptions.from_env({}, sparse=True)


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SUBCODER_HEAD_SCREEN", "0")
    assert EngineOptions.from_env().head_screen is False


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineOptions().speculate = False  # type: ignore[misc]
