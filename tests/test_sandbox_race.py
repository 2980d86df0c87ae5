"""Symlink-swap races: a path inside the work dir that flips between a regular file
and a symlink to a file outside must never let a file tool read or change the
outside file, whatever the interleaving of check and open.

Three kinds of test: a deterministic one that swaps the path right after the
sandbox's check (the worst interleaving, every time), a stress one with a process
flipping the path while the tool runs many times, and an end-to-end one over real
pipes with the flipper started by `bash_run {background: true}`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kode_rpc.sandbox import local
from kode_rpc.sandbox.local import LocalSandbox
from kode_rpc.tools.base import ToolResult

from .conftest import Spawn, scripted
from .test_tools import FakeCtx, call

pytestmark = pytest.mark.skipif(os.name == "nt", reason="symlink races are tested on POSIX")

MARKER = "OUTSIDE-MARKER-5e1c"
INSIDE = "inside OLD text\n"
SECRET = f"{MARKER} OLD secret\n"


@pytest.fixture
def race(tmp_path: Path) -> dict[str, Path]:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "f.txt").write_text(SECRET)  # the name a swapped directory `sub` would expose
    (work / "flip").write_text(INSIDE)
    (work / "sub").mkdir()
    (work / "sub" / "f.txt").write_text(INSIDE)
    return {"work": work, "outside": outside, "secret": outside / "secret.txt"}


def _to_symlink(path: Path, target: Path) -> None:
    """Replace `path` (a file, or a directory kept aside as `<name>.old`) by a symlink to `target`."""
    tmp = path.with_name(path.name + ".lnk")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    if path.is_dir() and not path.is_symlink():
        path.rename(path.with_name(path.name + ".old"))
    os.replace(tmp, path)


def _restore(path: Path) -> None:
    """Undo `_to_symlink`: the regular file (holding INSIDE) or the directory is back."""
    if not path.is_symlink():
        return
    kept = path.with_name(path.name + ".old")
    if kept.is_dir():
        path.unlink()
        kept.rename(path)
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(INSIDE)
        os.replace(tmp, path)


def swap_after_check(sandbox: LocalSandbox, victim: Path, target: Path) -> None:
    """Make every check of a path at or below `victim` see the real thing, and every
    use right after it meet a symlink to `target` instead.

    `sandbox.resolve` is wrapped: it puts `victim` back, checks, then swaps
    `victim` for the symlink. That is the interleaving the bug needs (checked,
    then swapped, then opened), forced every time instead of hoped for, however
    often a tool checks before it opens.
    """
    original = sandbox.resolve

    def resolve(path: str) -> str:
        joined = os.path.normpath(os.path.join(sandbox.work_dir, path))
        hit = joined == str(victim) or joined.startswith(str(victim) + os.sep)
        if hit:
            _restore(victim)
        real = original(path)
        if hit:
            _to_symlink(victim, target)
        return real

    sandbox.resolve = resolve  # type: ignore[method-assign]


def _leaks(res: ToolResult) -> bool:
    return MARKER in repr(res.wire())


# ---------------------------------------------------------------- the worst interleaving, forced


async def test_read_after_swap_of_final_component_refused(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "flip", race["secret"])
    res = await call(ctx, "fs_read", path="flip")
    assert not _leaks(res), res
    assert not res.ok and res.error_type == "boundary"


async def test_read_after_swap_of_directory_component_refused(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "sub", race["outside"])
    res = await call(ctx, "fs_read", path="sub/f.txt")
    assert not _leaks(res), res
    assert not res.ok and res.error_type == "boundary"


@pytest.mark.parametrize("victim,path", [("flip", "flip"), ("sub", "sub/f.txt")])
async def test_read_after_swap_refused_by_the_fallback_without_dir_fd(
    race: dict[str, Path], monkeypatch: pytest.MonkeyPatch, victim: str, path: str
) -> None:
    """Where `os.open` has no `dir_fd` (Windows), open-then-verify must refuse the swap too."""
    monkeypatch.setattr(local, "HAS_DIR_FD", False)
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    target = race["secret"] if victim == "flip" else race["outside"]
    swap_after_check(ctx.sandbox, race["work"] / victim, target)
    res = await call(ctx, "fs_read", path=path)
    assert not _leaks(res), res
    assert not res.ok and res.error_type == "boundary"


async def test_write_after_swap_refused_and_outside_untouched(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "flip", race["secret"])
    res = await call(ctx, "fs_write", path="flip", content="pwned\n")
    assert not res.ok and res.error_type == "boundary", res
    assert race["secret"].read_text() == SECRET
    assert ctx.changes == []


async def test_write_new_file_after_directory_swap_creates_nothing_outside(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "sub", race["outside"])
    res = await call(ctx, "fs_write", path="sub/new.txt", content="pwned\n")
    assert not res.ok and res.error_type == "boundary", res
    assert not (race["outside"] / "new.txt").exists()
    res = await call(ctx, "fs_write", path="sub/deeper/new.txt", content="pwned\n")
    assert not res.ok and res.error_type == "boundary", res
    assert sorted(p.name for p in race["outside"].iterdir()) == ["f.txt", "secret.txt"]


async def test_edit_after_swap_refused_and_outside_untouched(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "flip", race["secret"])
    res = await call(ctx, "fs_edit", path="flip", old_string="OLD", new_string="NEW")
    assert not _leaks(res), res
    assert not res.ok and res.error_type == "boundary"
    assert race["secret"].read_text() == SECRET


async def test_multi_edit_after_swap_refused_and_outside_untouched(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "flip", race["secret"])
    res = await call(ctx, "fs_multi_edit", edits=[{"path": "flip", "old_string": "OLD", "new_string": "NEW"}])
    assert not _leaks(res), res
    assert not res.ok and res.error_type == "boundary"
    assert race["secret"].read_text() == SECRET


async def test_grep_after_swap_never_reads_outside(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    swap_after_check(ctx.sandbox, race["work"] / "flip", race["secret"])
    res = await call(ctx, "fs_grep", pattern="OLD")
    assert not _leaks(res), res


# ---------------------------------------------------------------- a real race, many times


FLIP_SCRIPT = """
import os, sys, time
path, target, text, end = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
while time.time() < end:
    try:
        if os.path.islink(path + '.lnk'):
            os.unlink(path + '.lnk')
        os.symlink(target, path + '.lnk')
        os.replace(path + '.lnk', path)
        with open(path + '.tmp', 'w') as fh:
            fh.write(text)
        os.replace(path + '.tmp', path)
    except OSError:
        pass
"""


class Flipper:
    """A process flipping `path` between a regular file and a symlink to `target` as fast as it can.

    A process rather than a thread: it runs truly in parallel with the tool's
    worker thread (no GIL hand-offs), which is what makes the race bite reliably
    without the fix, as the background `bash_run` of the bug report does.
    """

    def __init__(self, path: Path, target: Path, text: str, seconds: float = 20.0) -> None:
        self.args = [sys.executable, "-c", FLIP_SCRIPT, str(path), str(target), text, str(seconds)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Flipper":
        self.proc = subprocess.Popen(self.args)
        time.sleep(0.2)  # let it start flipping
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)


async def _hammer(run_once: Callable[[], Awaitable[ToolResult]], seconds: float = 3.0,
                  iterations: int = 2000) -> list[ToolResult]:
    """Run a tool call again and again: `iterations` times or for `seconds`, whichever ends first."""
    results: list[ToolResult] = []
    deadline = time.monotonic() + seconds
    while len(results) < iterations and time.monotonic() < deadline:
        results.append(await run_once())
    return results


@pytest.mark.timeout(30)
async def test_read_under_flipping_never_returns_outside_content(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    with Flipper(race["work"] / "flip", race["secret"], INSIDE):
        results = await _hammer(lambda: call(ctx, "fs_read", path="flip"))
    leaked = [r for r in results if _leaks(r)]
    assert not leaked, f"{len(leaked)} of {len(results)} reads returned the outside file"
    errors = {r.error for r in results if not r.ok and r.error_type != "boundary"}
    assert not errors, errors  # a lost race is a refusal, never an I/O error
    assert any(r.ok for r in results), "some reads must see the inside file"


@pytest.mark.timeout(30)
async def test_write_under_flipping_never_changes_outside_file(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    with Flipper(race["work"] / "flip", race["secret"], INSIDE):
        results = await _hammer(lambda: call(ctx, "fs_write", path="flip", content="written by fs_write\n"))
    assert race["secret"].read_text() == SECRET
    assert results and not [r for r in results if not r.ok and r.error_type != "boundary"], results[:3]


@pytest.mark.timeout(30)
async def test_edit_under_flipping_never_reads_or_changes_outside_file(race: dict[str, Path]) -> None:
    ctx = FakeCtx(LocalSandbox(str(race["work"])))
    with Flipper(race["work"] / "flip", race["secret"], INSIDE):
        results = await _hammer(lambda: call(ctx, "fs_edit", path="flip", old_string="OLD", new_string="NEW"))
    assert race["secret"].read_text() == SECRET
    assert not [r for r in results if _leaks(r)]


# ---------------------------------------------------------------- end to end, over real pipes




@pytest.mark.timeout(60)
async def test_e2e_background_flipper_never_leaks_through_fs_read(spawn: Spawn, tmp_path: Path) -> None:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text(SECRET)
    (work / "flip").write_text("inside\n")
    (work / "flip.py").write_text(FLIP_SCRIPT)
    flipper = f"{sys.executable} flip.py flip {secret} inside 12"
    steps = [{"toolCalls": [{"name": "bash_run", "input": {"cmd": flipper, "background": True}}]},
             {"toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 0.3"}}]}]  # let the flipper start
    steps += [{"toolCalls": [{"name": "fs_read", "input": {"path": "flip"}}] * 25} for _ in range(16)]
    steps.append({"text": "done reading"})
    c = await spawn()
    await c.request("agent/create", {"agentId": "r", "model": scripted(*steps), "sandbox": {"workDir": str(work)},
                                     "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": "r", "text": "read it"}, timeout=45)
    assert res["status"] == "ok"
    ends = [e["event"]["call"] for e in c.events_of("r", "tool:end")]
    reads = [call for call in ends if call["name"] == "fs_read"]
    assert len(reads) == 400
    leaked = [call for call in reads if MARKER in repr(call)]
    assert not leaked, f"{len(leaked)} of {len(reads)} fs_read results carried the outside file's content"
    assert any(call["result"]["ok"] for call in reads), "some reads must see the inside file"
    assert secret.read_text() == SECRET
    assert await c.close() == 0
