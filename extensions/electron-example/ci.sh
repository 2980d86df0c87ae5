#!/usr/bin/env bash
# CI for the Electron example: builds @kode-rpc/client when its dist (or its
# node_modules) is missing, then a clean install and the headless tests against the
# real server. Needs kode_rpc importable by python3/python on PATH (or `kode-rpc` on
# PATH, or KODE_RPC_SERVER=/path/to/kode-rpc). No Electron is downloaded or needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)

if [ ! -f ../client/dist/index.js ] || [ ! -d ../client/node_modules/vscode-jsonrpc ]; then
  echo "[electron-example-ci] building ../client"
  (cd ../client && npm ci --no-audit --no-fund && npm run build)
fi
npm ci --no-audit --no-fund
npm test
echo "[electron-example-ci] total $(( $(date +%s) - start ))s"
