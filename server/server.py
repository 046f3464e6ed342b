"""The subcoder language server: the server object and its LSP handlers.

Handlers are short and follow one shape (find the document → ask the engine → convert to LSP types);
the work lives in plain modules: `detect` (languages), `build` (child-process builds), `cache`
(entries, locks, eviction), `models` (which model answers) and `subcoder.pruner.engine.completer` (decoding).

Threads: the asyncio loop runs handlers; inference runs on one worker thread (one decode at a time,
a newer request for the same document cancels the older one between tokens); model loading and
detection on another; build progress arrives on the build manager's reader threads and is handed to
the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from subcoder.pruner import paths
from subcoder.pruner.calibration import LANGUAGES
from subcoder.pruner.errors import Cancelled, SubcoderError

from . import __version__, logs
from .builds import BuildEvent, BuildManager, BuildRequest, calibration_dict, compute_key
from .cache import CacheManager
from .detect import Detection, detect
from .modelset import LANGUAGE_IDS, ModelSet, Served, load_completer
from .settings import Settings, parse_settings, python_log_level

log = logging.getLogger(__name__)

STATUS = "subcoder/status"
CMD_REBUILD = "subcoder.rebuildSubModel"
CMD_STATUS = "subcoder.status"
MAX_DOCUMENT_CHARS = 4 << 20  # beyond this the prompt is built from a window around the cursor
_WORD = re.compile(r"[A-Za-z0-9_$]*$")


class SubcoderServer(LanguageServer):
    def __init__(self):
        super().__init__("subcoder", __version__)
        self.settings = Settings()
        self.root: str | None = None
        self.detection: Detection | None = None
        self.dominant: str | None = None
        self.models = ModelSet()
        self.cache = CacheManager(paths.submodels_dir(), self.settings.cache_size_limit_mb)
        self.builds = BuildManager(self._build_event_from_thread)
        self.state = "idle"
        self.message = ""
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="subcoder-infer")
        self._background = ThreadPoolExecutor(1, thread_name_prefix="subcoder-load")
        self._inflight: dict[str, threading.Event] = {}
        self._progress_token: str | None = None
        self._progress_request: BuildRequest | None = None  # the build the token belongs to
        self._shown: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0  # bumped when settings change what is served: stale loads are dropped
        self._base_loading = False
        self._queued: set[str] = set()  # other languages whose sub-model was asked for (loaded or queued)

    # ------------------------------------------------------------------ messages to the client

    def status(self) -> dict:
        current = self.builds.current
        served = self.models.pick(self.dominant, self.dominant)
        return {
            "state": self.state,
            "language": (current.language if current else None) or self.dominant,
            "percent": self._percent if self.state == "building" else (100 if self.state == "ready" else 0),
            "sparsity": self.settings.sparsity,
            "pattern": self.settings.pattern,
            "model": self.settings.model,
            "sizeBytes": served.size_bytes if served and served.language else 0,
            "message": self.message,
            "languages": [e.to_dict() for e in self.detection.languages] if self.detection else [],
        }

    _percent = 0

    def set_state(self, state: str, message: str = "", percent: int | None = None) -> None:
        self.state, self.message = state, message
        if percent is not None:
            self._percent = percent
        try:
            self.protocol.notify(STATUS, self.status())
        except Exception:
            log.debug("status notification not sent", exc_info=True)

    def show_once(self, kind: str, text: str, level=types.MessageType.Warning) -> None:
        """A user-facing message, at most once per kind per session (the log has every occurrence)."""
        log.warning("%s", text)
        if kind in self._shown:
            return
        self._shown.add(kind)
        self.window_show_message(types.ShowMessageParams(type=level, message=f"subcoder: {text}"))

    def send_log(self, level: int, text: str) -> None:
        kind = (types.MessageType.Error if level >= logging.ERROR else types.MessageType.Warning if level >= logging.WARNING
                else types.MessageType.Info if level >= logging.INFO else types.MessageType.Log)
        params = types.LogMessageParams(type=kind, message=text)
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._safe_log, params)

    def _safe_log(self, params) -> None:
        try:
            self.window_log_message(params)
        except Exception:
            pass

    # ------------------------------------------------------------------ settings and workspace

    def apply_settings(self, raw, *, initial: bool = False) -> None:
        old = self.settings
        parsed = parse_settings(raw, old)
        for problem in parsed.problems:
            self.show_once("settings:" + problem, problem)
        new = parsed.settings
        self.settings = new
        logs.set_level(python_log_level(new.log_level))
        # `cacheDir` is the root of subcoder's whole cache (models and sub-models), as for the CLI.
        self.cache = CacheManager(paths.submodels_dir(new.cache_dir or None), new.cache_size_limit_mb)
        if initial:
            return
        if new.model_fields() != old.model_fields() or new.build_fields() != old.build_fields():
            log.info("settings changed what is served: rebuilding")
            self._generation += 1
            self.builds.cancel()
            self.models.clear()
            self._queued.clear()
            asyncio.ensure_future(self.refresh())
        elif new.languages != old.languages:
            asyncio.ensure_future(self.refresh())

    async def refresh(self, *, force: bool = False) -> None:
        """Detect the workspace's languages, then make sure the dominant one's sub-model exists."""
        loop = asyncio.get_running_loop()
        self.set_state("detecting", "detecting the workspace's languages")
        if self.root:
            self.detection = await loop.run_in_executor(None, detect, self.root)
            log.info("workspace languages: %s", self.detection.summary())
        enabled = [l for l in self.settings.languages if l in LANGUAGES]
        self.dominant = self.detection.dominant(enabled) if self.detection else None
        self.ensure_base()
        if self.dominant is None:
            what = "an empty workspace" if not self.detection or not self.detection.languages else \
                f"no enabled language ({', '.join(enabled) or 'none'}) in this workspace"
            self.set_state("base" if self.models.base else "idle", f"{what}: serving the base model")
            return
        await self.ensure_submodel(self.dominant, force=force)

    def ensure_base(self) -> None:
        """Load the base model in the background (to serve while building) unless the setting says not to."""
        if self.models.base is not None or self._base_loading or not self.settings.serve_base_model_while_building:
            return
        self._base_loading = True
        settings, generation = self.settings, self._generation

        def load():
            try:
                completer = load_completer(settings.model, dtype=settings.dtype, device=settings.device,
                                           sparse=False, context_tokens=settings.context_tokens,
                                           cache_dir=settings.cache_dir, fim_order=settings.fim_order)
                return Served(completer, None)
            except SubcoderError as exc:
                return exc
            except Exception as exc:
                log.exception("base model failed to load")
                return SubcoderError(f"cannot load {settings.model}: {exc}")

        def done(future):
            self._base_loading = False
            result = future.result()
            if generation != self._generation:
                return
            if isinstance(result, Exception):
                self.show_once("base-load", f"{result}")
                if not self.models.subs:
                    self.set_state("error", str(result))
                return
            self.models.set_base(result)
            log.info("base model %s loaded (%s)", settings.model, "fill-in-the-middle" if result.completer.fim else "prefix-only")
            if self.state in ("idle", "detecting", "error") and not self.models.subs:
                keep = self.state == "idle" and "base model" in self.message
                self.set_state("base", self.message if keep else "serving the base model")
            else:
                self.set_state(self.state, self.message)

        future = asyncio.get_running_loop().run_in_executor(self._background, load)
        future.add_done_callback(done)

    async def ensure_submodel(self, language: str, *, force: bool = False) -> None:
        settings, generation = self.settings, self._generation
        loop = asyncio.get_running_loop()
        if self.builds.current and self.builds.current.language == language and not force:
            return
        if not self.models.subs:
            self.set_state("building", f"preparing the {language} sub-model", 0)
        try:
            # On the loader thread: transformers' lazy imports are not safe from two threads at once.
            key = await loop.run_in_executor(self._background,
                                             lambda: compute_key(settings.model, language, settings, self.root,
                                                                 models_cache_dir=settings.cache_dir))
        except SubcoderError as exc:
            self._failed(f"cannot prepare the {language} sub-model: {exc}")
            return
        except Exception as exc:
            log.exception("computing the cache key failed")
            self._failed(f"cannot prepare the {language} sub-model: {exc}")
            return
        if generation != self._generation:
            return
        if not force:
            path = await loop.run_in_executor(None, self.cache.lookup, key)
            if path is not None:
                await self._load_submodel(language, key, str(path), generation)
                return
        request = BuildRequest(
            model=settings.model, language=language, key=key, cache_root=str(self.cache.root),
            sparsity=settings.sparsity, pattern=settings.pattern, method=settings.method,
            calibration=calibration_dict(settings, self.root), dtype=settings.dtype,
            device="cpu" if settings.device == "auto" else settings.device, force=force,
            models_cache_dir=settings.cache_dir,
        )
        self.builds.submit(request)

    async def _load_submodel(self, language: str, key: str, path: str, generation: int) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self.set_state("building" if not self.models.subs else self.state, f"loading the {language} sub-model", 100)
        try:
            completer = await loop.run_in_executor(self._background, lambda: load_completer(
                path, dtype=settings.dtype, device=settings.device, sparse=settings.sparse_kernel,
                context_tokens=settings.context_tokens, fim_order=settings.fim_order))
        except SubcoderError as exc:
            # A corrupt or unreadable entry: delete it so the next attempt rebuilds.
            log.warning("sub-model %s did not load (%s): removing the cache entry", key, exc)
            await loop.run_in_executor(None, self.cache.remove, key)
            self._failed(f"the cached {language} sub-model did not load ({exc}); it will be rebuilt")
            return
        if generation != self._generation:
            return
        size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
        self.models.set_sub(language, Served(completer, language, key, size, settings.sparsity))
        if language == self.dominant:
            self.models.set_base(None)  # the base model's memory is no longer needed
        log.info("serving the %s sub-model (%s, %.1f MB, sparse kernel %s)", language, key, size / 2**20,
                 "on" if completer.info and completer.info.sparse_kernel else "off")
        loaded = sorted(self.models.subs, key=lambda lang: (lang != self.dominant, lang))
        self.set_state("ready", f"ready: {', '.join(loaded)}, {settings.sparsity:.0%} sparse", 100)
        await loop.run_in_executor(None, lambda: self.cache.evict(keep=self.models.keys()))

    def _failed(self, text: str) -> None:
        self.show_once("build-failed", text, types.MessageType.Error)
        state = "ready" if self.models.subs else ("base" if self.models.base else "error")
        self.set_state(state, text)

    # ------------------------------------------------------------------ builds

    def _build_event_from_thread(self, event: BuildEvent) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.on_build_event(event)))

    async def on_build_event(self, event: BuildEvent) -> None:
        language = event.request.language
        if event.kind in ("cancelled", "failed") and event.request is not self._progress_request:
            # A build killed to make room for another (settings changed, rebuild): its end is old news.
            log.info("%s build ended (%s): %s", language, event.kind, event.message)
            return
        if event.kind == "started":
            self._progress_request = event.request
            await self._progress_begin(language)
            self.set_state("building", event.message, 0)
        elif event.kind in ("progress", "waiting"):
            self._progress_report(event.message, event.percent)
            if not self.models.subs or language == self.dominant:
                self.set_state("building", f"building {language} sub-model {event.percent}%: {event.message}", event.percent)
        elif event.kind == "done":
            self._progress_end(f"{language} sub-model ready")
            await self._load_submodel(language, event.request.key, event.path, self._generation)
        elif event.kind == "cancelled":
            self._progress_end("cancelled")
            state = "ready" if self.models.subs else ("base" if self.models.base else "idle")
            self.set_state(state, f"{language} build cancelled")
        else:
            self._progress_end("failed")
            self._failed(f"building the {language} sub-model failed: {event.message}")

    async def _progress_begin(self, language: str) -> None:
        caps = self.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return
        token = f"subcoder-build-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
        except Exception:
            log.info("the client did not accept a progress token")
            return
        self._progress_token = token
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=f"subcoder: building the {language} sub-model", cancellable=True, percentage=0))

    def _progress_report(self, message: str, percent: int) -> None:
        if self._progress_token:
            self.work_done_progress.report(self._progress_token, types.WorkDoneProgressReport(
                message=message, percentage=percent, cancellable=True))

    def _progress_end(self, message: str) -> None:
        if self._progress_token:
            token, self._progress_token = self._progress_token, None
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
            self.work_done_progress.tokens.pop(token, None)

    # ------------------------------------------------------------------ completions

    async def complete(self, uri: str, position: types.Position, *, request: str) -> tuple[str, str] | None:
        """(completion text, word before the cursor) for a position, or None. Never raises for bad input."""
        if uri not in self.workspace.text_documents:
            log.info("%s: %s was never opened", request, uri)
            return None
        try:
            document = self.workspace.get_text_document(uri)
            source = document.source
        except Exception:
            log.info("%s: unreadable document %s", request, uri)
            return None
        lines = document.lines
        if position.line < 0 or position.line >= max(len(lines), 1) or position.character < 0:
            log.info("%s: position %d:%d is outside %s", request, position.line, position.character, uri)
            return None
        if "\0" in source[:8192]:
            return None
        offset = document.offset_at_position(position)
        prefix, suffix = source[:offset], source[offset:]
        if len(source) > MAX_DOCUMENT_CHARS:
            prefix, suffix = prefix[-(MAX_DOCUMENT_CHARS // 2):], suffix[: MAX_DOCUMENT_CHARS // 8]
        language = self.language_of(document)
        served = self.models.pick(language, self.dominant, allow_base=self.settings.serve_base_model_while_building)
        self._maybe_queue(language)
        if served is None:
            log.info("%s: no model loaded yet (%s)", request, self.state)
            return None
        flag = threading.Event()
        if (older := self._inflight.get(uri)) is not None:
            older.set()  # a newer request for the same document: the older one stops between tokens
        self._inflight[uri] = flag
        settings = self.settings
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
        except Exception as exc:
            log.exception("%s: completion failed", request)
            self.show_once("completion-error", f"completion failed: {exc}")
            return None
        finally:
            if self._inflight.get(uri) is flag:
                del self._inflight[uri]
        log.info("%s: %s model, %d prompt tokens (%d reused), %d new, %.0f ms (%s; %d decode passes, %.0f ms in the "
                 "model)", request, served.language or "base", result.prompt_tokens, result.reused_tokens,
                 result.new_tokens, (time.perf_counter() - started) * 1000, result.stop_reason, result.passes,
                 result.seconds * 1000)
        if not result.text:
            return None
        return result.text, _WORD.search(prefix.rsplit("\n", 1)[-1]).group(0)

    def language_of(self, document) -> str | None:
        language = LANGUAGE_IDS.get((document.language_id or "").lower())
        if language:
            return language
        from subcoder.pruner.calibration import EXTENSIONS

        suffix = Path(to_fs_path(document.uri) or document.uri).suffix.lower()
        return next((lang for lang, exts in EXTENSIONS.items() if suffix in exts), None)

    def _maybe_queue(self, language: str | None) -> None:
        """Another enabled language than the dominant one: build its sub-model after the current build."""
        if (language is None or language == self.dominant or language not in LANGUAGES
                or language not in self.settings.languages or language in self.models.subs
                or self.dominant is None):
            return
        if language in self._queued:
            return
        self._queued.add(language)
        asyncio.ensure_future(self.ensure_submodel(language))


server = SubcoderServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: SubcoderServer, params: types.InitializeParams) -> None:
    """Settings from `initializationOptions`, the workspace root."""
    ls._loop = asyncio.get_running_loop()
    ls.apply_settings(params.initialization_options, initial=True)
    folders = params.workspace_folders or []
    if folders:
        ls.root = to_fs_path(folders[0].uri)
    elif params.root_uri:
        ls.root = to_fs_path(params.root_uri)
    elif params.root_path:
        ls.root = params.root_path
    log.info("initialize: root %s, settings %s", ls.root, ls.settings)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: SubcoderServer, params: types.InitializedParams) -> None:
    """Pull `workspace/configuration`, then detect and build."""
    caps = ls.client_capabilities.workspace
    if caps and caps.configuration:
        try:
            result = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="subcoder")])), 5)
            if result and isinstance(result[0], dict):
                ls.apply_settings(result[0], initial=True)
        except Exception as exc:
            log.info("workspace/configuration unavailable: %s", exc)
    await ls.refresh()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def on_configuration(ls: SubcoderServer, params: types.DidChangeConfigurationParams) -> None:
    """Live settings: from the notification itself, else pulled again."""
    raw = params.settings
    caps = ls.client_capabilities.workspace
    if not (isinstance(raw, dict) and raw) and caps and caps.configuration:
        try:
            result = await ls.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="subcoder")]))
            raw = result[0] if result else None
        except Exception:
            raw = None
    ls.apply_settings(raw)


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
async def on_folders(ls: SubcoderServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    """A new first folder: detect again."""
    folders = list(ls.workspace.folders.values())
    if folders:
        ls.root = to_fs_path(folders[0].uri)
    await ls.refresh()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: SubcoderServer, params: types.DidOpenTextDocumentParams) -> None:
    """A document in another enabled language: load its cached sub-model (or queue its build) now, so
    that it is ready by the first request rather than after it."""
    try:
        document = ls.workspace.get_text_document(params.text_document.uri)
    except Exception:
        return
    ls._maybe_queue(ls.language_of(document))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: SubcoderServer, params: types.DidCloseTextDocumentParams) -> None:
    """Forget the document's KV cache."""
    for served in (ls.models.base, *ls.models.subs.values()):
        if served is not None:
            served.completer.forget(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(ls: SubcoderServer, params: types.InlineCompletionParams):
    """Ghost text at the cursor."""
    got = await ls.complete(params.text_document.uri, params.position, request="inlineCompletion")
    if got is None:
        return types.InlineCompletionList(items=[])
    text, _ = got
    at = types.Range(start=params.position, end=params.position)
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=at)])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def on_completion(ls: SubcoderServer, params: types.CompletionParams):
    """One item for clients without inline completion: replaces the word before the cursor."""
    got = await ls.complete(params.text_document.uri, params.position, request="completion")
    if got is None:
        return types.CompletionList(is_incomplete=True, items=[])
    text, word = got
    start = types.Position(line=params.position.line, character=params.position.character - len(word))
    label = (word + text).strip().split("\n", 1)[0][:80] or text.strip()[:80]
    item = types.CompletionItem(
        label=label, kind=types.CompletionItemKind.Text, detail="subcoder", filter_text=word + text,
        text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=word + text),
        insert_text_format=types.InsertTextFormat.PlainText, sort_text="0",
    )
    return types.CompletionList(is_incomplete=True, items=[item])


@server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
def on_progress_cancel(ls: SubcoderServer, params: types.WorkDoneProgressCancelParams) -> None:
    """The user cancelled the build from the progress notification."""
    if params.token == ls._progress_token:
        log.info("build cancelled by the user")
        ls.builds.cancel()


@server.command(CMD_REBUILD)
async def rebuild(ls: SubcoderServer, *args) -> dict:
    """Detect again and rebuild the dominant language's sub-model, ignoring the cache."""
    ls.builds.cancel()
    ls._generation += 1
    ls._queued.clear()
    await ls.refresh(force=True)
    return ls.status()


@server.command(CMD_STATUS)
def status(ls: SubcoderServer, *args) -> dict:
    """The status object (same as the `subcoder/status` notification)."""
    return ls.status()


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: SubcoderServer, *args) -> None:
    """Stop a running build: its child process must not outlive the server."""
    ls.builds.shutdown()
