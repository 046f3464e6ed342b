"""Calibration sets: token windows of one language's code, from the shipped corpora, the user's
workspace, or a mix of both; for the study also mixed code (four languages in equal shares) and
neutral English prose (public-domain books).

Wanda only needs input-norm statistics, so what matters is that the windows are representative of
the code the sub-model will see. Taking them from the user's own workspace is something an editor
integration can offer that no published pruning tool does.

Two samplers (`CalibrationSpec.sampling`):
- "stream" (the default until the measurement in benchmarks/calibration.py moves it): files shuffled,
  tokenized, joined by EOS and cut into consecutive windows, so 32 x 512 tokens come from a handful
  of files.
- "files": one window per file, files drawn round-robin over the packages (`stratified_order`), so
  no package dominates and the set spans as many files as it has windows. A window starts at a random
  token of its file; a file shorter than a window is joined (EOS between) with the next files drawn,
  so no window is padded while text is left; files are reused, at new offsets, only once every file
  has given a window. Data tables (`sources.data_table`) are left out.
  A fraction `fim` of the windows are laid out as fill-in-the-middle prompts (PSM and SPM in turn,
  the model's own FIM tokens): the layouts the server sends, so the statistics see them.

Sampling is deterministic given the seed; a `CalibrationSet` carries a fingerprint (sha256 of its
token ids and mask) that keys the sub-model cache.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .corpora import LITERATURE, read_documents
from .engine.prompt import fim_token_ids
from .errors import ConfigError
from .languages import GENERAL, LANGUAGES, language_of_name
from .loaded import detect_fim
from .sources import data_table, read_text, skip_name, walk

log = logging.getLogger(__name__)

SOURCES = ("corpus", "workspace", "mix")  # what `subcoder prune --calibration` offers
# For the study's baselines: the four study languages in equal shares, and neutral English prose
# (public-domain books, corpora/SOURCES.md). The language a sub-model is built for only names it.
STUDY_SOURCES = ("mixed-code", LITERATURE)
MIXED_CODE = ("python", "java", "cpp", "javascript")
SAMPLINGS = ("stream", "files")
FIM_ORDERS = ("psm", "spm")  # FIM windows alternate between the two layouts, PSM first
FIM_MIDDLE_MAX = 64  # tokens: about what one completion (a line, or a short block) generates


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
    sampling: str = "stream"  # stream | files (see the module docstring)
    fim: float = 0.0  # fraction of windows laid out as fill-in-the-middle prompts (files sampling only)

    def __post_init__(self):
        if self.source not in SOURCES + STUDY_SOURCES:
            raise ConfigError(f"calibration source must be one of {', '.join(SOURCES + STUDY_SOURCES)}, "
                              f"not {self.source!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"calibration sampling must be one of {', '.join(SAMPLINGS)}, not {self.sampling!r}")
        if not (0.0 <= self.fim <= 1.0):
            raise ConfigError(f"the FIM share of calibration windows must be in [0, 1], got {self.fim}")
        if self.fim and self.sampling != "files":
            raise ConfigError("FIM calibration windows are cut from single files: use sampling 'files'")
        if self.source in ("workspace", "mix") and self.workspace is None:
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
    """Shipped documents of one language, or of the literature corpus (records with package, path, text)."""
    if language != LITERATURE:
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


def _windows(tokenizer, docs: list[dict], n: int, seq_len: int, rng: random.Random) -> tuple[list[list[int]], list[int]]:
    """Up to n windows of seq_len tokens from the documents, shuffled, joined by the EOS token: the
    "stream" sampler. Returns the windows (the last may be short) and the indices of the files used."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    used: list[int] = []
    need = n * seq_len
    for i in order:
        stream.extend(tokenizer(docs[i]["text"], add_special_tokens=False)["input_ids"])
        stream.extend(sep)
        used.append(i)
        if len(stream) >= need:
            break
    windows = [stream[i:i + seq_len] for i in range(0, min(len(stream), need), seq_len)]
    return [w for w in windows if len(w) >= 8], used


# ----------------------------------------------------------------------------------------- files sampler (pure)


def stratified_order(packages: list[str], rng: random.Random) -> list[int]:
    """Indices into `packages` (one entry per file) in drawing order: the packages in a shuffled
    order, each package's files shuffled, then one file per package per round. Every package gives
    a file before any gives its second, so a package with many files cannot crowd out the others."""
    by_package: dict[str, list[int]] = {}
    for i, package in enumerate(packages):
        by_package.setdefault(package, []).append(i)
    names = sorted(by_package)
    rng.shuffle(names)
    queues = []
    for name in names:
        queue = by_package[name][:]
        rng.shuffle(queue)
        queues.append(queue)
    rounds = max((len(q) for q in queues), default=0)
    return [q[r] for r in range(rounds) for q in queues if r < len(q)]


def fim_plan(n: int, share: float) -> list[str | None]:
    """Per window: None (plain text) or the FIM layout; round(n * share) FIM windows spread evenly,
    alternating PSM and SPM."""
    marks = [int((i + 1) * share + 1e-9) > int(i * share + 1e-9) for i in range(n)]
    plan, k = [], 0
    for fim in marks:
        plan.append(FIM_ORDERS[k % 2] if fim else None)
        k += fim
    return plan


def fim_layout(prefix: list[int], middle: list[int], suffix: list[int], fim_ids: tuple[int, int, int],
               order: str) -> list[int]:
    """The ids of a FIM prompt followed by the middle it should produce, in `engine.prompt`'s layouts:
    PSM <P>prefix<S>suffix<M>middle, SPM <S>suffix<P>prefix<M>middle."""
    p, s, m = fim_ids
    if order == "psm":
        return [p, *prefix, s, *suffix, m, *middle]
    return [s, *suffix, p, *prefix, m, *middle]


def fim_window(ids: list[int], seq_len: int, fim_ids: tuple[int, int, int], order: str,
               rng: random.Random) -> list[int]:
    """One FIM window from one file's token ids: a run of seq_len - 3 tokens at a random offset, cut
    into the prefix before a cursor, a middle of 1-64 tokens, and the suffix (up to an eighth of
    the run, as the server's prompts keep an eighth for it); a short file gives a short window."""
    span = seq_len - 3
    start = rng.randrange(len(ids) - span + 1) if len(ids) > span else 0
    run = ids[start:start + span]
    middle = rng.randint(1, max(1, min(FIM_MIDDLE_MAX, len(run) // 8)))
    suffix = rng.randint(0, len(run) // 8)
    cut = max(len(run) - middle - suffix, 0)
    return fim_layout(run[:cut], run[cut:cut + middle], run[cut + middle:], fim_ids, order)


def sample_file_windows(encode: Callable[[int], list[int]], packages: list[str], n: int, seq_len: int,
                        rng: random.Random, *, sep: list[int], plan: list[str | None] | None = None,
                        fim_ids: tuple[int, int, int] | None = None) -> tuple[list[list[int]], set[int]]:
    """Up to n windows, one per file drawn in `stratified_order` (the "files" sampler, on token ids).

    A plain window starts at a random token of a file longer than the window; a shorter file is
    taken whole and followed (after `sep`) by the next files drawn until the window is full. A FIM
    window (`plan[k]` is its layout) comes from one file (`fim_window`). Files are reused, at new
    offsets, only after every file has been drawn. `encode(i)` gives file i's token ids (called once
    per file drawn, so a large workspace is not tokenized whole). Returns the windows and the indices
    of the files used.
    """
    order = stratified_order(packages, rng)
    plan = plan or [None] * n
    windows: list[list[int]] = []
    used: set[int] = set()
    if not order:
        return windows, used
    pos = 0

    cache: dict[int, list[int]] = {}

    def draw() -> list[int]:
        nonlocal pos
        for _ in range(len(order)):  # past empty files
            i = order[pos % len(order)]
            pos += 1
            if i not in cache:
                cache[i] = encode(i)
            if cache[i]:
                used.add(i)
                return cache[i]
        return []

    for k in range(n):
        ids = draw()
        if not ids:
            break  # no file has any text
        if plan[k] is not None:
            windows.append(fim_window(ids, seq_len, fim_ids, plan[k], rng))
            continue
        if len(ids) >= seq_len:
            start = rng.randrange(len(ids) - seq_len + 1)
            windows.append(ids[start:start + seq_len])
            continue
        window = list(ids)
        joined = 1
        while len(window) < seq_len and joined < len(order):  # each file at most once per window
            window += sep + draw()
            joined += 1
        windows.append(window[:seq_len])
    return windows, used


def _fim_ids(tokenizer) -> tuple[int, int, int]:
    ids = fim_token_ids(tokenizer, detect_fim(tokenizer))
    if ids is None:
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ConfigError(f"FIM calibration windows need a model with fill-in-the-middle tokens; {name} has none "
                          "(set the FIM share to 0)")
    return ids


def _draw(tokenizer, docs: list[dict], n: int, spec: CalibrationSpec, rng: random.Random,
          plan: list[str | None], fim_ids, *, code: bool = True) -> tuple[list[list[int]], int, int]:
    """Up to n windows from `docs` with the spec's sampler: (windows, files used, packages used)."""
    if spec.sampling == "stream":
        windows, used = _windows(tokenizer, docs, n, spec.seq_len, rng)
        return windows, len(used), len({docs[i]["package"] for i in used})  # the packages drawn, not offered
    if code:  # not prose: a paragraph of quoted dialogue would look like a table of strings
        docs = [d for d in docs if not data_table(d["text"])]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    windows, used = sample_file_windows(lambda i: tokenizer(docs[i]["text"], add_special_tokens=False)["input_ids"],
                                        [d["package"] for d in docs], n, spec.seq_len, rng, sep=sep, plan=plan,
                                        fim_ids=fim_ids)
    return [w for w in windows if len(w) >= 8], len(used), len({docs[i]["package"] for i in used})


def _part(windows: list[list[int]], plan: list[str | None], files: int, packages: int, what: str,
          spec: CalibrationSpec) -> str:
    if spec.sampling == "stream":
        return f"{len(windows)} windows from {files} {what}"
    fim = sum(p is not None for p in plan[:len(windows)])
    return (f"{len(windows)} windows{f' ({fim} FIM)' if fim else ''} from {files} {what} "
            f"({packages} packages), one per file")


def build_calibration(tokenizer, language: str, spec: CalibrationSpec | None = None) -> CalibrationSet:
    """Deterministic calibration windows for `language` according to `spec`."""
    spec = spec or CalibrationSpec()
    check_language(language, allow_general=spec.source not in ("workspace", "mix"))
    fim_ids = _fim_ids(tokenizer) if spec.fim else None
    plan = fim_plan(spec.n_samples, spec.fim)
    if spec.sampling == "stream" and spec.source in SOURCES:
        rng = random.Random(f"{spec.seed}:{language}:{spec.split}:{spec.half}")  # the cached sub-models' draws
    else:
        data = spec.source if spec.source in STUDY_SOURCES else language
        rng = random.Random(f"{spec.seed}:{data}:{spec.split}:{spec.half}:{spec.sampling}")
    windows: list[list[int]] = []
    parts = []
    if spec.source in ("workspace", "mix"):
        want = spec.n_samples if spec.source == "workspace" else round(spec.n_samples * spec.mix_ratio)
        docs = workspace_documents(spec.workspace, language)
        ws, used, _ = _draw(tokenizer, docs, want, spec, rng, plan, fim_ids) if want else ([], 0, 0)
        windows += ws
        parts.append(_part(ws, plan, used, 1, "workspace files", spec) if spec.sampling == "files"
                     else f"{len(ws)} windows from {used} workspace files")
        if len(ws) < want:
            log.info("workspace has %d of the %d %s windows asked for; the shipped corpus fills the rest", len(ws), want, language)
    if spec.source == "mixed-code":
        counts = [spec.n_samples // len(MIXED_CODE) + (j < spec.n_samples % len(MIXED_CODE)) for j in range(len(MIXED_CODE))]
        for lang, count in zip(MIXED_CODE, counts):
            rest, used, packages = _draw(tokenizer, corpus_documents(lang, spec.split, spec.half), count, spec, rng,
                                         plan[len(windows):], fim_ids)
            parts.append(_part(rest, plan[len(windows):], used, packages, f"shipped {lang} files", spec))
            windows += rest
    elif len(windows) < spec.n_samples:
        corpus = LITERATURE if spec.source == LITERATURE else language
        docs = corpus_documents(corpus, spec.split, spec.half)
        rest, used, packages = _draw(tokenizer, docs, spec.n_samples - len(windows), spec, rng, plan[len(windows):],
                                     fim_ids, code=corpus in LANGUAGES)
        if spec.sampling == "stream":
            parts.append(f"{len(rest)} windows from {used} shipped {corpus} files ({packages} packages)")
        else:
            parts.append(_part(rest, plan[len(windows):], used, packages, f"shipped {corpus} files", spec))
        windows += rest
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
