"""Which model answers a document: the language's sub-model, else the dominant language's, else the base.

Models are loaded in a background thread; swapping one in is a single dict assignment under a lock,
so a completion in flight keeps the model it started with. `pending_download` and `fetch_model` say
whether the configured model must be fetched first and fetch it, so the session can ask before.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from subcoder.pruner import presets
from subcoder.pruner.languages import LSP_IDS
from subcoder.pruner.memory import release_memory
from subcoder.pruner.progress import ProgressFn
from subcoder.pruner.units import human_bytes

from subcoder.pruner.engine.options import EngineOptions
from subcoder.pruner.engine.prompt import DEFAULT_FIM_ORDER

from .editor import EditorCompleter

log = logging.getLogger(__name__)

# LSP language ids → subcoder's language names (the registry's table).
LANGUAGE_IDS = LSP_IDS

# How a question to the user spells a language (the registry's names are lower case identifiers).
_DISPLAY = {"python": "Python", "java": "Java", "cpp": "C++", "javascript": "JavaScript",
            "typescript": "TypeScript", "go": "Go", "rust": "Rust"}


def display_name(language: str | None) -> str:
    return _DISPLAY.get(language or "", language or "code")


@dataclass(frozen=True)
class Download:
    """A model that is not local yet: what the consent question and the progress name."""

    model: str  # the setting's value (a preset name)
    title: str  # the model's own name
    size_bytes: int  # what the download costs

    @property
    def size(self) -> str:
        return human_bytes(self.size_bytes)


def pending_download(model: str, cache_dir: str = "") -> Download | None:
    """The download loading `model` would start, or None when its files are local (or it is no preset).

    Only presets are known to need one; a hub id is the user's explicit choice of a remote model.
    """
    preset = presets.PRESETS.get(model)
    if preset is None or presets.is_cached(model, cache_dir or None):
        return None
    return Download(model, preset.title, preset.gguf_bytes)


def fetch_model(model: str, cache_dir: str = "", progress: ProgressFn | None = None) -> None:
    """Download and convert a preset into the model cache (stages `download` and `convert`); raises SubcoderError."""
    presets.resolve_model(model, cache_dir=cache_dir or None, progress=progress)


@dataclass
class Served:
    completer: EditorCompleter
    language: str | None  # the sub-model's language; None for the base model
    key: str = ""
    size_bytes: int = 0
    sparsity: float | None = None


class ModelSet:
    def __init__(self):
        self._lock = threading.Lock()
        self.base: Served | None = None
        self.subs: dict[str, Served] = {}

    def set_base(self, served: Served | None) -> None:
        with self._lock:
            self.base = served

    def set_sub(self, language: str, served: Served) -> None:
        with self._lock:
            self.subs[language] = served

    def clear(self) -> None:
        with self._lock:
            self.base, self.subs = None, {}

    def resident(self) -> list[str]:
        """The models in memory: "base" and the sub-models' languages."""
        with self._lock:
            return (["base"] if self.base else []) + sorted(self.subs)

    def keys(self) -> set[str]:
        with self._lock:
            return {s.key for s in self.subs.values() if s.key}

    def pick(self, language: str | None, dominant: str | None, *, allow_base: bool = True) -> Served | None:
        with self._lock:
            if language in self.subs:
                return self.subs[language]
            if dominant in self.subs:
                return self.subs[dominant]
            if self.subs:
                return next(iter(self.subs.values()))
            return self.base if allow_base else None


def load_completer(name: str, *, dtype: str, device: str, sparse: bool | None, context_tokens: int, cache_dir=None,
                   fim_order: str = DEFAULT_FIM_ORDER, options: EngineOptions | None = None,
                   suffix_tokens: int | None = None) -> EditorCompleter:
    """Load a model (preset, folder, sub-model folder) and wrap it for completion; raises SubcoderError.

    `sparse` means what it means to `load_model` (None: on the kernel where this machine can run it; False:
    dense). `options`: the engine's switches (None: from the environment), for the loader and the engine alike.
    """
    import torch

    from subcoder.pruner.engine.completer import Completer
    from subcoder.pruner.loader import load_model

    options = EngineOptions.from_env() if options is None else options
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(name, dtype=dtype, device=device, sparse=sparse, options=options,
                        cache_dir=cache_dir or None)
    engine = Completer(loaded, context_tokens=context_tokens, fim_order=fim_order, options=options,
                       suffix_tokens=suffix_tokens)
    completer = EditorCompleter(engine)
    # Here, on the loader thread, so that the first request does not pay the model's first-call costs.
    if options.warm_up:
        try:
            log.info("warmed up %s in %.2f s", name, completer.warm_up())
        except Exception:  # noqa: BLE001 - a failed warm-up only costs the first request its speed
            log.warning("warming up %s failed; serving it anyway", name, exc_info=True)
    release_memory()
    return completer
