"""Fixtures for the server tests: a tiny model folder, fixture workspaces, and a client speaking real
JSON-RPC to a `subcoder serve` child process (pytest-lsp)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig

sys.path.insert(0, str(Path(__file__).parent))

from lsp_fixtures import PY_FILES, REPO, SERVE, WAIT_S, fast_settings, py_workspace, tiny_model_dir, write_tree  # noqa: E402,F401


def capabilities(*, progress: bool = True, configuration: bool = True) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=progress),
        workspace=types.WorkspaceClientCapabilities(configuration=configuration),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
        ),
    )


class Session:
    """A started server with helpers to wait for its status notifications."""

    def __init__(self, client, root: Path):
        self.client = client
        self.root = root
        self.statuses: list[dict] = []

        @client.feature("subcoder/status")
        def _status(params):
            self.statuses.append(_plain(params))

    # Generous limits: a build starts a process that imports torch and may compile the kernel, which
    # took over two minutes when a CI run shared the machine's two cores and its disk with other work.
    async def wait_state(self, *states: str, timeout: float = WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses:
                if status.get("state") in states:
                    return status
            if self.client.error is not None:
                raise self.client.error
            await asyncio.sleep(0.05)
        raise AssertionError(f"no status in {states} within {timeout}s; got {[s.get('state') for s in self.statuses]}")

    async def wait_for(self, predicate, timeout: float = WAIT_S, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (got := predicate()):
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; statuses {[s.get('state') for s in self.statuses]}")

    def open(self, rel: str, text: str, language_id: str = "python") -> str:
        uri = (self.root / rel).as_uri()
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)))
        return uri

    async def inline(self, uri: str, line: int, character: int):
        return await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))

    async def completion(self, uri: str, line: int, character: int):
        return await self.client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character)))

    async def command(self, name: str):
        return await self.client.workspace_execute_command_async(types.ExecuteCommandParams(command=name, arguments=[]))


def _plain(params):
    """pygls hands custom notifications' params over as namedtuples: back to dicts and lists."""
    if hasattr(params, "_asdict"):
        return {k: _plain(v) for k, v in params._asdict().items()}
    if isinstance(params, dict):
        return {k: _plain(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [_plain(v) for v in params]
    return params


@contextlib.asynccontextmanager
async def serve(root: Path, cache: Path, settings: dict | None, *, caps=None, configuration: dict | None = None,
                env: dict | None = None):
    """Start `subcoder serve`, initialize it on `root` with `settings` as initializationOptions."""
    server_env = {**os.environ, "SUBCODER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
                  "XDG_STATE_HOME": str(cache / "state"), "XDG_CACHE_HOME": str(cache / "xdg"), **(env or {})}
    log_file = cache / "logs" / f"server-{time.monotonic_ns()}.log"
    config = ClientServerConfig(server_command=[*SERVE, "--log-file", str(log_file)], server_env=server_env)
    client = await config.start()
    if configuration is not None:
        client.set_configuration(configuration)
    session = Session(client, root)
    session.log_file = log_file
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=caps or capabilities(), root_uri=root.as_uri(), initialization_options=settings,
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)]))
        yield session
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 20)
        with contextlib.suppress(Exception):
            await client.stop()
