"""Malformed input for the language server: broken framings, and well-framed requests that are not
valid JSON-RPC or LSP. Each case says which ids must get exactly one response, and with what."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from rawlsp import frame

DOC = "file:///robustness/main.py"  # opened before the cases run: nothing needs to exist on disk
DOC_TEXT = "def add(a, b):\n    return "
RESULT, ERROR = "result", "error"  # besides a specific error code: any result, any error


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: dict = field(default_factory=dict)  # id -> error code, RESULT or ERROR
    null_ids: int = 0  # error responses with a null id (requests whose id cannot be sent back)


def completion(msg_id, line=1, character=11, uri=DOC, **override) -> dict:
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/completion", **{"params": params, **override}}


def _body(message) -> bytes:
    return json.dumps(message).encode()


def _header(length) -> bytes:
    return b"Content-Length: " + str(length).encode() + b"\r\n\r\n"


def _did_open(uri: str, text: str) -> bytes:
    return frame({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                  "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}})


def framing_cases() -> list[Case]:
    short = _body(completion("short"))
    long = _body(completion("long"))
    return [
        Case("length 10**12", b"Content-Length: 1000000000000\r\n\r\n"),
        Case("length 2**70", _header(2**70)),
        Case("length of 5000 digits", b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n"),
        Case("negative length", b"Content-Length: -5\r\n\r\n" + _body(completion("negative"))),
        Case("length shorter than the body", _header(10) + short),
        Case("length longer than the body", _header(len(long) + 40) + long),
        Case("lowercase header name", frame(completion("lower"), name=b"content-length"), {"lower": RESULT}),
        Case("LF-only line ends", frame(completion("lf"), eol=b"\n"), {"lf": RESULT}),
        Case("Content-Type before Content-Length",
             b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + frame(completion("ctype")),
             {"ctype": RESULT}),
        Case("garbage line between messages", b"garbage\r\n"),
        Case("garbage without a line end", b"}}]garbage"),
        Case("body that is not JSON", _header(7) + b"notjson"),
        Case("empty body", _header(0)),
        Case("body that is not UTF-8", _header(4) + b"\xff\xfe\xfd\xfc"),
        Case("JSON nested 100000 deep", _header(100000) + b"[" * 100000),
        Case("no Content-Length header", b"Content-Type: text/plain\r\n\r\n{}"),
        Case("two Content-Length headers", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        Case("header line of 16 KiB", b"X-Junk: " + b"x" * (16 << 10) + b"\r\n"),
        Case("CR-only line ends", b"Content-Length: 2\r\r{}"),
        Case("100000 blank lines", b"\r\n" * 100000),
        Case("4 KiB of random bytes", random.Random(0).randbytes(4096)),
        Case("65 MiB notification (over the 64 MiB cap)", _did_open("file:///robustness/huge.py", "x" * (65 << 20))),
        Case("8 MiB document (under the cap)", _did_open("file:///robustness/big.py", "y = 1\n" * (8 << 17))),
        Case("two requests in one write", frame(completion("pair-1")) + frame(completion("pair-2")),
             {"pair-1": RESULT, "pair-2": RESULT}),
    ]


def _raw(message) -> bytes:
    return frame(message)


def jsonrpc_cases() -> list[Case]:
    def bad_position(msg_id, line, character=0):
        return Case(f"position {line!r}:{character!r}", _raw(completion(msg_id, line, character)), {msg_id: -32602})

    no_params = {k: v for k, v in completion("no-params").items() if k != "params"}
    return [
        bad_position("line-neg", -1),
        bad_position("line-2-31", 2**31),
        bad_position("line-2-63", 2**63),
        bad_position("char-neg", 1, -1),
        bad_position("line-word", "abc"),
        Case("line as a numeric string", _raw(completion("line-str", "1")), {"line-str": RESULT}),
        Case("largest line and character", _raw(completion("max-pos", 2**31 - 1, 2**31 - 1)), {"max-pos": RESULT}),
        Case("character past the line's end", _raw(completion("far-char", 1, 2**31 - 1)), {"far-char": RESULT}),
        Case("document never opened", _raw(completion("unopened", uri="file:///robustness/nope.py")),
             {"unopened": RESULT}),
        Case("position missing", _raw(completion("no-pos", params={"textDocument": {"uri": DOC}})), {"no-pos": -32602}),
        Case("textDocument missing", _raw(completion("no-doc", params={"position": {"line": 0, "character": 0}})),
             {"no-doc": -32602}),
        Case("null params", _raw(completion("null-params", params=None)), {"null-params": -32602}),
        Case("array params", _raw(completion("array-params", params=[DOC, 1, 2])), {"array-params": -32602}),
        Case("string params", _raw(completion("string-params", params="x")), {"string-params": -32602}),
        Case("params absent", _raw(no_params), {"no-params": -32602}),
        Case("no jsonrpc member", _raw({k: v for k, v in completion("no-jsonrpc").items() if k != "jsonrpc"}),
             {"no-jsonrpc": -32600}),
        Case("jsonrpc 1.0", _raw(completion("v1", jsonrpc="1.0")), {"v1": -32600}),
        Case("method not a string", _raw({"jsonrpc": "2.0", "id": "m123", "method": 123}), {"m123": -32600}),
        Case("unknown method", _raw({"jsonrpc": "2.0", "id": "unknown", "method": "subcoder/nope"}),
             {"unknown": -32601}),
        Case("unknown $/ request", _raw({"jsonrpc": "2.0", "id": "dollar", "method": "$/nope"}), {"dollar": -32601}),
        Case("1 MiB method name", _raw({"jsonrpc": "2.0", "id": "long-method", "method": "m" * (1 << 20)}),
             {"long-method": -32601}),
        Case("id null", _raw(completion(None)), null_ids=1),
        Case("id a fraction", _raw(completion(1.5)), {1.5: -32600}),
        Case("id an object", _raw(completion({"a": 1})), null_ids=1),
        Case("id true", _raw(completion(True)), null_ids=1),
        Case("id 2**70", _raw(completion(2**70)), {2**70: RESULT}),
        Case("batch of two requests", _raw([completion("batch-1"), completion("batch-2")]),
             {"batch-1": -32600, "batch-2": -32600}),
        Case("empty batch", _raw([])),
        Case("batch of junk", _raw([1, None, "x", {"jsonrpc": "2.0", "method": "initialized"}])),
        Case("JSON number as a message", _raw(42)),
        Case("JSON string as a message", _raw("hello")),
        Case("JSON null as a message", _raw(None)),
        Case("inline completion at line -1", _raw({"jsonrpc": "2.0", "id": "inline-neg", "method":
                                                   "textDocument/inlineCompletion", "params": {
                                                       "textDocument": {"uri": DOC},
                                                       "position": {"line": -1, "character": 0},
                                                       "context": {"triggerKind": 1}}}), {"inline-neg": -32602}),
        Case("unknown command", _raw({"jsonrpc": "2.0", "id": "cmd", "method": "workspace/executeCommand",
                                      "params": {"command": "subcoder.nope", "arguments": []}}), {"cmd": ERROR}),
        Case("didOpen with invalid params", _raw({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                                                  "params": {"textDocument": 5}})),
        Case("didChange of a document never opened", _raw({
            "jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": "file:///robustness/ghost.py", "version": 2},
                "contentChanges": [{"range": {"start": {"line": 9, "character": 0}, "end": {"line": 9, "character": 0}},
                                    "text": "x"}]}})),
        Case("cancel without params", _raw({"jsonrpc": "2.0", "method": "$/cancelRequest"})),
        Case("cancel of an unknown id", _raw({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "never"}})),
        Case("response to a request never sent", _raw({"jsonrpc": "2.0", "id": "stray", "result": {"x": 1}})),
        Case("unknown notification", _raw({"jsonrpc": "2.0", "method": "subcoder/nope", "params": {}})),
    ]
