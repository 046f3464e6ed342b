"""Run untrusted generated programs in child processes with limits.

Each run gets a private temporary directory (mode 0700, its working directory, HOME and TMPDIR), a
minimal environment, resource limits set in the child before exec (address space or data segment,
CPU seconds, file size, no core dumps), a wall-clock timeout, and its own session/process group,
which is killed with SIGKILL afterwards whatever happened: nothing it spawned in that group survives.
Output goes to files in the private directory (capped by the file-size limit), not to pipes, so a
program that prints forever cannot exhaust our memory.

This is isolation against accidents (infinite loops, memory blow-ups, stray children, files
littered around), not a security boundary against hostile code: there is no network or syscall
filtering. HumanEval completions are what it is meant for.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_CAP = 64 * 1024  # characters of stdout/stderr kept in the result
FILE_LIMIT = 64 * 1024 * 1024  # bytes any single file may grow to (RLIMIT_FSIZE)


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
    def apply():  # runs in the child between fork and exec
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
        """Run `cmd` in the private directory; kill its whole process group afterwards."""
        assert self.dir is not None, "use Sandbox as a context manager"
        out_path, err_path = self.dir / ".stdout", self.dir / ".stderr"
        cpu = int(timeout) + 2
        started = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    cmd, cwd=self.dir, env=self.env(env), stdout=out, stderr=err,
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
                kill_group(proc.pid)  # the group id is the child's pid (start_new_session)
                proc.wait()
        seconds = time.perf_counter() - started
        result = RunResult(None if timed_out else proc.returncode, _read(out_path), _read(err_path), seconds, timed_out)
        out_path.unlink(missing_ok=True)
        err_path.unlink(missing_ok=True)
        return result
