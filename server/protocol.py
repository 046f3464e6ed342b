"""The language server's wire: framing that survives any byte stream, and a JSON-RPC layer that answers
every request that carries an id.

pygls reads `Content-Length:` frames with a regular expression and a running counter: a huge length
is read whole (MemoryError, or OverflowError beyond 2**63) and kills the process, and a frame it does
not understand makes it swallow the next, valid, message. A request whose params do not match the LSP
schema raises inside `json.loads`' object hook and is never answered, so the editor waits forever.

Three parts, in the order bytes travel:

- `Framer`: pure, no I/O. Bytes in, parsed JSON values and `Dropped` records out. Bodies are capped
  (`MAX_MESSAGE_BYTES` unless the protocol says otherwise); anything that is not a well-formed frame
  is skipped up to the next `Content-Length:` header line, which cannot occur inside valid JSON
  (a JSON string cannot hold a raw line break), so resynchronising there never cuts a good message.
  Header names are matched without regard to case and LF-only line ends are accepted: both are
  unambiguous, so such messages are served rather than dropped.
- `SubcoderProtocol`: pygls' `LanguageServerProtocol` with the envelope checked before anything is
  structured. Every message with an `id` and a `method` gets exactly one response: -32600 (invalid
  request, also for batches, which LSP does not have, and after `shutdown`), -32002 (before
  `initialize`), -32601 (unknown method), -32602 (params that do not match the method's schema), and
  handler failures as -32603 whose message names the exception type only: tracebacks and paths stay
  in the server log.
- `serve_stdio` / `serve_tcp`: the transports, in place of pygls' `start_io` / `start_tcp`, reading
  chunks and feeding them through a `Framer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import cattrs
from cattrs.errors import BaseValidationError
from lsprotocol import types
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20  # a 64 MiB body is far beyond any document an editor sends whole
MAX_HEADER_BYTES = 8 << 10  # a header block is two short lines; more is not a header
CHUNK_BYTES = 64 << 10
_TAIL = 256  # kept while skipping, so a header line split across two chunks is still found
_PREVIEW = 40  # bytes of dropped input shown in the log

INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32600, -32601, -32602, -32603
SERVER_NOT_INITIALIZED = -32002

_HEADER_LINE = re.compile(rb"content-length:[ \t]*\d+[ \t]*\r?\n", re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_SPACE = re.compile(rb"[ \t\r\n]*")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_EXCEPTION_NAME = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


# ---------------------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class Dropped:
    """Input that was not a message: how many bytes, why, and how they began."""

    size: int
    reason: str
    preview: bytes

    def __str__(self) -> str:
        return f"dropped {self.size} bytes ({self.reason}): {self.preview!r}"


def parse_header(block: bytes) -> tuple[int | None, str]:
    """(body length, "") for a header block, or (None, why it is not one)."""
    length = None
    for line in _LINE_END.split(block):
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None, "not a header"
        if name.lower() != b"content-length":
            continue  # Content-Type and the like: pygls ignores them too
        value = value.strip()
        if length is not None:
            return None, "two Content-Length headers"
        if not value.isdigit():
            return None, f"Content-Length {value[:20].decode('latin-1')!r} is not a byte count"
        if len(value) > 20:  # past any limit (and int() refuses over 4300 digits)
            return None, "a Content-Length of more than 20 digits"
        length = int(value)
    if length is None:
        return None, "no Content-Length header"
    return length, ""


@dataclass
class _Skip:
    reason: str
    preview: bytes
    size: int = 0
    quiet: bool = False  # already reported (an oversized message): no second log line


class Framer:
    """Splits a byte stream into messages. `feed` returns parsed JSON values and `Dropped` records."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.limit = max_message_bytes
        self._buf = bytearray()
        self._body: int | None = None  # length of the body being waited for
        self._skip: _Skip | None = None  # set while resynchronising on the next header

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        while self._step(out):
            pass
        return out

    def close(self) -> list[Dropped]:
        """The stream ended: what is left was not a message."""
        skip, self._skip = self._skip, None
        rest = bytes(self._buf)
        self._buf.clear()
        if skip is not None:
            size = skip.size + len(rest)
            return [] if skip.quiet else [Dropped(size, skip.reason, skip.preview[:size])]
        if self._body is not None or rest.strip():
            return [Dropped(len(rest), "the stream ended inside a message", rest[:_PREVIEW])]
        return []

    def _step(self, out: list) -> bool:
        """One unit of progress; False when more input is needed."""
        buf = self._buf
        if self._skip is not None:
            return self._resync(out)
        if self._body is not None:
            if len(buf) < self._body:
                return False
            body = bytes(buf[: self._body])
            del buf[: self._body]
            self._body = None
            self._decode(body, out)
            return True
        del buf[: _SPACE.match(buf).end()]  # blank lines between messages carry nothing
        if not buf:
            return False
        end = _BLANK_LINE.search(buf, 0, MAX_HEADER_BYTES)
        if end is None:
            if len(buf) < MAX_HEADER_BYTES and not self._garbage_first(buf):
                return False  # the header block is still arriving
            self._start_skip("not a header")
            return True
        length, problem = parse_header(bytes(buf[: end.start()]))
        if length is None:
            self._start_skip(problem)
            return True
        header = bytes(buf[: end.start()][:_PREVIEW])
        del buf[: end.end()]
        if length > self.limit:
            out.append(Dropped(length, f"over the {self.limit}-byte message limit", header))
            self._skip = _Skip("", b"", quiet=True)
        else:
            self._body = length
        return True

    @staticmethod
    def _garbage_first(buf: bytearray) -> bool:
        """True when the first line is complete and cannot be a header: no point waiting for more."""
        first = _LINE_END.search(buf)
        if first is None:
            return False
        name, colon, _ = bytes(buf[: first.start()]).partition(b":")
        return not colon or not _TOKEN.fullmatch(name)

    def _start_skip(self, reason: str) -> None:
        # The first byte goes at once, so the search cannot find the same bad block again.
        self._skip = _Skip(reason, bytes(self._buf[:_PREVIEW]), size=1)
        del self._buf[:1]

    def _resync(self, out: list) -> bool:
        buf, skip = self._buf, self._skip
        found = _HEADER_LINE.search(buf)
        if found is None:
            cut = max(0, len(buf) - _TAIL)
            skip.size += cut
            del buf[:cut]
            return False
        skip.size += found.start()
        del buf[: found.start()]
        self._skip = None
        if not skip.quiet:
            out.append(Dropped(skip.size, skip.reason, skip.preview[: skip.size]))
        return True

    def _decode(self, body: bytes, out: list) -> None:
        try:
            out.append(json.loads(body))
            return
        except RecursionError:
            why = "JSON nested too deeply"
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, int strings over 4300 digits
            why = "the body is not JSON"
        # Skip from the body's second byte up to the next header: a length that ran past this message
        # into the next one's header must not cost that message too.
        self._buf[:0] = body[1:]
        self._skip = _Skip(why, body[:_PREVIEW], size=min(1, len(body)))


# ---------------------------------------------------------------------------------------- JSON-RPC


def usable_id(value: Any) -> bool:
    """An id a response can carry back as it came (JSON-RPC: a string or a number)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def request_error(message: dict, *, initialized: bool, shutting_down: bool, known: Callable[[str], bool]
                  ) -> tuple[int, str] | None:
    """The error code and message a request gets before its params are looked at, or None."""
    method = message.get("method")
    if message.get("jsonrpc") != "2.0":
        return INVALID_REQUEST, 'not a JSON-RPC 2.0 request: "jsonrpc" must be "2.0"'
    if not isinstance(method, str):
        return INVALID_REQUEST, '"method" must be a string'
    if not isinstance(message.get("id"), (int, str)) or isinstance(message.get("id"), bool):
        return INVALID_REQUEST, '"id" must be an integer or a string'
    if shutting_down:
        return INVALID_REQUEST, "the server is shutting down"
    if not initialized and method != types.INITIALIZE:
        return SERVER_NOT_INITIALIZED, "the server is not initialized yet: send initialize first"
    if not known(method):
        return METHOD_NOT_FOUND, f"unknown method {_short(method)!r}"
    if not isinstance(message.get("params"), (dict, list, type(None))):
        return INVALID_PARAMS, '"params" must be an object or an array'
    return None


def describe(exc: Exception) -> str:
    """One line saying what in the params did not fit, without stack or paths."""
    if isinstance(exc, BaseValidationError):
        problems = cattrs.transform_error(exc, path="", format_exception=_format_problem)
        text = "; ".join(f"{where.lstrip('.') or 'params'}: {what}" for what, _, where in
                         (p.rpartition(" @ ") for p in problems[:3]))
    else:
        text = f"params do not fit the method ({type(exc).__name__})"
    return _short(text, 300)


def _format_problem(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)  # lsprotocol's range checks say the range and the value
    return cattrs.v.format_exception(exc, type_)


def presentable(error: types.ResponseError) -> types.ResponseError:
    """An error as the client may see it: internal errors reduced to the exception's type name."""
    if error.code == INTERNAL_ERROR:
        name = _EXCEPTION_NAME.match(error.message or "")
        kind = f" ({name.group(1)})" if name else ""
        return types.ResponseError(code=error.code, message=f"internal error{kind}: the server log has the details")
    data = None if isinstance(error.data, dict) and "traceback" in error.data else error.data
    return types.ResponseError(code=error.code, message=_short(error.message.splitlines()[0] if error.message else "", 300),
                               data=data)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SubcoderProtocol(LanguageServerProtocol):
    """pygls' protocol, with every request answered and nothing a client sends able to raise out of it."""

    def __init__(self, server, converter, *, max_message_bytes: int = MAX_MESSAGE_BYTES):
        super().__init__(server, converter)
        self.max_message_bytes = max_message_bytes
        self.initialized = False

    def structure_message(self, data: dict) -> dict:
        """Leave structuring to `handle_message`, where a failure can still be answered (pygls' reader
        calls this inside `json.loads`, where an exception loses the request)."""
        return data

    def handle_message(self, message: Any) -> None:
        try:
            if isinstance(message, list):
                self._batch(message)
            elif not isinstance(message, dict):
                log.warning("dropped a message that is not a JSON object: %s", _short(repr(message)))
            elif "method" in message and "id" in message:
                self._request(message)
            elif "method" in message:
                self._notification(message)
            elif "id" in message and ("result" in message or "error" in message):
                self._response(message)
            else:
                log.warning("dropped a message that is neither request, notification nor response: %s",
                            _short(json.dumps(message)))
        except (BrokenPipeError, ConnectionError):
            raise
        except Exception:
            log.exception("a message was not handled")

    def _request(self, message: dict) -> None:
        msg_id = message["id"]
        problem = request_error(message, initialized=self.initialized, shutting_down=self._shutdown,
                                known=lambda m: m in self.fm.builtin_features or m in self.fm.features)
        if problem is None:
            method = message["method"]
            try:
                request = self._converter.structure(message, self.get_message_type(method) or JsonRPCRequestMessage)
            except Exception as exc:
                problem = INVALID_PARAMS, f"invalid params for {_short(method)}: {describe(exc)}"
            else:
                super().handle_message(request)
                self.initialized = self.initialized or method == types.INITIALIZE
                return
        self.reply_error(msg_id if usable_id(msg_id) else None, *problem)

    def _notification(self, message: dict) -> None:
        method = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            log.warning("dropped a notification that is not JSON-RPC 2.0: %s", _short(json.dumps(message)))
            return
        if not self.initialized and method != types.EXIT:
            log.info("dropped %s: it came before initialize", _short(method))
            return
        try:
            notification = self._converter.structure(message, self.get_message_type(method) or JsonRPCNotification)
        except Exception as exc:
            log.warning("dropped %s: invalid params: %s", _short(method), describe(exc))
            return
        super().handle_message(notification)

    def _response(self, message: dict) -> None:
        """A client's answer to one of the server's requests (configuration, progress tokens)."""
        msg_id = message["id"]
        if not isinstance(msg_id, (int, str)):
            log.warning("dropped a response with an unusable id: %s", _short(json.dumps(message)))
            return
        try:
            if "error" in message:
                response = self._converter.structure(message, types.ResponseErrorMessage)
                self._result_types.pop(msg_id, None)
            else:
                kind = self._result_types.pop(msg_id, None) or JsonRPCResponseMessage
                response = self._converter.structure(message, kind)
        except Exception as exc:
            log.warning("the client's response to %r is malformed: %s", msg_id, describe(exc))
            # The server side awaiting it gets an error rather than waiting for good.
            self._handle_response(msg_id, None, types.ResponseError(code=INVALID_PARAMS, message="malformed response"))
            return
        super().handle_message(response)

    def _batch(self, items: list) -> None:
        log.warning("a batch of %d messages: LSP has no batches, each request in it is refused", len(items))
        for item in items:
            if isinstance(item, dict) and "method" in item and "id" in item:
                msg_id = item["id"]
                self.reply_error(msg_id if usable_id(msg_id) else None, INVALID_REQUEST,
                                 "batches are not supported: send each message on its own")

    def reply_error(self, msg_id: Any, code: int, text: str) -> None:
        """An error response; `msg_id` None for a request whose id could not be read back (JSON-RPC)."""
        log.info("request %s answered with error %d: %s", _short(repr(msg_id)), code, text)
        if msg_id is None:  # lsprotocol leaves a None id out of the message: write it by hand
            self._send_data({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}})
        else:
            self._send_response(msg_id, error=types.ResponseError(code=code, message=text))

    def _send_response(self, msg_id, result=None, error=None):
        # Every error pygls builds from a handler's exception passes here (with a traceback in `data`).
        super()._send_response(msg_id, result, presentable(error) if error is not None else None)


# ---------------------------------------------------------------------------------------- transports


async def pump(read: Callable[[], Awaitable[bytes]], protocol: LanguageServerProtocol, stop: threading.Event) -> None:
    """Frame what `read()` returns and hand each message to the protocol until the stream ends."""
    framer = Framer(getattr(protocol, "max_message_bytes", MAX_MESSAGE_BYTES))
    while not stop.is_set():
        try:
            chunk = await read()
        except (ConnectionError, OSError) as exc:
            log.info("the client connection failed: %s", exc)
            break
        if not chunk:
            break
        for item in framer.feed(chunk):
            _deliver(protocol, item)
    for item in framer.close():
        _deliver(protocol, item)


def _deliver(protocol: LanguageServerProtocol, item: Any) -> None:
    if isinstance(item, Dropped):
        log.warning("%s", item)
        return
    try:
        protocol.handle_message(item)
    except (BrokenPipeError, ConnectionError):
        raise
    except Exception:
        log.exception("a message was not handled")


def _stdin_reader(stdin, loop: asyncio.AbstractEventLoop) -> Callable[[], Awaitable[bytes]]:
    """Chunks of stdin, read on a daemon thread (an executor's thread blocked in a read would hold the
    process at exit); at most four chunks wait, so a fast client cannot fill memory. The thread reads
    the file descriptor itself: a daemon thread blocked inside a buffered reader holds its lock, and
    the interpreter aborts when it finds that lock taken at exit."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    room = threading.Semaphore(4)
    try:
        fd = stdin.fileno()
        read = lambda size: os.read(fd, size)  # noqa: E731
    except (AttributeError, OSError, ValueError):  # not a real file (an in-memory stream)
        read = getattr(stdin, "read1", None) or stdin.read

    def run() -> None:
        chunk = b"-"
        while chunk:
            room.acquire()
            try:
                chunk = read(CHUNK_BYTES)
            except (OSError, ValueError):
                chunk = b""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:
                return  # the loop is closed: the server is exiting

    async def get() -> bytes:
        chunk = await queue.get()
        room.release()
        return chunk

    threading.Thread(target=run, name="subcoder-stdin", daemon=True).start()
    return get


def serve_stdio(server, stdin, stdout) -> None:
    """`server.start_io(stdin, stdout)` with this module's framing."""
    server._stop_event = stop = threading.Event()
    server.protocol.set_writer(StdoutWriter(stdout))

    async def main() -> None:
        await pump(_stdin_reader(stdin, asyncio.get_running_loop()), server.protocol, stop)

    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("the client closed the connection: shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def serve_tcp(server, host: str, port: int) -> None:
    """`server.start_tcp(host, port)` with this module's framing. One client at a time: a second
    connection is closed rather than allowed to take over the first one's replies."""
    server._stop_event = stop = threading.Event()
    busy = False

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy
        if busy:
            log.warning("refused a second client from %s: one is connected", writer.get_extra_info("peername"))
            writer.close()
            return
        busy = True
        server.protocol.set_writer(writer)
        try:
            await pump(lambda: reader.read(CHUNK_BYTES), server.protocol, stop)
        finally:
            server.shutdown()

    async def main() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        log.info("serving on %s", ", ".join(str(s.getsockname()) for s in server._server.sockets))
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
