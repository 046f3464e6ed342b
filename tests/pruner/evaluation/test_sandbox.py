"""The sandbox that runs generated programs: time and memory limits, nothing survives, a private temp
dir, and where Linux allows it a jail: no writes outside that dir, no network, no view of the home."""

import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from subcoder.pruner.evaluation import jail, sandbox
from subcoder.pruner.evaluation.sandbox import Sandbox, jail_argv, jail_plan

jailed = pytest.mark.skipif(not sandbox.isolation().namespaces,
                            reason=f"no namespaces here: {sandbox.isolation().why}")


def _survivors(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line carries `marker`, seen from this PID namespace."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes() \
                    and "\nState:\tZ" not in (entry / "status").read_text():
                found.append(int(entry.name))
        except OSError:
            pass  # exited while we looked
    return found


def _assert_none_survive(marker: str) -> None:
    deadline = time.time() + 5
    while _survivors(marker) and time.time() < deadline:
        time.sleep(0.05)
    assert not _survivors(marker), f"processes marked {marker} survived the run"


# a sleeper that names itself with a marker, so the test can find it from outside any PID namespace
SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(120)', MARKER]"


def _assert_spawned_sleepers_die(spawn: str, runs: tuple[tuple[str, float], ...]) -> None:
    """Runs `spawn` (code that starts SLEEPERs, which find MARKER defined) once per (wait, timeout): it then
    sleeps `wait` seconds, so a wait under the timeout ends normally and a longer one is killed at the timeout.
    After each run no process it started may be alive."""
    marker = f"subcoder-test-{uuid.uuid4().hex}"
    program = f"import os, subprocess, sys, time\nMARKER = {marker!r}\n{spawn}time.sleep(float(sys.argv[1]))\n"
    for wait, timeout in runs:
        with Sandbox() as box:
            box.write("spawn.py", program)
            box.run([sys.executable, "spawn.py", wait], timeout=timeout)
        _assert_none_survive(marker)


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


def test_exit_codes_and_signals_reach_the_caller():
    with Sandbox() as box:
        box.write("p.py", "import os, signal, sys\n"
                          "os.kill(os.getpid(), signal.SIGSEGV) if sys.argv[1] == 'segv' else sys.exit(3)\n")
        assert box.run([sys.executable, "p.py", "exit"]).returncode == 3
        assert box.run([sys.executable, "p.py", "segv"]).returncode == -11


@pytest.mark.skipif(not shutil.which("dd"), reason="dd not found on PATH")
def test_file_size_limit_kills_with_sigxfsz():
    with Sandbox() as box:  # the default disposition, as for any program started from a shell
        res = box.run(["dd", "if=/dev/zero", "of=big", "bs=1M", "count=100"], timeout=20)
        assert res.returncode == -signal.SIGXFSZ
        assert (box.dir / "big").stat().st_size <= sandbox.FILE_LIMIT


def test_nothing_survives_normal_exit_or_timeout():
    _assert_spawned_sleepers_die(f"subprocess.Popen({SLEEPER})\n", (("0", 10.0), ("60", 1.0)))


@jailed
def test_setsid_and_double_forked_grandchildren_do_not_survive():
    spawn = (f"subprocess.Popen({SLEEPER}, start_new_session=True)  # setsid(): leaves our process group\n"
             "if os.fork() == 0:  # a daemon: fork, setsid, fork again, the middle one exits\n"
             "    os.setsid()\n"
             "    if os.fork() == 0:\n"
             f"        os.execv(sys.executable, {SLEEPER})\n"
             "    os._exit(0)\n")
    _assert_spawned_sleepers_die(spawn, (("0.5", 10.0), ("60", 1.0)))


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


# tries each path given on the command line; prints one line per path: 'wrote' or the error's name
WRITER = ("import sys\n"
          "for path in sys.argv[1:]:\n"
          "    try:\n"
          "        open(path, 'w').write('escaped')\n"
          "        print('wrote')\n"
          "    except OSError as exc:\n"
          "        print(type(exc).__name__)\n")


@jailed
def test_writes_outside_the_run_directory_fail(tmp_path):
    # Beside this file (read-only in the jail, or hidden when the checkout lives under /tmp or a home) and in the
    # host's /tmp (the jail has a fresh one); /var/tmp is on the root filesystem wherever the checkout is.
    here = Path(__file__).resolve().parent
    targets = [here / f".escape-{uuid.uuid4().hex}", tmp_path / "escape.txt", Path(f"/var/tmp/.escape-{uuid.uuid4().hex}")]
    private = f"/tmp/subcoder-private-{uuid.uuid4().hex}"  # the jail's own /tmp: writable, never the host's
    try:
        with Sandbox() as box:
            box.write("w.py", WRITER)
            res = box.run([sys.executable, "w.py", *map(str, targets), private, "inside.txt"])
            assert res.ok, res.stderr
            assert (box.dir / "inside.txt").read_text() == "escaped"  # the run's own directory is writable
        outside, host_tmp, root_fs, private_tmp, inside = res.stdout.split()
        assert "wrote" not in (outside, host_tmp, root_fs), res.stdout  # every write outside the run failed
        assert root_fs == "OSError"  # read-only root filesystem (EROFS)
        assert private_tmp == "wrote" and inside == "wrote"
        assert not any(t.exists() for t in targets)
        assert not Path(private).exists()
    finally:
        for t in (*targets, Path(private)):
            t.unlink(missing_ok=True)


@jailed
def test_no_network_not_even_to_the_hosts_loopback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        prog = ("import socket, sys\n"
                "try:\n"
                "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close()\n"
                "    print('connected')\n"
                "except OSError as exc:\n"
                "    print(type(exc).__name__)\n"
                "own = socket.socket(); own.bind(('127.0.0.1', 0)); own.listen()\n"  # its own loopback works
                "socket.create_connection(own.getsockname(), timeout=3).close(); print('loopback')\n")
        with Sandbox() as box:
            box.write("net.py", prog)
            res = box.run([sys.executable, "net.py", str(port)])
        assert res.ok, res.stderr
        assert res.stdout.split() == ["ConnectionRefusedError", "loopback"]
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever reached the host's listener


@jailed
def test_home_is_hidden_but_the_interpreter_still_runs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret key")
    (home / ".cache" / "subcoder").mkdir(parents=True)
    (home / ".cache" / "subcoder" / "model.txt").write_text("secret model")
    monkeypatch.setenv("HOME", str(home))
    prog = ("import os, sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        print(open(path).read().replace(' ', '-'))\n"
            "    except OSError as exc:\n"
            "        print(type(exc).__name__)\n")
    with Sandbox() as box:
        box.write("r.py", prog)
        res = box.run([sys.executable, "r.py", str(home / ".ssh" / "id_ed25519"),
                       str(home / ".cache" / "subcoder" / "model.txt")])
    assert res.ok, res.stderr
    assert res.stdout.split() == ["FileNotFoundError", "FileNotFoundError"]


def test_plan_hides_homes_and_mounts_toolchains_back():
    plan = jail_plan("/tmp/subcoder-eval-x", scratch=["/tmp", "/dev/shm"],
                     homes=["/home/ann", "/root", "/home", "/tmp/fake-home", "/"],
                     prefixes=["/home/ann/.pyenv/versions/3.11.7", "/work/repo/.venv", "/tmp/clone/.venv"],
                     path_dirs=["/usr/bin", "/home/ann/.local/bin", "/home/ann/.nvm/versions/node/v20/bin",
                                "/home/ann/.pyenv/versions/3.11.7/bin"])
    assert plan == {
        "dir": "/tmp/subcoder-eval-x",
        "scratch": ["/dev/shm", "/tmp"],
        "hide": ["/home", "/root"],  # /home/ann inside /home; never "/"; /tmp/fake-home is under fresh /tmp
        "keep": ["/home/ann/.local/bin",  # not ~/.local: that holds more than programs
                 "/home/ann/.nvm/versions/node/v20",  # a prefix: bin with its lib
                 "/home/ann/.pyenv/versions/3.11.7",  # covers its own bin
                 "/tmp/clone/.venv"],  # a checkout under /tmp still runs its Python
    }


def test_jail_reads_back_the_plan_it_is_given():
    plan = {"dir": "/tmp/a b", "scratch": ["/tmp"], "hide": ["/home", "/root"], "keep": ["/root/x=y"]}
    cmd = ["g++", "--", "dir=main.cpp"]
    argv = jail_argv(plan, cmd)
    assert argv[:4] == [sys.executable, "-I", "-S", str(sandbox.JAIL)]
    assert jail.parse(argv[4:]) == (plan, cmd)


@pytest.mark.parametrize("lang", ["cpp", "javascript"])
def test_toolchains_work_inside(lang):
    tool = {"cpp": "g++", "javascript": "node"}[lang]
    if not shutil.which(tool):
        pytest.skip(f"{tool} not found on PATH")
    with Sandbox() as box:
        if lang == "cpp":
            box.write("main.cpp", "#include <iostream>\nint main(){std::cout << \"hi\\n\"; return 0;}\n")
            comp = box.run(["g++", "-std=c++11", "-O0", "main.cpp", "-o", "main"], timeout=60, memory_mb=2048)
            assert comp.ok, comp.stderr
            res = box.run(["./main"])
        else:
            box.write("main.js", "console.log('hi')\n")
            res = box.run(["node", "main.js"], memory_mb=3072, memory_kind="data")
    assert res.ok and res.stdout == "hi\n", res.stderr


def test_rlimits_only_fallback_is_logged_once_and_keeps_the_limits(monkeypatch, caplog):
    monkeypatch.setenv("SUBCODER_SANDBOX", "rlimits")
    monkeypatch.setattr(sandbox, "_isolation", None)  # probe again, under the setting
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        with Sandbox() as box:
            box.write("loop.py", "while True:\n    pass\n")
            first = box.run([sys.executable, "loop.py"], timeout=1.0)
            second = box.run([sys.executable, "-c", "print('ok')"])
    assert sandbox.isolation() == sandbox.Isolation(False, "SUBCODER_SANDBOX=rlimits")
    assert first.timed_out and second.ok and second.stdout == "ok\n"
    warnings = [r for r in caplog.records if "rlimits only" in r.getMessage()]
    assert len(warnings) == 1


def test_output_is_capped():
    with Sandbox() as box:
        box.write("spam.py", "import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 100)\n")
        res = box.run([sys.executable, "spam.py"], timeout=20)
    assert len(res.stdout) <= 64 * 1024


def test_missing_program_is_reported_not_raised():
    with Sandbox() as box:
        res = box.run(["definitely-not-a-program-xyz"], timeout=5)
    assert res.returncode == 127 and not res.ok
