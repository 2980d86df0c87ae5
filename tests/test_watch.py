"""`file_changed` from the workDir watcher (contract section 15), against a real server.

Changes on disk by anyone are reported (`by: "external"`), those made during the
agent's tool calls (fs tools, shell commands) as `by: "agent"` and only once; `.git/`
and `.gitignore`d paths are left out; many writes to one file within a window give
one event.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.client import RpcClient
from kode_rpc.sandbox.watch import _fnmatch_ignored

from .conftest import Spawn, scripted


def changes(c: RpcClient, agent_id: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.events_of(agent_id, "file_changed")]


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
    await asyncio.sleep(0.2)
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
    await asyncio.sleep(0.2)
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
    await asyncio.sleep(0.2)
    (work_dir / "a.txt").write_text("a\n")
    await c.wait_for(lambda: changes(c, "d"), 10)
    await c.request("agent/delete", {"agentId": "d"})
    (work_dir / "b.txt").write_text("b\n")
    await asyncio.sleep(0.6)
    assert [e["path"] for e in changes(c, "d")] == ["a.txt"]


@pytest.mark.parametrize(("path", "ignored"), [
    ("x.log", True), ("deep/x.log", True), ("build/out", True), ("src/build/out", True),
    ("keep.txt", False), ("dist/a", True), ("srcdist/a", False)])
def test_fnmatch_fallback(path: str, ignored: bool) -> None:
    assert _fnmatch_ignored(path, ["*.log", "build/", "/dist"]) is ignored
