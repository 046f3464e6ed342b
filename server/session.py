"""The serving session: which model answers, and the lifecycle that gets it there.

States (the `state` field of the `subcoder/status` notification; the wire strings are `State`'s values):

    idle ──start()──▶ detecting ──no enabled language in the workspace, none opened──▶ idle (nothing loaded)
                         │     idle ──a document in an enabled language opened (want())──▶ as below
                         └──dominant language──▶ [the model is not local: the download gate, below]
                                                    ──▶ building ──sub-model loaded (cache hit or build done)──▶ ready
                                                    ├──build or load failed──▶ ready (another sub-model) | base | error
                                                    └──build cancelled──▶ ready | base | idle
    the download gate: idle (asking, unless allowDownload or the client decides) ──"Not now"──▶ idle (remembered
                       until rebuild()) | ──"Download"──▶ downloading ──▶ converting ──▶ on as above | error
    building (cache miss) | idle | error ──base model loaded, no sub-model yet──▶ base
    detecting ──sparsity 0 (no pruning)──▶ base once the dense model is loaded (nothing is built)
    detecting ──`backend` set──▶ ready ⇄ error as the remote server answers or not (its tokenizer is all that
                                 loads here; nothing is built; subcoder.server.backend)
    any state, no sub-model ──base model failed to load──▶ error
    any state ──settings change the model or the build, or rebuild()──▶ detecting (work in flight is dropped)

Nothing is loaded for a workspace without code in an enabled language until a document in one is opened, and
the base model is loaded only while it is needed: on a cache miss (served while the sub-model builds), at
sparsity 0, or when no sub-model can be had; it is released once the dominant language's sub-model serves,
so one model is resident in the usual case.

Nothing happens before `start()` (the server calls it once `initialized` has pulled the settings): settings
arriving earlier are only stored, and `rebuild()` raises `NotStarted` rather than building with defaults.
Each change of what is served bumps a generation; a load or key computation that finishes under an older
generation is dropped, so a slow load never replaces a newer choice.

The session knows no LSP: the loader, the build manager, the cache, the key computation, the workspace
detection and the notifier are injected, so tests drive every transition with fakes in milliseconds.
It runs on the server's event loop; model loading and key computation run on one background thread
(transformers' lazy imports are not safe from two threads at once), decoding on another.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import Counter
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from subcoder.pruner.calibration import LANGUAGES
from subcoder.pruner.errors import Cancelled, SubcoderError

from .backend import BackendError, open_remote
from .builds import BuildEvent, BuildRequest, calibration_dict
from .modelset import Download, ModelSet, Served, display_name, release_memory
from .settings import Settings

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    DETECTING = "detecting"
    BUILDING = "building"
    READY = "ready"
    BASE = "base"
    ERROR = "error"
    IDLE = "idle"
    DOWNLOADING = "downloading"  # the base model's files are being fetched (once)
    CONVERTING = "converting"  # ...and converted into the model cache


DOWNLOAD, NOT_NOW = "Download", "Not now"  # the consent question's answers


def download_decision(allow: bool | str, can_ask: bool) -> str:
    """"yes", "no" or "ask": the `allowDownload` setting decides, and a client that cannot ask means yes
    (it was set up to run subcoder, and the status names what is fetched)."""
    if allow is True or allow is False:
        return "yes" if allow else "no"
    return "ask" if can_ask else "yes"


class NotStarted(SubcoderError):
    """A request that needs the workspace and the settings arrived before the session started."""


class Notifier(Protocol):
    """What the session tells the client; the server implements it over LSP."""

    def status(self, status: dict) -> None: ...  # the `subcoder/status` notification

    def show(self, kind: str, text: str, *, error: bool = False) -> None: ...  # a message, once per kind

    async def begin_progress(self, title: str, cancellable: bool = True) -> None: ...  # work-done progress

    def can_ask(self) -> bool: ...  # the client answers `window/showMessageRequest`

    async def ask(self, text: str, actions: list[str]) -> str | None: ...  # the action chosen, None if dismissed

    def report_progress(self, message: str, percent: int) -> None: ...

    def end_progress(self, message: str) -> None: ...


@dataclass
class Counters:
    """What the session has done since it started; part of the `subcoder.status` command's result, so
    tests (and curious users) can assert on events instead of reading the log."""

    requests: int = 0  # completion requests that reached the session
    served: Counter = field(default_factory=Counter)  # model ("base" or a language) -> requests it decoded
    tokens: int = 0  # new tokens decoded, all requests together
    builds_started: int = 0
    builds_finished: int = 0  # a build child delivered a sub-model...
    builds_extracted: int = 0  # ...which it extracted itself (not found ready in the shared cache)
    builds_failed: int = 0
    builds_cancelled: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    submodels_loaded: int = 0
    base_loaded: int = 0
    downloads_asked: int = 0  # consent questions sent to the client
    downloads: int = 0  # models fetched (downloaded and converted)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "served": dict(self.served), "tokens": self.tokens, "buildsStarted": self.builds_started,
                "buildsFinished": self.builds_finished, "buildsExtracted": self.builds_extracted,
                "buildsFailed": self.builds_failed, "buildsCancelled": self.builds_cancelled,
                "cacheHits": self.cache_hits, "cacheMisses": self.cache_misses,
                "subModelsLoaded": self.submodels_loaded, "baseLoaded": self.base_loaded,
                "downloadsAsked": self.downloads_asked, "downloads": self.downloads}


# The injected parts, as the server wires them (see server.py):
Loader = Callable[[str, Settings, bool], Any]  # (model name or sub-model path, settings, is_sub) -> completer
KeyOf = Callable[[str, Settings, "str | None"], str]  # (language, settings, workspace root) -> cache key
Detect = Callable[[str], Any]  # workspace root -> Detection
OpenCache = Callable[[Settings], Any]  # settings -> CacheManager
MakeBuilds = Callable[[Callable[[BuildEvent], None]], Any]  # on_event -> BuildManager
Pending = Callable[[Settings], "Download | None"]  # settings -> the download loading their model would start
Fetch = Callable[[Settings, Callable], None]  # (settings, progress callback) -> the model's files made local
# (settings, on_health(up, reason) from any thread, alive()) -> a completer over the `backend` setting's server
OpenRemote = Callable[[Settings, Callable[[bool, str], None], Callable[[], bool]], Any]


class ServingSession:
    def __init__(self, *, load: Loader, builds: MakeBuilds, notifier: Notifier, key_of: KeyOf, detect: Detect,
                 open_cache: OpenCache, settings: Settings | None = None, background: Executor | None = None,
                 pending: Pending = lambda settings: None, fetch: Fetch = lambda settings, progress: None,
                 remote: OpenRemote = open_remote):
        self.settings = settings or Settings()
        self.root: str | None = None
        self.detection = None
        self.dominant: str | None = None
        self.state = State.IDLE
        self.message = ""
        self.percent = 0
        self.models = ModelSet()
        self.counters = Counters()
        self.started = False
        self._load, self._key_of, self._detect, self._open_cache = load, key_of, detect, open_cache
        self._pending, self._fetch, self._remote = pending, fetch, remote
        self.notifier = notifier
        self.cache = open_cache(self.settings)
        self.builds = builds(self._build_event_from_thread)
        self._background = background or ThreadPoolExecutor(1, thread_name_prefix="subcoder-load")
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="subcoder-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._base_loading: int | None = None  # the generation whose base model is loading
        self._queued: set[str] = set()  # other languages whose sub-model was asked for (loaded or queued)
        self._rebuilt_after_load: set[str] = set()  # keys whose entry failed to load once and was rebuilt
        self._inflight: dict[str, threading.Event] = {}  # document -> cancel flag of its running completion
        self._progress_request: BuildRequest | None = None  # the build the work-done progress belongs to
        self._tasks: set[asyncio.Task] = set()
        self._events = asyncio.Lock()  # build events are handled one at a time, in order (on_build_event)
        self._detecting = False
        self._opened: list[str] = []  # enabled languages of the documents opened, in order
        self._answers: dict[str, bool] = {}  # model -> the user's answer to "Download?" (this session)
        self._asking: dict[str, asyncio.Future] = {}  # model -> the question waiting for its answer
        self._fetching: dict[str, asyncio.Future] = {}  # model -> its running download
        self._fetch_failed: dict[str, str] = {}  # model -> why its download failed (until rebuild())

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        """The `subcoder/status` object."""
        current = self.builds.current
        served = self.models.pick(self.dominant, self.dominant)
        return {
            "state": self.state.value,
            "language": (current.language if current else None) or self.dominant,
            "percent": self.percent if self.state in (State.BUILDING, State.DOWNLOADING, State.CONVERTING)
            else (100 if self.state is State.READY else 0),
            "sparsity": self.settings.sparsity,
            "pattern": self.settings.pattern,
            "model": self.settings.model,
            "sizeBytes": served.size_bytes if served and served.language else 0,
            "message": self.message,
            "languages": [e.to_dict() for e in self.detection.languages] if self.detection else [],
        }

    def details(self) -> dict:
        """What the `subcoder.status` command adds to the status object: counters, loaded and queued languages."""
        return {"counters": self.counters.to_dict(), "subModels": sorted(self.models.subs),
                "queued": sorted(self._queued - set(self.models.subs)), "resident": self.models.resident()}

    def _set(self, state: State, message: str = "", percent: int | None = None) -> None:
        self.state, self.message = state, message
        if percent is not None:
            self.percent = percent
        try:
            self.notifier.status(self.status())
        except Exception:  # noqa: BLE001 - a client gone away must not stop the lifecycle
            log.debug("status notification not sent", exc_info=True)

    def _settled_state(self, *, otherwise: State) -> State:
        """Where the session rests when no build is running: the best model it has."""
        return State.READY if self.models.subs else (State.BASE if self.models.base else otherwise)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin serving the workspace root with the current settings: detect, load the base model, build or load the sub-model."""
        self._loop = asyncio.get_running_loop()
        self.started = True
        await self.refresh()

    def configure(self, new: Settings) -> None:
        """New settings; rebuild when they change what is served (only once started)."""
        old, self.settings = self.settings, new
        self.cache = self._open_cache(new)
        if not self.started:
            return
        if new.model_fields() != old.model_fields() or new.build_fields() != old.build_fields():
            log.info("settings changed what is served: rebuilding")
            self._drop_work()
            self.models.clear()
            self._spawn(self.refresh())
        elif new.languages != old.languages:
            current = self.builds.current
            if current is not None and current.language not in new.languages:
                self.builds.cancel()  # a language turned off stops its build
            self._spawn(self.refresh())
        elif new.allow_download != old.allow_download and not self.models.resident():
            self._fetch_failed.clear()
            self._spawn(self.refresh())  # downloads allowed now: what was refused may start

    async def set_root(self, root: str | None) -> None:
        self.root = root
        if self.started:
            await self.refresh()

    async def rebuild(self) -> None:
        """Detect again and rebuild the dominant language's sub-model, ignoring the cache."""
        if not self.started:
            raise NotStarted("the server is not initialized yet: nothing to rebuild")
        self._drop_work()
        self._answers.clear()  # "Not now" holds until the user asks for a build: then ask again
        self._fetch_failed.clear()
        await self.refresh(force=True)

    def cancel_build(self) -> None:
        self.builds.cancel()

    def shutdown(self) -> None:
        self.builds.shutdown()

    def _drop_work(self) -> None:
        self._generation += 1
        self.builds.cancel()
        self._queued.clear()

    async def refresh(self, *, force: bool = False) -> None:
        """Detect the workspace's languages, then make sure the dominant one's sub-model exists."""
        self._set(State.DETECTING, "detecting the workspace's languages")
        self._detecting = True  # documents opened meanwhile are only noted: the detection's result decides
        try:
            if self.root:
                self.detection = await asyncio.get_running_loop().run_in_executor(None, self._detect, self.root)
                log.info("workspace languages: %s", self.detection.summary())
        finally:
            self._detecting = False
        enabled = [lang for lang in self.settings.languages if lang in LANGUAGES]
        self.dominant = (self.detection.dominant(enabled) if self.detection else None) or \
            next((lang for lang in self._opened if lang in enabled), None)
        if self.dominant is None:
            what = "an empty workspace" if not self.detection or not self.detection.languages else \
                f"no enabled language ({', '.join(enabled) or 'none'}) in this workspace"
            if self.models.resident():  # loaded for a language no longer enabled: its memory is not needed
                self.models.clear()
            self._set(State.IDLE, f"{what}: nothing is loaded until a document in an enabled language is opened")
            return
        await self._serve(force=force)

    async def _serve(self, *, force: bool = False) -> None:
        """Serve the dominant language: the dense model at sparsity 0, else its sub-model; with a backend, its server."""
        if self.settings.backend:  # the server decodes: nothing is built, no weights are loaded here
            self._ensure_base()
            return
        if not self.settings.prunes:
            self._ensure_base()
            self._set(State.BASE if self.models.base else State.IDLE,
                      "sparsity 0: serving the dense base model, no sub-model is built")
            return
        await self.ensure_submodel(self.dominant, force=force)

    def _ensure_base(self) -> None:
        """Load the base model (served while building) unless it is loaded, loading, not wanted or not needed."""
        if (self.models.base is not None or self._base_loading == self._generation or self.dominant in self.models.subs
                or not (self.settings.serve_base_model_while_building or not self.settings.prunes
                        or self.settings.backend)):
            return
        # A load for an older generation may still run: it will be dropped, so this one starts regardless.
        self._base_loading = self._generation
        self._spawn(self._load_base(self.settings, self._generation))

    async def _load_base(self, settings: Settings, generation: int) -> None:
        if not await self._have_model(settings, self.dominant):
            if self._base_loading == generation:
                self._base_loading = None
            return
        try:
            if settings.backend:
                completer = await self._in_background(lambda: self._remote(
                    settings, self._health_from_thread(generation), lambda: generation == self._generation))
            else:
                completer = await self._in_background(lambda: self._load(settings.model, settings, False))
            error = None
        except SubcoderError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - any failure to load becomes one readable line
            log.exception("base model failed to load")
            error = SubcoderError(f"cannot load {settings.model}: {exc}")
        finally:
            if self._base_loading == generation:
                self._base_loading = None
        if generation != self._generation:
            return
        if error is not None:
            self.notifier.show("base-load", str(error))
            if not self.models.subs:
                self._set(State.ERROR, str(error))
            return
        if settings.backend:
            self.models.set_base(Served(completer, None))
            engine = completer.engine
            log.info("%s", engine.describe())
            self._set(State.READY if engine.up else State.ERROR, engine.describe())
            return
        if self.dominant in self.models.subs:
            log.info("base model loaded after the %s sub-model: not kept", self.dominant)
            return
        self.models.set_base(Served(completer, None))
        self.counters.base_loaded += 1
        log.info("base model %s loaded (%s)", settings.model,
                 "fill-in-the-middle" if getattr(completer, "fim", None) else "prefix-only")
        if self.state in (State.IDLE, State.DETECTING, State.ERROR) and not self.models.subs:
            keep = self.state is State.IDLE and "base model" in self.message
            self._set(State.BASE, self.message if keep else "serving the base model")
        else:
            self._set(self.state, self.message)  # the size or model shown may have changed

    async def ensure_submodel(self, language: str, *, force: bool = False) -> None:
        """Serve `language`'s sub-model: from the cache when there, else a build (queued behind a running one)."""
        settings, generation = self.settings, self._generation
        current = self.builds.current
        if current is not None and current.language == language and not force:
            return
        if not await self._have_model(settings, language) or generation != self._generation:
            return
        if not self.models.subs:
            self._set(State.BUILDING, f"preparing the {language} sub-model", 0)
        try:
            key = await self._in_background(lambda: self._key_of(language, settings, self.root))
        except Exception as exc:  # noqa: BLE001 - SubcoderError or not, the user gets one line
            if not isinstance(exc, SubcoderError):
                log.exception("computing the cache key failed")
            self._failed(f"cannot prepare the {language} sub-model: {exc}")
            return
        if generation != self._generation:
            return
        if not force:
            path = await asyncio.get_running_loop().run_in_executor(None, self.cache.lookup, key)
            if path is not None:
                self.counters.cache_hits += 1
                await self._load_submodel(language, key, str(path), generation)
                return
            self.counters.cache_misses += 1
        if language == self.dominant:
            self._ensure_base()  # served while the sub-model builds
        self.builds.submit(BuildRequest(
            model=settings.model, language=language, key=key, cache_root=str(self.cache.root),
            sparsity=settings.sparsity, pattern=settings.pattern, method=settings.method,
            calibration=calibration_dict(settings, self.root), dtype=settings.dtype,
            device="cpu" if settings.device == "auto" else settings.device, force=force,
            models_cache_dir=settings.cache_dir, values=settings.values,
        ))

    async def _load_submodel(self, language: str, key: str, path: str, generation: int) -> None:
        settings = self.settings
        self._set(State.BUILDING if not self.models.subs else self.state, f"loading the {language} sub-model", 100)
        try:
            completer = await self._in_background(lambda: self._load(path, settings, True))
        except Exception as exc:  # noqa: BLE001 - a corrupt or unreadable entry: delete it and build it again
            if not isinstance(exc, SubcoderError):
                log.exception("loading sub-model %s failed", key)
            log.warning("sub-model %s did not load (%s): removing the cache entry", key, exc)
            await asyncio.get_running_loop().run_in_executor(None, self.cache.remove, key)
            if key in self._rebuilt_after_load or generation != self._generation:
                # Built again and still unloadable: another build would fail the same way, forever.
                self._failed(f"the {language} sub-model did not load: {exc}")
                return
            self._rebuilt_after_load.add(key)
            self.notifier.show("entry-rebuilt", f"the cached {language} sub-model did not load ({exc}); "
                                                "it will be rebuilt")
            await self.ensure_submodel(language)  # the entry is gone: a cache miss, so a build
            return
        if generation != self._generation:
            return
        size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
        self.models.set_sub(language, Served(completer, language, key, size, settings.sparsity))
        self.counters.submodels_loaded += 1
        released = language == self.dominant and self.models.base is not None
        if released:
            self.models.set_base(None)  # the base model's memory is no longer needed
        info = getattr(completer, "info", None)
        log.info("serving the %s sub-model (%s, %.1f MB, sparse kernel %s)", language, key, size / 2**20,
                 "on" if info is not None and info.sparse_kernel else "off")
        loaded = sorted(self.models.subs, key=lambda lang: (lang != self.dominant, lang))
        self._set(State.READY, f"ready: {', '.join(loaded)}, {settings.sparsity:.0%} sparse", 100)
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.cache.evict(keep=self.models.keys()))
        if released:
            await self._in_background(release_memory)  # its freed weights back to the system, not kept by malloc

    def _failed(self, text: str) -> None:
        self.notifier.show("build-failed", text, error=True)
        self._set(self._settled_state(otherwise=State.ERROR), text)
        if not self.models.subs:
            self._ensure_base()  # no sub-model to be had: the base model serves, when wanted

    def _health_from_thread(self, generation: int) -> Callable[[bool, str], None]:
        """The backend's up/down reports (from its threads) as the state: ready, or error with the reason."""
        loop = self._loop

        def report(up: bool, reason: str) -> None:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._backend_health, generation, up)
        return report

    def _backend_health(self, generation: int, up: bool) -> None:
        served = self.models.base
        if generation != self._generation or served is None or not self.settings.backend:
            return
        if not up:
            self.notifier.show("backend", served.completer.engine.describe(), error=True)
        self._set(State.READY if up else State.ERROR, served.completer.engine.describe())

    # ------------------------------------------------------------------ the download gate

    async def _have_model(self, settings: Settings, language: str | None) -> bool:
        """True when the model's files are local; else ask (once per session) and fetch them (once, shared).

        Every path that could load the base model or compute a key passes here first, so nothing is
        fetched without consent."""
        download = self._pending(settings)
        if download is None:
            return True
        if settings.model in self._fetch_failed:
            return False
        if not await self._consent(settings, download, language):
            return False
        task = self._fetching.get(download.model)
        if task is None:
            task = self._fetching[download.model] = asyncio.ensure_future(self._fetch_model(settings, download))
        return await asyncio.shield(task)

    async def _consent(self, settings: Settings, download: Download, language: str | None) -> bool:
        decision = download_decision(settings.allow_download, self.notifier.can_ask())
        if decision == "no":
            self._set(State.IDLE, f"{download.title} ({download.size}) is not downloaded and subcoder.allowDownload "
                                  f"is false: nothing is loaded (set it to \"ask\" or true to fetch the model)")
            return False
        if decision == "yes":
            return True
        if download.model not in self._answers:
            asking = self._asking.get(download.model)
            if asking is None:
                asking = self._asking[download.model] = asyncio.ensure_future(self._ask(download, language))
            answer = await asyncio.shield(asking)
            self._asking.pop(download.model, None)
            self._answers[download.model] = answer
        if not self._answers[download.model]:
            self._set(State.IDLE, f"{download.title} ({download.size}) was not downloaded, so nothing is loaded: "
                                  "run \"Subcoder: Rebuild sub-model\" to download it")
        return self._answers[download.model]

    async def _ask(self, download: Download, language: str | None) -> bool:
        self.counters.downloads_asked += 1
        self._set(State.IDLE, f"waiting for your answer: download {download.title} ({download.size})?")
        text = (f"subcoder needs {download.title} ({download.size}, once) to complete {display_name(language)}. "
                "Download?")
        try:
            answer = await self.notifier.ask(text, [DOWNLOAD, NOT_NOW])
        except Exception:  # noqa: BLE001 - a client that fails to answer has not said yes
            log.warning("the download question got no answer", exc_info=True)
            answer = None
        log.info("download of %s: %s", download.model, answer or "dismissed")
        return answer == DOWNLOAD

    async def _fetch_model(self, settings: Settings, download: Download) -> bool:
        """Download and convert the model with progress; False (and a message) when that failed."""
        if self._progress_request is not None:  # an older build's progress: it was cancelled with its generation
            self.notifier.end_progress("superseded")
            self._progress_request = None
        loop = asyncio.get_running_loop()
        try:
            await self.notifier.begin_progress(f"subcoder: downloading {download.title} ({download.size}, once)",
                                               cancellable=False)
            self._set(State.DOWNLOADING, f"downloading {download.title} ({download.size}, once)", 0)
            await self._in_background(lambda: self._fetch(settings, lambda p: loop.call_soon_threadsafe(
                self._fetch_progress, download, p)))
        except Exception as exc:  # noqa: BLE001 - network, disk, checksum: one line for the user
            if not isinstance(exc, SubcoderError):
                log.exception("fetching %s failed", download.model)
            text = f"cannot download {download.title}: {exc}"
            self._fetch_failed[download.model] = text
            self.notifier.end_progress("failed")
            self.notifier.show("download-failed", text, error=True)
            if download.model == self.settings.model:
                self._set(self._settled_state(otherwise=State.ERROR), text)
            return False
        finally:
            self._fetching.pop(download.model, None)
        self.counters.downloads += 1
        self.notifier.end_progress(f"{download.title} downloaded")
        log.info("%s downloaded and converted", download.title)
        return True

    def _fetch_progress(self, download: Download, progress) -> None:
        """The fetch's progress (on the loop): download first, then conversion, on one bar."""
        if download.model != self.settings.model:
            return
        converting = progress.stage == "convert"
        percent = int((80 if converting else 0) + progress.fraction * (20 if converting else 80))
        self.notifier.report_progress(progress.message, percent)
        self._set(State.CONVERTING if converting else State.DOWNLOADING, progress.message, percent)

    # ------------------------------------------------------------------ builds

    def _build_event_from_thread(self, event: BuildEvent) -> None:
        """The build manager's reader threads hand events to the loop here."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: self._spawn(self.on_build_event(event)))

    async def on_build_event(self, event: BuildEvent) -> None:
        # One at a time, in the order the build manager sent them: "started" awaits the client's progress
        # token, and a build child killed at once would otherwise have its failure handled during that wait,
        # then be shown "building" for good (its failure overwritten, its progress never ended).
        async with self._events:
            await self._handle_build_event(event)

    async def _handle_build_event(self, event: BuildEvent) -> None:
        language = event.request.language
        if event.kind in ("cancelled", "failed") and event.request is not self._progress_request:
            # A build killed to make room for another (settings changed, rebuild): its end is old news.
            log.info("%s build ended (%s): %s", language, event.kind, event.message)
            self._count_end(event)
            return
        if event.kind == "started":
            self.counters.builds_started += 1
            self._progress_request = event.request
            await self.notifier.begin_progress(f"subcoder: building the {language} sub-model")
            self._set(State.BUILDING, event.message, 0)
        elif event.kind in ("progress", "waiting"):
            self.notifier.report_progress(event.message, event.percent)
            if not self.models.subs or language == self.dominant:
                self._set(State.BUILDING, f"building {language} sub-model {event.percent}%: {event.message}",
                          event.percent)
        elif event.kind == "done":
            self.counters.builds_finished += 1
            self.counters.builds_extracted += not event.cached
            self.notifier.end_progress(f"{language} sub-model ready")
            await self._load_submodel(language, event.request.key, event.path, self._generation)
        elif event.kind == "cancelled":
            self._count_end(event)
            self.notifier.end_progress("cancelled")
            self._set(self._settled_state(otherwise=State.IDLE), f"{language} build cancelled")
        else:
            self._count_end(event)
            self.notifier.end_progress("failed")
            self._failed(f"building the {language} sub-model failed: {event.message}")

    def _count_end(self, event: BuildEvent) -> None:
        if event.kind == "cancelled":
            self.counters.builds_cancelled += 1
        else:
            self.counters.builds_failed += 1
        # A build that did not finish may be asked for again (next document opened, next request); a failure
        # the child reported itself would fail the same way, so that language stays marked.
        if event.kind == "cancelled" or event.killed:
            self._queued.discard(event.request.language)

    # ------------------------------------------------------------------ completions

    async def complete(self, uri: str, language: str | None, prefix: str, suffix: str, *, request: str):
        """The model's `Completion` for a document at a cursor, or None (no model yet, superseded, failed)."""
        self.counters.requests += 1
        settings = self.settings
        served = self.models.pick(language, self.dominant,
                                  allow_base=settings.serve_base_model_while_building or not settings.prunes
                                  or bool(settings.backend))
        self.want(language)
        if served is None:
            log.info("%s: no model loaded yet (%s)", request, self.state.value)
            return None
        flag = threading.Event()
        if (older := self._inflight.get(uri)) is not None:
            older.set()  # a newer request for the same document: the older one stops between tokens
        self._inflight[uri] = flag
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._infer, lambda: served.completer.complete(
                prefix, suffix, max_new_tokens=settings.max_new_tokens, mode=settings.completion_mode,
                cancel=flag.is_set, key=uri))
        except asyncio.CancelledError:
            flag.set()
            log.info("%s: cancelled by the client", request)
            raise
        except Cancelled:
            log.info("%s: superseded by a newer request", request)
            return None
        except BackendError as exc:  # the status says the backend is down; the editor gets no suggestion
            log.info("%s: %s", request, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a failed completion is an empty answer and one message
            log.exception("%s: completion failed", request)
            self.notifier.show("completion-error", f"completion failed: {exc}")
            return None
        finally:
            if self._inflight.get(uri) is flag:
                del self._inflight[uri]
        self.counters.served[served.language or "base"] += 1
        self.counters.tokens += result.new_tokens
        log.info("%s: %s model, %d prompt tokens (%d reused), %d new, %.0f ms (%s; %d decode passes, %.0f ms in the "
                 "model)", request, served.language or "base", result.prompt_tokens, result.reused_tokens,
                 result.new_tokens, (time.perf_counter() - started) * 1000, result.stop_reason, result.passes,
                 result.seconds * 1000)
        return result

    def want(self, language: str | None) -> None:
        """A document in an enabled language: served first when nothing is (an empty or notes workspace), else
        its sub-model after the current build when it is another language than the dominant one."""
        if language is None or language not in LANGUAGES or language not in self.settings.languages:
            return
        if language not in self._opened:
            self._opened.append(language)
        if not self.started or self._detecting:
            return  # start() or the running detection takes the opened language into account
        if self.dominant is None:
            log.info("a %s document was opened: serving %s", language, language)
            self.dominant = language
            self._spawn(self._serve())
            return
        if (self.settings.backend or not self.settings.prunes or language == self.dominant or language in self.models.subs
                or language in self._queued):
            return
        self._queued.add(language)
        self._spawn(self.ensure_submodel(language))

    def forget(self, uri: str) -> None:
        """A closed document: drop its KV cache in every model."""
        for served in (self.models.base, *self.models.subs.values()):
            if served is not None:
                served.completer.forget(uri)

    # ------------------------------------------------------------------ plumbing

    def _in_background(self, fn):
        return asyncio.get_running_loop().run_in_executor(self._background, fn)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until the work this session started (loads, builds' events) has finished; for tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
