"""Run untrusted generated programs in child processes with limits and, where Linux allows, in a jail.

Always, on every OS: each run gets a private temporary directory (mode 0700, its working directory,
HOME and TMPDIR), a minimal environment, resource limits set before exec (address space or data
segment, CPU seconds, file size, no core dumps), a wall-clock timeout, and its own process group,
killed with SIGKILL afterwards. Output goes to files in the private directory (capped by the
file-size limit), not to pipes, so a program that prints forever cannot exhaust our memory.

On Linux with unprivileged user namespaces (probed once per process), each run also gets its own
user, mount, PID, network, IPC and UTS namespaces. Then it is guaranteed that:

- no process outlives the run: the program runs under an init of its own PID namespace, and when
  the program exits, times out or is killed, that init dies and the kernel kills every process in
  the namespace, including ones that called setsid() or double-forked;
- the filesystem is read-only except the run's directory and a fresh, private /tmp and /dev/shm
  (writes elsewhere fail with EROFS; the run's directory keeps its real path);
- the user's home is hidden: $HOME, the account's home from the password database, /root and /home
  are empty read-only directories inside, except the Python running the evaluation (sys.prefix,
  sys.base_prefix) and PATH directories that lie under them, mounted back read-only so toolchains
  installed there (pyenv, nvm, sdkman) still run;
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

import json
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
SETUP_FAILED = 125  # exit code of the jail when it could not be built (the program never ran)


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
    read-only ones; prefixes (Python installations) and path_dirs (PATH entries) under either are
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
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    return jail_plan(os.path.realpath(task_dir), scratch=dirs(SCRATCH), homes=dirs(homes),
                     prefixes=dirs(prefixes), path_dirs=dirs(env.get("PATH", "").split(os.pathsep)))


def _jail_argv(plan: dict, cmd: list[str]) -> list[str]:
    # -I -S: the helper needs only the standard library, and nothing from the user's site
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(plan), "--", *cmd]


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
        argv = _jail_argv(_plan_for(probe_dir, env), [sys.executable, "-I", "-S", "-c", ""])
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
        argv = _jail_argv(_plan_for(self.dir, run_env), cmd) if isolation().namespaces else cmd
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


# --------------------------------------------------------------------------- inside the jail
# Everything below runs in the helper process (`python sandbox.py PLAN -- CMD...`), never in the caller.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD, SYS_MOUNT_SETATTR = 0x1, 0x8000, -100, 442  # 442 on every arch
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
INNER_ID = 1000  # uid/gid inside: not 0, so exec drops every capability of the namespace


class _Libc:
    def __init__(self):
        import ctypes

        self.ct = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = self.ct.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        self._check(self.lib.unshare(self.ct.c_int(flags)), "unshare")

    def mount(self, source, target: str, fstype, flags: int, data=None) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        rc = self.lib.mount(enc(source), enc(target), enc(fstype), self.ct.c_ulong(flags), enc(data))
        self._check(rc, f"mount {fstype or source} on {target}")

    def set_readonly(self, path: str, readonly: bool, recursive: bool = False) -> None:
        ct = self.ct
        attr = (ct.c_uint64 * 4)(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
        rc = self.lib.syscall(ct.c_long(SYS_MOUNT_SETATTR), ct.c_long(AT_FDCWD), ct.c_char_p(path.encode()),
                              ct.c_long(AT_RECURSIVE if recursive else 0), ct.byref(attr), ct.c_long(ct.sizeof(attr)))
        self._check(rc, f"mount_setattr {path}")

    def prctl(self, option: int, value: int) -> None:
        ct = self.ct
        self._check(self.lib.prctl(ct.c_int(option), ct.c_ulong(value), ct.c_ulong(0), ct.c_ulong(0),
                                   ct.c_ulong(0)), "prctl")


def _enter_namespaces(libc: _Libc) -> None:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        os.setgroups([])  # root's supplementary groups would otherwise follow it in, unremovable
    libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{INNER_ID} {uid} 1"), ("gid_map", f"{INNER_ID} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def _build_view(libc: _Libc, plan: dict) -> None:
    """Read-only root, fresh scratch tmpfs, empty homes with toolchains mounted back, the run's directory writable."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    libc.set_readonly("/", True, recursive=True)
    binds = [*plan["keep"], plan["dir"]]
    # open what gets mounted back before the tmpfs hide it; bound later through /proc/self/fd
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in binds}
    for path in plan["scratch"]:
        libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    for path in plan["hide"]:
        libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in binds:
        os.makedirs(path, exist_ok=True)
        libc.mount(f"/proc/self/fd/{fds[path]}", path, None, MS_BIND | MS_REC)  # read-only, like its source
    libc.set_readonly(plan["dir"], False)
    for path in plan["hide"]:
        libc.set_readonly(path, True)
    try:  # a /proc of the new PID namespace; some containers forbid it, then the host's stays (read-only)
        libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _exec_program(libc: _Libc, cmd: list[str], workdir: str):
    try:
        os.chdir(workdir)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"cannot start {cmd[0]}: {exc}\n".encode())
    os._exit(127)


def _init(libc: _Libc, plan: dict, cmd: list[str], alive_r: int, status_w: int) -> int:
    """PID 1 of the namespace: build the view, run the program, reap orphans, report its wait status."""
    import select

    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the helper killed (timeout) -> init dies -> all die
    if select.select([alive_r], [], [], 0)[0]:
        return SETUP_FAILED  # the helper died before the line above: nobody would kill us
    try:
        _build_view(libc, plan)
        _loopback_up()
    except OSError as exc:
        os.write(2, f"sandbox: cannot build the jail: {exc}\n".encode())
        return SETUP_FAILED
    program = os.fork()
    if program == 0:
        _exec_program(libc, cmd, plan["dir"])
    while True:
        pid, status = os.waitpid(-1, 0)  # orphans are reparented to us: reap them on the way
        if pid == program:
            os.write(status_w, str(status).encode())
            return 0  # returning ends the namespace: the kernel kills whatever the program left running


def _jail_main(argv: list[str]) -> int:
    plan, cmd = json.loads(argv[0]), argv[2:]
    libc = _Libc()
    try:
        _enter_namespaces(libc)
    except OSError as exc:
        print(f"sandbox: cannot create namespaces: {exc}", file=sys.stderr)
        return SETUP_FAILED
    alive_r, alive_w = os.pipe()  # init sees EOF once we are gone
    status_r, status_w = os.pipe()
    init = os.fork()  # the first child in the new PID namespace is its init
    if init == 0:
        os.close(alive_w)
        os.close(status_r)
        try:
            code = _init(libc, plan, cmd, alive_r, status_w)
        except BaseException as exc:  # never let a forked child run on into the caller's code
            os.write(2, f"sandbox: the jail's init failed: {exc!r}\n".encode())
            code = SETUP_FAILED
        os._exit(code)
    os.close(alive_r)
    os.close(status_w)
    _, init_status = os.waitpid(init, 0)
    report = os.read(status_r, 32)
    code = os.waitstatus_to_exitcode(int(report) if report else init_status)
    if code < 0:  # the program died of a signal: die of the same one, so our caller sees it too
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(_jail_main(sys.argv[1:]))
