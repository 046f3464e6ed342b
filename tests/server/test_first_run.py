"""The first run, against a real `subcoder serve` process: a window without code loads nothing, a document
of an enabled language starts the work, the first download of a preset is asked for (and "Not now" fetches
nothing), and after the swap one model is resident.

The consent tests name a real preset in an empty cache: the question comes before any byte is fetched, and
the answers tested here never fetch, so no network is needed.
"""

from __future__ import annotations

import pytest
from conftest import capabilities, fast_settings, serve, write_tree
from lsprotocol import types

pytestmark = pytest.mark.slow  # each test starts a server process

PY_DOC = "def add(a, b):\n    return "
NOTES = {"notes/todo.md": "# Todo\n\n- write the report\n" * 20, "notes/ideas.txt": "an idea\n" * 10}


@pytest.mark.parametrize("files", [{}, NOTES], ids=["empty", "notes"])
async def test_a_window_without_code_loads_nothing_until_a_python_document_opens(tiny_model_dir, tmp_path, files):
    root = write_tree(tmp_path / "ws", files)
    root.mkdir(exist_ok=True)
    async with serve(root, tmp_path / "cache", fast_settings(tiny_model_dir)) as s:
        idle = await s.wait_state("idle")
        assert "nothing is loaded" in idle["message"]
        status = await s.command("subcoder.status")
        assert status["state"] == "idle" and status["resident"] == []
        assert status["counters"]["baseLoaded"] == 0 and status["counters"]["buildsStarted"] == 0
        s.open("notes/more.md", "# more notes\n", language_id="markdown")  # not a language subcoder completes
        assert (await s.command("subcoder.status"))["resident"] == []

        uri = s.open("x.py", PY_DOC)
        ready = await s.wait_state("ready")
        assert ready["language"] == "python"
        status = await s.command("subcoder.status")
        # The base model served while the sub-model built, and was released at the swap: one model resident.
        assert status["counters"]["buildsFinished"] == 1 and status["resident"] == ["python"]
        assert (await s.inline(uri, 1, 11)).items


def _asking_capabilities() -> types.ClientCapabilities:
    caps = capabilities()
    caps.window.show_message = types.ShowMessageRequestClientCapabilities()
    return caps


async def test_the_first_download_is_asked_for_and_not_now_fetches_nothing(tmp_path):
    empty = tmp_path / "ws"
    empty.mkdir()
    cache = tmp_path / "cache"
    async with serve(empty, cache, {"model": "smollm2-135m"}, caps=_asking_capabilities()) as s:
        await s.wait_state("idle")
        questions = []

        @s.client.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
        def _answer(params: types.ShowMessageRequestParams):
            questions.append(params)
            return types.MessageActionItem(title="Not now")

        s.open("x.py", PY_DOC)  # the first document of an enabled language: now the model is needed
        declined = await s.wait_for(lambda: next((x for x in s.statuses if "Rebuild" in x["message"]), None),
                                    what="the declined download's status")
        assert declined["state"] == "idle"
        (question,) = questions
        assert question.message == ("subcoder needs SmolLM2-135M-Instruct (93.8 MB, once) to complete Python. "
                                    "Download?")
        assert [a.title for a in question.actions] == ["Download", "Not now"]
        status = await s.command("subcoder.status")
        assert status["counters"]["downloadsAsked"] == 1 and status["counters"]["downloads"] == 0
        assert status["resident"] == [] and status["counters"]["buildsStarted"] == 0
        assert not any(x["state"] in ("downloading", "building") for x in s.statuses)
    assert not (cache / "models" / "smollm2-135m").exists(), "something was fetched after 'Not now'"


async def test_allow_download_false_fetches_nothing_without_asking(tmp_path):
    workspace = write_tree(tmp_path / "ws", {"app/main.py": "def main():\n    return 1\n" * 20})
    cache = tmp_path / "cache"
    async with serve(workspace, cache, {"model": "smollm2-135m", "allowDownload": False},
                     caps=_asking_capabilities()) as s:
        refused = await s.wait_for(lambda: next((x for x in s.statuses if "allowDownload" in x["message"]), None),
                                   what="the refused download's status")
        assert refused["state"] == "idle"
        status = await s.command("subcoder.status")
        assert status["counters"]["downloadsAsked"] == 0 and status["resident"] == []
    assert not (cache / "models" / "smollm2-135m").exists()
