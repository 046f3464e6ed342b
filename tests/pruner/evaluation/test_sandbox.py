"""The sandbox that runs generated programs: time limit, memory limit, nothing survives, private temp dir."""

import os
import sys
import time
from pathlib import Path

import pytest

from subcoder.pruner.evaluation.sandbox import Sandbox


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie is dead, only not yet reaped


def test_timeout_kills():
    with Sandbox() as box:
        box.write("loop.py", "while True:\n    pass\n")
        t0 = time.perf_counter()
        res = box.run([sys.executable, "loop.py"], timeout=1.0)
    assert res.timed_out and res.returncode is None and not res.ok
    assert time.perf_counter() - t0 < 10


def test_memory_limit():
    with Sandbox() as box:
        box.write("hog.py", "x = bytearray(2 * 1024 ** 3)\nprint('allocated')\n")
        res = box.run([sys.executable, "hog.py"], timeout=20, memory_mb=256)
    assert res.returncode != 0 and "allocated" not in res.stdout
    assert "MemoryError" in res.stderr


def test_nothing_survives_normal_exit_or_timeout():
    spawn = ("import subprocess, sys, time\n"
             "p = subprocess.Popen(['sleep', '120'])\n"
             "print(p.pid, flush=True)\n"
             "time.sleep(float(sys.argv[1]))\n")
    for wait, timeout in (("0", 10.0), ("60", 1.0)):
        with Sandbox() as box:
            box.write("spawn.py", spawn)
            res = box.run([sys.executable, "spawn.py", wait], timeout=timeout)
        pid = int(res.stdout.split()[0])
        deadline = time.time() + 5
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"grandchild {pid} survived (wait={wait})"


def test_private_temp_dir_removed_and_used_as_home():
    prog = ("import os, tempfile\n"
            "print(os.getcwd()); print(os.environ['HOME']); print(tempfile.gettempdir())\n"
            "open('left-behind.txt', 'w').write('x')\n")
    with Sandbox() as box:
        where = box.dir
        assert (os.stat(where).st_mode & 0o777) == 0o700
        box.write("p.py", prog)
        res = box.run([sys.executable, "p.py"], timeout=10)
        assert res.ok, res.stderr
        cwd, home, tmp = res.stdout.split()
        assert Path(cwd).resolve() == Path(home).resolve() == Path(tmp).resolve() == where.resolve()
        assert (where / "left-behind.txt").is_file()
    assert not where.exists()
    assert not Path("left-behind.txt").exists()


def test_output_is_capped():
    with Sandbox() as box:
        box.write("spam.py", "import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 100)\n")
        res = box.run([sys.executable, "spam.py"], timeout=20)
    assert len(res.stdout) <= 64 * 1024


def test_missing_program_is_reported_not_raised():
    with Sandbox() as box:
        res = box.run(["definitely-not-a-program-xyz"], timeout=5)
    assert res.returncode == 127 and not res.ok
