"""subcoder.server.session: every transition of the serving lifecycle, driven with fakes in milliseconds.

The fakes stand in for the session's collaborators (model loading, the build child, the cache, the
client), never for the session: the real ServingSession runs on the test's event loop, real workspace
detection reads a real folder.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from subcoder.pruner.errors import ModelError
from subcoder.server.builds import BuildEvent
from subcoder.server.detect import detect
from subcoder.server.session import NotStarted, ServingSession, State
from subcoder.server.settings import Settings

PY = {"app/main.py": "def main():\n    return 1\n" * 20, "web/a.js": "function f() { return 1; }\n"}


class FakeNotifier:
    def __init__(self):
        self.statuses: list[dict] = []
        self.shown: list[tuple[str, str, bool]] = []
        self.progress: list[str] = []

    def status(self, status):
        self.statuses.append(status)

    def show(self, kind, text, *, error=False):
        self.shown.append((kind, text, error))

    async def begin_progress(self, title):
        self.progress.append(f"begin {title}")

    def report_progress(self, message, percent):
        self.progress.append(f"report {percent}")

    def end_progress(self, message):
        self.progress.append(f"end {message}")

    def states(self) -> list[str]:
        return [s["state"] for s in self.statuses]


class FakeBuilds:
    """The build manager's interface; the test plays the child by sending events."""

    def __init__(self, on_event):
        self.on_event = on_event
        self.submitted = []
        self.current = None
        self.cancels = 0

    def submit(self, request):
        self.submitted.append(request)
        self.current = self.current or request

    def cancel(self):
        self.cancels += 1
        self.current = None

    def shutdown(self):
        self.cancel()


class FakeCompleter:
    fim = True
    info = None

    def __init__(self, name):
        self.name = name
        self.forgotten = []

    def complete(self, prefix, suffix, *, max_new_tokens, mode, cancel, key):
        return SimpleNamespace(text=f"<{self.name}>", prompt_tokens=len(prefix), reused_tokens=0, new_tokens=1,
                               stop_reason="eos", passes=1, seconds=0.0)

    def forget(self, uri):
        self.forgotten.append(uri)


class FakeCache:
    def __init__(self, root):
        self.root = root
        self.entries: dict[str, str] = {}
        self.removed = []

    def lookup(self, key):
        return self.entries.get(key)

    def remove(self, key):
        self.removed.append(key)
        self.entries.pop(key, None)

    def evict(self, keep=frozenset()):
        return []


class Rig:
    """A session on a real folder, with fake collaborators and knobs for their behaviour."""

    def __init__(self, tmp_path, files=PY, **settings):
        self.workspace = tmp_path / "ws"
        for rel, text in files.items():
            (self.workspace / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.workspace / rel).write_text(text)
        self.workspace.mkdir(exist_ok=True)
        self.notifier = FakeNotifier()
        self.cache = FakeCache(tmp_path / "submodels")
        self.loads: list[str] = []
        self.fail_loads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()  # clear it to hold loads until the test sets it again
        self.session = ServingSession(
            load=self.load, builds=FakeBuilds, notifier=self.notifier, detect=detect,
            key_of=lambda language, s, root: f"{language}-{s.sparsity}",
            open_cache=lambda s: self.cache, settings=Settings(model="tiny", **settings))
        self.session.root = str(self.workspace)

    def load(self, name, settings, sub):
        self.gate.wait(10)
        self.loads.append(name)
        if name in self.fail_loads:
            raise ModelError(f"cannot load {name}")
        return FakeCompleter(name)

    @property
    def builds(self) -> FakeBuilds:
        return self.session.builds

    def entry(self, key: str) -> str:
        path = self.cache.root / key
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"\0" * 1000)
        self.cache.entries[key] = str(path)
        return str(path)

    async def build(self, kind_after_start="done", **fields):
        """Play the build child for the last submitted request: started, one progress line, then the end."""
        request = self.builds.submitted[-1]
        await self.session.on_build_event(BuildEvent("started", request, 0, "building"))
        await self.session.on_build_event(BuildEvent("progress", request, 50, "pruning layer 1/2"))
        if kind_after_start == "done":
            fields.setdefault("path", self.entry(request.key))
        self.builds.current = None
        await self.session.on_build_event(BuildEvent(kind_after_start, request, **fields))
        await self.session.settle()


async def test_nothing_happens_before_start(tmp_path):
    rig = Rig(tmp_path)
    rig.session.configure(replace(rig.session.settings, sparsity=0.3))
    with pytest.raises(NotStarted):
        await rig.session.rebuild()
    await rig.session.settle()
    assert rig.notifier.statuses == [] and rig.loads == [] and rig.builds.submitted == []
    assert rig.session.state is State.IDLE and rig.session.status()["state"] == "idle"


async def test_cache_miss_builds_then_serves_the_sub_model(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    (request,) = rig.builds.submitted
    assert (request.language, request.key, request.force) == ("python", "python-0.5", False)
    assert rig.notifier.states()[:2] == ["detecting", "building"]
    await rig.session.settle()  # the base model loads meanwhile...
    assert rig.session.models.base is not None and rig.session.state is State.BUILDING  # ...but building shows

    await rig.build("done")
    assert rig.session.state is State.READY and rig.notifier.statuses[-1]["percent"] == 100
    assert rig.notifier.statuses[-1]["sizeBytes"] == 1000 and rig.notifier.statuses[-1]["language"] == "python"
    assert rig.session.models.base is None, "the base model is dropped once the dominant sub-model serves"
    assert rig.notifier.progress == ["begin subcoder: building the python sub-model", "report 50",
                                     "end python sub-model ready"]
    counters = rig.session.counters.to_dict()
    assert counters["cacheMisses"] == 1 and counters["buildsStarted"] == counters["buildsFinished"] == 1
    assert counters["buildsExtracted"] == 1 and counters["subModelsLoaded"] == 1 and counters["baseLoaded"] == 1


async def test_cache_hit_loads_without_a_build(tmp_path):
    rig = Rig(tmp_path, serve_base_model_while_building=False)
    path = rig.entry("python-0.5")
    await rig.session.start()
    await rig.session.settle()
    assert rig.builds.submitted == [] and rig.loads == [path]
    assert rig.notifier.states() == ["detecting", "building", "building", "ready"]
    assert rig.session.counters.cache_hits == 1


async def test_empty_workspace_serves_the_base_model(tmp_path):
    rig = Rig(tmp_path, files={})
    await rig.session.start()
    await rig.session.settle()
    assert rig.notifier.states() == ["detecting", "idle", "base"]
    assert "empty workspace" in rig.notifier.statuses[-1]["message"]
    assert rig.builds.submitted == []


async def test_failed_build_falls_back_to_the_base_model_or_an_error(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    await rig.session.settle()
    await rig.build("failed", message="the build process died (killed by signal 9)", killed=True)
    assert rig.session.state is State.BASE and "killed by signal 9" in rig.session.message
    assert rig.notifier.shown[-1][0] == "build-failed" and rig.notifier.shown[-1][2]
    assert rig.session.counters.builds_failed == 1

    no_base = Rig(tmp_path / "b", serve_base_model_while_building=False)
    await no_base.session.start()
    await no_base.build("failed", message="no space left on device")
    assert no_base.session.state is State.ERROR


async def test_cancelled_build(tmp_path):
    rig = Rig(tmp_path, serve_base_model_while_building=False)
    await rig.session.start()
    await rig.build("cancelled", message="build cancelled")
    assert rig.session.state is State.IDLE and rig.session.message == "python build cancelled"
    assert rig.notifier.progress[-1] == "end cancelled" and rig.session.counters.builds_cancelled == 1


async def test_base_model_that_fails_to_load(tmp_path):
    rig = Rig(tmp_path, files={})
    rig.fail_loads.add("tiny")
    await rig.session.start()
    await rig.session.settle()
    assert rig.session.state is State.ERROR and "cannot load tiny" in rig.session.message
    assert rig.notifier.shown == [("base-load", "cannot load tiny", False)]


async def test_a_sub_model_that_does_not_load_is_removed_and_rebuilt(tmp_path):
    rig = Rig(tmp_path, serve_base_model_while_building=False)
    path = rig.entry("python-0.5")
    rig.fail_loads.add(path)  # passes the cache's checks, fails in the loader
    await rig.session.start()
    await rig.session.settle()
    assert rig.cache.removed == ["python-0.5"] and any("will be rebuilt" in text for _, text, _ in rig.notifier.shown)
    assert [r.key for r in rig.builds.submitted] == ["python-0.5"] and rig.session.state is State.BUILDING
    rig.fail_loads.clear()
    shutil.rmtree(path)  # what the real cache's remove does; the build writes the entry again
    await rig.build()
    assert rig.session.state is State.READY and rig.loads == [path, path]


async def test_a_rebuilt_sub_model_that_still_does_not_load_is_an_error(tmp_path):
    rig = Rig(tmp_path, serve_base_model_while_building=False)
    rig.fail_loads.add(rig.entry("python-0.5"))
    await rig.session.start()
    await rig.session.settle()
    shutil.rmtree(next(iter(rig.fail_loads)))
    await rig.build()  # the rebuilt entry fails the same way
    assert len(rig.builds.submitted) == 1, "no endless rebuilds"
    assert rig.session.state is State.ERROR and "did not load" in rig.session.message


async def test_settings_that_change_the_build_drop_stale_work(tmp_path):
    rig = Rig(tmp_path)
    rig.gate.clear()  # the base model's load hangs until released
    await rig.session.start()
    rig.session.configure(replace(rig.session.settings, sparsity=0.25))
    assert rig.builds.cancels == 1
    rig.gate.set()
    await rig.session.settle()
    assert [r.key for r in rig.builds.submitted] == ["python-0.5", "python-0.25"]
    # The first generation's base model finished loading after the change: dropped, the second one kept.
    assert rig.loads == ["tiny", "tiny"] and rig.session.counters.base_loaded == 1
    assert rig.session.status()["sparsity"] == 0.25

    # A decoding setting changes nothing that is served: no new build.
    rig.session.configure(replace(rig.session.settings, max_new_tokens=4))
    await rig.session.settle()
    assert len(rig.builds.submitted) == 2


async def test_an_old_builds_end_does_not_move_the_state(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    await rig.build("done")
    old = rig.builds.submitted[0]
    await rig.session.rebuild()
    assert rig.builds.submitted[-1].force
    await rig.session.on_build_event(BuildEvent("cancelled", old, message="build cancelled"))
    assert rig.session.state is State.READY


async def test_completions_pick_a_model_and_queue_the_documents_language(tmp_path):
    rig = Rig(tmp_path)
    assert await rig.session.complete("file:///x.py", "python", "def f():", "", request="t") is None  # nothing yet
    await rig.session.start()
    await rig.session.settle()
    got = await rig.session.complete("file:///x.js", "javascript", "function f() {", "", request="t")
    assert got.text == "<tiny>"
    await rig.session.settle()
    # A javascript document in a python workspace: served by the base for now, its sub-model asked for.
    assert [r.language for r in rig.builds.submitted] == ["python", "javascript"]
    await rig.build("done")  # the last submitted: javascript
    got = await rig.session.complete("file:///x.js", "javascript", "function f() {", "", request="t")
    assert got.text.startswith("<") and rig.session.models.subs.keys() == {"javascript"}
    assert rig.session.status()["state"] == "ready"
    assert rig.session.counters.to_dict()["served"] == {"base": 1, "javascript": 1}
    assert rig.session.counters.requests == 3 and rig.session.counters.tokens == 2
    rig.session.forget("file:///x.js")
    assert rig.session.models.subs["javascript"].completer.forgotten == ["file:///x.js"]


async def test_a_killed_build_can_be_asked_for_again(tmp_path):
    rig = Rig(tmp_path)
    await rig.session.start()
    await rig.session.settle()
    rig.session.want("javascript")
    await rig.session.settle()
    rig.session.want("javascript")  # queued already: not twice
    await rig.session.settle()
    assert [r.language for r in rig.builds.submitted] == ["python", "javascript"]
    await rig.build("failed", message="the build process died (killed by signal 15)", killed=True)
    rig.session.want("javascript")
    await rig.session.settle()
    assert [r.language for r in rig.builds.submitted] == ["python", "javascript", "javascript"]
