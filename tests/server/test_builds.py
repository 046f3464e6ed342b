"""subcoder.server.builds: the BuildManager's lifecycle against a stand-in child that speaks the worker's line
protocol (a plain Python process, no torch: each build takes a few hundredths of a second)."""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
from pathlib import Path

import pytest

from subcoder.server.builds import BuildManager, BuildRequest, _percent

# The stand-in child: what it does is chosen by the request's `model` field.
CHILD = '''
import json, os, sys, time
request = json.loads(sys.stdin.readline())
mode, root, key = request["model"], request["cache_root"], request["key"]
def emit(**event):
    print(json.dumps(event), flush=True)
if mode == "ok":
    emit(event="progress", stage="prune", done=1, total=2, message="")
    os.makedirs(os.path.join(root, key))
    emit(event="done", path=os.path.join(root, key), cached=False)
elif mode == "error":
    emit(event="error", kind="CacheError", message="no space left on device")
    sys.exit(1)
elif mode == "crash":
    print("Segmentation fault in a native library", file=sys.stderr, flush=True)
    sys.exit(3)
elif mode == "hang":
    os.makedirs(os.path.join(root, "." + key + ".tmp-abc123"))  # what atomic_dir writes into
    emit(event="progress", stage="calibrate", done=1, total=4, message=str(os.getpid()))
    time.sleep(60)
'''


class Recorder:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def __call__(self, event):
        self.events.put(event)

    def next(self, timeout: float = 30.0):
        return self.events.get(timeout=timeout)

    def until(self, kind: str):
        while (event := self.next()).kind != kind:
            pass
        return event


@pytest.fixture
def manager(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    recorder = Recorder()
    built = BuildManager(recorder, command=(sys.executable, str(child)))
    built.recorder = recorder
    yield built
    built.shutdown()


def request(tmp_path: Path, mode: str, language: str = "python", **extra) -> BuildRequest:
    return BuildRequest(model=mode, language=language, key=f"{language}-{mode}", cache_root=str(tmp_path / "submodels"),
                        sparsity=0.5, pattern="unstructured", method="wanda", calibration={}, **extra)


def leftovers(tmp_path: Path) -> list[str]:
    root = tmp_path / "submodels"
    return sorted(p.name for p in root.iterdir() if p.name != ".locks") if root.is_dir() else []


def test_a_build_reports_start_progress_and_done(manager, tmp_path):
    manager.submit(request(tmp_path, "ok"))
    started = manager.recorder.next()
    assert started.kind == "started" and started.message == "building the python sub-model"
    progress = manager.recorder.next()
    assert (progress.kind, progress.percent, progress.message) == ("progress", 52, "pruning layer 1/2")
    done = manager.recorder.next()
    assert done.kind == "done" and done.path == str(tmp_path / "submodels" / "python-ok") and not done.cached
    assert manager.state == "idle" and manager.current is None


@pytest.mark.parametrize("mode, message", [
    ("error", "no space left on device"),
    ("crash", "the build process died (exit status 3): Segmentation fault in a native library"),
])
def test_a_failed_build(manager, tmp_path, mode, message):
    manager.submit(request(tmp_path, mode))
    failed = manager.recorder.until("failed")
    assert failed.message == message and not failed.killed
    assert manager.state == "idle"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_build_leaves_nothing_behind_and_the_queue_moves_on(manager, tmp_path, sig):
    manager.submit(request(tmp_path, "hang"))
    manager.submit(request(tmp_path, "ok", language="javascript"))  # waits for the first
    assert manager.recorder.next().kind == "started"
    pid = int(manager.recorder.until("progress").message)
    assert leftovers(tmp_path) == [".python-hang.tmp-abc123"]
    os.kill(pid, sig)
    failed = manager.recorder.until("failed")
    assert failed.killed and failed.message == f"the build process died (killed by signal {int(sig)})"
    assert leftovers(tmp_path) == [], "the killed child's partial entry stays behind"
    following = manager.recorder.next()
    assert following.kind == "started" and following.request.language == "javascript"
    assert manager.recorder.until("done").request.language == "javascript"
    assert manager.state == "idle"


def test_cancel_kills_the_child_and_clears_the_queue(manager, tmp_path):
    manager.submit(request(tmp_path, "hang"))
    manager.submit(request(tmp_path, "ok", language="javascript"))
    manager.recorder.until("progress")
    assert manager.cancel() is True
    cancelled = manager.recorder.until("cancelled")
    assert cancelled.request.language == "python" and leftovers(tmp_path) == []
    assert manager.state == "idle" and manager.recorder.events.empty(), "the queued build was dropped"
    assert manager.cancel() is False


def test_submit_while_building(manager, tmp_path):
    first = request(tmp_path, "hang")
    manager.submit(first)
    manager.recorder.until("progress")
    manager.submit(request(tmp_path, "hang"))  # the same entry again: already being built
    manager.submit(request(tmp_path, "error", language="javascript"))
    manager.submit(request(tmp_path, "ok", language="javascript"))  # replaces the queued javascript request
    assert [r.model for r in manager._queue] == ["ok"]
    manager.submit(request(tmp_path, "hang", force=True))  # a forced rebuild of the same entry queues
    assert [r.model for r in manager._queue] == ["ok", "hang"]
    assert manager.current is first


def test_percent_per_stage():
    assert _percent({"stage": "download", "done": 1, "total": 2}) == (2, "download")
    assert _percent({"stage": "prune", "done": 24, "total": 24}) == (95, "pruning layer 24/24")
    assert _percent({"stage": "save", "done": 0, "total": 0, "message": "writing"}) == (95, "writing")
    assert _percent({"stage": "mystery", "done": 5, "total": 10}) == (50, "mystery")
