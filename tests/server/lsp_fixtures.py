"""What the server tests and the editor end-to-end tests share: a tiny model folder, fixture
workspaces, and settings that make a build take a second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tinymodel import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-c", "import sys; from subcoder.server.main import run; sys.exit(run(sys.argv[1:]))"]
WAIT_S = 300.0  # seconds a test waits for a server state before it fails

PY_FILES = {
    "app/main.py": "import os\n\n\ndef main():\n    print(os.getcwd())\n\n\nif __name__ == '__main__':\n    main()\n",
    "app/util.py": "".join(f"def helper_{i}(x, y):\n    total = x + y * {i}\n    return total\n\n\n" for i in range(60)),
    "scripts/tool": "#!/usr/bin/env python3\nprint('tool')\n",
    "web/index.js": "function hi() { return 1; }\n",
    "node_modules/big/index.js": "x = 1;\n" * 20000,
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if text.startswith("#!"):
            path.chmod(0o755)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-fim", fim=True)


@pytest.fixture
def py_workspace(tmp_path) -> Path:
    return write_tree(tmp_path / "ws", PY_FILES)


def fast_settings(model: Path, **extra) -> dict:
    """Settings that make a tiny model's build take a second: workspace calibration, few short windows.
    Sparsity 0.5 named: the server's default (0) builds nothing, and these tests are about the builds."""
    return {"model": str(model), "sparsity": 0.5, "calibration": "workspace", "calibrationSamples": 4, "calibrationSeqLen": 64,
            "dtype": "float32", "maxNewTokens": 8, "sparseKernel": False, **extra}
