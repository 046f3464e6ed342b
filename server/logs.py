"""Logging for the server: stderr, a rotating file in the platform's log folder, and `window/logMessage`.

Never stdout: it carries JSON-RPC. The file holds workspace paths, so only its owner may read it: the
file is 0600 (rotated files too) and a log folder the server creates, or its own default one, is 0700.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Callable

from subcoder.pruner import paths

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OURS = ("subcoder.server", "subcoder.pruner")  # the loggers of our modules (their __name__)


def setup(level: int = logging.INFO, log_file: str | None = None) -> Path | None:
    """Send our loggers to stderr and to a rotating file; returns the file's path (None when not writable)."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)  # third-party libraries: warnings only
    for name in OURS:
        logging.getLogger(name).setLevel(level)
    formatter = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler()
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    path = Path(log_file) if log_file else paths.log_dir() / "server.log"
    try:
        _private_folder(path.parent, ours=not log_file)
        handler = PrivateFileHandler(path, maxBytes=2 << 20, backupCount=3, encoding="utf-8")
    except OSError as exc:
        logging.getLogger(__name__).warning("no log file (%s): logging to stderr only", exc)
        return None
    handler.setFormatter(formatter)
    root.addHandler(handler)
    return path


def _private_folder(folder: Path, *, ours: bool) -> None:
    """Create `folder` as 0700; tighten it too when it is subcoder's own log folder (an older version made it
    0755). A folder the user named and that exists already (say /tmp) is theirs to keep as it is."""
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    elif ours:
        os.chmod(folder, 0o700)


class PrivateFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file readable by its owner only, including each new file a rotation opens."""

    def _open(self):
        stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                      opener=lambda name, flags: os.open(name, flags, 0o600))
        os.chmod(self.baseFilename, 0o600)  # a file an older version left world-readable
        return stream


def set_level(level: int) -> None:
    for name in OURS:
        logging.getLogger(name).setLevel(level)


class ClientHandler(logging.Handler):
    """Forwards our records to the client (`window/logMessage`) through a thread-safe `send(level, text)`."""

    def __init__(self, send: Callable[[int, str], None], level: int = logging.INFO):
        super().__init__(level)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(OURS):
            return
        try:
            self.send(record.levelno, f"{record.name}: {record.getMessage()}")
        except Exception:
            pass  # the connection is gone: the file and stderr still have it
