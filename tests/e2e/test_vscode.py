"""VS Code end-to-end: the packaged extension in code-server 4.100.3 + headless Chromium, with the real
server (extension/test/run_e2e.sh, which installs what it needs). Screenshots, results.json and the
extension's log land in artifacts/e2e-vscode/<server>-<model>/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "extension" / "test" / "run_e2e.sh"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node 20 and npm"),
]


def run_e2e(*args: str, timeout: int) -> None:
    result = subprocess.run([str(RUN), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{RUN.name} {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def test_vscode_with_tiny_model():
    """Status building -> ready, ghost text accepted with Tab, rebuild, status picker (tiny random model)."""
    run_e2e("--server", "real", "--model", "tiny", timeout=600)


@pytest.mark.real
def test_vscode_with_smollm2():
    """The same journey with the real smollm2-135m preset."""
    run_e2e("--server", "real", "--model", "smollm2-135m", timeout=1200)
