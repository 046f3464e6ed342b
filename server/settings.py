"""The `subcoder` settings section, parsed once per change into a frozen dataclass.

Clients send camelCase keys (`maxNewTokens`) in `initializationOptions` and `workspace/configuration`.
An invalid value falls back to its default and is reported (one line per field), never raised:
a typo in an editor's settings must not stop completions.

`sparseKernel` is the engine option `sparse_kernel` (subcoder.pruner.engine.options): the environment
variable SUBCODER_SPARSE gives its default, a value the client sends wins, and a setting that
overrides the variable says so once. `Settings.engine_options()` is what models are loaded with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from subcoder.pruner.languages import LANGUAGES
from subcoder.pruner.config import VALUE_FORMATS, Pattern, PruneConfig
from subcoder.pruner.engine.options import ENV_NAMES, EngineOptions
from subcoder.pruner.engine.prompt import DEFAULT_FIM_ORDER, FIM_ORDERS
from subcoder.pruner.errors import ConfigError
from subcoder.pruner.presets import DEFAULT_PRESET

from .backend import parse_endpoint

LOG_LEVELS = ("error", "warning", "info", "debug")


def _sparse_kernel_default() -> bool:
    return EngineOptions.from_env().sparse_kernel


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_PRESET  # preset name, HF directory, .gguf file or hub id
    # 0: no pruning, the dense model served on the same engine (nothing is built). The default since the
    # frontier (docs/FRONTIER.md): on the 2-core machine every sub-model of the default preset completed
    # worse than the dense model on the same engine, beyond the intervals (int8 weights on the dense model
    # give the 50% sub-model's speed at nearly dense quality).
    sparsity: float = 0.0
    pattern: str = "unstructured"  # unstructured | 2:4 | 4:8
    # How weights sit in memory: "bf16", or "int8" with per-row scales (a sub-model's kept values, or a
    # dense model's decoder linears): about half the bytes a token reads. Off by default: it changes the
    # answers (within the frontier's intervals for the presets measured; docs/FRONTIER.md).
    values: str = "bf16"
    method: str = "wanda"  # wanda | magnitude
    calibration: str = "corpus"  # corpus | workspace | mix
    mix_ratio: float = 0.5
    languages: tuple[str, ...] = LANGUAGES  # languages a sub-model may be built for
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "auto"  # auto | bfloat16 | float32 (auto: bf16 only where the CPU has it natively)
    max_new_tokens: int = 48
    completion_mode: str = "auto"  # auto | single-line | multi-line
    fim_order: str = DEFAULT_FIM_ORDER  # psm | spm: fill-in-the-middle prompt layout (subcoder.pruner.engine.prompt)
    cache_dir: str = ""  # "" = the platform's user cache
    cache_size_limit_mb: int = 4096
    log_level: str = "info"
    sparse_kernel: bool = field(default_factory=_sparse_kernel_default)  # default: SUBCODER_SPARSE (on unless "0")
    serve_base_model_while_building: bool = True
    allow_download: bool | str = "ask"  # fetching a preset the first time: "ask" (the client asks), true, false
    context_tokens: int = 1024  # prompt budget (prefix + suffix)
    # At most this many tokens of the text after the cursor (0: an eighth of context_tokens). In PSM every
    # request recomputes them, so they are most of a typed request's prompt work (docs/PERFORMANCE.md).
    suffix_tokens: int = 0
    calibration_samples: int = 32  # windows of calibration_seq_len tokens
    calibration_seq_len: int = 512
    # An OpenAI-compatible server's URL (vLLM, llama.cpp): it decodes, nothing is built or loaded here but
    # the model's tokenizer; "" = the local model (subcoder.server.backend)
    backend: str = ""
    backend_timeout: float = 10.0  # seconds a completion request to the backend may take

    @property
    def suffix_budget(self) -> int | None:
        """`suffix_tokens` as the engine takes it (None: its share of the prompt budget)."""
        return self.suffix_tokens or None

    @property
    def prunes(self) -> bool:
        """False at sparsity 0: the dense model is served as it is, on the same engine, and no sub-model is built."""
        return self.sparsity > 0

    def prune_config(self) -> PruneConfig:
        return PruneConfig(sparsity=self.sparsity, pattern=Pattern.parse(self.pattern), method=self.method,
                           values=self.values)

    def build_fields(self) -> tuple:
        """The settings that change which sub-model is built: a change means a new build."""
        return (self.model, self.sparsity, self.pattern, self.method, self.values, self.calibration, self.mix_ratio,
                self.dtype, self.cache_dir, self.calibration_samples, self.calibration_seq_len)

    def engine_options(self, environ=None) -> EngineOptions:
        """The engine's switches: the environment's, with this `sparse_kernel` in place of its variable, and
        `values` for a dense model's linears (a sub-model's format is in its manifest)."""
        return EngineOptions.from_env(environ, sparse_kernel=self.sparse_kernel, dense_values=self.values)

    def model_fields(self) -> tuple:
        """The settings that change how the models are loaded."""
        return (self.model, self.device, self.dtype, self.sparse_kernel, self.values, self.cache_dir, self.fim_order,
                self.context_tokens, self.suffix_tokens, self.backend, self.backend_timeout)


_ACRONYMS = {"mb": "MB"}  # cache_size_limit_mb -> cacheSizeLimitMB, as the extension and docs spell it


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(_ACRONYMS.get(part, part.title()) for part in rest)


def _choice(options):
    def check(value):
        if value not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return value
    return check


def _number(kind, low, high):
    def check(value):
        # JSON gives 1e400 and Infinity as inf, and NaN as nan: int() of those raises, and nan compares false.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"a number between {low} and {high}")
        if not (low <= value <= high):
            raise ValueError(f"between {low} and {high}")
        return kind(value)
    return check


def _languages(value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of language names")
    unknown = [v for v in value if v not in LANGUAGES]
    if unknown:
        raise ValueError(f"languages among {', '.join(LANGUAGES)} (unknown: {', '.join(unknown)})")
    return tuple(value)


def _pattern(value):
    try:
        return str(Pattern.parse(str(value)))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _string(value):
    if not isinstance(value, str):
        raise ValueError("a string")
    return value.strip()


def _allow_download(value):
    if not (isinstance(value, bool) or value == "ask"):
        raise ValueError('true, false or "ask"')
    return value


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _backend(value):
    value = _string(value)
    if value:
        parse_endpoint(value)  # ValueError says what a URL must look like
    return value


_CHECKS = {
    "model": lambda v: _string(v) or DEFAULT_PRESET,
    "sparsity": _number(float, 0.0, 0.99),
    "pattern": _pattern,
    "values": _choice(VALUE_FORMATS),
    "method": _choice(("wanda", "magnitude")),
    "calibration": _choice(("corpus", "workspace", "mix")),
    "mix_ratio": _number(float, 0.0, 1.0),
    "languages": _languages,
    "device": _choice(("cpu", "cuda", "auto")),
    "dtype": _choice(("auto", "bfloat16", "float32")),
    "max_new_tokens": _number(int, 1, 1024),
    "completion_mode": _choice(("auto", "single-line", "multi-line")),
    "fim_order": _choice(FIM_ORDERS),
    "cache_dir": _string,
    "cache_size_limit_mb": _number(int, 16, 1 << 22),
    "log_level": _choice(LOG_LEVELS),
    "sparse_kernel": _boolean,
    "serve_base_model_while_building": _boolean,
    "allow_download": _allow_download,
    "context_tokens": _number(int, 64, 32768),
    "suffix_tokens": _number(int, 0, 32768),
    "calibration_samples": _number(int, 1, 4096),
    "calibration_seq_len": _number(int, 16, 8192),
    "backend": _backend,
    "backend_timeout": _number(float, 0.1, 600.0),
}


@dataclass
class Parsed:
    settings: Settings
    problems: list[str] = field(default_factory=list)


def parse_settings(raw: Any, base: Settings | None = None) -> Parsed:
    """Settings from a client's dict (the `subcoder` section, or an object holding one).

    Keys missing from `raw` keep their value in `base` (defaults when None); unknown keys are ignored.
    """
    base = base or Settings()
    if isinstance(raw, dict) and isinstance(raw.get("subcoder"), dict):
        raw = raw["subcoder"]
    if raw is None:
        return Parsed(base)
    if not isinstance(raw, dict):
        return Parsed(base, [f"subcoder settings must be an object, got {type(raw).__name__}; using defaults"])
    values, problems = {}, []
    for f in dataclasses.fields(Settings):
        key = _camel(f.name)
        if key not in raw and f.name not in raw:
            continue
        value = raw.get(key, raw.get(f.name))
        if value is None:
            continue
        try:
            values[f.name] = _CHECKS[f.name](value)
        except (ValueError, TypeError, OverflowError) as exc:  # one bad value never drops the rest of the update
            problems.append(f"setting subcoder.{key}={value!r} ignored: must be {exc}")
    settings = dataclasses.replace(base, **values)
    if values.get("sparse_kernel") is True and not _sparse_kernel_default():
        problems.append(f"setting subcoder.sparseKernel=true overrides {ENV_NAMES['sparse_kernel']}=0")
    try:
        if settings.prunes:  # at 0 nothing is pruned, so the pattern has nothing to contradict
            settings.prune_config()
    except ConfigError as exc:
        problems.append(f"{exc}; using sparsity/pattern {base.sparsity}/{base.pattern}")
        settings = dataclasses.replace(settings, sparsity=base.sparsity, pattern=base.pattern)
    return Parsed(settings, problems)


def python_log_level(name: str) -> int:
    return {"error": logging.ERROR, "warning": logging.WARNING, "debug": logging.DEBUG}.get(name, logging.INFO)
