"""A cache that cannot be written: full (a small tmpfs) or read-only. The build fails with one clear status line,
the server stays up and keeps serving the base model, every request is answered, nothing half-written stays."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fast_settings, serve, write_tree
from lsp_fixtures import PY_FILES

pytestmark = pytest.mark.slow

PY_DOC = "def add(a, b):\n    return "


@contextlib.contextmanager
def small_disk(path: Path, options: str):
    """A tmpfs mounted at `path` (needs root); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(mounted.stderr or mounted.stdout).strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def unwritable(path: Path, kind: str):
    if kind == "full":
        with small_disk(path, "size=64k") as disk:
            yield disk
    else:
        with small_disk(path, "size=1m") as disk:
            (disk / "submodels").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
            yield disk


def _leftovers(cache: Path) -> list[str]:
    root = cache / "submodels"
    return sorted(p.name for p in root.iterdir() if p.name != ".locks") if root.is_dir() else []


def test_the_build_worker_on_a_read_only_cache_says_so(tmp_path, tiny_model_dir):
    with unwritable(tmp_path / "ro", "read-only") as disk:
        request = {"model": str(tiny_model_dir), "language": "python", "key": "python-k", "cache_root":
                   str(disk / "submodels"), "sparsity": 0.5, "pattern": "unstructured", "method": "wanda",
                   "calibration": {"source": "corpus", "n_samples": 2, "seq_len": 32}}
        child = subprocess.run([sys.executable, "-P", "-m", "subcoder.server.build_worker"], input=json.dumps(request)
                               + "\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    events = [json.loads(line) for line in child.stdout.splitlines()]
    assert child.returncode == 1 and "Traceback" not in child.stderr, child.stderr
    assert [e["event"] for e in events] == ["error"] and events[0]["kind"] == "CacheError", events
    assert "Read-only file system" in events[0]["message"] and str(disk) in events[0]["message"], events


@pytest.mark.parametrize("kind", ["full", "read-only"])
async def test_an_unwritable_cache_is_a_status_error_and_the_server_serves_on(kind, tmp_path, tiny_model_dir):
    workspace = write_tree(tmp_path / "ws", PY_FILES)
    with unwritable(tmp_path / "disk", kind) as disk:
        settings = fast_settings(tiny_model_dir, cacheDir=str(disk))
        async with serve(workspace, Path(os.environ["SUBCODER_CACHE_DIR"]), settings) as s:
            failed = await s.wait_for(lambda: next((x for x in s.statuses if "failed" in x["message"]), None),
                                      what="the build failure")
            words = "no space left" if kind == "full" else "read-only file system"
            assert words in failed["message"].lower() and "Traceback" not in failed["message"], failed["message"]
            assert str(disk) in failed["message"], failed["message"]
            assert failed["state"] in ("base", "error"), failed
            assert any(words in m.message.lower() for m in s.client.messages), "the user is told why, in a message"
            await s.wait_state("base", timeout=120)
            uri = s.open("app/new.py", PY_DOC)
            answers = [await s.inline(uri, 1, 11) for _ in range(3)]
            assert all(a is not None and a.items for a in answers), "the base model still serves"
            details = await s.command("subcoder.status")
            assert details["state"] == "base" and details["counters"]["requests"] == 3, details
            assert details["counters"]["buildsFailed"] >= 1 and details["counters"]["subModelsLoaded"] == 0
        assert _leftovers(disk) == []
