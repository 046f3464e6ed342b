"""subcoder.pruner.paths: atomic writes whose failures are one CacheError line, stale temporary folders cleaned,
SIGTERM cleaning up like Ctrl-C."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from subcoder.pruner import paths
from subcoder.pruner.errors import CacheError


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_which_names_are_stale_temps():
    alive = {100}.__contains__
    assert paths.is_stale_temp(".abc.tmp-200-x1y2", 1, alive)  # its writer is gone
    assert not paths.is_stale_temp(".abc.tmp-100-x1y2", 1, alive)  # still being written
    assert paths.is_stale_temp(".abc.tmp-100-x1y2", 2 * 86400, alive)  # a day on: that pid is someone else
    assert paths.is_stale_temp(".abc.old-200", 1, alive) and not paths.is_stale_temp(".abc.old-100", 1, alive)
    assert paths.is_stale_temp(".abc.del-200-1234", 1, alive)
    assert not paths.is_stale_temp(".abc.tmp-x1y2", 60, alive)  # no pid (an older version's): by age only
    assert paths.is_stale_temp(".abc.tmp-x1y2", 3600, alive)
    for name in ("abc", "abc.tmp-200-x", ".locks", ".abc.probe-200-x", ".model.safetensors.tmp"):
        assert not paths.is_stale_temp(name, 10**9, alive), name


def test_clean_stale_temps_keeps_entries_and_writes_in_progress(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".k1.tmp-{dead}-abc").mkdir()
    (tmp_path / f".k1.tmp-{dead}-abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".k2.old-{dead}").mkdir()
    (tmp_path / f".RESULTS.md.tmp-{dead}-q.md").write_text("half")
    mine = tmp_path / f".k3.tmp-{os.getpid()}-abc"
    mine.mkdir()
    old = tmp_path / ".k4.tmp-abcdef"
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "k1").mkdir()
    (tmp_path / ".locks").mkdir()
    removed = paths.clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".k1.tmp-{dead}-abc", f".k2.old-{dead}",
                                                      f".RESULTS.md.tmp-{dead}-q.md", ".k4.tmp-abcdef"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "k1", ".locks"])
    assert paths.clean_stale_temps(tmp_path / "missing") == []


def test_atomic_dir_names_its_writer():
    with pytest.raises(RuntimeError):
        with paths.atomic_dir(Path(os.environ["SUBCODER_CACHE_DIR"]) / "entry") as tmp:
            assert tmp.name.startswith(f".entry.tmp-{os.getpid()}-")
            raise RuntimeError("boom")  # not a write failure: passes through, the folder goes
    assert not tmp.exists()


def test_a_native_writer_past_the_file_size_limit_is_a_cache_error(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CacheError, match="size limit") as caught:
            with paths.atomic_dir(tmp_path / "entry") as tmp:
                save_file({"w": torch.zeros(1 << 16)}, str(tmp / "model.safetensors"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert str(tmp_path / "entry") in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_no_space_left(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(CacheError, match="no space left on the device holding .*disk"):
            with paths.atomic_dir(disk / "entry") as tmp:
                save_file({"w": torch.zeros(1 << 16)}, str(tmp / "model.safetensors"))
        with pytest.raises(CacheError, match="no space left"):
            with paths.atomic_file(disk / "RESULTS.md") as tmp:
                tmp.write_bytes(b"x" * (1 << 17))
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_sigterm_during_a_write_leaves_nothing(tmp_path):
    script = (f"import time, pathlib\nfrom subcoder.pruner import paths\npaths.terminate_as_interrupt()\n"
              f"try:\n    with paths.atomic_dir(pathlib.Path({str(tmp_path / 'entry')!r})) as tmp:\n"
              f"        (tmp / 'half').write_text('x'); print('writing', flush=True); time.sleep(60)\n"
              f"except KeyboardInterrupt:\n    raise SystemExit(130)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == 130
    child.stdout.close()
    assert list(tmp_path.iterdir()) == []
