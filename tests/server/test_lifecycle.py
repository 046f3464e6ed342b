"""The server process's lifecycle at the protocol's edges, in raw JSON-RPC over stdio: the exit status after
`exit` (1 unless `shutdown` came first) and a rebuild asked for before `initialize`."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import pytest
from conftest import REPO, SERVE

pytestmark = pytest.mark.slow  # each test starts a server process (seconds of imports)


class RawClient:
    def __init__(self, cache):
        env = {**os.environ, "SUBCODER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
               "XDG_STATE_HOME": str(cache / "state")}
        self.process = subprocess.Popen([*SERVE, "--log-file", str(cache / "server.log")], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.buffer = b""

    def send(self, method: str, params=None, id: int | None = None) -> None:
        message = {"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {}),
                   **({"id": id} if id is not None else {})}
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.process.stdin.flush()

    def response(self, id: int, timeout: float = 120.0) -> dict:
        """The response to request `id` (notifications before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n\r\n" in self.buffer:
                head, rest = self.buffer.split(b"\r\n\r\n", 1)
                length = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                message, self.buffer = json.loads(rest[:length]), rest[length:]
                if message.get("id") == id and "method" not in message:
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"no response to request {id}"
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                assert chunk, f"the server closed its output before answering request {id}"
                self.buffer += chunk

    def exit_status(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.process.kill()
            self.process.stdin.close()
            self.process.stdout.close()


def test_rebuild_before_initialize_is_refused_and_exit_before_shutdown_is_1(tmp_path):
    client = RawClient(tmp_path)
    client.send("workspace/executeCommand", {"command": "subcoder.rebuildSubModel", "arguments": []}, id=1)
    answer = client.response(1)
    assert "error" in answer and "not initialized" in answer["error"]["message"], answer
    # Every request before `initialize` is refused alike (-32002, server/protocol.py); once initialized,
    # the status shows the refused rebuild started nothing.
    client.send("workspace/executeCommand", {"command": "subcoder.status", "arguments": []}, id=2)
    assert client.response(2)["error"]["code"] == -32002
    client.send("initialize", {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {}}, id=3)
    assert "capabilities" in client.response(3)["result"]
    client.send("workspace/executeCommand", {"command": "subcoder.status", "arguments": []}, id=4)
    status = client.response(4)["result"]
    assert status["state"] == "idle" and status["counters"]["buildsStarted"] == 0
    client.send("exit")
    assert client.exit_status() == 1
    assert not (tmp_path / "models").exists(), "the default preset was being fetched"


def test_exit_after_shutdown_is_0(tmp_path):
    client = RawClient(tmp_path)
    client.send("initialize", {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {}}, id=1)
    assert "capabilities" in client.response(1)["result"]
    client.send("shutdown", id=2)
    assert client.response(2)["result"] is None
    client.send("exit")
    assert client.exit_status() == 0
