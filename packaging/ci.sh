#!/usr/bin/env bash
# Build the one-dir frozen binary and run tests/test_frozen.py against it.
#
#   bash packaging/ci.sh            (from any directory; uses the active Python/venv)
#
# Installs PyInstaller into the active environment if it is missing. Builds into a
# temporary directory (removed at the end), so a developer's dist/ is left alone.
# Exits non-zero if the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYINSTALLER_REQ='pyinstaller>=6.10,<7'
PY="${PYTHON:-python}"

if ! "$PY" -c 'import PyInstaller' 2>/dev/null; then
  echo "packaging/ci.sh: installing $PYINSTALLER_REQ"
  "$PY" -m pip install --quiet "$PYINSTALLER_REQ"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kode-frozen-ci.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$("$PY" -c 'import time; print(time.time())')
"$PY" packaging/build.py --dist "$tmp/dist" --work "$tmp/work"
end=$("$PY" -c 'import time; print(time.time())')

case "$(uname -s)" in
  MINGW*|MSYS*|CYGWIN*) exe=".exe" ;;
  *) exe="" ;;
esac
binary="$tmp/dist/kode-rpc/kode-rpc$exe"
if [ ! -x "$binary" ]; then
  echo "packaging/ci.sh: no binary at $binary" >&2
  exit 1
fi

"$PY" - "$start" "$end" "$tmp/dist/kode-rpc" <<'EOF'
import os, sys
start, end, folder = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs
           if not os.path.islink(os.path.join(d, f)))
print(f"frozen build: {end - start:.1f} s (build.py wall clock, incl. the --version smoke test)")
print(f"frozen binary folder size: {size / 1e6:.1f} MB ({size} bytes)")
EOF
echo "frozen version stamp: $(cat "$tmp/dist/kode-rpc/VERSION")"

set +e
KODE_FROZEN_BINARY="$binary" "$PY" -m pytest -q -rxs tests/test_frozen.py
code=$?
set -e
if [ "$code" -ne 0 ]; then
  echo "packaging/ci.sh: frozen tests failed (pytest exit code $code)" >&2
  exit "$code"
fi
