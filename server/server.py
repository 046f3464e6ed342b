"""The subcoder language server: the server object, its LSP handlers, and conversion to LSP types.

Handlers are short and follow one shape (find the document → ask the session → convert to LSP types);
the work lives in plain modules: `session` (the serving lifecycle: which model answers, builds, loads),
`detect` (languages), `builds` (child-process builds), `cache` (entries, locks, eviction), `modelset`
(which model answers a document) and `subcoder.pruner.engine.completer` (decoding).

Threads: the asyncio loop runs handlers and the session; inference and model loading run on the session's
worker threads; build progress arrives on the build manager's reader threads and is handed to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcServerNotInitialized
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from subcoder.pruner import paths

from . import __version__, logs
from .builds import BuildManager, compute_key
from .cache import CacheManager
from .detect import detect_all
from .modelset import LANGUAGE_IDS, fetch_model, load_completer, pending_download
from .protocol import SubcoderProtocol
from .session import NotStarted, ServingSession
from .settings import Settings, parse_settings, python_log_level

log = logging.getLogger(__name__)

STATUS = "subcoder/status"
CMD_REBUILD = "subcoder.rebuildSubModel"
CMD_STATUS = "subcoder.status"
CMD_CANCEL = "subcoder.cancelBuild"
CMD_ACCEPTED = "subcoder.accepted"  # the command an inline item carries: run by the editor when it is accepted
MAX_DOCUMENT_CHARS = 4 << 20  # beyond this the prompt is built from a window around the cursor
_WORD = re.compile(r"[A-Za-z0-9_$]*$")


def load_served(name: str, settings: Settings, sub: bool):
    """The session's loader: a base model (by name) or a sub-model (by its cache folder), ready to complete."""
    # sparseKernel on means "on the kernel when this machine can run it" (None), never "fail without it"
    # (True): the editor keeps completing on a CPU without AVX2 or another OS, on the dense path.
    return load_completer(name, dtype=settings.dtype, device=settings.device,
                          sparse=None if settings.sparse_kernel else False,
                          context_tokens=settings.context_tokens, cache_dir=None if sub else settings.cache_dir,
                          fim_order=settings.fim_order, options=settings.engine_options(),
                          suffix_tokens=settings.suffix_budget)


def key_of(language: str, settings: Settings, root: str | None) -> str:
    return compute_key(settings.model, language, settings, root, models_cache_dir=settings.cache_dir)


def open_cache(settings: Settings) -> CacheManager:
    # `cacheDir` is the root of subcoder's whole cache (models and sub-models), as for the CLI.
    return CacheManager(paths.submodels_dir(settings.cache_dir or None), settings.cache_size_limit_mb)


class SubcoderServer(LanguageServer):
    def __init__(self):
        super().__init__("subcoder", __version__, protocol_cls=SubcoderProtocol)
        self.roots: list[str] = []  # every workspace folder; the session's root is the first
        self.session = ServingSession(load=load_served, builds=BuildManager, notifier=LspNotifier(self),
                                      key_of=key_of, detect=lambda root: detect_all(self.roots or [root]),
                                      open_cache=open_cache,
                                      pending=lambda s: pending_download(s.model, s.cache_dir),
                                      fetch=lambda s, progress: fetch_model(s.model, s.cache_dir, progress))
        self.exit_code: int | None = None  # set by `exit`: 0 after `shutdown`, else 1 (the protocol says so)
        self.shutdown_requested = False
        self._shown: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_tokens = 0  # new tokens of the last completion, shown by the editor next to its latency

    def status(self) -> dict:
        """The `subcoder.status` command's result: the status notification plus the session's counters."""
        return {**self.session.status(), "kernel": kernel_text(self.session), **self.session.details()}

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

    def apply_settings(self, raw) -> None:
        parsed = parse_settings(raw, self.session.settings)
        for problem in parsed.problems:
            self.show_once("settings:" + problem, problem)
        logs.set_level(python_log_level(parsed.settings.log_level))
        self.session.configure(parsed.settings)

    def language_of(self, document) -> str | None:
        language = LANGUAGE_IDS.get((document.language_id or "").lower())
        if language:
            return language
        from subcoder.pruner.languages import language_of_name

        return language_of_name(Path(to_fs_path(document.uri) or document.uri).name)

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
        # After a final newline (or in an empty document) the cursor sits on a line `lines` does not list.
        last = len(lines) if not source or source.endswith(("\n", "\r")) else len(lines) - 1
        if position.line < 0 or position.line > last or position.character < 0:
            log.info("%s: position %d:%d is outside %s", request, position.line, position.character, uri)
            return None
        if "\0" in source[:8192]:
            return None
        offset = document.offset_at_position(position)
        prefix, suffix = source[:offset], source[offset:]
        if len(source) > MAX_DOCUMENT_CHARS:
            prefix, suffix = prefix[-(MAX_DOCUMENT_CHARS // 2):], suffix[: MAX_DOCUMENT_CHARS // 8]
        result = await self.session.complete(uri, self.language_of(document), prefix, suffix, request=request)
        if result is None or not result.text:
            return None
        self.last_tokens = result.new_tokens
        return result.text, _WORD.search(prefix.rsplit("\n", 1)[-1]).group(0)


class LspNotifier:
    """The session's notifier over LSP: the status notification, messages shown once, work-done progress."""

    def __init__(self, server: SubcoderServer):
        self.server = server
        self.token: str | None = None  # the running build's progress token
        self.creating: str | None = None  # a token the client was asked to create and has not yet confirmed
        self.cancellable = True  # a build can be cancelled; a download cannot

    def status(self, status: dict) -> None:
        self.server.protocol.notify(STATUS, {**status, "kernel": kernel_text(self.server.session)})

    def show(self, kind: str, text: str, *, error: bool = False) -> None:
        self.server.show_once(kind, text, types.MessageType.Error if error else types.MessageType.Warning)

    def can_ask(self) -> bool:
        caps = self.server.client_capabilities.window
        return bool(caps and caps.show_message)

    async def ask(self, text: str, actions: list[str]) -> str | None:
        answer = await self.server.window_show_message_request_async(types.ShowMessageRequestParams(
            type=types.MessageType.Info, message=text, actions=[types.MessageActionItem(title=a) for a in actions]))
        return answer.title if answer else None

    async def begin_progress(self, title: str, cancellable: bool = True) -> None:
        self.cancellable = cancellable
        caps = self.server.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return
        token = f"subcoder-build-{uuid.uuid4().hex[:8]}"
        self.creating = token  # a client may cancel a token as soon as it has one, before its reply reaches us
        try:
            await asyncio.wait_for(self.server.work_done_progress.create_async(token), 5)
        except Exception:
            log.info("the client did not accept a progress token")
            return
        finally:
            self.creating = None
        self.token = token
        self.server.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=title, cancellable=cancellable, percentage=0))

    def report_progress(self, message: str, percent: int) -> None:
        if self.token:
            self.server.work_done_progress.report(self.token, types.WorkDoneProgressReport(
                message=message, percentage=percent, cancellable=self.cancellable))

    def end_progress(self, message: str) -> None:
        if self.token:
            token, self.token = self.token, None
            self.server.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
            self.server.work_done_progress.tokens.pop(token, None)


def kernel_text(session) -> str:
    """"on (why)" or "off (why)": whether the sparse CPU kernel runs the served sub-model, for the status tooltip.
    Reads the kernel's state only where torch is loaded already: a status must never import it."""
    import sys

    if not session.settings.sparse_kernel:
        return "off (subcoder.sparseKernel is off)"
    if not session.settings.prunes:
        return "off (sparsity 0: the dense model is served)"
    subs = list(session.models.subs.values())
    if not subs:
        return "off (the dense base model is served until the sub-model is ready)"
    native = sys.modules.get("subcoder.pruner.kernels.native")
    reason = native.load_reason() if native is not None else ""  # "" until a load asked for the kernel
    if any(getattr(getattr(s.completer, "info", None), "sparse_kernel", False) for s in subs):
        return f"on ({reason or 'sparse CPU kernel'})"
    if reason and native.get_ops() is not None:  # answered from the first load's result, never builds
        return f"off (the kernel runs here ({reason}), but this sub-model's layers were left dense: see the log)"
    return f"off ({reason or 'not available on this machine'})"


server = SubcoderServer()


def _roots(params: types.InitializeParams) -> list[str]:
    """Every workspace folder (multi-root workspaces: languages are detected over all of them)."""
    return [p for f in (params.workspace_folders or []) if (p := to_fs_path(f.uri))]


def _root(params: types.InitializeParams) -> str | None:
    folders = _roots(params)
    if folders:
        return folders[0]
    if params.root_uri:
        return to_fs_path(params.root_uri)
    return params.root_path or None


@server.feature(types.INITIALIZE)
def on_initialize(ls: SubcoderServer, params: types.InitializeParams) -> None:
    """Settings from `initializationOptions`, the workspace root."""
    ls._loop = asyncio.get_running_loop()
    ls.apply_settings(params.initialization_options)
    ls.session.root = _root(params)
    ls.roots = _roots(params)
    log.info("initialize: root %s, settings %s", ls.session.root, ls.session.settings)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: SubcoderServer, params: types.InitializedParams) -> None:
    """Pull `workspace/configuration`, then detect and build."""
    caps = ls.client_capabilities.workspace
    if caps and caps.configuration:
        try:
            result = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="subcoder")])), 5)
            if result and isinstance(result[0], dict):
                ls.apply_settings(result[0])
        except Exception as exc:
            log.info("workspace/configuration unavailable: %s", exc)
    await ls.session.start()


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
    """Folders added or removed: detect again over all of them."""
    folders = list(ls.workspace.folders.values())
    ls.roots = [p for f in folders if (p := to_fs_path(f.uri))]
    await ls.session.set_root(to_fs_path(folders[0].uri) if folders else ls.session.root)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: SubcoderServer, params: types.DidOpenTextDocumentParams) -> None:
    """A document in another enabled language: load its cached sub-model (or queue its build) now, so
    that it is ready by the first request rather than after it."""
    try:
        document = ls.workspace.get_text_document(params.text_document.uri)
    except Exception:
        return
    ls.session.want(ls.language_of(document))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: SubcoderServer, params: types.DidCloseTextDocumentParams) -> None:
    """Forget the document's KV cache."""
    ls.session.forget(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(ls: SubcoderServer, params: types.InlineCompletionParams):
    """Ghost text at the cursor."""
    got = await ls.complete(params.text_document.uri, params.position, request="inlineCompletion")
    if got is None:
        return types.InlineCompletionList(items=[])
    text, _ = got
    at = types.Range(start=params.position, end=params.position)
    # The command carries the item's token count to the editor (its status tooltip); run on accept, it does nothing.
    accepted = types.Command(title="subcoder", command=CMD_ACCEPTED, arguments=[{"tokens": ls.last_tokens}])
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=at, command=accepted)])


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
    notifier = ls.session.notifier
    if params.token in (notifier.token, notifier.creating) and params.token is not None:
        log.info("build cancelled by the user")
        ls.session.cancel_build()


@server.command(CMD_REBUILD)
async def rebuild(ls: SubcoderServer, *args) -> dict:
    """Detect again and rebuild the dominant language's sub-model, ignoring the cache."""
    try:
        await ls.session.rebuild()
    except NotStarted as exc:
        # Before `initialized` the configured model is not known yet: building now would fetch the default.
        raise JsonRpcServerNotInitialized(str(exc)) from None
    return ls.status()


@server.command(CMD_CANCEL)
def cancel_build(ls: SubcoderServer, *args) -> dict:
    """Stop the running build (the editor's Cancel); the model being served stays."""
    log.info("build cancelled by the user")
    ls.session.cancel_build()
    return ls.status()


@server.command(CMD_ACCEPTED)
def accepted(ls: SubcoderServer, *args) -> None:
    """An inline item was accepted (clients that send their items' commands to the server)."""


@server.command(CMD_STATUS)
def status(ls: SubcoderServer, *args) -> dict:
    """The status object (same as the `subcoder/status` notification) and the session's counters."""
    return ls.status()


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: SubcoderServer, *args) -> None:
    """Stop a running build: its child process must not outlive the server."""
    ls.shutdown_requested = True
    ls.session.shutdown()


@server.feature(types.EXIT)
def on_exit(ls: SubcoderServer, *args) -> None:
    """Record the exit status (pygls swallows its own `sys.exit`): 1 when `shutdown` did not come first."""
    ls.exit_code = 0 if ls.shutdown_requested else 1
