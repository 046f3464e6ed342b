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


@pytest.fixture
def py_calibration(tmp_path):
    """A calibration set from a workspace of one small Python file: four short windows, enough for a tiny model."""
    from subcoder.pruner.calibration import CalibrationSpec

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.py").write_text("def f(x):\n    return x + 1\n" * 60)
    return CalibrationSpec(source="workspace", workspace=ws, n_samples=4, seq_len=64)


@pytest.fixture
def sharded_tiny_dir(tmp_path):
    """A tiny llama checkpoint in bfloat16 split over several safetensors files, as big models ship."""
    import torch

    from tiny_models import byte_tokenizer, tiny_model

    base = tmp_path / "sharded"
    tiny_model("llama", dtype=torch.bfloat16).save_pretrained(str(base), max_shard_size="40KB")
    byte_tokenizer().save_pretrained(str(base))
    return base
