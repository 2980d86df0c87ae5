#!/usr/bin/env python3
"""Spawn-to-`initialize`-response latency of frozen builds, measured like bench/run.py.

    python packaging/measure_startup.py [--runs 10] [BINARY ...]

Default binaries: dist/kode-rpc/kode-rpc and dist/kode-rpc-onefile (those that exist),
plus `source` (`python -m kode_rpc serve`, the console-script path) for comparison.
Each run: `KODE_RPC_SERVER=<binary>` so `kode_rpc.client.server_command()` starts it,
`RpcClient.spawn` + `initialize` timed from before the spawn to the response, fresh
data/log/config dirs, then `shutdown` + `exit` (exit code 0 and no stray stdout bytes
checked). The variants are interleaved run by run, so drift in machine load hits all
alike. Prints the median, best and worst per variant and the size on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kode_rpc.client import RpcClient

REPO = Path(__file__).resolve().parent.parent
DROPPED = ("KODE_PROVIDER", "KODE_MODEL", "KODE_MAX_AGENTS", "KODE_DATA_DIR", "KODE_LOG_DIR", "KODE_CONFIG_DIR",
           "KODE_RPC_SERVER")


def size_of(binary: str) -> int:
    path = Path(binary)
    root = path.parent if (path.parent / "_internal").is_dir() else path
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


async def once(binary: str | None) -> float:
    tmp = tempfile.mkdtemp(prefix="kode-startup-")
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(KODE_DATA_DIR=os.path.join(tmp, "data"), KODE_LOG_DIR=os.path.join(tmp, "log"),
               KODE_CONFIG_DIR=os.path.join(tmp, "config"))
    if binary:
        os.environ["KODE_RPC_SERVER"] = binary  # read by server_command() in this process
    else:
        os.environ.pop("KODE_RPC_SERVER", None)
    try:
        start = time.perf_counter()
        client = await RpcClient.spawn(env=env)
        await client.initialize(processId=os.getpid())
        elapsed = (time.perf_counter() - start) * 1000
        code = await client.close()
        if code != 0 or client.stray:
            raise RuntimeError(f"{binary or 'source'}: exit code {code}, stray stdout {client.stray[:200]!r}")
        return elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main_async(binaries: list[str], runs: int, source: bool) -> int:
    variants: list[str | None] = [*binaries, *([None] if source else [])]
    for v in variants:  # warm the page cache once, not counted
        await once(v)
    samples: dict[str | None, list[float]] = {v: [] for v in variants}
    for _ in range(runs):
        for v in variants:
            samples[v].append(await once(v))
    print(f"spawn -> initialize response, N={runs} each (interleaved, after one warm-up run), "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'variant':<48} {'median':>8} {'best':>8} {'worst':>8}   size")
    for v in variants:
        s = samples[v]
        name = os.path.relpath(v, REPO) if v else "source (python -m kode_rpc serve)"
        size = f"{size_of(v) / 1e6:.1f} MB" if v else "-"
        print(f"{name:<48} {statistics.median(s):>6.0f}ms {min(s):>6.0f}ms {max(s):>6.0f}ms   {size}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="*")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-source", dest="source", action="store_false", help="skip the `python -m` baseline")
    args = parser.parse_args()
    exe = ".exe" if sys.platform == "win32" else ""
    binaries = args.binaries or [str(p) for p in (REPO / "dist" / "kode-rpc" / f"kode-rpc{exe}",
                                                  REPO / "dist" / f"kode-rpc-onefile{exe}") if p.exists()]
    binaries = [str(Path(b).resolve()) for b in binaries]
    if not binaries and not args.source:
        print("nothing to measure: build first (python packaging/build.py [--onefile])", file=sys.stderr)
        return 1
    return asyncio.run(main_async(binaries, args.runs, args.source))


if __name__ == "__main__":
    sys.exit(main())
