#!/usr/bin/env bash
# End-to-end test of the extension in a real VS Code: code-server 4.100.3 in headless Chromium,
# driven by playwright-core (tests/e2e/vscode/drive.js), with the packaged .vsix installed and
# `subcoder serve` behind it. Installs what is missing first (extension/test/setup_codeserver.sh).
#
# Usage: extension/test/run_e2e.sh [--server real|fake] [--model tiny|PRESET|PATH] [--artifacts DIR]
#   --server real  the project's server from this checkout (default)
#            fake  extension/test/fixtures/fake_server (canned answers, no model)
#   --model  tiny  a tiny random model made on the spot (default; seconds to build)
#            smollm2-135m (or any preset, model dir, .gguf): the real thing (minutes)
#   --artifacts    screenshots, results.json and logs (default: <repo>/artifacts/e2e-vscode/<server>-<model>)
# Environment: SUBCODER_E2E_TOOLS (tools cache, see setup_codeserver.sh), SUBCODER_E2E_PYTHON
# (interpreter for the server; default <repo>/.venv/bin/python, else python3), PORT (8080),
# SUBCODER_E2E_CALIBRATION (calibration windows x tokens; 4x64 for tiny, else 8x128),
# BUILD_TIMEOUT_S (longest wait for one build), KEEP_SCRATCH=1 (keep the scratch folder).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
EXT=$(dirname "$HERE")
REPO=$(dirname "$EXT")
SERVER=real MODEL=tiny ARTIFACTS=
while (($#)); do
  case $1 in
    --server) SERVER=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --artifacts) ARTIFACTS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case $SERVER in real|fake) ;; *) echo "--server real|fake" >&2; exit 2 ;; esac
TOOLS=${SUBCODER_E2E_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/subcoder-e2e}
ARTIFACTS=${ARTIFACTS:-$REPO/artifacts/e2e-vscode/$SERVER-$(basename "$MODEL")}
PY=${SUBCODER_E2E_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3); fi
fi
say() { echo "[run_e2e] $*"; }

# 1. Tools, extension build, .vsix.
"$REPO/extension/test/setup_codeserver.sh" "$TOOLS"
cd "$EXT"
[ -d node_modules ] || npm ci --no-audit --no-fund
npx vsce package --allow-missing-repository -o "$EXT/subcoder.vsix" >/dev/null
say "packaged $EXT/subcoder.vsix"

# 2. Scratch: a copy of the fixture workspace with its settings, a fresh cache, editor profile.
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/subcoder-e2e.XXXXXX")
rm -rf "$ARTIFACTS"; mkdir -p "$ARTIFACTS"
WS=$SCRATCH/workspace
cp -r "$REPO/tests/e2e/vscode/workspace" "$WS"
if [ "$SERVER" = fake ]; then
  export PYTHONPATH=$EXT/test/fixtures/fake_server
  MODEL_SETTING=fake
else
  # This checkout's server, whatever is installed in the interpreter.
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  if [ "$MODEL" = tiny ]; then
    MODEL_SETTING=$SCRATCH/tiny-model
    "$PY" "$REPO/tests/e2e/vscode/make_tiny_model.py" "$MODEL_SETTING"
  else
    MODEL_SETTING=$MODEL
  fi
fi
mkdir -p "$WS/.vscode"
# Calibration set size (windows x tokens): small, so that a build (done twice) fits a CI budget;
# the server's defaults (32 x 512) take ~20 min for smollm2-135m on 2 cores.
CALIBRATION=${SUBCODER_E2E_CALIBRATION:-$([ "$MODEL" = tiny ] && echo 4x64 || echo 8x128)}
"$PY" - "$WS/.vscode/settings.json" "$PY" "$MODEL_SETTING" "$SCRATCH/cache" "$CALIBRATION" <<'PYEOF'
import json, sys
out, python, model, cache, calibration = sys.argv[1:]
samples, seq_len = (int(n) for n in calibration.split("x"))
settings = {"subcoder.python": python, "subcoder.model": model, "subcoder.cacheDir": cache,
            "subcoder.logLevel": "debug", "subcoder.calibrationSamples": samples,
            # the journey builds a sub-model (progress, rebuild): the default, 0, serves the dense model
            "subcoder.sparsity": 0.5,
            "subcoder.calibrationSeqLen": seq_len,
            # The journey is not about the first-download question: a preset missing from the scratch cache
            # is fetched without asking (the consent flow has its own tests in tests/server/test_first_run.py).
            "subcoder.allowDownload": True}
json.dump(settings, open(out, "w"), indent=2)
PYEOF

# Sub-models are built into the scratch cache (subcoder.cacheDir) so that every run sees a build;
# converted preset models and the compiled sparse kernel stay in the user's subcoder cache.
export SUBCODER_CACHE_DIR=${SUBCODER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/subcoder}
export XDG_CONFIG_HOME=$SCRATCH/xdg/config XDG_DATA_HOME=$SCRATCH/xdg/data XDG_CACHE_HOME=$SCRATCH/xdg/cache
export TMPDIR=$SCRATCH/tmp
mkdir -p "$TMPDIR" "$SCRATCH/user-data/User"
# Profile: no suggest widget (it hides ghost text), no trust prompt, no welcome page, no network.
cat > "$SCRATCH/user-data/User/settings.json" <<'JSON'
{
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false,
  "security.workspace.trust.enabled": false,
  "telemetry.telemetryLevel": "off",
  "update.mode": "none",
  "extensions.autoCheckUpdates": false,
  "extensions.autoUpdate": false,
  "chat.disableAIFeatures": true,
  "editor.quickSuggestions": { "other": "off", "comments": "off", "strings": "off" },
  "editor.suggestOnTriggerCharacters": false,
  "editor.inlineSuggest.enabled": true,
  "editor.autoClosingBrackets": "never",
  "editor.autoClosingQuotes": "never",
  "files.autoSave": "off"
}
JSON
CS=$TOOLS/code-server/node_modules/.bin/code-server
CS_ARGS=(--config "$SCRATCH/cs-config.yaml" --user-data-dir "$SCRATCH/user-data" --extensions-dir "$SCRATCH/extensions")
"$CS" "${CS_ARGS[@]}" --install-extension "$EXT/subcoder.vsix" >/dev/null
say "installed the extension into a fresh profile"

# 3. code-server in its own process group (the whole group is stopped at exit: server, extension
#    hosts, the language server, file watchers).
PORT=${PORT:-8080}
setsid "$CS" "${CS_ARGS[@]}" --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry \
  --disable-update-check --disable-workspace-trust --disable-getting-started-override \
  "$WS" >"$ARTIFACTS/code-server.log" 2>&1 &
CS_PID=$!
cleanup() {
  kill -- -"$CS_PID" 2>/dev/null || true
  sleep 1
  # The extension's log channel and the extension host's log, for the artefacts.
  find "$SCRATCH/user-data/logs" \( -name 'Subcoder.log' -o -name 'exthost.log' -o -name 'remoteexthost.log' \) \
    -exec cp {} "$ARTIFACTS/" \; 2>/dev/null || true
  [ -n "${KEEP_SCRATCH:-}" ] || rm -rf "$SCRATCH"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.5
done
say "code-server on port $PORT ($SERVER server, model $MODEL)"

# 4. The journey.
# The tiny model builds in seconds, but the first build of a fresh machine also compiles the C++ kernel
# (about a minute alone; over two minutes on 2 AVX2 cores beside code-server and Chromium).
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-$([ "$MODEL" = tiny ] && echo 300 || echo 480)}
set +e
CS_URL="http://127.0.0.1:$PORT/?folder=$WS" ARTIFACTS=$ARTIFACTS BUILD_TIMEOUT_S=$BUILD_TIMEOUT_S \
  NODE_PATH=$TOOLS/playwright/node_modules node "$REPO/tests/e2e/vscode/drive.js"
rc=$?
set -e
say "exit status $rc; artefacts in $ARTIFACTS"
exit $rc
