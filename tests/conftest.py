import sys
from pathlib import Path

import pytest

from subcoder.pruner.paths import cache_dir

HERE = Path(__file__).parent
# Shared test helpers: tiny_models.py here; tinymodel.py (the tiny fill-in-the-middle model) beside the server
# tests, which the engine and editor tests use as well.
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "server"))
# The compiled sparse kernel is shared with the user's cache: its folder name hashes the source, the flags, torch
# and the compiler, so a stale build is never picked up, and compiling it per test run would cost most of a minute.
SHARED_KERNELS = cache_dir() / "kernels"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Fast tests get an empty cache of their own (beside their tmp_path, which stays empty for them); real-model
    tests share the user's model cache (so a preset is fetched and converted once per machine)."""
    if "real" not in request.keywords:
        cache = tmp_path_factory.mktemp("cache")
        SHARED_KERNELS.mkdir(parents=True, exist_ok=True)
        (cache / "kernels").symlink_to(SHARED_KERNELS, target_is_directory=True)
        monkeypatch.setenv("SUBCODER_CACHE_DIR", str(cache))
    yield
