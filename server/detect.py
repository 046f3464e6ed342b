"""Which languages a workspace is written in, ranked by bytes of real code.

Fast (one `scandir` walk, file contents read only where an extension is ambiguous or missing). What
counts as the user's own code (`.gitignore`, vendored, generated, minified and build folders and
files, the size limit, symbolic links never followed) is `subcoder.pruner.sources`, the filter
workspace calibration uses too; which extension is which language is `subcoder.pruner.languages`.

Rules beyond that table:
- `.h` is C++ when the header has C++ constructs (`class`, `namespace`, `template<`, `std::`) or the
  workspace has C++ sources and no C sources; otherwise C.
- A file without an extension is read for a shebang (`#!/usr/bin/env python3` → python).
- Contents are not read otherwise, so a binary file with a source extension counts (rare; reading
  every file would cost the walk its speed).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from subcoder.pruner import sources
from subcoder.pruner.languages import language_of_interpreter, language_of_name

log = logging.getLogger(__name__)

_CPP_MARKERS = re.compile(rb"\b(class|namespace|template\s*<|std::|public:|private:|virtual)\b|#include\s*<(iostream|string|vector|memory)>")


@dataclass(frozen=True)
class LanguageShare:
    language: str
    files: int
    bytes: int
    share: float  # of all code bytes found

    def to_dict(self) -> dict:
        return {"language": self.language, "files": self.files, "bytes": self.bytes, "share": round(self.share, 4)}


@dataclass(frozen=True)
class Detection:
    root: str
    languages: tuple[LanguageShare, ...]  # largest first
    files_seen: int
    seconds: float
    truncated: bool = False  # stopped at the file or time limit: shares are of what was seen

    def dominant(self, allowed=None) -> str | None:
        """The language with the most code among `allowed` (all when None)."""
        for entry in self.languages:
            if allowed is None or entry.language in allowed:
                return entry.language
        return None

    def summary(self) -> str:
        if not self.languages:
            return f"no source code found in {self.root} ({self.files_seen} files, {self.seconds * 1000:.0f} ms)"
        parts = ", ".join(f"{e.language} {e.share:.0%} ({e.files} files)" for e in self.languages[:5])
        return f"{parts} in {self.root} ({self.files_seen} files, {self.seconds * 1000:.0f} ms)"


def _shebang_language(path: str, root: str) -> str | None:
    head = sources.read_head(path, root, 128)
    if not head or not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("ascii", "replace").split()
    if not words:
        return None
    prog = os.path.basename(words[1] if os.path.basename(words[0]) == "env" and len(words) > 1 else words[0])
    return language_of_interpreter(prog)


def _header_is_cpp(path: str, root: str) -> bool | None:
    head = sources.read_head(path, root, 8192)
    return True if head and _CPP_MARKERS.search(head) else None


def detect(root: str | os.PathLike, *, max_files: int = 200_000, time_limit: float = 5.0) -> Detection:
    """Rank the languages under `root` by bytes of code. Never raises for unreadable files or folders."""
    started = time.perf_counter()
    root = str(Path(root))
    counts: dict[str, list[int]] = {}
    headers: list[tuple[str, int]] = []
    seen = 0
    truncated = False
    for _rel, entry in sources.walk(root):
        seen += 1
        if seen > max_files or time.perf_counter() - started > time_limit:
            truncated = True
            break
        language = _language_of(entry, root)
        if language is None:
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        if not sources.size_ok(size) or sources.skip_name(entry.name):
            continue
        if language == "c/cpp":
            headers.append((entry.path, size))
            continue
        counts.setdefault(language, [0, 0])
        counts[language][0] += 1
        counts[language][1] += size
    _assign_headers(headers, counts, root)
    total = sum(b for _, b in counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    languages = tuple(LanguageShare(lang, files, size, size / total) for lang, (files, size) in ranked)
    result = Detection(root, languages, seen, time.perf_counter() - started, truncated)
    log.info("detected: %s%s", result.summary(), " (truncated)" if truncated else "")
    return result


def _language_of(entry: os.DirEntry, root: str) -> str | None:
    name = entry.name
    dot = name.rfind(".")
    if dot > 0:
        if name[dot:].lower() == ".h":
            return "c/cpp"  # decided by content, in _assign_headers
        return language_of_name(name)
    if dot < 0:
        try:
            if entry.stat(follow_symlinks=False).st_mode & 0o111:
                return _shebang_language(entry.path, root)
        except OSError:
            return None
    return None


def _assign_headers(headers: list[tuple[str, int]], counts: dict[str, list[int]], root: str) -> None:
    """`.h` files: C++ by content, else the workspace's majority between C and C++ (C when tied)."""
    has_cpp = counts.get("cpp", [0, 0])[1] > counts.get("c", [0, 0])[1]
    for path, size in headers[:2000]:  # beyond that, the majority decides without reading
        language = "cpp" if has_cpp or _header_is_cpp(path, root) else "c"
        counts.setdefault(language, [0, 0])
        counts[language][0] += 1
        counts[language][1] += size
    for path, size in headers[2000:]:
        language = "cpp" if has_cpp else "c"
        counts.setdefault(language, [0, 0])
        counts[language][0] += 1
        counts[language][1] += size


def detect_all(roots: list[str | os.PathLike]) -> Detection:
    """`detect` over every folder of a multi-root workspace, merged: the dominant language is the one with
    the most code across all of them. A folder inside another is walked once; the result's root is the first."""
    unique: list[str] = []
    for root in map(lambda r: str(Path(r)), roots):
        if root not in unique and not any(Path(root).is_relative_to(other) for other in unique):
            unique = [u for u in unique if not Path(u).is_relative_to(root)] + [root]
    if len(unique) <= 1:
        return detect(unique[0] if unique else roots[0])
    parts = [detect(root) for root in unique]
    counts: dict[str, list[int]] = {}
    for part in parts:
        for entry in part.languages:
            counts.setdefault(entry.language, [0, 0])
            counts[entry.language][0] += entry.files
            counts[entry.language][1] += entry.bytes
    total = sum(b for _, b in counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return Detection(str(Path(roots[0])), tuple(LanguageShare(lang, f, b, b / total) for lang, (f, b) in ranked),
                     sum(p.files_seen for p in parts), sum(p.seconds for p in parts), any(p.truncated for p in parts))
