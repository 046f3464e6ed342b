"""The VS Code extension's tests: its unit tests (node:test), and end to end, the packaged extension
in code-server 4.100.3 + headless Chromium with the real server (extension/test/run_e2e.sh, which
installs what it needs). Screenshots, results.json and the extension's log land in
artifacts/e2e-vscode/<server>-<model>/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "extension" / "test" / "run_e2e.sh"

EXTENSION = REPO / "extension"
needs_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node 20 and npm")


def run_e2e(*args: str, timeout: int) -> None:
    result = subprocess.run([str(RUN), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{RUN.name} {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


@needs_node
@pytest.mark.slow
def test_extension_unit_tests():
    """The extension's own unit tests (node:test; no editor): interpreter choice, settings, status text, bundle."""
    if not (EXTENSION / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXTENSION, check=True, capture_output=True, timeout=600)
    result = subprocess.run(["npm", "test"], cwd=EXTENSION, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@needs_node
@pytest.mark.e2e
@pytest.mark.slow
def test_vscode_with_tiny_model():
    """Status building -> ready, ghost text accepted with Tab, rebuild, status picker (tiny random model)."""
    run_e2e("--server", "real", "--model", "tiny", timeout=600)


@needs_node
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.real
def test_vscode_with_smollm2():
    """The same journey with the real smollm2-135m preset."""
    run_e2e("--server", "real", "--model", "smollm2-135m", timeout=1200)
