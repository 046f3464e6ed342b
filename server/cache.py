"""The sub-model cache on disk: lookup with verification, per-entry locks, LRU eviction under a size limit.

Layout under the root (`cacheDir` setting, else `subcoder.pruner.paths.submodels_dir()`):

    <key>/               a complete sub-model (written by `subcoder.pruner.paths.atomic_dir`, so complete or absent)
    .<key>.tmp-*/        a build in progress (or left by a killed one: removed under the entry's lock)
    .<key>.old-*/        the entry a forced rebuild is replacing (left when killed between its two renames)
    .locks/<key>.lock    held by whichever process builds <key>: two servers sharing the cache build it once

Use of an entry is recorded in its folder's modification time, which eviction orders by.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from subcoder.pruner import paths
from subcoder.pruner.errors import CacheError, CorruptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    size: int
    last_used: float


class CacheManager:
    def __init__(self, root: str | os.PathLike | None = None, size_limit_mb: int = 4096):
        self.root = Path(root).expanduser() if root else paths.submodels_dir()
        self.size_limit = int(size_limit_mb) * 1024 * 1024

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> filelock.FileLock:
        """The lock a builder holds while writing `key` (an OS lock: released when its process dies)."""
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(lock_dir / f"{key}.lock"))

    def lookup(self, key: str, *, verify: bool = True) -> Path | None:
        """The entry's folder when present and intact; a corrupt entry is deleted (with a warning) and None returned."""
        path = self.entry_path(key)
        if not path.is_dir():
            log.info("cache miss: %s", key)
            return None
        if verify:
            from subcoder.pruner.storage import verify as verify_submodel

            try:
                verify_submodel(path)
            except CorruptError as exc:
                log.warning("cache entry %s is corrupt (%s): deleting it, it will be rebuilt", key, exc)
                self.remove(key)
                return None
        self.touch(key)
        log.info("cache hit: %s", key)
        return path

    def touch(self, key: str) -> None:
        try:
            os.utime(self.entry_path(key))
        except OSError:
            pass

    def remove(self, key: str) -> None:
        path = self.entry_path(key)
        if not path.exists():
            return
        # Rename first so that no reader sees a half-deleted entry.
        doomed = path.with_name(f".{key}.del-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.replace(path, doomed)
        except OSError as exc:
            raise CacheError(f"cannot remove cache entry {path}: {exc.strerror or exc}") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def clean_partial(self, key: str) -> None:
        """Remove what a killed build of `key` left behind; call only while holding `lock(key)`."""
        for leftover in [*self.root.glob(f".{key}.tmp-*"), *self.root.glob(f".{key}.old-*")]:
            log.info("removing a partial build left behind: %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
                found.append(Entry(child.name, child, size, child.stat().st_mtime))
            except OSError:
                continue
        return found

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Delete least recently used entries until the cache fits its limit; never `keep` or an entry being built."""
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        evicted = []
        for entry in entries:
            if total <= self.size_limit:
                break
            if entry.key in keep:
                continue
            lock = self.lock(entry.key)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # another server is (re)building it
            try:
                self.remove(entry.key)
            except CacheError as exc:
                log.warning("%s", exc)
                continue
            finally:
                lock.release()
            total -= entry.size
            evicted.append(entry.key)
            log.info("cache eviction: %s (%.1f MB) to stay under %d MB", entry.key, entry.size / 2**20,
                     self.size_limit // 2**20)
        return evicted
