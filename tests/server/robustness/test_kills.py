"""kill -9 of the build child and of the server. A killed build is reported, the server stays up and builds
again; a new server on the cache a killed one leaves starts cleanly and serves. No partial entry stays."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import fast_settings, serve, write_tree
from lsp_fixtures import PY_FILES

pytestmark = pytest.mark.slow

PY_DOC = "def add(a, b):\n    return "


def _build_pid(log_file: Path) -> int | None:
    found = re.findall(r"build started: .*\(pid (\d+),", log_file.read_text()) if log_file.exists() else []
    return int(found[-1]) if found else None


def _partial(cache: Path) -> list[str]:
    root = cache / "submodels"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name != ".locks") \
        if root.is_dir() else []


async def _wait(predicate, what: str, timeout: float = 120):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := predicate()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return got


async def test_kill_9_of_the_build_child(tmp_path, tiny_model_dir):
    workspace = write_tree(tmp_path / "ws", PY_FILES)
    cache = Path(os.environ["SUBCODER_CACHE_DIR"])
    async with serve(workspace, cache, fast_settings(tiny_model_dir)) as s:
        pid = await _wait(lambda: _build_pid(s.log_file), "the build child")
        os.kill(pid, signal.SIGKILL)
        failed = await s.wait_for(lambda: next((x for x in s.statuses if "failed" in x["message"]), None),
                                  what="the failure")
        assert "killed by signal 9" in failed["message"], failed["message"]
        uri = s.open("app/new.py", PY_DOC)
        assert (await s.inline(uri, 1, 11)) is not None  # alive and answering
        assert _partial(cache) == []
        s.statuses.clear()
        await s.command("subcoder.rebuildSubModel")  # the user asks again: it builds
        await s.wait_state("ready")
        result = await s.inline(uri, 1, 11)
        assert result is not None and result.items
        counters = (await s.command("subcoder.status"))["counters"]
        assert counters["buildsFailed"] == 1 and counters["subModelsLoaded"] == 1 and counters["requests"] == 2
    assert _partial(cache) == []


async def test_kill_9_of_the_server_mid_build(tmp_path, tiny_model_dir):
    workspace = write_tree(tmp_path / "ws", PY_FILES)
    cache = Path(os.environ["SUBCODER_CACHE_DIR"])
    settings = fast_settings(tiny_model_dir)
    async with serve(workspace, cache, settings) as s:
        child = await _wait(lambda: _build_pid(s.log_file), "the build child")
        os.kill(s.client._server.pid, signal.SIGKILL)
        await s.client._server.wait()
    # The orphaned child sees its stdin close and stops between layers (or finishes): it does not linger.
    await _wait(lambda: not os.path.exists(f"/proc/{child}") or
                open(f"/proc/{child}/stat").read().split()[2] == "Z", "the orphaned build to end", 180)
    async with serve(workspace, cache, settings) as s:
        await s.wait_state("ready")
        uri = s.open("app/new.py", PY_DOC)
        result = await s.inline(uri, 1, 11)
        assert result is not None and result.items
        assert (await s.command("subcoder.status"))["state"] == "ready"
    assert _partial(cache) == []
