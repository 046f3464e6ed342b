"""Where subcoder keeps things on disk, and how it writes them without leaving half a file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

from .errors import CacheError

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


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; on success rename it to `target` in one step.

    On any error (or cancellation) the temporary directory is removed, so readers only ever see a
    complete directory or none. An existing `target` is replaced.
    """
    target = Path(target)
    ensure_writable(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise CacheError(f"no space left on the device holding {target.parent}") from None
        raise CacheError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary file name beside `path` (same suffix, so writers that go by it still do);
    on success rename it to `path` in one step, on any error remove it. Readers never see half a file."""
    path = Path(path)
    ensure_writable(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise CacheError(f"no space left on the device holding {path.parent}") from None
        raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name and rename, so it is never seen half-written."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
