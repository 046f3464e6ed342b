#!/usr/bin/env bash
# Installs the tools the VS Code end-to-end test needs, from the Debian and npm registries only:
#   - Debian: chromium (headless browser), ripgrep, libkrb5-dev + build-essential (native npm modules)
#   - npm:    code-server 4.100.3 (VS Code 1.100.3; the last release that runs on Node 20),
#             playwright-core (drives the browser; downloads no browser itself),
#             @vscode/vsce 3.9.2 (the .vsix packager; 4.x needs Node 22).
# Idempotent: each step is skipped when its result is already there.
#
# Usage: extension/test/setup_codeserver.sh [TOOLS_DIR]
#   TOOLS_DIR defaults to $SUBCODER_E2E_TOOLS, else ~/.cache/subcoder-e2e.
# Approach adapted from the project's shared editor-e2e notes (code-server + Chromium + playwright-core).
set -euo pipefail

TOOLS=${1:-${SUBCODER_E2E_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/subcoder-e2e}}
CODE_SERVER_VERSION=4.100.3
PLAYWRIGHT_VERSION=1.65.1
VSCE_VERSION=3.9.2
mkdir -p "$TOOLS"/{code-server,playwright,vsce,tmp}
export npm_config_cache="$TOOLS/npm-cache" npm_config_audit=false npm_config_fund=false
say() { echo "[setup_codeserver] $*"; }

# --- Debian packages ---------------------------------------------------------------------------
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v rg >/dev/null || need_apt+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need_apt+=(libkrb5-dev)
command -v g++ >/dev/null || need_apt+=(build-essential)
if ((${#need_apt[@]})); then
  say "apt-get install ${need_apt[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- code-server -------------------------------------------------------------------------------
CS_BIN="$TOOLS/code-server/node_modules/.bin/code-server"
CS_DONE="$TOOLS/code-server/.installed-$CODE_SERVER_VERSION"
if ! [ -f "$CS_DONE" ]; then
  say "npm install code-server@$CODE_SERVER_VERSION (a few minutes: native modules compile)"
  # @vscode/ripgrep's postinstall would fetch a ripgrep binary from the internet; it first looks
  # for the archive in $TMPDIR/vscode-ripgrep-cache-<version>/, so seed that with Debian's rg.
  for ver in 1.15.11 1.15.10 1.15.9; do
    cache="$TOOLS/tmp/vscode-ripgrep-cache-$ver"; mkdir -p "$cache" "$TOOLS/tmp/rg-stage"
    cp "$(command -v rg)" "$TOOLS/tmp/rg-stage/rg"
    tar czf "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$TOOLS/tmp/rg-stage" rg
  done
  cd "$TOOLS/code-server"
  [ -f package.json ] || echo '{"name": "subcoder-e2e-code-server", "private": true}' > package.json
  # unsafe_perm: postinstall scripts run as root; yes: node-pty's postinstall runs `npx node-gyp`;
  # nodedir=/usr: node-gyp uses the installed Node headers instead of downloading them.
  # Recent npm 11 releases skip dependencies' install scripts unless allowed; code-server's
  # postinstall runs a nested `npm install` of VS Code's own modules (native ones included), whose
  # names are not known here, so this pinned install allows them all.
  npm_config_unsafe_perm=true npm_config_yes=true npm_config_nodedir=/usr TMPDIR="$TOOLS/tmp" \
    npm_config_dangerously_allow_all_scripts=true \
    npm install --no-save "code-server@$CODE_SERVER_VERSION"
  # The postinstall's last step links node_modules.asar; without it the install is incomplete.
  [ -e "$TOOLS/code-server/node_modules/code-server/lib/vscode/node_modules.asar" ] \
    || { say "code-server's postinstall did not complete"; exit 1; }
  touch "$CS_DONE"
fi

# --- playwright-core and vsce --------------------------------------------------------------------
if ! [ -d "$TOOLS/playwright/node_modules/playwright-core" ]; then
  say "npm install playwright-core@$PLAYWRIGHT_VERSION"
  cd "$TOOLS/playwright"
  [ -f package.json ] || echo '{"name": "subcoder-e2e-playwright", "private": true}' > package.json
  npm install --no-save "playwright-core@$PLAYWRIGHT_VERSION"
fi
if ! [ -x "$TOOLS/vsce/node_modules/.bin/vsce" ]; then
  say "npm install @vscode/vsce@$VSCE_VERSION"
  cd "$TOOLS/vsce"
  [ -f package.json ] || echo '{"name": "subcoder-e2e-vsce", "private": true}' > package.json
  npm install --no-save --omit=optional "@vscode/vsce@$VSCE_VERSION"
fi

say "ready in $TOOLS"
say "  code-server: $(XDG_CONFIG_HOME="$TOOLS/xdg/config" XDG_DATA_HOME="$TOOLS/xdg/data" \
  "$CS_BIN" --config "$TOOLS/cs-config.yaml" --version 2>/dev/null | tail -1)"
