"""subcoder.server.builds on each platform: how the build child is started in a group of its own and how a cancel
ends it with everything it started. Linux runs here; the Windows branches are driven through the `platform`
argument against real processes, with only `taskkill` (which does not exist here) recorded instead of run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from subcoder.server import builds
from subcoder.server.builds import BuildManager, group_options, kill_group

from test_builds import CHILD, Recorder, leftovers, request  # the stand-in child and its helpers

# A child that starts a grandchild and prints its pid: a cancel must end both.
PARENT = '''
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(grandchild.pid, flush=True)
time.sleep(60)
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by its parent) counts as ended
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_child_leads_a_new_group_on_each_platform():
    assert group_options("linux") == {"start_new_session": True}
    assert group_options("darwin") == {"start_new_session": True}
    # Windows: a new process group (no sessions there); the flag's value is the Win32 constant.
    assert group_options("win32") == {"creationflags": 0x00000200}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_posix_kill_ends_the_child_and_what_it_started():
    process = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, **group_options())
    grandchild = int(process.stdout.readline())
    kill_group(process)
    assert process.wait(10) < 0
    assert wait_gone(grandchild), "the grandchild outlived the cancel"


def test_windows_kill_asks_taskkill_for_the_tree_then_ends_the_child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    calls = []
    kill_group(process, "win32", run=lambda argv, **kw: calls.append(argv))
    assert calls == [["taskkill", "/T", "/F", "/PID", str(process.pid)]]
    assert process.wait(10) != 0, "TerminateProcess (Popen.kill) ends the child when taskkill could not"


def test_windows_kill_without_taskkill_still_ends_the_child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    kill_group(process, "win32", run=missing)
    assert process.wait(10) != 0


def test_kill_of_an_ended_child_does_nothing():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    kill_group(process, "win32", run=lambda *a, **kw: pytest.fail("taskkill run for an ended child"))
    kill_group(process, "linux")


def test_cancel_where_os_has_no_killpg(tmp_path, monkeypatch):
    """Windows' `os` has no killpg: a cancel used to raise AttributeError there and leave the build running."""
    monkeypatch.delattr(builds.os, "killpg")
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    recorder = Recorder()
    manager = BuildManager(recorder, command=(sys.executable, str(child)))
    try:
        manager.submit(request(tmp_path, "hang"))
        recorder.until("progress")
        assert manager.cancel() is True
        assert recorder.until("cancelled").request.language == "python"
        assert manager.state == "idle" and leftovers(tmp_path) == []
    finally:
        manager.shutdown()
