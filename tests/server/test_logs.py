"""subcoder.server.logs: our records reach the file; the file and its folder are private (they hold workspace paths)."""

from __future__ import annotations

import logging
import stat

import pytest

from subcoder.server import logs


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[len(handlers):]:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_new_log_folder_and_file_are_private_and_get_our_records(tmp_path, restore_logging):
    path = logs.setup(logging.INFO, str(tmp_path / "logs" / "server.log"))
    logging.getLogger("subcoder.server.session").info("serving /home/someone/secret-project")
    logging.getLogger("transformers").info("third-party chatter")
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    text = path.read_text()
    assert "secret-project" in text and "chatter" not in text


def test_an_existing_world_readable_file_is_tightened_but_a_users_folder_is_left_alone(tmp_path, restore_logging):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    old = folder / "server.log"
    old.write_text("from an older version\n")
    old.chmod(0o644)
    logs.setup(logging.INFO, str(old))
    assert mode(old) == 0o600 and mode(folder) == 0o755


def test_rotated_files_stay_private(tmp_path):
    handler = logs.PrivateFileHandler(tmp_path / "server.log", maxBytes=100, backupCount=2, encoding="utf-8")
    try:
        for i in range(10):
            handler.emit(logging.LogRecord("subcoder.server", logging.INFO, __file__, 1, "x" * 60, None, None))
    finally:
        handler.close()
    files = sorted(tmp_path.glob("server.log*"))
    assert len(files) == 3 and all(mode(f) == 0o600 for f in files)
