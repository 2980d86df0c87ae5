"""`file_changed` from the workDir watcher (contract section 15), against a real server.

Changes on disk by anyone are reported (`by: "external"`), those made during the
agent's tool calls (fs tools, shell commands) as `by: "agent"` and only once; `.git/`
and `.gitignore`d paths are left out; many writes to one file within a window give
one event.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.client import RpcClient
from kode_rpc.sandbox.watch import _fnmatch_ignored

from .conftest import Spawn, scripted
from .helpers import PROBE, watching

def changes(c: RpcClient, agent_id: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.events_of(agent_id, "file_changed") if not e["event"]["path"].startswith(PROBE)]


async def settle(c: RpcClient, agent_id: str, quiet: float = 0.6) -> list[dict[str, Any]]:
    """The file_changed events once none arrived for `quiet` seconds."""
    count = -1
    while count != len(changes(c, agent_id)):
        count = len(changes(c, agent_id))
        await asyncio.sleep(quiet)
    return changes(c, agent_id)


async def test_external_and_agent_changes(spawn: Spawn, work_dir: Path) -> None:
    (work_dir / "old.txt").write_text("old\n")
    c = await spawn()
    model = scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "touch made-by-shell.txt"}}]},
                     {"text": "touched"},
                     {"toolCalls": [{"name": "fs_write", "input": {"path": "w.txt", "content": "hi\n"}}]},
                     {"text": "written"})
    await c.request("agent/create", {"agentId": "w", "model": model, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    await watching(c, "w", work_dir)
    (work_dir / "ext.txt").write_text("from outside\n")
    (work_dir / "old.txt").unlink()
    (work_dir / "sub").mkdir()
    (work_dir / "sub" / "deep.txt").write_text("deep\n")
    got = await c.wait_for(lambda: len(changes(c, "w")) >= 3 and changes(c, "w"), 10)
    got = await settle(c, "w")
    assert {(e["path"], e["change"], e["by"]) for e in got} == {
        ("ext.txt", "added", "external"), ("old.txt", "deleted", "external"), ("sub/deep.txt", "added", "external")}
    assert all(e["path"] != "sub" for e in got), "files only"

    await c.request("agent/complete", {"agentId": "w", "text": "touch"})
    got = await settle(c, "w")
    shell = [e for e in got if e["path"] == "made-by-shell.txt"]
    assert shell == [{"type": "file_changed", "path": "made-by-shell.txt", "change": "added", "by": "agent"}]

    await c.request("agent/complete", {"agentId": "w", "text": "write"})
    got = await settle(c, "w")
    written = [e for e in got if e["path"] == "w.txt"]
    assert written == [{"type": "file_changed", "path": "w.txt", "change": "added", "by": "agent"}], \
        "the tool's own report is not added to the watcher's"
    env = [e for e in c.events_of("w", "file_changed") if e["event"]["path"] == "w.txt"][0]
    assert env["turnId"], "a change during a turn carries its turn id"


async def test_coalescing_and_ignored_paths(spawn: Spawn, work_dir: Path) -> None:
    git = shutil.which("git")
    if git:
        subprocess.run([git, "init", "-q", str(work_dir)], check=True)
    (work_dir / ".gitignore").write_text("*.log\nbuild/\n")
    (work_dir / "build").mkdir()
    (work_dir / "f.txt").write_text("0\n")
    c = await spawn()
    await c.request("agent/create", {"agentId": "g", "sandbox": {"workDir": str(work_dir)}})
    await watching(c, "g", work_dir)
    for i in range(30):  # far quicker than one window
        (work_dir / "f.txt").write_text(f"{i}\n")
    (work_dir / "x.log").write_text("ignored\n")
    (work_dir / "build" / "out.bin").write_text("ignored\n")
    if git:
        (work_dir / ".git" / "scratch").write_text("git's own\n")
    (work_dir / "kept.txt").write_text("kept\n")
    await c.wait_for(lambda: any(e["path"] == "kept.txt" for e in changes(c, "g")), 10)
    got = await settle(c, "g")
    f = [e for e in got if e["path"] == "f.txt"]  # 30 writes in a few ms: one window, or two on a busy machine
    assert 1 <= len(f) <= 2 and all(e == {"type": "file_changed", "path": "f.txt", "change": "modified",
                                          "by": "external"} for e in f), got
    assert {e["path"] for e in got} == {"f.txt", "kept.txt"}, got


async def test_watcher_stops_with_the_agent(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "d", "sandbox": {"workDir": str(work_dir)}})
    await watching(c, "d", work_dir)
    (work_dir / "a.txt").write_text("a\n")
    await c.wait_for(lambda: changes(c, "d"), 10)
    await c.request("agent/delete", {"agentId": "d"})
    (work_dir / "b.txt").write_text("b\n")
    await asyncio.sleep(0.6)
    assert [e["path"] for e in changes(c, "d")] == ["a.txt"]


def inotify_instances(pid: int) -> int:
    """inotify instances the process holds (fds that are `anon_inode:inotify`)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc (Linux)")
async def test_one_os_watch_for_every_agent(spawn: Spawn, tmp_path: Path) -> None:
    """Agents share the process's one watch (inotify instances are capped per user:
    one per agent ran out with a few servers), each still gets its own changes."""
    c = await spawn()
    roots = [tmp_path / f"w{i}" for i in range(6)]
    for root in roots:
        root.mkdir()
    for i, root in enumerate(roots):
        await c.request("agent/create", {"agentId": f"a{i}", "sandbox": {"workDir": str(root)}})
    await c.request("agent/create", {"agentId": "same", "sandbox": {"workDir": str(roots[0])}})
    for i, root in enumerate(roots):
        await watching(c, f"a{i}", root)
    await watching(c, "same", roots[0])
    for i, root in enumerate(roots):
        (root / f"f{i}.txt").write_text("x\n")
    for i in range(6):
        await c.wait_for(lambda i=i: changes(c, f"a{i}"), 10)
    await c.wait_for(lambda: changes(c, "same"), 10)
    for i in range(6):
        assert [(e["path"], e["change"]) for e in await settle(c, f"a{i}", 0.3)] == [(f"f{i}.txt", "added")]
    assert [e["path"] for e in changes(c, "same")] == ["f0.txt"]
    assert inotify_instances(c.proc.pid) == 1
    for i in range(6):
        await c.request("agent/delete", {"agentId": f"a{i}"})
    await c.request("agent/delete", {"agentId": "same"})
    deadline = asyncio.get_running_loop().time() + 5
    while inotify_instances(c.proc.pid):
        assert asyncio.get_running_loop().time() < deadline, "the watch did not stop with the last agent"
        await asyncio.sleep(0.05)


async def test_no_change_is_lost_or_doubled_while_agents_come_and_go(spawn: Spawn, tmp_path: Path) -> None:
    """Loading and unloading other agents rebuilds the shared watch; a watched agent sees
    every file made meanwhile exactly once."""
    c = await spawn()
    watched = tmp_path / "watched"
    watched.mkdir()
    await c.request("agent/create", {"agentId": "w", "sandbox": {"workDir": str(watched)}})
    await watching(c, "w", watched)
    others = tmp_path / "others"

    async def churn() -> None:
        for i in range(8):
            root = others / str(i)
            root.mkdir(parents=True)
            await c.request("agent/create", {"agentId": f"o{i}", "sandbox": {"workDir": str(root)}})
            if i % 2:
                await c.request("agent/delete", {"agentId": f"o{i - 1}"})

    staging = tmp_path / "staging"
    staging.mkdir()

    async def write() -> None:
        for i in range(60):  # moved in: one OS event per file, so a second report is a duplicate
            (staging / f"n{i}.txt").write_text(f"{i}\n")
            os.rename(staging / f"n{i}.txt", watched / f"n{i}.txt")
            await asyncio.sleep(0.01)

    await asyncio.gather(churn(), write())
    await c.wait_for(lambda: len(changes(c, "w")) >= 60, 15)
    got = await settle(c, "w")
    assert sorted(e["path"] for e in got) == sorted(f"n{i}.txt" for i in range(60))
    assert all(e["change"] == "added" for e in got)


@pytest.mark.parametrize(("path", "ignored"), [
    ("x.log", True), ("deep/x.log", True), ("build/out", True), ("src/build/out", True),
    ("keep.txt", False), ("dist/a", True), ("srcdist/a", False)])
def test_fnmatch_fallback(path: str, ignored: bool) -> None:
    assert _fnmatch_ignored(path, ["*.log", "build/", "/dist"]) is ignored
