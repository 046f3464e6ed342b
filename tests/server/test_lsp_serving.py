"""End to end, continued: which model serves which document, live settings, TCP. A full or read-only cache is
in robustness/test_disk.py.

Same setup as test_lsp.py: a real `subcoder serve` process, a tiny random model, builds of seconds; tests
wait on `subcoder/status` notifications and assert on the `subcoder.status` command's counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY_FILES, SERVE, REPO, WAIT_S, Session, capabilities, fast_settings, serve, write_tree
from lsprotocol import types

pytestmark = pytest.mark.slow  # each test starts a server process

PY_DOC = "def add(a, b):\n    return "
JS_DOC = "function add(a, b) {\n  return "
JS_FILES = {
    "web/app.js": "".join(f"function helper{i}(a, b) {{\n  const total = a + b * {i};\n  return total;\n}}\n\n"
                          for i in range(30)),
}


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def _manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())


async def _details(s: Session) -> dict:
    """The `subcoder.status` command's result: status, counters, loaded and queued sub-models."""
    return await s.command("subcoder.status")


async def _serving(s: Session, language: str, timeout: float = WAIT_S) -> dict:
    """Wait until `language`'s sub-model is among those that serve (`subModels` of `subcoder.status`).

    Not a "ready" notification naming the language: while python serves, "loading the javascript
    sub-model" is a "ready" status too, sent before the javascript sub-model is swapped in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = await _details(s)
        if language in details["subModels"]:
            return details
        await asyncio.sleep(0.1)
    raise AssertionError(f"the {language} sub-model did not serve within {timeout}s; statuses "
                         f"{[(x['state'], x['message']) for x in s.statuses]}")


async def test_other_language_served_by_dominant_then_by_its_own(tiny_model_dir, tmp_path):
    workspace = write_tree(tmp_path / "ws", {**PY_FILES, **JS_FILES})
    cache = tmp_path / "cache"
    settings = fast_settings(tiny_model_dir)
    async with serve(workspace, cache, settings) as s:
        ready = await s.wait_state("ready")
        assert ready["language"] == "python"
        js = s.open("web/new.js", JS_DOC, language_id="javascript")
        # The first request comes well before the javascript build (a child process importing torch)
        # can finish: the dominant language's sub-model answers it.
        assert (await s.inline(js, 1, 9)).items
        first = await _details(s)
        assert first["counters"]["served"] == {"python": 1} and first["subModels"] == ["python"]
        # ...and opening the document queued the javascript sub-model, which then serves it.
        await _serving(s, "javascript")
        assert (await s.inline(js, 1, 9)).items
        py = s.open("app/new.py", PY_DOC)
        assert (await s.inline(py, 1, 11)).items
        status = await _details(s)
        assert status["counters"]["served"] == {"python": 2, "javascript": 1}
        assert status["state"] == "ready" and status["language"] == "python"
        assert status["subModels"] == ["javascript", "python"]
    entries = _entries(cache / "submodels")
    assert sorted(_manifest(e)["language"] for e in entries) == ["javascript", "python"]

    # A second window on the same cache: the cached javascript sub-model is loaded, not rebuilt.
    async with serve(workspace, cache, settings) as s:
        await s.wait_state("ready")
        js = s.open("web/other.js", JS_DOC, language_id="javascript")
        await _serving(s, "javascript")
        assert (await s.inline(js, 1, 9)).items
        counters = (await _details(s))["counters"]
    assert counters["served"] == {"javascript": 1}
    assert counters["buildsStarted"] == 0 and counters["cacheHits"] == 2, "both sub-models came from the cache"
    assert len(_entries(cache / "submodels")) == 2


async def test_disabled_language_is_not_built(tiny_model_dir, tmp_path):
    """`languages` without javascript: a javascript document is served by the dominant sub-model, nothing is queued."""
    workspace = write_tree(tmp_path / "ws", {**PY_FILES, **JS_FILES})
    cache = tmp_path / "cache"
    async with serve(workspace, cache, fast_settings(tiny_model_dir, languages=["python"])) as s:
        await s.wait_state("ready")
        js = s.open("web/new.js", JS_DOC, language_id="javascript")
        assert (await s.inline(js, 1, 9)).items
        details = await _details(s)  # answered after the completion: anything it queued would show
    assert details["queued"] == [] and details["subModels"] == ["python"]
    assert details["counters"]["served"] == {"python": 1} and details["counters"]["buildsStarted"] == 1
    assert [_manifest(e)["language"] for e in _entries(cache / "submodels")] == ["python"]


async def test_live_configuration_changes_what_is_served(tiny_model_dir, py_workspace, tmp_path):
    cache = tmp_path / "cache"
    settings = fast_settings(tiny_model_dir)
    async with serve(py_workspace, cache, settings, configuration={"subcoder": settings}) as s:
        first = await s.wait_state("ready")
        assert first["sparsity"] == 0.5
        uri = s.open("app/new.py", PY_DOC)
        assert (await s.inline(uri, 1, 11)).items

        # Settings pushed in the notification: a decoding setting applies at once, without a build.
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"subcoder": {**settings, "maxNewTokens": 1, "completionMode": "multi-line"}}))
        before = (await _details(s))["counters"]["tokens"]  # messages are handled in order: the settings applied
        await s.inline(uri, 1, 11)
        after = (await _details(s))["counters"]
        assert after["tokens"] - before <= 1 and after["buildsStarted"] == 1

        # Settings pulled with workspace/configuration (what VS Code does): a new sparsity is a new build,
        # swapped in when ready, while completions keep coming.
        s.statuses.clear()
        s.client.set_configuration({"subcoder": {**settings, "sparsity": 0.25}})
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await s.wait_state("building", "detecting")
        ready = await s.wait_state("ready")
        assert ready["sparsity"] == 0.25
        assert (await s.inline(uri, 1, 11)).items
        counters = (await _details(s))["counters"]
    assert counters["subModelsLoaded"] == 2 and counters["buildsExtracted"] == 2
    entries = _entries(cache / "submodels")
    assert sorted(_manifest(e)["sparsity"] for e in entries) == [0.25, 0.5]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_tcp(tiny_model_dir, tmp_path):
    """`subcoder serve --tcp HOST:PORT`: the same server over a socket (initialize, status, a completion)."""
    from pytest_lsp import LanguageClient

    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    port = _free_port()
    env = {**os.environ, "SUBCODER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*SERVE, "--tcp", f"127.0.0.1:{port}", "--log-file", str(cache / "server.log")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = LanguageClient()
    try:
        for _ in range(600):  # the server imports for a few seconds before it listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the server never listened")
        s = Session(client, empty)
        result = await client.initialize_session(types.InitializeParams(
            capabilities=capabilities(), root_uri=empty.as_uri(), initialization_options=fast_settings(tiny_model_dir)))
        assert result.capabilities.inline_completion_provider is not None
        await s.wait_state("idle")  # an empty workspace: nothing loads until a document opens
        uri = s.open("x.py", PY_DOC)
        await s.wait_state("base", "ready")
        assert (await s.inline(uri, 1, 11)).items
        assert (await s.command("subcoder.status"))["state"] in ("base", "ready")
        await asyncio.wait_for(client.shutdown_session(), 20)
    finally:
        process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            stream.close()


def test_tcp_bad_address():
    proc = subprocess.run([*SERVE, "--tcp", "localhost:http"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr
