#!/usr/bin/env bash
# End-to-end test of kode.nvim in headless Neovim against the real server.
#   test/run.sh [path/to/nvim]        (default: nvim on PATH; or $NVIM_BIN)
# Needs a Python with kode_rpc importable: $KODE_NVIM_PY, else python3/python.
# Exits non-zero on failure, and on a hang (timeout 120 s).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLUGIN="$(dirname "$HERE")"
NVIM="${1:-${NVIM_BIN:-nvim}}"
PY="${KODE_NVIM_PY:-$(command -v python3 || command -v python)}"

if ! command -v "$NVIM" >/dev/null 2>&1; then
  echo "run.sh: nvim not found: $NVIM" >&2
  exit 2
fi
if ! "$PY" -c 'import kode_rpc' 2>/dev/null; then
  echo "run.sh: $PY cannot import kode_rpc (install the package first)" >&2
  exit 2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/kode-nvim.XXXXXX")"
cleanup() { if [ -n "${KODE_NVIM_KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

echo "== $("$NVIM" --version | head -n1) ($NVIM)"
export KODE_NVIM_TMP="$TMP" KODE_NVIM_PY="$PY" KODE_NVIM_RESULT="$TMP/result.txt"
# Keep the server's logs and config out of the user's dirs.
export KODE_LOG_DIR="$TMP/log" KODE_CONFIG_DIR="$TMP/config"
export XDG_STATE_HOME="$TMP/state" XDG_DATA_HOME="$TMP/xdgdata" XDG_CACHE_HOME="$TMP/cache"
unset KODE_PROVIDER KODE_MODEL KODE_BASE_URL KODE_NVIM_UNSET_KEY

cd "$PLUGIN"
timeout -k 5 "${KODE_NVIM_TIMEOUT:-120}" "$NVIM" --headless -u NONE -i NONE -n \
  -c "set rtp+=$PLUGIN" \
  -c "luafile $HERE/e2e.lua" </dev/null
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "run.sh: nvim hung (killed after ${KODE_NVIM_TIMEOUT:-120} s)" >&2
  [ -f "$TMP/result.txt" ] && sed 's/^/  | /' "$TMP/result.txt" >&2
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "run.sh: FAILED (nvim exit $rc)" >&2
  exit 1
fi
if ! grep -q '^PASS' "$TMP/result.txt" 2>/dev/null; then
  echo "run.sh: nvim exited 0 but the test did not report PASS" >&2
  exit 1
fi
echo "run.sh: PASS ($NVIM)"
