"""Which files are someone's own source code: one filter for the server's language detection,
workspace calibration and the corpus builder.

Decisions are pure functions of a '/'-separated path, a size and a text (`skip_folder`, `skip_name`,
`skip_path`, `size_ok`, `acceptable_text`), parametrised by `SourceRules`: the defaults describe a
user's workspace, the corpus builder passes the rules its shipped corpora were cut with. The disk is
touched only by `walk` (folders, `.gitignore` files) and `read_head` / `read_text` (file contents).

Security: a workspace is untrusted input (a cloned repository may contain `leak.py -> ~/.ssh/id_rsa`).
`walk` never follows a symbolic link, to a file or to a folder, and the readers open with O_NOFOLLOW,
accept only regular files and check that the real path lies inside the workspace root, so no byte from
outside the root reaches calibration text or detection counts. A link that points inside the root
loses nothing: its target is reached (and read once) under its own path, unless the rules skip that
path, in which case the link should not bring it back either.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

# One size limit for the corpora, calibration and detection. The corpora were cut at 256 KiB, so the
# sub-models were measured on files of at most that size; detection used 1 MiB, but hand-written
# files between the two are rare while generated ones (amalgamations, parser tables, embedded data)
# are common, and they would tilt a workspace's language shares toward whatever generated them.
MAX_FILE_BYTES = 256 * 1024

# Folders that hold someone else's code, generated code or build output (compared case-sensitively).
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", ".venv", "venv", "env", "__pycache__", "dist", "build", "target",
    "out", "vendor", "third_party", "third-party", ".tox", ".mypy_cache", ".pytest_cache", ".next", ".cache",
    "site-packages", "bower_components", ".gradle", ".idea", ".vscode", "coverage", "htmlcov", "_build", "deps",
    "Pods", "DerivedData", "external", "generated", "gen", ".eggs", "eggs", "obj",
})
# Generated, minified or declaration-only files, by name.
GENERATED = ("*.min.js", "*.min.mjs", "*.bundle.js", "*-bundle.js", "*.pb.go", "*_pb2.py", "*_pb2_grpc.py",
             "*.pb.h", "*.pb.cc", "*.generated.*", "*.d.ts", "*.d.mts", "*.d.cts", "*.map")
# A file most of whose lines hold nothing but literals (strings, numbers) and punctuation is a data
# table, not code: rich's `_emoji_codes.py` (every line `"name": "<emoji>",`, 137 KB), its colour
# palettes, a CRC lookup table. Measured on the 1,646 files of the shipped code corpora: those three
# are at 0.82-1.0; the next are fmt's `format-inl.h` (0.50: a cache of powers of ten inside real code)
# and a 1 KB re-export list (0.57), which stay; the median file is at 0.0 (list in corpora/SOURCES.md).
MAX_LITERAL_LINES = 0.6
MIN_TABLE_LINES = 20  # a short file of constants is code someone wrote, not a table


@dataclass(frozen=True)
class SourceRules:
    """What the filter leaves out. The defaults are a workspace's: the user's tests count, build output does not."""

    skip_dirs: frozenset[str] = SKIP_DIRS
    skip_dir_prefixes: tuple[str, ...] = ("cmake-build",)  # CLion's cmake-build-debug, -release, ...
    skip_dir_pattern: re.Pattern | None = None  # searched in a folder's name
    skip_hidden_dirs: bool = True  # .git, .idea, .direnv, ...: tool state, not code
    fold_case: bool = False  # compare folder names in lower case (skip_dirs then in lower case too)
    skip_names: tuple[str, ...] = GENERATED  # fnmatch globs on the file name, case-sensitive
    skip_name_pattern: re.Pattern | None = None  # searched in the file name
    min_bytes: int = 1
    max_bytes: int = MAX_FILE_BYTES
    max_mean_line: float | None = None  # characters; a longer mean marks minified code or data
    max_line: int | None = None
    generated_markers: tuple[str, ...] = ()  # lower-case phrases that mark a generated file in its first 1 KiB
    max_literal_lines: float | None = MAX_LITERAL_LINES  # share of literal-only lines that marks a data table


WORKSPACE = SourceRules()


# ----------------------------------------------------------------------------------------- pure decisions


def skip_folder(name: str, rules: SourceRules = WORKSPACE) -> bool:
    if rules.skip_hidden_dirs and name.startswith("."):
        return True
    if rules.fold_case:
        name = name.lower()
    return (name in rules.skip_dirs or name.startswith(rules.skip_dir_prefixes)
            or (rules.skip_dir_pattern is not None and rules.skip_dir_pattern.search(name) is not None))


def skip_name(name: str, rules: SourceRules = WORKSPACE) -> bool:
    return (any(fnmatch.fnmatchcase(name, glob) for glob in rules.skip_names)
            or (rules.skip_name_pattern is not None and rules.skip_name_pattern.search(name) is not None))


def skip_path(rel: str, rules: SourceRules = WORKSPACE) -> bool:
    """A '/'-separated path under some root: skipped by one of its folders or by its file name."""
    *folders, name = rel.split("/")
    return any(skip_folder(f, rules) for f in folders) or skip_name(name, rules)


def size_ok(size: int, rules: SourceRules = WORKSPACE) -> bool:
    return rules.min_bytes <= size <= rules.max_bytes


def acceptable_text(text: str, rules: SourceRules = WORKSPACE) -> bool:
    """The size (UTF-8 bytes), no NUL, not blank, the line-length and generated-marker limits, no data table."""
    if not size_ok(len(text.encode("utf-8")), rules) or "\0" in text or not text.strip():
        return False
    if rules.max_mean_line is not None or rules.max_line is not None:
        lines = text.split("\n")
        if rules.max_mean_line is not None and len(text) / len(lines) > rules.max_mean_line:
            return False
        if rules.max_line is not None and max(len(line) for line in lines) > rules.max_line:
            return False
    head = text[:1024].lower()
    if any(marker in head for marker in rules.generated_markers):
        return False
    return rules.max_literal_lines is None or not data_table(text, rules.max_literal_lines)


_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`\n]*`'
                      r"|\b(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)[uUlLfF]*\b")
_PUNCTUATION = re.compile(r"[\s,;:()\[\]{}=>+\-*|&.]*")


def literal_lines(text: str) -> tuple[int, int]:
    """(lines holding only literals and punctuation, non-blank lines): `"a": 1,` and `0x1F, 0x2E,`
    are literal-only, `x = f(1)` and comments are not."""
    literal = total = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += 1
        rest, found = _LITERAL.subn("", line)
        literal += bool(found) and _PUNCTUATION.fullmatch(rest) is not None
    return literal, total


def data_table(text: str, threshold: float = MAX_LITERAL_LINES) -> bool:
    """True for a generated table or embedded data: at least `threshold` of its (20 or more) non-blank
    lines are literal-only."""
    literal, total = literal_lines(text)
    return total >= MIN_TABLE_LINES and literal >= threshold * total


# ----------------------------------------------------------------------------------------- .gitignore


@dataclass
class GitIgnore:
    """The patterns of one .gitignore, relative to the folder holding it."""

    base: str  # folder of the .gitignore, relative to the root, "" for the root
    rules: list[tuple[re.Pattern, bool, bool]] = field(default_factory=list)  # (regex, negated, dir_only)

    @classmethod
    def parse(cls, text: str, base: str) -> "GitIgnore":
        ignore = cls(base)
        for line in text.splitlines():
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


def ignored(ignores: list[GitIgnore], rel: str, is_dir: bool) -> bool:
    verdict = None
    for ignore in ignores:  # deeper .gitignore files come later and win
        got = ignore.match(rel, is_dir)
        if got is not None:
            verdict = got
    return bool(verdict)


# ----------------------------------------------------------------------------------------- disk


def walk(root: str | os.PathLike, rules: SourceRules = WORKSPACE) -> Iterator[tuple[str, os.DirEntry]]:
    """(path relative to `root`, entry) of every regular file that the folder rules and the `.gitignore`
    files leave, in a fixed order: a folder's files by name, then its subfolders by name, depth first.

    Symbolic links are neither yielded nor descended (see the module docstring); file-level rules
    (`skip_name`, `size_ok`) are the caller's, so a caller that wants one language pays no stat for others.
    Unreadable folders are passed over silently.
    """
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str, list[GitIgnore]]] = [(real_root, "", [])]
    while stack:
        folder, rel_folder, ignores = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        gitignore = next((e for e in entries if e.name == ".gitignore"), None)
        if gitignore is not None and gitignore.is_file(follow_symlinks=False):
            data = _read(gitignore.path, real_root, 1 << 20)
            if data is not None:
                ignores = ignores + [GitIgnore.parse(data.decode("utf-8", "replace"), rel_folder)]
        folders = []
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue  # symbolic links, sockets, devices
            except OSError:
                continue
            if ignored(ignores, rel, is_dir):
                continue
            if is_dir:
                if not skip_folder(entry.name, rules):
                    folders.append((entry.path, rel, ignores))
            else:
                yield rel, entry
        stack.extend(reversed(folders))


def read_head(path: str | os.PathLike, root: str | os.PathLike, n: int) -> bytes | None:
    """Up to the first `n` bytes of a regular file inside `root`; None for anything else or on error."""
    return _read(path, os.path.realpath(root), n)


def read_text(path: str | os.PathLike, root: str | os.PathLike, rules: SourceRules = WORKSPACE) -> str | None:
    """The UTF-8 text of a regular file inside `root` when it passes `acceptable_text`, else None."""
    data = _read(path, os.path.realpath(root), rules.max_bytes + 1)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if acceptable_text(text, rules) else None


def _read(path, real_root: str, n: int) -> bytes | None:
    # O_NOFOLLOW refuses a link in the last component (one swapped in after the walk looked);
    # realpath catches a folder on the way that became a link; O_NONBLOCK keeps a FIFO from hanging us.
    if not _within(os.path.realpath(path), real_root):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(n)
    except OSError:
        return None
    finally:
        os.close(fd)


def _within(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
