"""Which languages a workspace is written in, ranked by bytes of real code.

Fast (one `scandir` walk, file contents read only where an extension is ambiguous or missing),
honours `.gitignore` files at any depth, and skips what is not the user's own code: vendored,
generated, minified, binary and build folders and files.

Rules beyond the extension table (`subcoder.pruner.calibration.EXTENSIONS`, shared with workspace calibration):
- `.h` is C++ when the header has C++ constructs (`class`, `namespace`, `template<`, `std::`) or the
  workspace has C++ sources and no C sources; otherwise C.
- A file without an extension is read for a shebang (`#!/usr/bin/env python3` → python).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from subcoder.pruner.calibration import EXTENSIONS, SKIP_DIRS

log = logging.getLogger(__name__)

# Languages detected for the report even though no sub-model can be built for them.
EXTRA_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "c": (".c",),
    "csharp": (".cs",),
    "ruby": (".rb",),
    "php": (".php",),
    "kotlin": (".kt", ".kts"),
    "swift": (".swift",),
    "scala": (".scala",),
    "shell": (".sh", ".bash"),
    "lua": (".lua",),
}
_BY_EXT: dict[str, str] = {}
for _lang, _exts in {**EXTRA_EXTENSIONS, **EXTENSIONS}.items():
    for _ext in _exts:
        _BY_EXT[_ext] = _lang
_BY_EXT[".h"] = "c/cpp"  # decided by content, below

SHEBANGS = {"python": "python", "node": "javascript", "deno": "typescript", "bash": "shell", "sh": "shell",
            "zsh": "shell", "ruby": "ruby", "php": "php", "lua": "lua", "ts-node": "typescript"}
# Beyond pruner's SKIP_DIRS: more folders of generated or third-party code.
MORE_SKIP_DIRS = frozenset({"coverage", "htmlcov", "_build", "deps", "Pods", "DerivedData", "external",
                            "generated", "gen", "node_modules", ".eggs", "eggs", "obj"})
GENERATED = ("*.min.js", "*.min.mjs", "*.bundle.js", "*-bundle.js", "*.pb.go", "*_pb2.py", "*_pb2_grpc.py",
             "*.pb.h", "*.pb.cc", "*.generated.*", "*.d.ts", "*.map")
MAX_FILE_BYTES = 1 << 20  # bigger "source" files are generated or data
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


@dataclass
class _Ignore:
    """The patterns of one .gitignore, relative to the folder holding it."""

    base: str  # folder of the .gitignore, relative to the root, "" for the root
    rules: list[tuple[re.Pattern, bool, bool]] = field(default_factory=list)  # (regex, negated, dir_only)

    @classmethod
    def read(cls, path: Path, base: str) -> "_Ignore":
        ignore = cls(base)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ignore
        for line in lines:
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line.lstrip("/")[:-1] or line.startswith("/")
            line = line.lstrip("/")
            if not line:
                continue
            ignore.rules.append((_glob_regex(line, anchored), negated, dir_only))
        return ignore

    def match(self, rel: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included by `!`, None: no rule applies. `rel` is from the root."""
        if self.base:
            if not rel.startswith(self.base + "/"):
                return None
            rel = rel[len(self.base) + 1:]
        verdict = None
        for regex, negated, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            if regex.match(rel):
                verdict = not negated
        return verdict


def _glob_regex(pattern: str, anchored: bool) -> re.Pattern:
    """gitignore glob → regex over a '/'-separated path: `*` stays within a folder, `**` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("[" + pattern[i + 1:end].replace("!", "^", 1) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    lead = "" if anchored else "(?:.*/)?"
    return re.compile(lead + "".join(out) + "$")


def _shebang_language(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("ascii", "replace").split()
    if not words:
        return None
    prog = os.path.basename(words[1] if os.path.basename(words[0]) == "env" and len(words) > 1 else words[0])
    prog = re.sub(r"[\d.]+$", "", prog)  # python3.11 -> python
    return SHEBANGS.get(prog)


def _header_is_cpp(path: str) -> bool | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError:
        return None
    return True if _CPP_MARKERS.search(head) else None


def detect(root: str | os.PathLike, *, max_files: int = 200_000, time_limit: float = 5.0) -> Detection:
    """Rank the languages under `root` by bytes of code. Never raises for unreadable files or folders."""
    started = time.perf_counter()
    root = str(Path(root))
    counts: dict[str, list[int]] = {}
    headers: list[tuple[str, int]] = []
    seen = 0
    truncated = False
    skip = SKIP_DIRS | MORE_SKIP_DIRS
    stack: list[tuple[str, str, list[_Ignore]]] = [(root, "", [])]
    while stack:
        folder, rel_folder, ignores = stack.pop()
        gitignore = os.path.join(folder, ".gitignore")
        if os.path.isfile(gitignore):
            ignores = ignores + [_Ignore.read(Path(gitignore), rel_folder)]
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            rel = f"{rel_folder}/{name}" if rel_folder else name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue  # symlinks, sockets, devices
            except OSError:
                continue
            if _ignored(ignores, rel, is_dir):
                continue
            if is_dir:
                if name in skip or name.startswith(".") or name.startswith("cmake-build"):
                    continue
                stack.append((entry.path, rel, ignores))
                continue
            seen += 1
            if seen > max_files or time.perf_counter() - started > time_limit:
                truncated = True
                stack.clear()
                break
            language = _language_of(entry, name)
            if language is None:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            if size == 0 or size > MAX_FILE_BYTES or any(fnmatch.fnmatchcase(name, g) for g in GENERATED):
                continue
            if language == "c/cpp":
                headers.append((entry.path, size))
                continue
            counts.setdefault(language, [0, 0])
            counts[language][0] += 1
            counts[language][1] += size
    _assign_headers(headers, counts)
    total = sum(b for _, b in counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    languages = tuple(LanguageShare(lang, files, size, size / total) for lang, (files, size) in ranked)
    result = Detection(root, languages, seen, time.perf_counter() - started, truncated)
    log.info("detected: %s%s", result.summary(), " (truncated)" if truncated else "")
    return result


def _ignored(ignores: list[_Ignore], rel: str, is_dir: bool) -> bool:
    verdict = None
    for ignore in ignores:  # deeper .gitignore files come later and win
        got = ignore.match(rel, is_dir)
        if got is not None:
            verdict = got
    return bool(verdict)


def _language_of(entry: os.DirEntry, name: str) -> str | None:
    dot = name.rfind(".")
    if dot > 0:
        return _BY_EXT.get(name[dot:].lower() if name[dot:] != ".C" else ".cpp")
    if dot < 0:
        try:
            if entry.stat(follow_symlinks=False).st_mode & 0o111:
                return _shebang_language(entry.path)
        except OSError:
            return None
    return None


def _assign_headers(headers: list[tuple[str, int]], counts: dict[str, list[int]]) -> None:
    """`.h` files: C++ by content, else the workspace's majority between C and C++ (C when tied)."""
    has_cpp = counts.get("cpp", [0, 0])[1] > counts.get("c", [0, 0])[1]
    for path, size in headers[:2000]:  # beyond that, the majority decides without reading
        language = "cpp" if has_cpp or _header_is_cpp(path) else "c"
        counts.setdefault(language, [0, 0])
        counts[language][0] += 1
        counts[language][1] += size
    for path, size in headers[2000:]:
        language = "cpp" if has_cpp else "c"
        counts.setdefault(language, [0, 0])
        counts[language][0] += 1
        counts[language][1] += size
