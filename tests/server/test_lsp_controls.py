"""End to end over JSON-RPC (a real `subcoder serve`, tiny random model): the editor's Cancel build command, the
kernel's on/off in the status, and the token count an inline item carries for the status tooltip."""

from __future__ import annotations

import pytest
from conftest import fast_settings, serve

pytestmark = pytest.mark.slow  # starts a server process

PREFIX_DOC = "def add(a, b):\n    return "


async def test_cancel_build_command_kernel_status_and_item_tokens(tiny_model_dir, py_workspace, tmp_path):
    async with serve(py_workspace, tmp_path / "cache", fast_settings(tiny_model_dir)) as s:
        uri = s.open("app/new.py", PREFIX_DOC)
        await s.wait_for(lambda: s.client.progress_reports or None, what="a build's progress token")
        status = await s.command("subcoder.cancelBuild")
        assert status["kernel"].startswith("off (")  # nothing pruned is served yet
        cancelled = await s.wait_for(lambda: next((x for x in s.statuses if "cancelled" in x["message"]), None),
                                     what="cancellation")
        assert "kernel" in cancelled
        await s.wait_state("base")
        items = (await s.inline(uri, 1, 11)).items
        assert len(items) == 1 and items[0].command.command == "subcoder.accepted"
        assert isinstance(items[0].command.arguments[0]["tokens"], int) and items[0].command.arguments[0]["tokens"] > 0
        await s.command("subcoder.accepted")  # a client that sends the item's command to the server gets an answer
        counters = (await s.command("subcoder.status"))["counters"]
        assert counters["buildsCancelled"] == 1
