#!/usr/bin/env python3
"""Build the frozen kode-rpc executable for this platform with PyInstaller.

    python packaging/build.py [--onefile] [--noarchive] [--dist DIR] [--work DIR] [--no-smoke]

One-dir (the default) -> DIR/kode-rpc/kode-rpc[.exe]   (starts fastest; ship the whole folder)
One-file              -> DIR/kode-rpc-onefile[.exe]    (one file, but unpacks itself to a
                                                        temp dir at every start: slower)

DIR defaults to `dist/` at the repository root; PyInstaller's work files go to
`build/pyinstaller/<mode>/`. The package version is stamped into `VERSION` next to
the binary (one-dir) or `kode-rpc-onefile.VERSION` (one-file). After the build the
binary is run with `--version` as a smoke test. Exit code: 0 built, 1 failed, 2
PyInstaller missing.

PyInstaller must already be installed in the environment that has kode-rpc's
dependencies (it freezes what that interpreter imports):

    python -m pip install 'pyinstaller>=6.10,<7'
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYINSTALLER_REQ = "pyinstaller>=6.10,<7"


def binary_path(dist: Path, onefile: bool) -> Path:
    exe = ".exe" if sys.platform == "win32" else ""
    return dist / f"kode-rpc-onefile{exe}" if onefile else dist / "kode-rpc" / f"kode-rpc{exe}"


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onefile", action="store_true", help="one self-extracting file instead of a folder")
    parser.add_argument("--noarchive", action="store_true",
                        help="keep modules as loose .pyc files (about 30 ms faster start-up here, +8 MB, ~800 files)")
    parser.add_argument("--dist", default=str(REPO / "dist"), help="output directory (default: dist/)")
    parser.add_argument("--work", default=None, help="PyInstaller work directory (default: build/pyinstaller/<mode>)")
    parser.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip running `--version` afterwards")
    parser.add_argument("--log-level", default="WARN", help="PyInstaller log level (default: WARN)")
    args = parser.parse_args(argv)

    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        print(f"PyInstaller is not installed in {sys.executable}.\n"
              f"Install it with:  {sys.executable} -m pip install '{PYINSTALLER_REQ}'\n"
              f"(or `pip install -e '.[dev]'` once it is in the dev extras)", file=sys.stderr)
        return 2
    import PyInstaller as pyi

    import kode_rpc

    mode = "onefile" if args.onefile else "onedir"
    dist = Path(args.dist).resolve()
    work = Path(args.work).resolve() if args.work else REPO / "build" / "pyinstaller" / mode
    target = binary_path(dist, args.onefile)
    out = target if args.onefile else target.parent
    if out.exists():  # PyInstaller would ask; a stale folder could hide a missing file
        shutil.rmtree(out) if out.is_dir() else out.unlink()

    cmd = [sys.executable, "-m", "PyInstaller", str(HERE / "kode-rpc.spec"),
           "--noconfirm", "--clean", "--log-level", args.log_level,
           "--distpath", str(dist), "--workpath", str(work)]
    spec_opts = [*(["--onefile"] if args.onefile else []), *(["--noarchive"] if args.noarchive else [])]
    if spec_opts:
        cmd += ["--", *spec_opts]
    print(f"building kode-rpc {kode_rpc.__version__} ({mode}) with PyInstaller {pyi.__version__} "
          f"on {sys.platform}, Python {sys.version.split()[0]}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=REPO)
    elapsed = time.perf_counter() - start
    if code != 0 or not target.exists():
        print(f"build failed (PyInstaller exit code {code}, {target} {'exists' if target.exists() else 'missing'})",
              file=sys.stderr)
        return 1

    if args.smoke:
        env = {k: v for k, v in os.environ.items() if k != "KODE_RPC_SERVER"}
        res = subprocess.run([str(target), "--version"], capture_output=True, text=True, env=env, timeout=60)
        expected = f"kode-rpc {kode_rpc.__version__}"
        if res.returncode != 0 or res.stdout.strip() != expected:
            print(f"smoke test failed: `{target} --version` -> exit {res.returncode}, stdout {res.stdout!r}, "
                  f"stderr {res.stderr[-2000:]!r}", file=sys.stderr)
            return 1

    size = tree_size(out)
    print(f"built {target}")
    print(f"build time: {elapsed:.1f} s; size of {out.name}{'' if args.onefile else '/'}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
