"""Calibration sets: token windows of one language's code, from the shipped corpora, the user's
workspace, or a mix of both.

Wanda only needs input-norm statistics, so what matters is that the windows are representative of
the code the sub-model will see. Taking them from the user's own workspace is something an editor
integration can offer that no published pruning tool does.

Sampling is deterministic given the seed; a `CalibrationSet` carries a fingerprint (sha256 of its
token ids and mask) that keys the sub-model cache.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .languages import GENERAL, LANGUAGES, language_of_name
from .sources import read_text, skip_name, walk

log = logging.getLogger(__name__)

SOURCES = ("corpus", "workspace", "mix")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration text comes from and how much of it."""

    source: str = "corpus"  # corpus | workspace | mix
    workspace: Path | None = None
    mix_ratio: float = 0.5  # fraction of windows from the workspace when source == "mix"
    n_samples: int = 32  # windows; 32 x 512 measured enough on the presets (see README)
    seq_len: int = 512
    seed: int = 0
    split: str = "calibration"
    half: int | None = None  # 0 or 1: only one of two disjoint halves of the packages (noise control)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"calibration source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.source != "corpus" and self.workspace is None:
            raise ConfigError(f"calibration source {self.source!r} needs a workspace folder")
        if self.workspace is not None and not Path(self.workspace).is_dir():
            raise ConfigError(f"workspace folder not found: {self.workspace}")
        if not (0.0 <= self.mix_ratio <= 1.0):
            raise ConfigError(f"mix ratio must be in [0, 1], got {self.mix_ratio}")
        if self.n_samples < 1 or self.seq_len < 8:
            raise ConfigError("calibration needs at least 1 sample of at least 8 tokens")
        if self.half not in (None, 0, 1):
            raise ConfigError("half must be 0, 1 or unset")


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # (n_samples, seq_len) long
    attention_mask: torch.Tensor  # (n_samples, seq_len) long, 0 = padding
    fingerprint: str  # sha256 (first 16 hex) of ids and mask: keys the cache
    description: str

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def check_language(language: str, *, allow_general: bool = True) -> str:
    allowed = LANGUAGES + ((GENERAL,) if allow_general else ())
    if language not in allowed:
        raise ConfigError(f"unknown language {language!r}; choose one of {', '.join(allowed)}")
    return language


def corpus_documents(language: str, split: str = "calibration", half: int | None = None) -> list[dict]:
    """Shipped documents of one language (records with package, path, text)."""
    from .corpora import read_documents

    check_language(language)
    docs = read_documents(language, split)
    if half is not None:
        packages = sorted({d["package"] for d in docs})
        chosen = set(packages[half::2])
        docs = [d for d in docs if d["package"] in chosen]
    return docs


def workspace_documents(root: Path, language: str, *, max_files: int = 5000) -> list[dict]:
    """The user's own files of one language, as `subcoder.pruner.sources` filters a workspace: no
    vendored, generated, ignored, oversized or non-UTF-8 files, nothing reached through a symbolic link."""
    check_language(language, allow_general=False)
    docs = []
    for rel, entry in walk(root):
        if language_of_name(entry.name) != language or skip_name(entry.name):
            continue
        text = read_text(entry.path, root)
        if text is None:
            continue
        docs.append({"package": "workspace", "path": rel, "text": text})
        if len(docs) >= max_files:
            break
    return docs


def _windows(tokenizer, docs: list[dict], n: int, seq_len: int, rng: random.Random) -> tuple[list[list[int]], int]:
    """Up to n windows of seq_len tokens from the documents, shuffled, joined by the EOS token.

    Files are short compared with a window, so they are concatenated (as pre-training does) rather
    than sampled one window per file. Returns the windows (the last may be short) and files used.
    """
    order = list(range(len(docs)))
    rng.shuffle(order)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    used = 0
    need = n * seq_len
    for i in order:
        stream.extend(tokenizer(docs[i]["text"], add_special_tokens=False)["input_ids"])
        stream.extend(sep)
        used += 1
        if len(stream) >= need:
            break
    windows = [stream[i:i + seq_len] for i in range(0, min(len(stream), need), seq_len)]
    return [w for w in windows if len(w) >= 8], used


def build_calibration(tokenizer, language: str, spec: CalibrationSpec | None = None) -> CalibrationSet:
    """Deterministic calibration windows for `language` according to `spec`."""
    spec = spec or CalibrationSpec()
    check_language(language, allow_general=spec.source == "corpus")
    rng = random.Random(f"{spec.seed}:{language}:{spec.split}:{spec.half}")
    windows: list[list[int]] = []
    parts = []
    if spec.source in ("workspace", "mix"):
        want = spec.n_samples if spec.source == "workspace" else round(spec.n_samples * spec.mix_ratio)
        docs = workspace_documents(spec.workspace, language)
        ws, used = _windows(tokenizer, docs, want, spec.seq_len, rng) if want else ([], 0)
        windows += ws
        parts.append(f"{len(ws)} windows from {used} workspace files")
        if len(ws) < want:
            log.info("workspace has %d of the %d %s windows asked for; the shipped corpus fills the rest", len(ws), want, language)
    if len(windows) < spec.n_samples:
        docs = corpus_documents(language, spec.split, spec.half)
        rest, used = _windows(tokenizer, docs, spec.n_samples - len(windows), spec.seq_len, rng)
        windows += rest
        packages = len({d["package"] for d in docs})
        parts.append(f"{len(rest)} windows from {used} shipped {language} files ({packages} packages)")
    if not windows:
        raise ConfigError(f"no {language} text to calibrate on")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(windows), spec.seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), spec.seq_len), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, :len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, :len(window)] = 1
    digest = hashlib.sha256(ids.numpy().tobytes() + mask.numpy().tobytes()).hexdigest()[:16]
    description = f"{language}, {len(windows)} x {spec.seq_len} tokens: " + "; ".join(parts)
    return CalibrationSet(ids, mask, digest, description)
