import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Fast tests get an empty cache of their own; real-model tests share the user's model cache
    (so a preset is fetched and converted once per machine)."""
    if "real" not in request.keywords:
        monkeypatch.setenv("SUBCODER_CACHE_DIR", str(tmp_path / "cache"))
    yield
