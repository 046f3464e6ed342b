"""A remote backend: completions decoded by an OpenAI-compatible `/v1/completions` server (vLLM serving
a sub-model exported with `subcoder export --format compressed-tensors`, or llama.cpp's server), so the
editors of a team share one GPU box instead of each holding a model.

Everything an editor sees stays as with a local model: `RemoteEngine` has the engine `Completer`'s
`prompt`/`decode` contract, so `EditorCompleter` keeps its typed-ahead rule and result cache over it.

- The prompt: `PromptBuilder` with the *local* tokenizer of the `model` setting (read without its
  weights), so the FIM layout, the token budget and the stable prefix cut are the local ones. The local
  tokenizer, not the endpoint's: the OpenAI API has no tokenize call (vLLM's `/tokenize` and
  llama.cpp's `/extras/tokenize` differ), a round trip per keystroke would add latency, and the
  budget and FIM tokens are needed before anything is sent. The prompt goes out as text (its ids
  decoded): every such server takes text, and both tokenize the FIM markers in it as special tokens.
- Stops: stop strings the API can apply without cutting earlier than `stops.StopRule` would (a
  newline mid-line, two blank lines), vLLM's `stop_token_ids` for the model's stop ids, and the
  rule itself applied client-side to the streamed text, closing the stream as soon as it fires.
- Cancellation and the per-request timeout close the connection (a server aborts a request whose
  client went away). HTTP runs on a worker thread per request (the standard library's http.client:
  no dependency for one POST), so the decoding thread never blocks on a socket.
- Failures (refused, reset, a server dying mid-stream, a timeout, an HTTP error) raise `BackendError`
  and mark the backend down: requests are answered at once (empty) while it is, and a probe thread
  retries `GET /v1/models` with exponential backoff, reporting down and up through `on_health`.

Only the prompt text and the generation parameters leave the machine: no file name, URI or other file.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Iterator

from subcoder.pruner.engine.completion import Completion, CompletionSource
from subcoder.pruner.engine.prompt import DEFAULT_FIM_ORDER, Prompt, PromptBuilder, context_budget
from subcoder.pruner.engine.stops import StopRule, postprocess, stop_ids
from subcoder.pruner.errors import Cancelled, ModelError, SubcoderError

log = logging.getLogger(__name__)

API_KEY_ENV = "SUBCODER_BACKEND_KEY"  # sent as a bearer token; an environment variable, never a setting in plain view
_POLL_S = 0.02  # how often a waiting request looks at its cancel flag
_FIRST_RETRY_S, _MAX_RETRY_S = 1.0, 30.0
# End-of-document and FIM markers as text: a server that renders special tokens puts them in the text.
_MARKERS = ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|im_end|>", "<|repo_name|>", "<file_sep>",
            "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")


class BackendError(SubcoderError):
    """The backend did not answer a request: unreachable, gone mid-request, too slow, or an HTTP error."""


# ---------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # http | https
    host: str
    port: int
    base: str  # the path up to and including /v1

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base}"


def parse_endpoint(url: str) -> Endpoint:
    """`http://host:8000`, `http://host:8000/v1` or `https://host/prefix/v1` → the API's base; raises ValueError."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL such as http://gpu-box:8000, or empty")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("an http(s) URL with a valid port") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return Endpoint(parts.scheme, parts.hostname, port, path)


def api_stops(mode: str, prefix: str, suffix: str) -> list[str]:
    """Stop strings at which `StopRule(mode, prefix, suffix)` has certainly cut already.

    A newline only mid-line: at a line's end the rule skips blank lines before the first line of
    code, which a server's stop string would not. Three newlines are two blank lines in a row.
    """
    rule = StopRule(mode, prefix, suffix)
    if mode == "single-line" and rule.mid_line:
        return ["\n"]
    return ["\n\n\n"] if mode == "multi-line" else []


def request_body(model: str, prompt: str, *, max_tokens: int, stop: list[str], stop_token_ids) -> dict:
    """A greedy, streamed `/v1/completions` request.

    Two fields beyond OpenAI's, each ignored by servers that do not know it: `stop_token_ids` (vLLM's),
    and `repeat_penalty` 1 (llama-cpp-python's server penalises repeats by default, which is not greedy).
    """
    return {"model": model, "prompt": prompt, "max_tokens": int(max_tokens), "temperature": 0.0, "top_p": 1.0,
            "n": 1, "stream": True, "stop": stop, "stop_token_ids": sorted(stop_token_ids), "repeat_penalty": 1.0}


def sse_data(line: bytes) -> str | None:
    """The payload of a server-sent event's `data:` line, else None (comments, other fields, blank lines)."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:"):
        return None
    return text[5:].strip()


def chunk_text(payload: str) -> tuple[str, str | None]:
    """(text, finish_reason) of one streamed chunk; raises BackendError for an error event or bad JSON."""
    try:
        obj = json.loads(payload)
    except ValueError:
        raise BackendError(f"the backend sent something that is not JSON: {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise BackendError("the backend sent an unexpected event")
    if "error" in obj:
        error = obj["error"]
        raise BackendError(f"the backend failed: {error.get('message', error) if isinstance(error, dict) else error}")
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    return str(choice.get("text") or ""), choice.get("finish_reason")


def cut_at_marker(text: str) -> int | None:
    """Where an end-of-document or FIM marker starts in `text`, else None."""
    found = [i for i in (text.find(m) for m in _MARKERS) if i >= 0]
    return min(found) if found else None


def error_reason(exc: BaseException) -> str:
    """One line for why a connection failed."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                        http.client.IncompleteRead)):
        return "the connection was closed mid-request"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return str(exc).strip() or type(exc).__name__


# ---------------------------------------------------------------------------- transport


class _Call:
    """One HTTP exchange on a worker thread; events go to `events`: ("line", bytes), ("end", None), ("error", str)."""

    def __init__(self, endpoint: Endpoint, method: str, path: str, body: bytes | None, timeout: float):
        self.endpoint, self.method, self.path, self.body, self.timeout = endpoint, method, path, body, timeout
        self.events: queue.Queue = queue.Queue()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._aborted = False

    def run(self) -> None:
        cls = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.endpoint.host, self.endpoint.port, timeout=self.timeout)
        response = None
        try:
            conn.connect()
            with self._lock:
                # Kept here: http.client hands the socket to the response (and forgets it) for a
                # response that ends with the connection, as a stream without a length does.
                self._sock = conn.sock
                if self._aborted:
                    return
            headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
            if key := os.environ.get(API_KEY_ENV):
                headers["Authorization"] = f"Bearer {key}"
            conn.request(self.method, self.endpoint.base + self.path, body=self.body, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                detail = response.read(2048).decode("utf-8", "replace").strip().splitlines()
                self.events.put(("error", f"HTTP {response.status} {response.reason}"
                                          + (f": {detail[0][:200]}" if detail else "")))
                return
            while line := response.readline():
                self.events.put(("line", line))
            self.events.put(("end", None))
        except (OSError, http.client.HTTPException) as exc:
            if not self._aborted:
                self.events.put(("error", error_reason(exc)))
        finally:
            if response is not None:
                response.close()
            conn.close()

    def abort(self) -> None:
        """Close the connection under the worker: its blocked read returns, the server sees the client gone."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def exchange(endpoint: Endpoint, method: str, path: str, body: dict | None = None, *, timeout: float,
             cancel: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """The response's lines as they arrive; raises BackendError (failure, deadline) or Cancelled.

    Closing the iterator early (a stop rule fired) aborts the request.
    """
    data = json.dumps(body).encode() if body is not None else None
    call = _Call(endpoint, method, path, data, timeout)
    threading.Thread(target=call.run, name="subcoder-backend-http", daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if cancel is not None and cancel():
                raise Cancelled("completion cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(f"no answer within {timeout:g} s")
            try:
                kind, value = call.events.get(timeout=min(_POLL_S, left))
            except queue.Empty:
                continue
            if kind == "line":
                yield value
            elif kind == "end":
                return
            elif value == "timed out":  # the socket's own timeout beat the deadline above: the same event
                raise BackendError(f"no answer within {timeout:g} s")
            else:
                raise BackendError(value)
    finally:
        call.abort()


def list_models(endpoint: Endpoint, timeout: float) -> list[str]:
    """The ids `GET /v1/models` lists (the reachability probe, too); raises BackendError."""
    raw = b"".join(exchange(endpoint, "GET", "/models", timeout=timeout))
    try:
        data = json.loads(raw)["data"]
        return [str(m["id"]) for m in data]
    except (ValueError, KeyError, TypeError):
        raise BackendError("/v1/models is not an OpenAI-compatible model list") from None


# ---------------------------------------------------------------------------- health


class Health:
    """Up or down. Down: requests fail at once, and a probe thread retries with exponential backoff
    (1 s doubling to 30 s) until the probe succeeds or `alive()` turns false (the settings changed)."""

    def __init__(self, probe: Callable[[], None], on_change: Callable[[bool, str], None],
                 alive: Callable[[], bool] = lambda: True, *, first_retry: float = _FIRST_RETRY_S,
                 max_retry: float = _MAX_RETRY_S):
        self._probe, self._on_change, self._alive = probe, on_change, alive
        self._first, self._max = first_retry, max_retry
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.up = True
        self.reason = ""
        self.retry_at = 0.0

    def check(self) -> None:
        """Raise BackendError while down."""
        with self._lock:
            if not self.up:
                wait = max(self.retry_at - time.monotonic(), 0)
                raise BackendError(f"{self.reason}; retrying in {wait:.0f} s")

    def ok(self) -> None:
        with self._lock:
            was, self.up = self.up, True
        if not was:
            self._on_change(True, "")

    def failed(self, reason: str) -> None:
        with self._lock:
            if not self.up:
                return
            self.up, self.reason = False, reason
            self.retry_at = time.monotonic() + self._first
        self._on_change(False, reason)
        threading.Thread(target=self._retry, name="subcoder-backend-probe", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def _retry(self) -> None:
        delay = self._first
        while not self._closed.wait(max(self.retry_at - time.monotonic(), 0)):
            if not self._alive():
                return
            try:
                self._probe()
            except BackendError as exc:
                delay = min(delay * 2, self._max)
                with self._lock:
                    self.reason, self.retry_at = str(exc), time.monotonic() + delay
                log.info("backend still down (%s); next try in %.0f s", exc, delay)
                continue
            self.ok()
            return


# ---------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class PromptSide:
    """What building and ending prompts needs of a model, without its weights."""

    tokenizer: object
    info: object  # ModelInfo-like: name, path, fim
    stop_ids: frozenset[int]
    model: object  # a stand-in holding the model's `config` and `generation_config`, for `context_budget`


def prompt_side(model: str, cache_dir: str = "") -> PromptSide:
    """The tokenizer, FIM tokens and stop ids of the `model` setting (a preset, folder or GGUF), weights unloaded."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from subcoder.pruner.loaded import ModelInfo, detect_fim
    from subcoder.pruner.presets import resolve_model

    directory = resolve_model(model, cache_dir=cache_dir or None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        config = AutoConfig.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - a folder without a usable tokenizer: one line
        text = str(exc).strip().splitlines()
        raise ModelError(f"cannot read the tokenizer in {directory}: {text[0] if text else type(exc).__name__}") from None
    try:
        generation = GenerationConfig.from_pretrained(str(directory))
    except Exception:  # noqa: BLE001 - optional file
        generation = None
    fim = detect_fim(tokenizer)
    info = ModelInfo(name=model, path=directory, content_hash="", architecture="remote", fim=fim)
    stand_in = SimpleNamespace(config=config, generation_config=generation)
    builder_fim = PromptBuilder(tokenizer, fim).fim_ids or ()
    return PromptSide(tokenizer, info, stop_ids(tokenizer, stand_in, builder_fim), stand_in)


class RemoteEngine(CompletionSource):
    """The engine `Completer`'s contract over an OpenAI-compatible endpoint; one request at a time per caller."""

    max_sessions = 4  # how many documents `EditorCompleter` keeps a last suggestion for

    def __init__(self, side: PromptSide, url: str, *, context_tokens: int = 1024, fim_order: str = DEFAULT_FIM_ORDER,
                 suffix_tokens: int | None = None, timeout: float = 10.0, on_health: Callable[[bool, str], None] = lambda up, reason: None,
                 alive: Callable[[], bool] = lambda: True, retry: tuple[float, float] = (_FIRST_RETRY_S, _MAX_RETRY_S)):
        self.endpoint = parse_endpoint(url)
        self.tokenizer = side.tokenizer
        self.info = side.info
        self.timeout = float(timeout)
        self.prompts = PromptBuilder(side.tokenizer, side.info.fim,
                                     context_tokens=context_budget(side.model, context_tokens),
                                     suffix_tokens=suffix_tokens, order=fim_order)
        self.stop_ids = side.stop_ids
        self.model_id = ""
        self.health = Health(self.connect, on_health, alive, first_retry=retry[0], max_retry=retry[1])

    @property
    def fim(self) -> bool:
        return self.prompts.fim_ids is not None

    @property
    def up(self) -> bool:
        return self.health.up

    def describe(self) -> str:
        if not self.health.up:
            return f"backend {self.endpoint.url} unavailable: {self.health.reason}; retrying"
        return f"serving through {self.endpoint.url} ({self.model_id})"

    def connect(self) -> None:
        """Ask the endpoint which model it serves; raises BackendError."""
        models = list_models(self.endpoint, self.timeout)
        if not models:
            raise BackendError("the server lists no model")
        if models[0] != self.model_id:
            log.info("backend %s serves %s", self.endpoint.url, models[0])
        self.model_id = models[0]

    def start(self) -> RemoteEngine:
        """The first contact: up with the served model's id, or down and retrying (never raises)."""
        try:
            self.connect()
        except BackendError as exc:
            self.health.failed(str(exc))
        return self

    def close(self) -> None:
        self.health.close()

    def warm_up(self) -> float:
        return 0.0

    def forget(self, key: str) -> None:
        """Nothing is kept per document here (the server keeps its own prefix cache)."""

    def prompt(self, prefix: str, suffix: str = "", *, key: str | None = None) -> Prompt:
        return self.prompts.build(prefix, suffix)

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt's text as the endpoint gets it: its ids decoded, markers included, without the
        leading specials (the server adds its model's BOS itself, as the local tokenizer did)."""
        ids = prompt.ids[len(self.prompts.lead_ids):]
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, prompt: Prompt, prefix: str, suffix: str, *, max_new_tokens: int, mode: str,
               cancel: Callable[[], bool] | None = None, key: str | None = None) -> Completion:
        """`Completer.decode` through the endpoint; raises BackendError (the backend is then down) or Cancelled."""
        started, mode, empty = self.begin(prompt, prefix, suffix, mode)
        if empty is not None:
            return empty
        self.health.check()
        body = request_body(self.model_id, self.prompt_text(prompt), max_tokens=max_new_tokens,
                            stop=api_stops(mode, prefix, suffix), stop_token_ids=self.stop_ids)
        rule = StopRule(mode, prefix, suffix)
        text, reason, chunks, finished = "", "length", 0, False
        lines = exchange(self.endpoint, "POST", "/completions", body, timeout=self.timeout, cancel=cancel)
        try:
            for line in lines:
                payload = sse_data(line)
                if payload is None:
                    continue
                if payload == "[DONE]":
                    break
                piece, finish = chunk_text(payload)
                text += piece
                chunks += bool(piece)
                if (cut := cut_at_marker(text)) is not None:
                    text, reason = text[:cut], "stop-token"
                    break
                if (keep := rule.check(text)) is not None:
                    text, reason = text[:keep], ("line" if mode == "single-line" else "block")
                    break
                finished = finished or finish is not None
                if finish == "stop":
                    reason = "stop-token"  # an end token or one of the stop strings
            else:
                if not finished:
                    raise BackendError("the stream ended before the completion did")
        except BackendError as exc:
            self.health.failed(str(exc))
            raise
        finally:
            lines.close()  # aborts the request when the rule ended it early
        self.health.ok()
        text = postprocess(text, suffix, mode)
        # Streamed chunks are tokens on vLLM and llama.cpp: the count the status reports.
        return Completion(text, len(prompt.ids), chunks, 0, time.perf_counter() - started,
                          reason if text else "empty", mode, chunks)


def open_remote(settings, on_health: Callable[[bool, str], None], alive: Callable[[], bool] = lambda: True):
    """An `EditorCompleter` over the settings' backend (the session's loader in backend mode); raises SubcoderError
    when the model setting has no usable tokenizer. An unreachable endpoint is no error: the engine starts down."""
    from .editor import EditorCompleter

    side = prompt_side(settings.model, settings.cache_dir)
    engine = RemoteEngine(side, settings.backend, context_tokens=settings.context_tokens, fim_order=settings.fim_order,
                          suffix_tokens=settings.suffix_budget, timeout=settings.backend_timeout, on_health=on_health, alive=alive)
    return EditorCompleter(engine.start())
