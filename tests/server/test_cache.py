"""subcoder.server.cache: verification, corrupt entries deleted, LRU eviction that spares locked and kept entries."""

from __future__ import annotations

import os
import time

import pytest

from subcoder.server.cache import CacheManager


def _fake_entry(cache: CacheManager, key: str, size: int, age: float) -> None:
    path = cache.entry_path(key)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * size)
    then = time.time() - age
    os.utime(path, (then, then))


def test_missing_and_corrupt_entries(tmp_path):
    cache = CacheManager(tmp_path)
    assert cache.lookup("nope") is None
    _fake_entry(cache, "bad", 10, 0)  # no manifest: fails verification
    assert cache.lookup("bad") is None
    assert not cache.entry_path("bad").exists()


def test_lru_eviction_spares_kept_and_locked(tmp_path):
    mb = 1024 * 1024
    cache = CacheManager(tmp_path, size_limit_mb=18)
    for i, key in enumerate(["old", "older", "oldest", "locked"]):
        _fake_entry(cache, key, 6 * mb, age=100 * (i + 1))
    lock = cache.lock("locked")
    lock.acquire()
    try:
        evicted = cache.evict(keep={"oldest"})
    finally:
        lock.release()
    assert evicted == ["older"]
    assert {e.key for e in cache.entries()} == {"old", "oldest", "locked"}


def test_clean_partial(tmp_path):
    cache = CacheManager(tmp_path)
    for name in (".k.tmp-abc", ".k.old-123", ".other.tmp-abc", "k"):
        (tmp_path / name).mkdir()
    cache.clean_partial("k")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-abc", "k"]


@pytest.mark.parametrize("limit", [16])
def test_touch_orders_eviction(tmp_path, limit):
    mb = 1024 * 1024
    cache = CacheManager(tmp_path, size_limit_mb=limit)
    _fake_entry(cache, "a", 10 * mb, age=200)
    _fake_entry(cache, "b", 10 * mb, age=100)
    cache.touch("a")
    assert cache.evict() == ["b"]
