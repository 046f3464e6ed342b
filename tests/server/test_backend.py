"""subcoder.server.backend: the transport and failure handling of the remote backend, against a small
OpenAI-compatible HTTP server written here (standard library) that can stream, die mid-request, hang,
and go away and come back. The real server (llama.cpp's) is in test_backend_llama.py.

The prompt side is real: the tiny model folder's tokenizer builds the FIM prompt, as a preset's would.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from subcoder.pruner.errors import Cancelled
from subcoder.server.backend import (
    BackendError, Health, RemoteEngine, api_stops, chunk_text, cut_at_marker, open_remote, parse_endpoint,
    prompt_side, sse_data,
)
from subcoder.server.session import ServingSession, State
from subcoder.server.settings import Settings, parse_settings

MODEL_ID = "fake-model"


class FakeAPI(ThreadingHTTPServer):
    """`/v1/models` and streamed `/v1/completions`. `behaviour`: ok | die | hang | http500."""

    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.behaviour = "ok"
        self.pieces = ["x = 1", "\n", "y = 2", "\n"]  # what "ok" streams, one chunk each
        self.delay = 0.0  # between chunks
        self.requests: list[dict] = []
        self.gone = threading.Event()  # a client closed its connection before the answer ended
        self.sent = 0  # chunks written, all requests together
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeAPI

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path != "/v1/models":
            self.send_error(404)
            return
        self._json({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        behaviour = self.server.behaviour
        if behaviour == "http500":
            self.send_error(500, "model crashed")
            return
        if behaviour == "hang":
            self._wait_for_client_to_leave(30)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = self.server.pieces[:2] if behaviour == "die" else self.server.pieces
        try:
            for piece in pieces:
                self._event({"choices": [{"index": 0, "text": piece, "finish_reason": None}]})
                time.sleep(self.server.delay)
            if behaviour == "die":
                self.connection.shutdown(socket.SHUT_RDWR)  # the server process went away mid-stream
                return
            self._event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            self.server.gone.set()

    def _event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()
        self.server.sent += 1

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _wait_for_client_to_leave(self, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.connection], [], [], 0.02)
            if ready and not self.connection.recv(1, socket.MSG_PEEK):
                self.server.gone.set()
                return


@pytest.fixture
def api():
    server = FakeAPI()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def side(tiny_model_dir):
    return prompt_side(str(tiny_model_dir))


_started: list[RemoteEngine] = []


@pytest.fixture(autouse=True)
def _close_engines():
    """Every engine a test started is closed after it: a backend left down would probe every 0.2 s for the
    rest of the run (CI saw those probes flood a later test's log)."""
    yield
    while _started:
        _started.pop().close()


def engine(side, url, **kw) -> RemoteEngine:
    kw.setdefault("retry", (0.05, 0.2))
    started = RemoteEngine(side, url, timeout=kw.pop("timeout", 2.0), **kw).start()
    _started.append(started)
    return started


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------------- pure parts


def test_endpoints_are_normalised_to_the_api_base():
    assert parse_endpoint("http://gpu-box:8000").url == "http://gpu-box:8000/v1"
    assert parse_endpoint("http://gpu-box:8000/v1/").url == "http://gpu-box:8000/v1"
    assert parse_endpoint("https://team.example/llm").url == "https://team.example:443/llm/v1"
    for bad in ("gpu-box:8000", "ftp://host", "http://", "http://host:99999"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_a_bad_backend_setting_falls_back_with_one_message():
    parsed = parse_settings({"backend": "gpu-box:8000", "backendTimeout": 0})
    assert parsed.settings.backend == "" and parsed.settings.backend_timeout == 10.0
    assert len(parsed.problems) == 2 and "http(s) URL" in parsed.problems[0]
    assert parse_settings({"backend": " http://h:1 "}).settings.backend == "http://h:1"


def test_stop_strings_never_cut_before_the_stop_rule():
    assert api_stops("single-line", "x = f(", ")\n") == ["\n"]  # mid-line: the line's end is the end
    assert api_stops("single-line", "def f():", "\n") == []  # blank lines may come before the first line of code
    assert api_stops("multi-line", "def f():\n    ", "") == ["\n\n\n"]


def test_server_sent_events_are_read_as_the_api_sends_them():
    assert sse_data(b'data: {"a": 1}\r\n') == '{"a": 1}'
    assert sse_data(b": keep-alive\n") is None and sse_data(b"\n") is None
    assert chunk_text('{"choices": [{"text": "ab", "finish_reason": null}]}') == ("ab", None)
    with pytest.raises(BackendError, match="out of memory"):
        chunk_text('{"error": {"message": "out of memory"}}')
    with pytest.raises(BackendError, match="not JSON"):
        chunk_text("{oops")
    assert cut_at_marker("a = 1<|endoftext|>junk") == 5 and cut_at_marker("a = 1") is None


# ---------------------------------------------------------------------------- requests


def test_a_completion_is_the_fim_prompt_streamed_and_cut_by_the_stop_rule(side, api):
    eng = engine(side, api.url)
    assert eng.up and eng.model_id == MODEL_ID
    got = eng.complete("def main():\n    ", "\nprint(1)\n", max_new_tokens=16, mode="single-line", key="file:///a.py")
    assert got.text == "x = 1" and got.stop_reason == "line" and got.new_tokens == 2
    body = api.requests[-1]
    # PSM (the default): prefix, then suffix; the FIM markers as text, the server tokenizes them
    assert body["prompt"] == "<|fim_prefix|>def main():\n    <|fim_suffix|>\nprint(1)\n<|fim_middle|>"
    assert body["model"] == MODEL_ID and body["stream"] is True and body["temperature"] == 0.0
    assert body["max_tokens"] == 16 and body["stop"] == []
    assert set(side.stop_ids) <= set(body["stop_token_ids"]) and side.stop_ids
    # only the prompt leaves the machine: no document URI, no file name
    assert "file://" not in json.dumps(body) and "a.py" not in json.dumps(body)


def test_the_stream_is_closed_as_soon_as_the_rule_fires(side, api):
    api.pieces = ["x = 1", "\n"] + ["z"] * 400
    api.delay = 0.005
    eng = engine(side, api.url)
    started = time.monotonic()
    assert eng.complete("a = 0\n", "", max_new_tokens=500, mode="single-line").text == "x = 1"
    assert time.monotonic() - started < 1.0
    assert api.gone.wait(3) and api.sent < 100  # the server saw the client leave and stopped writing


def test_whitespace_alone_is_an_empty_answer(side, api):
    api.pieces = ["   ", "\n"]
    assert engine(side, api.url).complete("a = 0\n", "", mode="multi-line").text == ""


def test_cancel_aborts_the_http_request(side, api):
    eng = engine(side, api.url)
    api.behaviour = "hang"
    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        eng.complete("a = 0\n", "", mode="single-line", cancel=flag.is_set)
    assert time.monotonic() - started < 1.0
    assert api.gone.wait(2)  # the server saw the connection close
    assert eng.up  # a cancel is no failure of the backend


def test_a_server_that_hangs_times_out_then_requests_fail_fast_until_it_answers(side, api):
    changes = []
    eng = engine(side, api.url, timeout=0.5, on_health=lambda up, why: changes.append((up, why)))
    api.behaviour = "hang"
    started = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 0.5 s"):
        eng.complete("a = 0\n", "", mode="single-line")
    assert 0.4 < time.monotonic() - started < 1.5
    assert changes[0][0] is False and not eng.up
    started = time.monotonic()
    with pytest.raises(BackendError, match="retrying"):  # down: answered at once, no new request
        eng.complete("b = 0\n", "", mode="single-line")
    assert time.monotonic() - started < 0.1
    api.behaviour = "ok"  # the probe (GET /v1/models) answers: up again
    assert wait_until(lambda: eng.up) and changes[-1] == (True, "")
    assert eng.complete("a = 0\n", "", mode="single-line").text == "x = 1"


def test_a_server_that_dies_mid_request_is_an_error_not_a_hang(side, api):
    eng = engine(side, api.url, timeout=5.0)
    api.behaviour = "die"
    api.pieces = ["x = ", "1", "\n"]
    started = time.monotonic()
    with pytest.raises(BackendError, match="ended before the completion|closed mid-request"):
        eng.complete("a = 0\n", "", mode="single-line")
    assert time.monotonic() - started < 2.0 and not eng.up


def test_an_http_error_says_what_the_server_said(side, api):
    eng = engine(side, api.url)
    api.behaviour = "http500"
    with pytest.raises(BackendError, match="HTTP 500"):
        eng.complete("a = 0\n", "", mode="single-line")


def test_a_server_that_is_not_there_yet_is_found_when_it_starts(side):
    with socket.socket() as probe:  # a free port, nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    changes = []
    eng = engine(side, f"http://127.0.0.1:{port}", on_health=lambda up, why: changes.append((up, why)))
    assert not eng.up and "connection refused" in eng.describe()
    server = FakeAPI(port)
    try:
        assert wait_until(lambda: eng.up) and eng.model_id == MODEL_ID
        assert [up for up, _ in changes] == [False, True]
    finally:
        server.stop()
        eng.close()


def test_backoff_doubles_and_the_probe_stops_when_the_engine_is_replaced():
    tries, alive = [], threading.Event()
    alive.set()

    def probe():
        tries.append(time.monotonic())
        raise BackendError("connection refused")

    health = Health(probe, lambda up, why: None, alive.is_set, first_retry=0.1, max_retry=0.4)
    health.failed("connection refused")
    assert wait_until(lambda: len(tries) >= 4)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[0] > 0.18 and gaps[2] < 0.7  # 0.2, 0.4, then 0.4 again: capped (0.8 without the cap)
    alive.clear()
    time.sleep(0.5)
    count = len(tries)
    time.sleep(0.8)
    assert len(tries) == count


# ---------------------------------------------------------------------------- the session


class Notifier:
    def __init__(self):
        self.statuses, self.shown = [], []

    def status(self, status):
        self.statuses.append(status)

    def show(self, kind, text, *, error=False):
        self.shown.append((kind, text))

    def can_ask(self):
        return False

    async def begin_progress(self, title, cancellable=True):
        pass

    def report_progress(self, message, percent):
        pass

    def end_progress(self, message):
        pass


class NoBuilds:
    current = None

    def __init__(self, on_event):
        pass

    def submit(self, request):
        raise AssertionError("nothing is built in backend mode")

    def cancel(self):
        pass

    def shutdown(self):
        pass


async def wait_state(notifier, state, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if notifier.statuses and notifier.statuses[-1]["state"] == state:
            return notifier.statuses[-1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {state}: {[s['state'] for s in notifier.statuses]}")


async def test_the_session_serves_through_the_backend_and_recovers(tiny_model_dir, tmp_path, api):
    def no_local_model(*args):
        raise AssertionError("no model is loaded in backend mode")

    notifier = Notifier()
    session = ServingSession(
        load=no_local_model, builds=NoBuilds, notifier=notifier, detect=no_local_model,
        key_of=no_local_model, open_cache=lambda s: None,
        settings=Settings(model=str(tiny_model_dir), backend=api.url, backend_timeout=1.0),
        remote=lambda s, on_health, alive: open_remote(s, on_health, alive))
    await session.start()  # no root: nothing to detect; a document opened picks the language
    session.want("python")
    status = await wait_state(notifier, "ready")
    assert api.url in status["message"] and MODEL_ID in status["message"]
    got = await session.complete("file:///a.py", "python", "a = 0\n", "", request="r1")
    assert got.text == "x = 1\ny = 2"  # auto mode on a blank line: a block
    api.behaviour = "die"
    assert await session.complete("file:///a.py", "python", "b = 0\n", "", request="r2") is None
    status = await wait_state(notifier, "error")
    assert "unavailable" in status["message"] and notifier.shown[0][0] == "backend"
    api.behaviour = "ok"
    await wait_state(notifier, "ready")
    got = await session.complete("file:///a.py", "python", "c = 0\n", "", request="r3")
    assert got.text == "x = 1\ny = 2"  # auto mode on a blank line: a block
    assert session.details()["resident"] == ["base"]  # the remote completer; no weights
    session.models.base.completer.engine.close()
    session.shutdown()


# ---------------------------------------------------------------------------- over LSP


@pytest.mark.slow  # starts `subcoder serve`
async def test_subcoder_serve_with_a_backend_builds_nothing(tiny_model_dir, py_workspace, tmp_path, api):
    from conftest import fast_settings, serve

    cache = tmp_path / "cache"
    settings = fast_settings(tiny_model_dir, backend=api.url, backendTimeout=2)
    async with serve(py_workspace, cache, settings) as s:
        await s.wait_for(lambda: s.statuses and s.statuses[-1]["state"] == "ready", what="ready")
        assert api.url in s.statuses[-1]["message"]
        uri = s.open("app/new.py", "def add(a, b):\n    return a\n")
        inline = await s.inline(uri, 1, 11)
        assert [item.insert_text for item in inline.items] == ["x = 1"]  # mid-line: the rest of the line
        api.behaviour, api.pieces = "die", ["x", " = ", "1\n"]  # gone after two pieces, mid-line
        assert not (await s.inline(uri, 1, 10)).items
        await s.wait_for(lambda: s.statuses[-1]["state"] == "error", what="error")
        api.behaviour = "ok"
        await s.wait_for(lambda: s.statuses[-1]["state"] == "ready", what="ready again")
        details = await s.command("subcoder.status")
        assert details["counters"]["buildsStarted"] == 0 and details["resident"] == ["base"]
    assert not any((cache / "submodels").glob("*/manifest.json"))
