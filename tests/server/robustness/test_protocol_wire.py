"""No input kills the server, and every request with an id gets exactly one response.

A real `subcoder serve` process per transport (stdio and TCP; the tiny model, an empty workspace so
that no build runs, the base model serves) gets the corpus in `corpus.py` one case at a time; after
each case a valid completion request must still get its result. The server's log must name what it
dropped. Last, a bounded flood: 300 completion requests, nine in ten cancelled, with the server's
resident memory before and after.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rawlsp  # noqa: E402
from corpus import DOC, DOC_TEXT, ERROR, RESULT, completion, framing_cases, jsonrpc_cases  # noqa: E402
from lsp_fixtures import WAIT_S, fast_settings  # noqa: E402

from subcoder.pruner.paths import cache_dir  # noqa: E402

pytestmark = pytest.mark.slow

FRAMING, JSONRPC = framing_cases(), jsonrpc_cases()
_PATH = re.compile(r"(^|[\s'\"(])/[\w.-]+/|\\[\w.-]+\\|\.py\b|Traceback")
# Read before any test points SUBCODER_CACHE_DIR elsewhere: the compiled kernel is shared, as in tests/conftest.py.
SHARED_KERNELS = cache_dir() / "kernels"
FLOOD_DOC = "file:///robustness/flood.py"
BEFORE_INIT = ("before-init-completion", "before-init-shutdown")


@pytest.fixture(scope="module", params=["stdio", "tcp"])
def client(request, tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp(f"serve-{request.param}")
    root = cache / "empty-workspace"
    root.mkdir()
    SHARED_KERNELS.mkdir(parents=True, exist_ok=True)
    (cache / "kernels").symlink_to(SHARED_KERNELS, target_is_directory=True)
    c = rawlsp.start(request.param, cache)
    c.transport = request.param
    c.tried = c.survived = c.nulls = 0
    try:
        # Before initialize: requests get -32002, notifications are dropped.
        c.send(completion(BEFORE_INIT[0]))
        c.request(BEFORE_INIT[1], "shutdown")
        c.notify("textDocument/didOpen", {"textDocument": {"uri": DOC, "languageId": "python", "version": 1,
                                                           "text": DOC_TEXT}})
        c.request("init", "initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": {},
                                         "initializationOptions": fast_settings(tiny_model_dir)})
        assert "result" in c.response("init", timeout=WAIT_S), c.response("init")
        c.notify("initialized", {})
        c.notify("textDocument/didOpen", {"textDocument": {"uri": DOC, "languageId": "python", "version": 1,
                                                           "text": DOC_TEXT}})
        c.rss_start = c.rss_mib()
        yield c
        print(f"\n{request.param}: {c.survived} of {c.tried} cases survived; RSS {c.rss_start:.0f} MiB after "
              f"initialize, {c.rss_mib():.0f} MiB at the end")
        c.request("bye", "shutdown")
        assert "result" in c.response("bye")
        c.notify("exit")
        assert c.proc.wait(30) == 0
    finally:
        c.close()


def _probe(client, name: str) -> None:
    """The server is alive and serving: a valid request gets its result."""
    msg_id = f"probe-{name}"
    client.send(completion(msg_id))
    reply = client.response(msg_id, timeout=60)
    assert "result" in reply, reply


def _check(client, case) -> None:
    client.tried += 1
    client.send_raw(case.data)
    for msg_id, want in case.expect.items():
        reply = client.response(msg_id)
        if want == RESULT:
            assert "result" in reply, reply
        else:
            assert "error" in reply, reply
            assert want == ERROR or reply["error"]["code"] == want, reply
    _probe(client, case.name)
    for msg_id in case.expect:
        assert len(client.responses(msg_id)) == 1, f"{msg_id!r} answered {len(client.responses(msg_id))} times"
    nulls = [m for m in client.responses() if m.get("id") is None and "error" in m]
    assert len(nulls) == client.nulls + case.null_ids, nulls
    client.nulls = len(nulls)
    for reply in client.responses():
        if "error" in reply:
            message = reply["error"]["message"]
            assert len(message) < 400 and not _PATH.search(message) and "data" not in reply["error"], reply
    assert not client.problems, client.problems
    client.survived += 1


def test_requests_before_initialize_are_refused(client):
    for msg_id in BEFORE_INIT:
        assert client.response(msg_id)["error"]["code"] == -32002


@pytest.mark.parametrize("case", FRAMING, ids=[c.name for c in FRAMING])
def test_malformed_framing(client, case):
    _check(client, case)


def test_dropped_input_is_logged(client):
    """Every framing case that drops something leaves a line naming it in the server's log."""
    text = client.log_file.read_text()
    for reason in ("over the 67108864-byte message limit", "is not a byte count", "the body is not JSON",
                   "not a header", "JSON nested too deeply", "no Content-Length header", "two Content-Length"):
        assert reason in text, reason


@pytest.mark.parametrize("case", JSONRPC, ids=[c.name for c in JSONRPC])
def test_invalid_request(client, case):
    _check(client, case)


def test_every_request_answered_once(client):
    counts = Counter(repr(m.get("id")) for m in client.responses() if m.get("id") is not None)
    assert [i for i, n in counts.items() if n > 1] == []


def test_nothing_the_client_is_shown_carries_a_traceback(client):
    shown = [n["params"]["message"] for m in ("window/showMessage", "window/logMessage") for n in client.notifications(m)]
    assert shown and not [text for text in shown if "Traceback" in text or 'File "' in text]
    print(f"\n{client.transport}: shown to the user: {[t for t in shown if t.startswith('Error')][:5]}")


def test_flood_of_cancelled_completions(client):
    """300 completion requests, nine in ten cancelled at once: each gets one response, memory stays put."""
    client.wait(lambda: any(n["params"].get("state") in ("base", "ready")
                            for n in client.notifications("subcoder/status")), WAIT_S, "the base model")
    _probe(client, "flood-warmup")
    before = client.rss_mib()
    started = time.monotonic()
    # One line per request, so that no two share a prompt and the answered ones really decode.
    lines = [f"value_{i} = " for i in range(300)]
    client.notify("textDocument/didOpen", {"textDocument": {"uri": FLOOD_DOC, "languageId": "python", "version": 1,
                                                            "text": "\n".join(lines)}})
    ids = [f"flood-{client.transport}-{i}" for i in range(300)]
    for i, msg_id in enumerate(ids):
        client.send(completion(msg_id, i, len(lines[i]), uri=FLOOD_DOC))
        if i % 10:
            client.notify("$/cancelRequest", {"id": msg_id})
    client.wait(lambda: all(client.responses(i) for i in ids), 240, "300 responses")
    seconds = time.monotonic() - started
    _probe(client, "flood-after")
    after = client.rss_mib()
    answered = Counter("result" if "result" in r else r["error"]["code"] for i in ids for r in client.responses(i))
    assert all(len(client.responses(i)) == 1 for i in ids)
    assert set(answered) <= {"result", -32800}, answered
    print(f"\n{client.transport} flood: {dict(answered)} in {seconds:.1f}s, RSS {before:.0f} MiB before, "
          f"{after:.0f} MiB after")
    assert after < before + 200, (before, after)
