"""fs_glob and fs_grep stay bounded: a pattern or path leading outside the sandbox is
refused before anything is walked, a legal walk over a huge tree stops at `limit`
(or `max_results`) and at a time budget and says so, and cancelling the tool (an
interrupt) stops the walking thread too, not only the coroutine awaiting it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

import kode_rpc.tools.fs as fs
from kode_rpc.sandbox.local import LocalSandbox
from kode_rpc.tools.base import ToolResult

from .conftest import Spawn, scripted
from .helpers import watching
from .test_tools import FakeCtx, call

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

CHAIN_DEPTH = 40
EXPLOSIVE = "**/d/**/d/**/d/**/d/**/*.none"
"""Legal, inside the sandbox, and on a chain of 40 nested `d` directories it has
hundreds of thousands of ways to match if each `**` is expanded on its own."""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return work


@pytest.fixture
def ctx(work: Path) -> FakeCtx:
    return FakeCtx(LocalSandbox(str(work)))


def make_chain(root: Path, depth: int = CHAIN_DEPTH) -> None:
    path = root
    for _ in range(depth):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf.txt").write_text("leaf\n")


def make_wide_tree(root: Path, fan: tuple[int, ...] = (40, 40, 40)) -> int:
    """Many empty directories: the cost of a walk is in listing them."""
    paths = [root / "wide"]
    for width in fan:
        paths = [p / f"d{i}" for p in paths for i in range(width)]
    for p in paths:
        p.mkdir(parents=True)
    return len(paths)


def make_big_tree(root: Path, dirs: int = 100, files: int = 200) -> int:
    for i in range(dirs):
        d = root / "big" / f"dir{i:03d}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"f{j:03d}.txt").write_bytes(b"needle\n")
    return dirs * files


async def bounded(ctx: FakeCtx, name: str, seconds: float = 5.0, **args: Any) -> ToolResult:
    """Run a tool, failing the test (instead of hanging it) if it takes longer than `seconds`."""
    return await asyncio.wait_for(call(ctx, name, **args), seconds)


# ---------------------------------------------------------------- refused before any walk


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    {"pattern": "/**"},
    {"pattern": "../**"},
    {"pattern": "**", "cwd": "/"},
    {"pattern": "../outside/*"},
    {"pattern": "/*/*"},
    {"pattern": "src/../../**"},
    {"pattern": "**", "cwd": ".."},
], ids=lambda a: repr(a))
async def test_glob_leading_outside_is_refused_at_once(ctx: FakeCtx, args: dict[str, Any]) -> None:
    t0 = time.monotonic()
    res = await bounded(ctx, "fs_glob", **args)
    assert not res.ok and res.error_type == "boundary", res
    assert time.monotonic() - t0 < 5.0


@pytest.mark.timeout(30)
async def test_glob_absolute_pattern_inside_still_works(ctx: FakeCtx, work: Path) -> None:
    (work / "src").mkdir()
    (work / "src" / "a.py").write_text("x\n")
    res = await bounded(ctx, "fs_glob", pattern=str(work / "src" / "*.py"))
    assert res.ok and res.data["matches"] == ["src/a.py"], res


async def test_glob_semantics_of_the_bounded_walker(ctx: FakeCtx, work: Path) -> None:
    """What the walker matches: glob's rules for hidden names and `**`, symlinks listed but never descended."""
    (work / "src" / "pkg").mkdir(parents=True)
    (work / "src" / "pkg" / "m.py").write_text("x\n")
    (work / "src" / ".hidden").mkdir()
    (work / "src" / ".hidden" / "h.py").write_text("x\n")
    (work / ".env").write_text("x\n")
    (work / "link_in.py").symlink_to(work / "src" / "pkg" / "m.py")
    (work / "link_out.py").symlink_to(work.parent / "outside" / "secret.txt")
    (work / "pkg_link").symlink_to(work / "src" / "pkg")
    res = await bounded(ctx, "fs_glob", pattern="**")
    assert res.data["matches"] == ["link_in.py", "pkg_link", "src", "src/pkg", "src/pkg/m.py"]
    res = await bounded(ctx, "fs_glob", pattern="**/*.py")
    assert res.data["matches"] == ["link_in.py", "src/pkg/m.py"]
    res = await bounded(ctx, "fs_glob", pattern="src/*/")
    assert res.data["matches"] == ["src/pkg"]
    res = await bounded(ctx, "fs_glob", pattern=".*")
    assert res.data["matches"] == [".env"]
    res = await bounded(ctx, "fs_glob", pattern="src/.hidden/*.py")
    assert res.data["matches"] == ["src/.hidden/h.py"]
    res = await bounded(ctx, "fs_glob", pattern="pkg_link/*.py")  # a literal prefix is resolved, so it is followed
    assert res.data["matches"] == ["pkg_link/m.py"]
    res = await bounded(ctx, "fs_glob", pattern="src/*/../pkg/*.py")
    assert not res.ok and res.error_type == "boundary"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/", "..", "/etc"])
async def test_grep_path_outside_is_refused_at_once(ctx: FakeCtx, path: str) -> None:
    res = await bounded(ctx, "fs_grep", pattern="root", path=path)
    assert not res.ok and res.error_type == "boundary", res


# ---------------------------------------------------------------- bounded walks


@pytest.mark.timeout(60)
async def test_glob_over_a_huge_tree_is_bounded_by_limit(ctx: FakeCtx, work: Path) -> None:
    make_big_tree(work)
    res = await bounded(ctx, "fs_glob", seconds=20, pattern="**", limit=500)
    assert res.ok and len(res.data["matches"]) == 500
    assert res.data["truncated"] is True and "limit" in res.data["note"]
    assert res.data["matches"] == sorted(res.data["matches"])
    res = await bounded(ctx, "fs_glob", seconds=20, pattern="big/dir007/*.txt")
    assert res.ok and len(res.data["matches"]) == 200 and res.data["truncated"] is False
    assert "note" not in res.data


@pytest.mark.timeout(60)
async def test_grep_over_a_huge_tree_is_bounded_by_max_results(ctx: FakeCtx, work: Path) -> None:
    make_big_tree(work)
    res = await bounded(ctx, "fs_grep", seconds=20, pattern="needle", max_results=300)
    assert res.ok and len(res.data["matches"]) == 300
    assert res.data["truncated"] is True and "max_results" in res.data["note"]


@pytest.mark.timeout(60)
async def test_glob_and_grep_stop_at_the_time_budget(ctx: FakeCtx, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_big_tree(work, dirs=20, files=100)
    monkeypatch.setattr(fs, "WALK_BUDGET_S", 0.0)
    res = await bounded(ctx, "fs_glob", seconds=10, pattern="**/*.txt")
    assert res.ok and res.data["truncated"] is True and "time budget" in res.data["note"], res
    res = await bounded(ctx, "fs_grep", seconds=10, pattern="needle")
    assert res.ok and res.data["truncated"] is True and "time budget" in res.data["note"], res


@pytest.mark.timeout(60)
async def test_glob_with_many_doublestars_stays_linear(ctx: FakeCtx, work: Path) -> None:
    make_chain(work)
    res = await bounded(ctx, "fs_glob", seconds=5, pattern=EXPLOSIVE)
    assert res.ok and res.data == {"matches": [], "truncated": False}
    res = await bounded(ctx, "fs_glob", seconds=5, pattern="**/d/**/leaf.txt")
    assert res.ok and res.data["matches"] == ["/".join(["d"] * CHAIN_DEPTH + ["leaf.txt"])]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,args", [("fs_glob", {"pattern": "**/*.none"}), ("fs_grep", {"pattern": "zzz"})])
async def test_cancel_stops_the_walking_thread(ctx: FakeCtx, work: Path, monkeypatch: pytest.MonkeyPatch,
                                               name: str, args: dict[str, Any]) -> None:
    """An interrupt cancels the tool's task; the worker thread must stop walking too.

    Listing is slowed down (a slow or huge file system) so the walk outlives the cancel.
    """
    make_wide_tree(work, (10, 10, 5))
    listed = 0
    real_scandir = os.scandir

    def slow_scandir(*a: Any) -> Any:
        nonlocal listed
        listed += 1
        time.sleep(0.01)
        return real_scandir(*a)

    monkeypatch.setattr(os, "scandir", slow_scandir)
    task = asyncio.create_task(call(ctx, name, **args))
    await asyncio.sleep(0.5)
    assert not task.done(), "the walk should still be running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the thread notices before its next directory entry
    before = listed
    await asyncio.sleep(0.5)
    assert listed == before, f"the walk went on after cancel: {listed - before} more directories listed"


# ---------------------------------------------------------------- end to end


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
async def test_e2e_glob_of_root_ends_the_turn_at_once(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    script = scripted({"toolCalls": [{"name": "fs_glob", "input": {"pattern": "/**"}},
                                     {"name": "fs_glob", "input": {"pattern": "../**"}},
                                     {"name": "fs_grep", "input": {"pattern": "root", "path": "/"}}]},
                      {"text": "refused"})
    await c.request("agent/create", {"agentId": "g", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    t0 = time.monotonic()
    res = await c.request("agent/complete", {"agentId": "g", "text": "list everything"}, timeout=15)
    assert res["status"] == "ok" and time.monotonic() - t0 < 5.0
    ends = [e["event"]["call"] for e in c.events_of("g", "tool:end")]
    assert len(ends) == 3
    for end in ends:
        assert end["state"] == "FAILED" and end["result"]["errorType"] == "boundary", end
    assert await c.close() == 0


@linux_only
@pytest.mark.timeout(60)
async def test_e2e_interrupt_stops_a_long_glob(spawn: Spawn, work_dir: Path) -> None:
    make_wide_tree(work_dir)  # 64,000 directories: listing them all takes a while
    c = await spawn()
    script = scripted({"toolCalls": [{"name": "fs_glob", "input": {"pattern": "**/*.none"}}]}, {"text": "never"})
    await c.request("agent/create", {"agentId": "i", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    await watching(c, "i", work_dir)  # setting up the workDir's watch is work of its own (64,000 directories)
    await c.request("agent/send", {"agentId": "i", "text": "glob"})
    await c.wait_for(lambda: c.events_of("i", "tool:start"), timeout=10)
    t0 = time.monotonic()
    assert await c.request("agent/interrupt", {"agentId": "i"}) == {"interrupted": True}
    done = await c.wait_event("i", "done", timeout=5)
    assert done["event"]["reason"] == "interrupted" and time.monotonic() - t0 < 2.0
    end = c.events_of("i", "tool:end")[0]["event"]["call"]
    assert end["state"] == "FAILED" and end["result"]["errorType"] == "interrupted"
    # The walking thread stopped with the task: the server goes idle.
    await asyncio.sleep(0.2)
    pid = c.proc.pid
    before = _cpu_seconds(pid)
    await asyncio.sleep(0.6)
    busy = _cpu_seconds(pid) - before
    assert busy < 0.2, f"the server kept burning {busy:.2f} s of CPU in 0.6 s after the interrupt"
    assert await c.close() == 0
