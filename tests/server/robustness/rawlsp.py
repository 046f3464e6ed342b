"""A client that writes raw bytes to a real `subcoder serve` process (over stdio or TCP) and reads its
replies with a strict parser of its own, so that malformed input can be sent on purpose and every reply
counted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SERVE = [sys.executable, "-P", "-m", "subcoder.pruner.cli", "serve"]  # as the extension starts it


def frame(message, *, name: bytes = b"Content-Length", eol: bytes = b"\r\n") -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return name + b": " + str(len(body)).encode() + eol + eol + body


class RawClient:
    """Sends bytes, collects every message the server sends; answers the server's own requests with null."""

    def __init__(self, proc: subprocess.Popen, write, stream, close, log_file: Path):
        self.proc, self._write, self._close, self.log_file = proc, write, close, log_file
        self.messages: list[dict] = []
        self.problems: list[str] = []  # replies that were not well-formed: the server's own framing failed
        self.eof = False
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    # ------------------------------------------------------------------ sending

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            self._write(data)

    def send(self, message) -> None:
        self.send_raw(frame(message))

    def request(self, msg_id, method: str, params=None) -> None:
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def notify(self, method: str, params=None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    # ------------------------------------------------------------------ receiving

    def responses(self, msg_id=None) -> list[dict]:
        with self._cond:
            return [m for m in self.messages if "method" not in m and (msg_id is None or m.get("id") == msg_id)]

    def notifications(self, method: str) -> list[dict]:
        with self._cond:
            return [m for m in self.messages if m.get("method") == method and "id" not in m]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = predicate()
                if got:
                    return got
                if self.eof:
                    raise AssertionError(f"the server closed the connection while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout:.0f}s")
                self._cond.wait(min(left, 0.2))

    def response(self, msg_id, timeout: float = 60) -> dict:
        # The condition's lock is re-entrant: `responses` may take it again inside `wait`.
        return self.wait(lambda: next(iter(self.responses(msg_id)), None), timeout, f"response to {msg_id!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.eof

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def _read(self, stream) -> None:
        try:
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    if line == b"\r\n":
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if length is None:
                    self.problems.append("a header block without Content-Length")
                    continue
                message = json.loads(stream.read(length))
                if isinstance(message, dict) and "method" in message and "id" in message:
                    self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                with self._cond:
                    self.messages.append(message)
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - recorded, the test asserts there is none
            self.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def close(self) -> None:
        try:
            self._close()
        except OSError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _env(cache: Path) -> dict:
    return {**os.environ, "SUBCODER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
            "XDG_STATE_HOME": str(cache / "state"), "XDG_CACHE_HOME": str(cache / "xdg")}


def start(transport: str, cache: Path) -> RawClient:
    """Start `subcoder serve` (with the hardened protocol) and connect to it."""
    cache.mkdir(parents=True, exist_ok=True)
    log_file = cache / f"server-{transport}.log"
    stderr = open(cache / f"stderr-{transport}.txt", "wb")
    args = [*SERVE, "--log-file", str(log_file)]
    if transport == "stdio":
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=_env(cache))

        def write(data: bytes) -> None:
            proc.stdin.write(data)
            proc.stdin.flush()

        return RawClient(proc, write, proc.stdout, proc.stdin.close, log_file)
    with socket.socket() as probe:  # a free port (the server binds it a moment later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([*args, "--tcp", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, env=_env(cache))
    deadline = time.monotonic() + 180
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the TCP server did not listen on {port}") from None
            time.sleep(0.2)
    sock.settimeout(None)

    def close() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()

    return RawClient(proc, sock.sendall, sock.makefile("rb"), close, log_file)
