"""Opening a folder never runs its code.

The workspace below holds modules named like what the server and its build child import (`subcoder`,
`pruner`, `server`, `argparse`, `json`, `filelock`, `lsprotocol`); each writes a marker file when imported.
The server is started exactly as the VS Code extension starts it (`python -P -m subcoder.pruner.cli serve`),
here even with the workspace as its working directory, builds a sub-model calibrated on the workspace's
files in its child process, and completes code. No marker may appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import pytest
from lsprotocol import types

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lsp_fixtures import PY_FILES, fast_settings, write_tree  # noqa: E402
from pytest_lsp import ClientServerConfig  # noqa: E402

pytestmark = pytest.mark.slow

HOSTILE = ("subcoder/__init__.py", "pruner/__init__.py", "server/__init__.py", "argparse.py", "json.py",
           "filelock.py", "lsprotocol.py")


def _hostile_workspace(root: Path, markers: Path) -> Path:
    files = dict(PY_FILES)
    for rel in HOSTILE:
        name = rel.replace("/", "_")
        files[rel] = f"open({str(markers / name)!r}, 'w').write('imported')\n"
    return write_tree(root, files)


async def test_no_workspace_module_is_imported(tiny_model_dir, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()
    workspace = _hostile_workspace(tmp_path / "ws", markers)
    cache = tmp_path / "cache"
    monkeypatch.chdir(workspace)  # the worst case: the server's working directory is the workspace
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SUBCODER_CACHE_DIR=str(cache), XDG_STATE_HOME=str(cache / "state"))
    config = ClientServerConfig(server_command=[sys.executable, "-P", "-m", "subcoder.pruner.cli", "serve"],
                                server_env=env)
    client = await config.start()
    statuses: list[dict] = []
    client.feature("subcoder/status")(lambda params: statuses.append(dict(params._asdict())))
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=workspace.as_uri(),
            initialization_options=fast_settings(tiny_model_dir),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")]))
        for _ in range(3000):  # up to 300 s: the build of a tiny model takes seconds
            if any(s.get("state") in ("ready", "error") for s in statuses):
                break
            await asyncio.sleep(0.1)
        assert statuses and statuses[-1]["state"] == "ready", statuses[-3:]
        uri = (workspace / "app" / "new.py").as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text="def add(a, b):\n    return ")))
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=11),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        assert result is not None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 20)
        with contextlib.suppress(Exception):
            await client.stop()
    assert sorted(p.name for p in markers.iterdir()) == []
