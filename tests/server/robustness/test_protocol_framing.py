"""The framer and the envelope checks on their own, without a process: every malformed framing in the
corpus is dropped or served, and the message after it always comes through, whole or one byte at a time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import ERROR, RESULT, framing_cases  # noqa: E402
from rawlsp import frame  # noqa: E402

from subcoder.server.protocol import (  # noqa: E402
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, SERVER_NOT_INITIALIZED, Dropped, Framer, parse_header,
    presentable, request_error, usable_id,
)
from lsprotocol import types  # noqa: E402

NEXT = {"jsonrpc": "2.0", "id": "next", "method": "shutdown"}
LIMIT = 1 << 20


def _run(data: bytes, *, bytewise: bool = False, limit: int = LIMIT) -> tuple[list, list[Dropped]]:
    framer = Framer(limit)
    out = []
    if bytewise:
        for i in range(len(data)):
            out += framer.feed(data[i:i + 1])
    else:
        out += framer.feed(data)
    out += framer.close()
    return [o for o in out if not isinstance(o, Dropped)], [o for o in out if isinstance(o, Dropped)]


SMALL = [c for c in framing_cases() if len(c.data) < 200_000]


@pytest.mark.parametrize("case", SMALL, ids=[c.name for c in SMALL])
def test_the_message_after_a_malformed_framing_comes_through(case):
    messages, dropped = _run(case.data + frame(NEXT))
    assert messages[-1] == NEXT
    served = [m.get("id") for m in messages[:-1] if isinstance(m, dict) and m.get("method")]
    assert served == [i for i, want in case.expect.items() if want in (RESULT, ERROR)]
    assert dropped or case.expect or not case.data.strip() or case.name.startswith("8 MiB")


@pytest.mark.parametrize("case", [c for c in SMALL if len(c.data) < 5000], ids=lambda c: c.name)
def test_byte_at_a_time_gives_the_same_messages(case):
    assert _run(case.data + frame(NEXT), bytewise=True)[0] == _run(case.data + frame(NEXT))[0]


def test_oversized_message_is_skipped_with_bounded_memory():
    body = json.dumps({"jsonrpc": "2.0", "method": "x", "params": "y" * (3 * LIMIT)}).encode()
    framer = Framer(LIMIT)
    out = framer.feed(frame(body)[:100])
    assert [str(d) for d in out] == [f"dropped {len(body)} bytes (over the {LIMIT}-byte message limit): "
                                     f"{('Content-Length: %d' % len(body)).encode()!r}"]
    rest = frame(body)[100:] + frame(NEXT)
    for i in range(0, len(rest), 1 << 16):
        out += framer.feed(rest[i:i + (1 << 16)])
        assert len(framer._buf) <= 1 << 16  # only a tail is kept while skipping
    assert out[-1] == NEXT and len(out) == 2


def test_each_drop_says_what_and_how_much():
    _, dropped = _run(b"garbage\r\n" + frame(NEXT))
    assert [str(d) for d in dropped] == ["dropped 9 bytes (not a header): b'garbage\\r\\n'"]
    _, dropped = _run(b"Content-Length: 7\r\n\r\nnotjson")
    assert [str(d) for d in dropped] == ["dropped 7 bytes (the body is not JSON): b'notjson'"]


def test_a_stream_that_ends_mid_message_is_reported():
    assert [d.reason for d in _run(b"Content-Length: 50\r\n\r\n{\"a\"")[1]] == ["the stream ended inside a message"]
    assert _run(b"\r\n\r\n") == ([], [])


@pytest.mark.parametrize("block, expected", [
    (b"Content-Length: 12", (12, "")),
    (b"content-length:12\r\nContent-Type: x", (12, "")),
    (b"Content-Length: -1", (None, "Content-Length '-1' is not a byte count")),
    (b"Content-Length: 1\nContent-Length: 1", (None, "two Content-Length headers")),
    (b"Content-Type: x", (None, "no Content-Length header")),
    (b"garbage", (None, "not a header")),
    (b"Content-Length: " + b"1" * 21, (None, "a Content-Length of more than 20 digits")),
])
def test_parse_header(block, expected):
    assert parse_header(block) == expected


def _request(**fields):
    return {"jsonrpc": "2.0", "id": 1, "method": "textDocument/completion", "params": {}, **fields}


@pytest.mark.parametrize("message, state, code", [
    (_request(), {}, None),
    (_request(jsonrpc="1.0"), {}, INVALID_REQUEST),
    (_request(method=5), {}, INVALID_REQUEST),
    (_request(id=1.5), {}, INVALID_REQUEST),
    (_request(id=True), {}, INVALID_REQUEST),
    (_request(), {"shutting_down": True}, INVALID_REQUEST),
    (_request(), {"initialized": False}, SERVER_NOT_INITIALIZED),
    (_request(method="initialize"), {"initialized": False}, None),
    (_request(method="nope"), {}, METHOD_NOT_FOUND),
    (_request(params="x"), {}, INVALID_PARAMS),
])
def test_request_error(message, state, code):
    got = request_error(message, **{"initialized": True, "shutting_down": False, **state},
                        known=lambda m: m in ("textDocument/completion", "initialize"))
    assert (got and got[0]) == code


def test_usable_ids():
    assert [usable_id(v) for v in (1, "a", 2**70, 1.5, None, True, [1], float("inf"))] == \
        [True, True, True, True, False, False, False, False]


def test_internal_errors_lose_their_traceback_and_paths():
    error = types.ResponseError(code=-32603, message="FileNotFoundError: [Errno 2] '/home/u/x.py'",
                                data={"traceback": ["File \"/x.py\", line 1"]})
    assert presentable(error) == types.ResponseError(
        code=-32603, message="internal error (FileNotFoundError): the server log has the details")
