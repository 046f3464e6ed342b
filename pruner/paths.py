"""Where subcoder keeps things on disk, and how it writes them without leaving half a file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import platformdirs

from .errors import CacheError, SubcoderError

CACHE_ENV = "SUBCODER_CACHE_DIR"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The root cache: an explicit override, else `$SUBCODER_CACHE_DIR`, else the platform's user cache."""
    root = override or os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("subcoder", appauthor=False)
    return Path(root).expanduser()


def models_dir(override=None) -> Path:
    return cache_dir(override) / "models"


def submodels_dir(override=None) -> Path:
    return cache_dir(override) / "submodels"


def log_dir() -> Path:
    return Path(platformdirs.user_log_dir("subcoder", appauthor=False))


def ensure_writable(path: Path) -> Path:
    """Create `path` as a directory or raise CacheError with the reason in one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise CacheError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def write_errno(exc: BaseException) -> int | None:
    """The OS error number behind a failed write: an OSError's own, or the one a native writer puts in its
    message (safetensors raises `SafetensorError('... No space left on device (os error 28)')`)."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def write_failure(exc: BaseException, what: Path) -> CacheError | None:
    """The one-line CacheError for an I/O failure while writing `what`, or None when `exc` is not one."""
    if isinstance(exc, SubcoderError):
        return None
    code = write_errno(exc)
    if code is None:
        return None
    where = Path(what).parent
    if code in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"no space left on the device holding {where} while writing {Path(what).name}")
    if code == errno.EFBIG:
        return CacheError(f"cannot write {what}: a file grew past the size limit of this process or file system")
    return CacheError(f"cannot write {what}: {os.strerror(code)}")


# Temporary names carry the writer's pid, so a leftover whose writer is gone can be told from a write in progress.
_TEMP = re.compile(r"^\..+\.(?:tmp|old|del)-(?:(\d+)(?:-|$))?")
STALE_UNOWNED_S = 600.0  # a leftover that names no pid (an older version's) is stale after this long
STALE_OWNED_S = 86400.0  # ...and one whose pid still runs after a day: that pid is some other process by now


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def is_stale_temp(name: str, age_s: float, alive) -> bool:
    """Whether `name` is a leftover of an interrupted atomic write (`atomic_dir`, `atomic_file`, a removal)."""
    found = _TEMP.match(name)
    if found is None:
        return False
    if found.group(1) is None:
        return age_s > STALE_UNOWNED_S
    return not alive(int(found.group(1))) or age_s > STALE_OWNED_S


def clean_stale_temps(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove what interrupted atomic writes left directly in `folder` (SIGKILL, a power cut: no cleanup ran);
    writes in progress are left alone. Returns what was removed; never raises."""
    removed = []
    now = time.time() if now is None else now
    try:
        children = list(Path(folder).iterdir())
    except OSError:
        return removed
    for child in children:
        try:
            stale = is_stale_temp(child.name, now - child.lstat().st_mtime, pid_alive)
        except OSError:
            continue
        if not stale:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
        if not child.exists():
            removed.append(child)
    return removed


def terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so `finally` blocks and the cleanup of atomic writes run
    (by default SIGTERM ends the process on the spot and leaves `.tmp-` folders behind). Only the main thread
    may set a handler: elsewhere (a test calling the CLI from a thread) this does nothing."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; on success rename it to `target` in one step.

    On any error (or cancellation) the temporary directory is removed, so readers only ever see a
    complete directory or none. An existing `target` is replaced. A failed write (full disk, read-only
    folder, file-size limit) is a CacheError naming the path, whichever library did the writing.
    """
    target = Path(target)
    ensure_writable(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and (error := write_failure(exc, target)) is not None:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary file name beside `path` (same suffix, so writers that go by it still do);
    on success rename it to `path` in one step, on any error remove it. Readers never see half a file."""
    path = Path(path)
    ensure_writable(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and (error := write_failure(exc, path)) is not None:
            raise error from None
        raise


def save_figure(fig, path: Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG through `atomic_file`, and close it (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name and rename, so it is never seen half-written."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
