"""The editor tests reuse the server tests' tiny model and workspace fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from lsp_fixtures import py_workspace, tiny_model_dir  # noqa: E402,F401
