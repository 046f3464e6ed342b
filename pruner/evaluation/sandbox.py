"""Run untrusted generated programs in child processes with limits and, where Linux allows, in a jail.

Always, on every OS: each run gets a private temporary directory (mode 0700, its working directory,
HOME and TMPDIR), a minimal environment, resource limits set before exec (address space or data
segment, CPU seconds, file size, no core dumps), a wall-clock timeout, and its own process group,
killed with SIGKILL afterwards. Output goes to files in the private directory (capped by the
file-size limit), not to pipes, so a program that prints forever cannot exhaust our memory.

On Linux with unprivileged user namespaces (probed once per process), each run also gets its own
user, mount, PID, network, IPC and UTS namespaces, built by jail.py, which this module starts as a
script per run (`jail_plan` decides what the run sees). Then it is guaranteed that:

- no process outlives the run: the program runs under an init of its own PID namespace, and when
  the program exits, times out or is killed, that init dies and the kernel kills every process in
  the namespace, including ones that called setsid() or double-forked;
- the filesystem is read-only except the run's directory and a fresh, private /tmp and /dev/shm
  (writes elsewhere fail with EROFS; the run's directory keeps its real path);
- the user's home is hidden: $HOME, the account's home from the password database, /root and /home
  are empty read-only directories inside, except what lies under them of the Python running the
  evaluation (sys.prefix, sys.base_prefix), NODE_PATH and PATH (see `jail_plan`), mounted back
  read-only so toolchains installed there (pyenv, nvm, sdkman) still run;
- there is no network: only a loopback interface of the namespace's own, so even 127.0.0.1
  services of the host are unreachable;
- the program runs without capabilities (uid 1000 inside, mapped to the invoking user) and with
  no_new_privs, so it cannot undo the mounts or gain privileges through setuid binaries.

It does not guarantee: secrecy of files outside the hidden homes that the invoking user can read
(they are visible, read-only; running as root, root-owned files stay readable by their owner bits);
a fresh /proc where the container forbids mounting one (then the host's /proc stays visible,
read-only); protection from kernel exploits, fork bombs (no process-count limit) or CPU starvation
of the machine; syscall filtering. It is isolation for HumanEval completions, not a hardened jail.

Without namespaces (macOS, containers that forbid unprivileged user namespaces, kernels older than
5.12, or SUBCODER_SANDBOX=rlimits) it runs with rlimits only, as described in the first paragraph,
and says so once in the log: then a setsid() grandchild can survive, and the program can write
wherever the user can, open sockets and read the user's files.
"""

from __future__ import annotations

import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024  # characters of stdout/stderr kept in the result
FILE_LIMIT = 64 * 1024 * 1024  # bytes any single file may grow to (RLIMIT_FSIZE)
SCRATCH = ("/tmp", "/dev/shm")  # replaced by fresh private tmpfs inside the jail
HOMES = ("/root", "/home")  # hidden besides $HOME and the account's home
JAIL = Path(__file__).resolve().with_name("jail.py")  # run as a script inside the namespaces, never imported


@dataclass
class RunResult:
    returncode: int | None  # None when killed by the timeout
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0


def _limits(memory_bytes: int | None, memory_kind: str, cpu_seconds: int | None):
    def apply():  # runs in the child between fork and exec; the jail's processes inherit it
        os.umask(0o077)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        if memory_bytes:
            which = resource.RLIMIT_AS if memory_kind == "as" else resource.RLIMIT_DATA
            resource.setrlimit(which, (memory_bytes, memory_bytes))
        if cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))

    return apply


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(OUTPUT_CAP).decode("utf-8", "replace")
    except OSError:
        return ""


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- what the jail shows


def _under(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(root)


def _outermost(paths) -> list[str]:
    """The paths none of the others contains, sorted (so parents are mounted before children)."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and _under(p, q) for q in unique)]


def jail_plan(task_dir: str, *, scratch, homes, prefixes, path_dirs) -> dict:
    """The mounts of one run, from resolved absolute paths (pure).

    scratch: directories replaced by fresh writable tmpfs; homes: directories replaced by empty
    read-only ones; prefixes (Python installations, NODE_PATH) and path_dirs (PATH) under either are
    mounted back read-only, a PATH `bin` with its prefix when that lies two or more levels below
    the hidden directory (~/.nvm/versions/node/v20/bin: yes; ~/.local/bin: only bin itself).
    """
    covers = _outermost([p for p in (*scratch, *homes) if p != "/"])
    fresh = [p for p in covers if p in scratch]
    hide = [p for p in covers if p not in scratch]
    keep = []
    for path in (*prefixes, *path_dirs):
        anchors = [c for c in (*scratch, *homes) if _under(path, c) and path != c and c != "/"]
        if not anchors:
            continue  # visible as it is (read-only), or the hidden directory itself: keep it hidden
        parent = PurePosixPath(path).parent
        depth = len(parent.relative_to(max(anchors, key=len)).parts)  # below the innermost home
        if path in path_dirs and PurePosixPath(path).name == "bin" and depth >= 2:
            path = str(parent)
        keep.append(path)
    return {"dir": task_dir, "scratch": fresh, "hide": hide, "keep": _outermost(keep)}


def _plan_for(task_dir, env: dict) -> dict:
    """jail_plan for this machine: resolves the homes, Python prefixes and PATH of `env`."""
    def dirs(paths):
        return [os.path.realpath(p) for p in paths if p and os.path.isabs(p) and os.path.isdir(p)]

    try:
        account_home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        account_home = ""
    homes = (os.environ.get("HOME", ""), account_home, *HOMES)
    # the Python running us (humaneval runs sys.executable) and node's module directories (js-md5)
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                *env.get("NODE_PATH", "").split(os.pathsep))
    return jail_plan(os.path.realpath(task_dir), scratch=dirs(SCRATCH), homes=dirs(homes),
                     prefixes=dirs(prefixes), path_dirs=dirs(env.get("PATH", "").split(os.pathsep)))


def jail_argv(plan: dict, cmd: list[str]) -> list[str]:
    """The command line that runs `cmd` in jail.py under `plan` (-I -S: jail.py needs only the standard library)."""
    items = [f"dir={plan['dir']}", *(f"{kind}={path}" for kind in ("scratch", "hide", "keep") for path in plan[kind])]
    return [sys.executable, "-I", "-S", str(JAIL), *items, "--", *cmd]


# --------------------------------------------------------------------------- jail or rlimits only


@dataclass(frozen=True)
class Isolation:
    namespaces: bool
    why: str  # why not, when namespaces is False


_isolation: Isolation | None = None
_isolation_lock = threading.Lock()


def _probe() -> str:
    """'' when a jail can be built here, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return f"no Linux namespaces on {sys.platform}"
    if os.environ.get("SUBCODER_SANDBOX", "") == "rlimits":
        return "SUBCODER_SANDBOX=rlimits"
    probe_dir = tempfile.mkdtemp(prefix="subcoder-probe-")
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        argv = jail_argv(_plan_for(probe_dir, env), [sys.executable, "-I", "-S", "-c", ""])
        res = subprocess.run(argv, cwd=probe_dir, env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the jail did not start: {exc}"
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    if res.returncode != 0:
        lines = res.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"the jail exited with {res.returncode}"
    return ""


def isolation() -> Isolation:
    """Whether runs are jailed in namespaces here (probed once per process; the fallback is logged once)."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            why = _probe()
            _isolation = Isolation(not why, why)
            if why:
                log.warning("evaluation sandbox: running with rlimits only, no namespaces (%s): "
                            "generated programs can leave processes behind, write files, open "
                            "sockets and read the user's files", why)
        return _isolation


# --------------------------------------------------------------------------- the API


class Sandbox:
    """A private directory plus `run()` for the commands that build and execute one program.

    Use as a context manager: the directory and everything in it are removed on exit.
    """

    def __init__(self, prefix: str = "subcoder-eval-"):
        self.prefix = prefix
        self.dir: Path | None = None

    def __enter__(self) -> "Sandbox":
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        os.chmod(self.dir, 0o700)
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text, encoding="utf-8")
        return path

    def env(self, extra: dict | None = None) -> dict:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "TMPDIR": str(self.dir),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
        }
        env.update(extra or {})
        return env

    def run(
        self,
        cmd: list[str],
        *,
        timeout: float = 10.0,
        memory_mb: int | None = 1024,
        memory_kind: str = "as",
        env: dict | None = None,
        stdin_text: str | None = None,
    ) -> RunResult:
        """Run `cmd` in the private directory (jailed where possible); kill everything it started afterwards."""
        assert self.dir is not None, "use Sandbox as a context manager"
        out_path, err_path = self.dir / ".stdout", self.dir / ".stderr"
        cpu = int(timeout) + 2
        run_env = self.env(env)
        argv = jail_argv(_plan_for(self.dir, run_env), cmd) if isolation().namespaces else cmd
        started = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv, cwd=self.dir, env=run_env, stdout=out, stderr=err,
                    stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                    start_new_session=True,  # own session and process group: killable as one
                    preexec_fn=_limits(memory_mb * 1024 * 1024 if memory_mb else None, memory_kind, cpu),
                    close_fds=True,
                )
            except OSError as exc:
                return RunResult(127, "", f"cannot start {cmd[0]}: {exc}", 0.0)
            timed_out = False
            try:
                proc.communicate(stdin_text.encode() if stdin_text is not None else None, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # the group id is the child's pid (start_new_session); in the jail, killing the group
                # kills the namespace's init, and with it every process of the namespace
                kill_group(proc.pid)
                proc.wait()
        seconds = time.perf_counter() - started
        result = RunResult(None if timed_out else proc.returncode, _read(out_path), _read(err_path), seconds, timed_out)
        out_path.unlink(missing_ok=True)
        err_path.unlink(missing_ok=True)
        return result
