"""LocalSandbox boundary checks, restore_env and process-tree management (real files, real processes)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from kode_rpc.sandbox import process
from kode_rpc.sandbox.base import BoundaryError
from kode_rpc.sandbox.local import LocalSandbox, restore_env

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie counts as dead: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_dead(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work2 = tmp_path / "work2"
    for d in (work, outside, work2):
        d.mkdir()
    (outside / "secret.txt").write_text("secret")
    (work / "escape").symlink_to(outside)
    (work / "inner").mkdir()
    (work / "inner_link").symlink_to(work / "inner")
    return {"work": work, "outside": outside, "work2": work2}


# ---------------------------------------------------------------- resolve


def test_relative_and_nonexistent_nested_inside(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    assert sb.resolve("a.txt") == str(dirs["work"] / "a.txt")
    assert sb.resolve("new/deep/er/file.txt") == str(dirs["work"] / "new/deep/er/file.txt")
    assert sb.resolve(".") == str(dirs["work"])
    assert sb.resolve("inner_link/x") == str(dirs["work"] / "inner" / "x")


def test_tilde_is_literal(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    assert sb.resolve("~/x") == str(dirs["work"] / "~" / "x")


def test_dotdot_escape_refused(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    with pytest.raises(BoundaryError):
        sb.resolve("../outside/secret.txt")
    with pytest.raises(BoundaryError):
        sb.resolve("inner/../../outside")


def test_absolute_outside_refused(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    with pytest.raises(BoundaryError) as info:
        sb.resolve(str(dirs["outside"] / "secret.txt"))
    assert info.value.resolved == str(dirs["outside"] / "secret.txt")
    with pytest.raises(BoundaryError):
        sb.resolve("/etc/passwd")


def test_symlink_out_refused_even_for_new_files(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    with pytest.raises(BoundaryError):
        sb.resolve("escape/secret.txt")
    with pytest.raises(BoundaryError):
        sb.resolve("escape/new/file.txt")
    with pytest.raises(BoundaryError):
        sb.resolve("escape")


def test_prefix_trick_refused(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]))
    with pytest.raises(BoundaryError):
        sb.resolve(str(dirs["work2"] / "f.txt"))
    with pytest.raises(BoundaryError):
        sb.resolve("../work2/f.txt")


def test_allow_paths_permit(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]), allow_paths=[str(dirs["outside"])])
    assert sb.resolve("escape/secret.txt") == str(dirs["outside"] / "secret.txt")
    assert sb.resolve(str(dirs["outside"] / "new.txt")) == str(dirs["outside"] / "new.txt")
    with pytest.raises(BoundaryError):
        sb.resolve(str(dirs["work2"]))


def test_work_dir_via_symlink(dirs: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "worklink"
    link.symlink_to(dirs["work"])
    sb = LocalSandbox(str(link))
    assert sb.work_dir == str(dirs["work"])
    assert sb.resolve("a") == str(dirs["work"] / "a")


def test_enforce_boundary_off(dirs: dict[str, Path]) -> None:
    sb = LocalSandbox(str(dirs["work"]), enforce_boundary=False)
    assert sb.resolve("escape/secret.txt") == str(dirs["outside"] / "secret.txt")


# ---------------------------------------------------------------- environment


def test_restore_env_frozen() -> None:
    env = {
        "LD_LIBRARY_PATH": "/tmp/_MEI123",
        "LD_LIBRARY_PATH_ORIG": "/usr/local/lib",
        "DYLD_LIBRARY_PATH": "/tmp/_MEI123",
        "PATH": "/usr/bin",
    }
    out = restore_env(env, frozen=True)
    assert out["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in out
    assert "DYLD_LIBRARY_PATH" not in out  # there was no original: removed
    assert out["PATH"] == "/usr/bin"
    assert env["LD_LIBRARY_PATH"] == "/tmp/_MEI123"  # input untouched


def test_restore_env_not_frozen_is_a_copy() -> None:
    env = {"LD_LIBRARY_PATH": "/x", "LD_LIBRARY_PATH_ORIG": "/y"}
    out = restore_env(env, frozen=False)
    assert out == env and out is not env


def test_child_env_copies_environ(dirs: dict[str, Path]) -> None:
    env = LocalSandbox(str(dirs["work"])).child_env()
    assert env.get("PATH") == os.environ.get("PATH")
    env["KODE_TEST_X"] = "1"
    assert "KODE_TEST_X" not in os.environ


# ---------------------------------------------------------------- processes


async def _read_pids(proc: asyncio.subprocess.Process, count: int) -> list[int]:
    assert proc.stdout is not None
    pids: list[int] = []
    while len(pids) < count:
        line = await asyncio.wait_for(proc.stdout.readline(), 5)
        pids.append(int(line))
    return pids


@linux_only
async def test_descendants_and_kill_tree_with_setsid(tmp_path: Path) -> None:
    proc = await process.spawn_shell(
        "setsid sleep 60 & echo $!; sleep 60 & echo $!; wait", str(tmp_path), dict(os.environ)
    )
    assert proc in process.LIVE
    escaped, child = await _read_pids(proc, 2)
    found = process.descendants(proc.pid)
    assert escaped in found and child in found
    process.kill_tree(proc.pid)
    await asyncio.wait_for(proc.wait(), 2)
    assert wait_dead(escaped) and wait_dead(child)
    await asyncio.sleep(0)
    assert proc not in process.LIVE


@linux_only
async def test_descendants_handles_odd_process_names(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sleep)
    proc = await process.spawn_shell(f"'{odd}' 60 & echo $!; wait", str(tmp_path), dict(os.environ))
    (pid,) = await _read_pids(proc, 1)
    assert pid in process.descendants(proc.pid)
    process.kill_tree(proc.pid)
    await asyncio.wait_for(proc.wait(), 2)
    assert wait_dead(pid)


@linux_only
async def test_kill_all(tmp_path: Path) -> None:
    proc = await process.spawn_shell("sleep 60 & echo $!; wait", str(tmp_path), dict(os.environ))
    (pid,) = await _read_pids(proc, 1)
    process.kill_all()
    await asyncio.wait_for(proc.wait(), 2)
    assert wait_dead(pid)
    assert proc not in process.LIVE


async def test_kill_tree_of_exited_process_is_harmless(tmp_path: Path) -> None:
    proc = await process.spawn_shell("true", str(tmp_path), dict(os.environ))
    await proc.communicate()
    process.kill_tree(proc.pid)  # must not raise


@linux_only
async def test_kill_leftovers_of_exited_shell(tmp_path: Path) -> None:
    proc = await process.spawn_shell("sleep 60 & echo $!", str(tmp_path), dict(os.environ))
    (pid,) = await _read_pids(proc, 1)
    assert await asyncio.wait_for(process.wait_exit(proc), 2) == 0  # exited; the pipes are still held
    assert alive(pid)
    process.kill_leftovers(proc.pid)  # no pipe inodes: the group/session is killed
    assert wait_dead(pid)
    await asyncio.wait_for(proc.wait(), 2)


async def test_cancel_while_spawning_kills_the_new_process(tmp_path: Path) -> None:
    """An interrupt that lands while the shell is being created must not leave it running."""
    import asyncio

    from kode_rpc.sandbox.process import kill_tree, spawn_shell

    markers = []
    for ticks in range(8):  # cancel at each point of the spawn in turn
        marker = tmp_path / f"ran-{ticks}"
        markers.append(marker)
        task = asyncio.create_task(spawn_shell(f"sleep 2; touch '{marker}'", str(tmp_path), dict(os.environ)))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        started = time.monotonic()
        try:
            proc = await task
        except asyncio.CancelledError:
            # asyncio alone kills only the shell, then waits for its pipes, which the
            # shell's child (`sleep 2`) holds: the cancel must not wait for that child.
            assert time.monotonic() - started < 1.0, f"cancel at tick {ticks} waited for the child"
            continue
        kill_tree(proc.pid)  # spawned before the cancel landed: not what this test is about
        markers.remove(marker)
    await asyncio.sleep(2.5)
    assert not [m.name for m in markers if m.exists()]
