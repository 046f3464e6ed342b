"""Building sub-models in a child process, one at a time, with progress and cancellation.

`BuildManager` lifecycle (one build at a time; requests for other languages wait in a queue):

    idle ──start()──▶ building ──child reports done──▶ ready    on_event(kind="done", path)
                        │  ├──child reports an error, crashes or is killed──▶ failed   on_event("failed")
                        │  └──cancel()──▶ (child killed) ──▶ idle                       on_event("cancelled")
                        └── on_event("progress", percent, message) per layer
    failed | cancelled ──▶ the child's partial entry removed ──▶ idle, the next queued request starts

The child is `python -m subcoder.server.build_worker` (see there for the line protocol). Running the build in
its own process keeps the server's event loop and completion thread responsive on a 2-core machine,
makes cancellation a kill (the library cannot be interrupted mid-layer), and means a crash in a build
(out of memory, a native library) takes down only the build. The result becomes visible atomically:
the library writes the entry under a temporary name and renames it, and the server loads it only
after the child reports `done`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

# Share of the progress bar per stage: pruning dominates a build.
_STAGES = {"download": (0, 5), "convert": (0, 5), "calibrate": (5, 10), "prune": (10, 95), "save": (95, 100)}


@dataclass(frozen=True)
class BuildRequest:
    model: str
    language: str
    key: str
    cache_root: str
    sparsity: float
    pattern: str
    method: str
    calibration: dict  # CalibrationSpec fields: source, workspace, mix_ratio, n_samples, seq_len
    dtype: str = "auto"
    device: str = "cpu"
    models_cache_dir: str = ""
    force: bool = False  # rebuild even when the cache has the entry
    values: str = "bf16"  # the kept values' format (PruneConfig.values)


@dataclass
class BuildEvent:
    kind: str  # started | waiting | progress | done | failed | cancelled
    request: BuildRequest
    percent: int = 0
    message: str = ""
    path: str = ""
    cached: bool = False
    seconds: float = 0.0
    killed: bool = False  # the child died by a signal it did not ask for (OOM killer, kill -9, SIGTERM)


@dataclass
class _Running:
    request: BuildRequest
    process: subprocess.Popen
    started: float
    cancelled: bool = False
    finished: bool = False
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))


def compute_key(model: str, language: str, settings, workspace: str | None, *, models_cache_dir=None) -> str:
    """The cache key of the sub-model these settings would build, without loading the model's weights.

    Costs a tokenizer load and the calibration windows' tokenization (about a second); the first call
    for a preset may download and convert it.
    """
    from subcoder.pruner.extract import planned_key

    return planned_key(model, language, settings.prune_config(), calibration_spec(settings, workspace),
                       dtype=settings.dtype, device="cpu" if settings.device == "auto" else settings.device,
                       cache_dir=models_cache_dir or None)


def calibration_spec(settings, workspace: str | None):
    from subcoder.pruner.calibration import CalibrationSpec

    source = settings.calibration if workspace else "corpus"
    return CalibrationSpec(source=source, workspace=Path(workspace) if workspace and source != "corpus" else None,
                           mix_ratio=settings.mix_ratio, n_samples=settings.calibration_samples,
                           seq_len=settings.calibration_seq_len)


def calibration_dict(settings, workspace: str | None) -> dict:
    spec = calibration_spec(settings, workspace)
    return {"source": spec.source, "workspace": str(spec.workspace) if spec.workspace else None,
            "mix_ratio": spec.mix_ratio, "n_samples": spec.n_samples, "seq_len": spec.seq_len}


# -P and a neutral working directory (in _start): the workspace (the server's own working directory when an
# editor starts it there) never lands on sys.path, so none of its modules can be imported.
WORKER = (sys.executable, "-P", "-m", "subcoder.server.build_worker")


class BuildManager:
    def __init__(self, on_event: Callable[[BuildEvent], None], *, command: tuple[str, ...] = WORKER):
        self.on_event = on_event
        self.command = command  # tests run a stand-in child that speaks the same line protocol
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._queue: collections.deque[BuildRequest] = collections.deque()

    @property
    def state(self) -> str:
        return "building" if self._running is not None else "idle"

    @property
    def current(self) -> BuildRequest | None:
        running = self._running
        return running.request if running else None

    def submit(self, request: BuildRequest) -> None:
        """Build now if idle, else queue (a request for a language already queued replaces it)."""
        with self._lock:
            if self._running is not None:
                if self._running.request.key == request.key and not request.force:
                    return
                self._queue = collections.deque(r for r in self._queue if r.language != request.language)
                self._queue.append(request)
                return
            self._start(request)

    def cancel(self, *, clear_queue: bool = True) -> bool:
        """Kill the running build (the library cannot stop mid-layer); True when one was running."""
        with self._lock:
            if clear_queue:
                self._queue.clear()
            running = self._running
            if running is None:
                return False
            running.cancelled = True
        self._kill(running)
        return True

    def shutdown(self) -> None:
        self.cancel()

    def _start(self, request: BuildRequest) -> None:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(os.cpu_count() or 1, 1)))
        process = subprocess.Popen(
            list(self.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, text=True, bufsize=1, cwd=tempfile.gettempdir(), **group_options(),
        )
        running = _Running(request, process, time.perf_counter())
        self._running = running
        process.stdin.write(json.dumps(asdict(request)) + "\n")
        process.stdin.flush()
        log.info("build started: %s sub-model of %s (pid %d, key %s)", request.language, request.model, process.pid, request.key)
        threading.Thread(target=self._relay_stderr, args=(running,), daemon=True, name="build-stderr").start()
        threading.Thread(target=self._read_events, args=(running,), daemon=True, name="build-events").start()
        self._emit(BuildEvent("started", request, 0, f"building the {request.language} sub-model"))

    def _kill(self, running: _Running) -> None:
        kill_group(running.process)

    def _relay_stderr(self, running: _Running) -> None:
        for line in running.process.stderr:
            line = line.rstrip()
            if line:
                running.stderr_tail.append(line)
                log.info("[build %s] %s", running.request.language, line)

    def _read_events(self, running: _Running) -> None:
        request = running.request
        final: BuildEvent | None = None
        for line in running.process.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                log.info("[build %s] %s", request.language, line.rstrip())
                continue
            kind = msg.get("event")
            if kind == "progress":
                percent, text = _percent(msg)
                self._emit(BuildEvent("progress", request, percent, text))
            elif kind == "waiting":
                self._emit(BuildEvent("waiting", request, 0, msg.get("message", "")))
            elif kind == "done":
                final = BuildEvent("done", request, 100, "ready", path=msg.get("path", ""),
                                   cached=bool(msg.get("cached")), seconds=time.perf_counter() - running.started)
            elif kind == "error":
                final = BuildEvent("cancelled" if msg.get("kind") == "Cancelled" else "failed", request,
                                   message=msg.get("message", "build failed"))
        code = running.process.wait()
        if code != 0:
            _remove_partial(request)
        if running.cancelled:
            final = BuildEvent("cancelled", request, message="build cancelled")
        elif final is None or (final.kind == "done" and code != 0) or code < 0:
            tail = running.stderr_tail[-1] if running.stderr_tail else ""
            why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            final = BuildEvent("failed", request, message=f"the build process died ({why}){': ' + tail if tail else ''}",
                               killed=code < 0)
        final.seconds = time.perf_counter() - running.started
        log.info("build %s: %s sub-model in %.1f s%s", final.kind, request.language, final.seconds,
                 f" ({final.message})" if final.message and final.kind != "done" else "")
        with self._lock:
            self._running = None
            following = self._queue.popleft() if self._queue else None
        self._emit(final)
        if following is not None:
            with self._lock:
                if self._running is None:
                    self._start(following)
                else:
                    self._queue.appendleft(following)

    def _emit(self, event: BuildEvent) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("build event handler failed")


# The child runs in a group of its own, so that a cancel ends whatever it started too (a compiler
# building the kernel, torch's worker processes), and so that a Ctrl+C in the server's terminal is
# not delivered to it twice. The platform is an argument: the Windows branches are tested on Linux.
_CREATE_NEW_PROCESS_GROUP = 0x00000200  # subprocess.CREATE_NEW_PROCESS_GROUP, defined only on Windows


def group_options(platform: str | None = None) -> dict:
    """Popen keyword arguments that start the child as the leader of a new process group."""
    if (platform or sys.platform) == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", _CREATE_NEW_PROCESS_GROUP)}
    return {"start_new_session": True}


def kill_group(process: subprocess.Popen, platform: str | None = None, *,
               killpg: Callable[[int, int], None] | None = None,
               run: Callable[..., object] = subprocess.run) -> None:
    """End the child and its descendants at once; never raises (the child may be gone already).

    POSIX: SIGKILL to the group (the library cannot stop mid-layer, so nothing gentler would be heard).
    Windows has no process groups to signal with a kill: `taskkill /T /F` ends the tree, and
    `Popen.kill` (TerminateProcess) ends the child itself when taskkill is unavailable.
    """
    if process.poll() is not None:
        return
    if (platform or sys.platform) == "win32":
        try:
            run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        killpg = killpg or getattr(os, "killpg", None)
        try:
            if killpg is not None:
                killpg(process.pid, getattr(signal, "SIGKILL", 9))
                return
        except OSError:  # ProcessLookupError, PermissionError: the group is gone or not ours
            pass
    try:
        process.kill()
    except OSError:
        pass


def _remove_partial(request: BuildRequest) -> None:
    """What a child that did not finish left in the cache: a killed one never ran its own cleanup, so its
    `.<key>.tmp-*` folder would stay (unseen by eviction) until the same key was built again. Removed under the
    entry's lock, which the dead child no longer holds; when another window holds it, that build owns the folder."""
    import filelock

    from .cache import CacheManager

    cache = CacheManager(request.cache_root)
    try:
        lock = cache.lock(request.key)
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return
    try:
        cache.clean_partial(request.key)
    finally:
        lock.release()


def _percent(msg: dict) -> tuple[int, str]:
    low, high = _STAGES.get(msg.get("stage", ""), (0, 100))
    total = msg.get("total") or 0
    fraction = min(max(msg.get("done", 0) / total, 0.0), 1.0) if total else 0.0
    percent = int(low + (high - low) * fraction)
    text = msg.get("message") or msg.get("stage", "")
    if msg.get("stage") == "prune" and total:
        text = f"pruning layer {msg.get('done')}/{total}"
    return percent, text
