"""A new user's first run in VS Code (code-server 4.100.3 + headless Chromium): the packaged .vsix in
an empty profile, on a PATH whose Python has no subcoder; the extension asks to set up its runtime,
creates the venv in its global storage from that Python, installs torch (the CPU wheel pip finds)
and the wheel bundled in the .vsix, starts the server from it, builds a tiny model's sub-model, and
its ghost text is accepted. tests/e2e/vscode/first_run.js drives the workbench; screenshots,
results.json (checks, timings) and the logs land in artifacts/e2e-vscode/first-run/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1].parent
EXTENSION = REPO / "extension"
HERE = Path(__file__).resolve().parent / "vscode"
ARTIFACTS = REPO / "artifacts" / "e2e-vscode" / "first-run"
TOOLS = Path(os.environ.get("SUBCODER_E2E_TOOLS") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "subcoder-e2e")
# Only the system's directories: no pyenv shim, no project venv, nothing that has subcoder installed.
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node 20 and npm"),
]

USER_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "chat.disableAIFeatures": True,
    # The suggest widget hides ghost text; closing brackets would change what is typed.
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.inlineSuggest.enabled": True,
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "files.autoSave": "off",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"code-server did not answer on port {port} within {timeout:.0f} s")


@pytest.fixture
def scratch():
    """A short path (Chromium's and code-server's sockets live under it; tmp_path is too long for them)."""
    path = Path(tempfile.mkdtemp(prefix="scfr-"))
    yield path
    if not os.environ.get("KEEP_SCRATCH"):
        shutil.rmtree(path, ignore_errors=True)


def test_first_run_from_an_empty_profile(scratch: Path) -> None:
    started = time.monotonic()
    tmp_path = scratch  # everything below lives in the short scratch folder
    # The premise: the Python this PATH offers has no subcoder, so only the runtime the extension
    # makes can serve.
    bare = subprocess.run(["python3", "-c", "import subcoder"], env={"PATH": CLEAN_PATH}, capture_output=True)
    assert bare.returncode != 0, "python3 on the clean PATH already has subcoder installed"

    subprocess.run([str(EXTENSION / "test" / "setup_codeserver.sh"), str(TOOLS)], check=True, capture_output=True, timeout=1800)
    if not (EXTENSION / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXTENSION, check=True, capture_output=True, timeout=600)
    vsix = tmp_path / "subcoder.vsix"
    # Packaging runs vscode:prepublish: the bundle and the subcoder wheel (pip wheel --no-deps) in dist/.
    pack = subprocess.run(["npx", "vsce", "package", "--allow-missing-repository", "-o", str(vsix)], cwd=EXTENSION,
                          capture_output=True, text=True, timeout=600)
    assert pack.returncode == 0, pack.stdout[-3000:] + pack.stderr[-3000:]
    with zipfile.ZipFile(vsix) as z:
        wheels = [n for n in z.namelist() if n.startswith("extension/dist/subcoder-") and n.endswith(".whl")]
    assert len(wheels) == 1, f"the .vsix should carry one subcoder wheel, has {wheels}"

    # The workspace: a Python project, a tiny random model (seconds to build) and a small calibration set.
    workspace = tmp_path / "workspace"
    shutil.copytree(HERE / "workspace", workspace)
    model = tmp_path / "tiny-model"
    subprocess.run([sys.executable, str(HERE / "make_tiny_model.py"), str(model)], check=True, capture_output=True, timeout=300)
    (workspace / ".vscode").mkdir(exist_ok=True)
    (workspace / ".vscode" / "settings.json").write_text(json.dumps({
        "subcoder.model": str(model), "subcoder.cacheDir": str(tmp_path / "cache"), "subcoder.logLevel": "debug",
        "subcoder.calibrationSamples": 4, "subcoder.calibrationSeqLen": 64,
        "subcoder.sparsity": 0.5,  # the first hour includes a sub-model's build (the default, 0, builds none)
    }, indent=2))

    # An empty editor profile: settings only, no extension but the one installed from the .vsix.
    user_data, extensions = tmp_path / "user-data", tmp_path / "extensions"
    (user_data / "User").mkdir(parents=True)
    (user_data / "User" / "settings.json").write_text(json.dumps(USER_SETTINGS, indent=2))
    xdg = tmp_path / "xdg"
    env = {
        "PATH": f"{CLEAN_PATH}:{Path(shutil.which('node')).parent}",
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(xdg / "config"), "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_CACHE_HOME": str(xdg / "cache"), "TMPDIR": str(tmp_path / "tmp"),
        # The compiled sparse kernel is shared with the other tests; sub-models go to cacheDir above.
        "SUBCODER_CACHE_DIR": os.environ.get("SUBCODER_CACHE_DIR") or str(Path.home() / ".cache" / "subcoder"),
        "LANG": "C.UTF-8",
    }
    for key in ("PIP_CONFIG_FILE", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        # The machine's pip configuration is the user's: the runtime installs through it.
        if key in os.environ:
            env[key] = os.environ[key]
    for d in ("home", "tmp"):
        (tmp_path / d).mkdir()
    code_server = TOOLS / "code-server" / "node_modules" / ".bin" / "code-server"
    cs_args = [str(code_server), "--config", str(tmp_path / "cs-config.yaml"), "--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    subprocess.run([*cs_args, "--install-extension", str(vsix)], env=env, check=True, capture_output=True, timeout=300)

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    port = free_port()
    with open(ARTIFACTS / "code-server.log", "w") as cs_log:
        server = subprocess.Popen([*cs_args, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}", "--disable-telemetry",
                                   "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override", str(workspace)],
                                  env=env, stdout=cs_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, 60)
        drive = subprocess.run(
            ["node", str(HERE / "first_run.js")], capture_output=True, text=True, timeout=720,
            env={**env, "CS_URL": f"http://127.0.0.1:{port}/?folder={workspace}", "ARTIFACTS": str(ARTIFACTS),
                 "NODE_PATH": str(TOOLS / "playwright" / "node_modules")})
        (ARTIFACTS / "drive.log").write_text(drive.stdout + drive.stderr)
    finally:
        # The whole group: code-server, extension hosts, the language server and its build child.
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        for pattern, name in (("*Subcoder.log", "Subcoder.log"), ("exthost.log", "exthost.log"), ("remoteexthost.log", "remoteexthost.log")):
            for found in (user_data / "logs").rglob(pattern):
                shutil.copy(found, ARTIFACTS / name)
        storage = user_data / "User" / "globalStorage" / "subcoder.subcoder"
        # The first install's log, kept as .previous by the (cancelled) reinstall at the end.
        for name in ("runtime-install.previous.log", "runtime-install.log"):
            if (storage / name).exists():
                shutil.copy(storage / name, ARTIFACTS / name)

    results = json.loads((ARTIFACTS / "results.json").read_text())
    failed = [r for r in results["results"] if not r["ok"]]
    assert drive.returncode == 0 and not failed, f"{failed}\n{drive.stdout[-5000:]}\n{drive.stderr[-2000:]}"
    # The server ran from the runtime in the extension's storage, nowhere else.
    log = (ARTIFACTS / "Subcoder.log").read_text()
    assert f"{storage}/runtime/bin/python (Subcoder's own runtime)" in log, log[-3000:]
    first_install = (ARTIFACTS / "runtime-install.previous.log").read_text()
    assert "Successfully installed" in first_install and "torch" in first_install and "== ready" in first_install
    assert "== cancelled" in (ARTIFACTS / "runtime-install.log").read_text()
    results["timings"]["wholeTestS"] = round(time.monotonic() - started)
    (ARTIFACTS / "results.json").write_text(json.dumps(results, indent=2))
