"""`sparsity: 0` is "no pruning": the server builds nothing and serves the dense model on the same engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PY_FILES, fast_settings, serve, write_tree

from subcoder.server.settings import Settings, parse_settings

PY_DOC = "def add(a, b):\n    return "


def test_sparsity_zero_is_a_setting_that_prunes_nothing():
    parsed = parse_settings({"sparsity": 0, "pattern": "2:4"})
    assert parsed.problems == []  # nothing is pruned, so no pattern contradicts it
    assert parsed.settings.sparsity == 0 and not parsed.settings.prunes
    assert not Settings().prunes, "the default since the frontier: the dense model on the same engine"
    assert parse_settings({"sparsity": 0.3}).settings.prunes
    assert parse_settings({"sparsity": -0.1}).problems  # below 0 still falls back, with a message


@pytest.mark.slow  # starts a server process
@pytest.mark.parametrize("while_building", [True, False])
async def test_sparsity_zero_serves_the_dense_model_and_builds_nothing(tiny_model_dir, tmp_path, while_building):
    """Also with serveBaseModelWhileBuilding off: that setting is about builds, and there are none."""
    workspace = write_tree(tmp_path / "ws", PY_FILES)
    cache = Path(os.environ["SUBCODER_CACHE_DIR"])  # the test's own, its compiled kernel shared (tests/conftest.py)
    settings = fast_settings(tiny_model_dir, sparsity=0, serveBaseModelWhileBuilding=while_building)
    async with serve(workspace, cache, settings) as s:
        status = await s.wait_state("base")
        assert "sparsity 0" in status["message"] and status["sparsity"] == 0
        doc = s.open("app/new.py", PY_DOC)
        assert (await s.inline(doc, 1, 11)).items
        details = await s.command("subcoder.status")
        counters = details["counters"]
        assert counters["served"] == {"base": 1} and counters["baseLoaded"] == 1
        assert counters["buildsStarted"] == 0 and details["subModels"] == [] and details["queued"] == []
        assert details["state"] == "base"
    built = cache / "submodels"
    assert not built.is_dir() or not [p for p in built.iterdir() if not p.name.startswith(".")]
