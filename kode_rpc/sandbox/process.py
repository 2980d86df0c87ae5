"""Spawning shell commands and killing their whole process tree.

Every command runs in its own process group (POSIX session) so one signal reaches
everything it started. That is not enough on its own: a child that calls
`setsid`/`setpgid` (GNU `timeout` does) leaves the group, so before signalling we
also collect the descendants by walking `/proc` (or `ps` where there is no /proc)
and kill each of them by pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

IS_WINDOWS = sys.platform == "win32"

LIVE: set[asyncio.subprocess.Process] = set()
"""Processes spawned by `spawn_shell` that have not finished yet (for `kill_all` at shutdown).

An entry leaves once the process has exited and its pipes are closed (the
callers close them if leftover children keep them open).
"""

_REAPERS: set[asyncio.Task[None]] = set()  # strong refs, or the tasks could be collected


async def _forget_when_done(proc: asyncio.subprocess.Process) -> None:
    """Drop `proc` from LIVE once it has exited and its pipes are closed."""
    try:
        await proc.wait()
    except Exception:  # pragma: no cover - the loop is closing
        log.debug("waiting for pid %s failed", proc.pid, exc_info=True)
    finally:
        LIVE.discard(proc)


async def spawn_shell(cmd: str, cwd: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start `cmd` through the platform shell in its own process group.

    stdin is /dev/null so a command waiting for input fails instead of hanging the
    agent; stdout/stderr are pipes the caller must read.
    """
    kwargs: dict[str, object] = {}
    if IS_WINDOWS:
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        kwargs["creationflags"] = flags
    else:
        kwargs["start_new_session"] = True
    spawning = asyncio.ensure_future(asyncio.create_subprocess_shell(
        cmd,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    ))
    try:
        proc = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # Cancelled (an interrupt) while the process was being created: it may exist
        # already, and nobody else knows its pid, so kill it here before giving up.
        try:
            orphan = await spawning
        except Exception:
            raise asyncio.CancelledError from None
        kill_tree(orphan.pid)
        log.debug("killed pid %s, spawned while its call was cancelled", orphan.pid)
        raise
    LIVE.add(proc)
    task = asyncio.get_running_loop().create_task(_forget_when_done(proc))
    _REAPERS.add(task)
    task.add_done_callback(_REAPERS.discard)
    log.debug("spawned pid %s: %s", proc.pid, cmd)
    return proc


async def wait_exit(proc: asyncio.subprocess.Process, poll_interval: float = 0.02) -> int:
    """Wait until the process itself has exited; returns its return code.

    `Process.wait()` is not enough: on Python 3.11 it also waits until every pipe
    is closed, so a leftover background child (`server &`) holding stdout would
    make it block for as long as that child lives. `returncode` is set as soon as
    the child watcher reaps the process, so polling it is exact within one interval.
    """
    while proc.returncode is None:
        await asyncio.sleep(poll_interval)
    return proc.returncode


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgrp, session) for every process we can see.

    Reads /proc/<pid>/stat; the command name is in parentheses and may itself
    contain spaces and ')', so the fields are split after the *last* ')'.
    Falls back to `ps` on systems without /proc (macOS).
    """
    table: dict[int, tuple[int, int, int]] = {}
    if os.path.isdir("/proc/self"):
        try:
            entries = os.listdir("/proc")
        except OSError:
            return table
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    raw = fh.read()
            except OSError:
                continue  # exited meanwhile, or not ours to read
            tail = raw[raw.rfind(b")") + 2 :].split()
            # tail: state ppid pgrp session ...
            try:
                table[int(entry)] = (int(tail[1]), int(tail[2]), int(tail[3]))
            except (IndexError, ValueError):
                continue
        return table
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid=,ppid=,pgid=,sess="],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    for line in out.splitlines():
        parts = line.split()
        try:
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), int(parts[3]))
        except (IndexError, ValueError):
            continue
    return table


def _collect(pid: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, (ppid, _pgrp, _sess) in table.items():
        children.setdefault(ppid, []).append(child)
    found: list[int] = []
    seen = {pid}
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                found.append(child)
                stack.append(child)
    return found


def descendants(pid: int) -> list[int]:
    """All processes below `pid` in the parent/child tree (not including `pid`)."""
    if IS_WINDOWS:
        return []
    return _collect(pid, _proc_table())


def _tree_members(pid: int) -> set[int]:
    """Descendants of `pid` plus anything still in its process group or session.

    The group/session members cover children whose parent already exited (they
    were re-parented, so the ppid walk no longer finds them) but that did not
    call setsid themselves.
    """
    table = _proc_table()
    members = set(_collect(pid, table))
    for other, (_ppid, pgrp, sess) in table.items():
        if pgrp == pid or sess == pid:
            members.add(other)
    members.discard(os.getpid())
    return members


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group and every descendant, including setsid'd ones.

    The tree is frozen first (SIGSTOP) and re-scanned until it stops growing, so a
    process forking during the kill cannot slip out; then everything gets SIGKILL.
    Errors are ignored: the goal is "nothing of this command is left running".
    """
    if IS_WINDOWS:
        try:
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(pid)],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            log.debug("taskkill of %s failed", pid, exc_info=True)
        return

    victims: set[int] = set()
    for _ in range(5):
        found = _tree_members(pid) - victims
        victims |= found
        for target in found | {pid}:
            _signal(target, signal.SIGSTOP)
        try:
            os.killpg(pid, signal.SIGSTOP)
        except OSError:
            pass
        if not found:
            break
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    for target in victims | {pid}:
        _signal(target, signal.SIGKILL)
    log.debug("killed tree of %s (%d descendants)", pid, len(victims))


def pipe_inodes(proc: asyncio.subprocess.Process) -> set[int]:
    """Inodes of the stdout/stderr pipes of `proc` while our read ends are still open."""
    inodes: set[int] = set()
    transport = getattr(proc, "_transport", None)
    if transport is None or IS_WINDOWS:
        return inodes
    for fd in (1, 2):
        try:
            pipe_transport = transport.get_pipe_transport(fd)
            pipe = pipe_transport.get_extra_info("pipe") if pipe_transport is not None else None
            if pipe is not None:
                inodes.add(os.fstat(pipe.fileno()).st_ino)
        except (OSError, ValueError, AttributeError):
            continue
    return inodes


def _pipe_holders(inodes: set[int]) -> list[int]:
    """Processes (other than us) with one of the given pipes open, found via /proc/<pid>/fd."""
    targets = {f"pipe:[{inode}]" for inode in inodes}
    me = os.getpid()
    holders: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to inspect (then it cannot hold our pipe)
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    holders.append(int(entry))
                    break
            except OSError:
                continue
    return holders


def kill_leftovers(pid: int, inodes: set[int] | None = None) -> None:
    """SIGKILL what an already exited shell `pid` left behind.

    With `inodes` (from `pipe_inodes`) and /proc available, exactly the processes
    still holding the command's output pipes are killed, wherever they are (also
    after setsid); a child that redirected its output (`nohup x >log &`) detached
    on purpose and is spared. Otherwise everything still in the shell's process
    group or session is killed. `pid` itself is never signalled and its children
    are not walked: it may already be reaped (and its pid, in theory, reused),
    whereas a group or session id cannot be reused while a member is alive.
    """
    if IS_WINDOWS:
        return
    if inodes and os.path.isdir("/proc/self/fd"):
        for holder in _pipe_holders(inodes):
            _signal(holder, signal.SIGKILL)
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    for other, (_ppid, pgrp, sess) in _proc_table().items():
        if other != me and other != pid and (pgrp == pid or sess == pid):
            _signal(other, signal.SIGKILL)


def kill_all() -> None:
    """Kill every spawned process tree that is still alive or still holds its pipes (server shutdown)."""
    for proc in list(LIVE):
        if proc.returncode is None:
            kill_tree(proc.pid)
        else:
            kill_leftovers(proc.pid)
        LIVE.discard(proc)
