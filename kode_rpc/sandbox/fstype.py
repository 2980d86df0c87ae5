"""Whether a directory lives on a local filesystem (Linux), so `fs_read` may read it on the loop.

Why: reading a small file in a worker thread costs a thread hop both ways, and
while the thread runs the loop goes idle and commits the turn's writes, so the two
fight for the GIL; measured in process, an `fs_read` turn took 3.3 ms with the
thread and 2.7 ms reading on the loop (`bench/README.md`). The loop must never
wait on I/O, though: on NFS, SMB, sshfs or any FUSE filesystem an open or a read
can take a network round trip or hang. So reads run on the loop only where this
says the work directory is local, and even there only when the file's bytes are
already in the page cache (`fs.py`, `RWF_NOWAIT`); everything else keeps the thread.

The filesystem type comes from `/proc/self/mountinfo` (the mount point that is the
longest prefix of the real path), re-read every few seconds. Anywhere else (macOS,
Windows, no /proc) the answer is False.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["LOCAL_TYPES", "fs_type", "is_local", "loop_readable", "mount_of", "parse_mountinfo", "refuses_nowait"]

LOCAL_TYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "f2fs", "jfs", "reiserfs", "zfs",
    "tmpfs", "ramfs", "overlay",
})
"""Filesystems whose opens and cached reads never wait on a network or a user-space
daemon. Not listed (so treated as remote): nfs*, cifs/smb3, 9p, virtiofs, fuse.*,
ceph, gfs2 and anything unknown."""

MOUNTINFO = "/proc/self/mountinfo"
REFRESH_S = 5.0
"""The mount table is re-read at most this often: a filesystem mounted under a work
directory is seen as what it is within seconds."""

_lock = threading.Lock()
_cache: tuple[float, list[tuple[str, str]]] | None = None


def _unescape(field: bytes) -> str:
    """A mount point as the OS names it: mountinfo escapes space, tab, newline and backslash
    as octal (`\\040`); the bytes are decoded like every path (`os.fsdecode`), so a
    non-UTF-8 name still matches the paths that lead into it."""
    out = bytearray()
    i = 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i:i + 1] == b"\\" and len(code) == 3 and all(c in b"01234567" for c in code):
            out.append(int(code, 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def parse_mountinfo(text: bytes | str) -> list[tuple[str, str]]:
    """`(mount point, filesystem type)` of each line of a mountinfo table, in order."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    mounts = []
    for line in data.splitlines():
        left, sep, right = line.partition(b" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            mounts.append((_unescape(fields[4]), os.fsdecode(tail[0])))
    return mounts


def _mounts() -> list[tuple[str, str]] | None:
    global _cache
    now = time.monotonic()
    with _lock:
        if _cache is not None and now - _cache[0] < REFRESH_S:
            return _cache[1]
    try:
        with open(MOUNTINFO, "rb") as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        return None
    with _lock:
        _cache = (now, mounts)
    return mounts


def mount_of(path: str, mounts: list[tuple[str, str]] | None = None) -> tuple[str, str] | None:
    """`(mount point, type)` of the filesystem holding `path` (absolute and real: no symlink
    is resolved here); None when unknown. `mounts` defaults to this process's mount table."""
    if mounts is None:
        mounts = _mounts()
        if mounts is None:
            return None
    best: tuple[str, str] | None = None
    for point, kind in mounts:
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # a later mount over the same point wins
            best = (point, kind)
    return best


def fs_type(path: str, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the filesystem holding `path`; None when unknown (see `mount_of`)."""
    mount = mount_of(path, mounts)
    return mount[1] if mount else None


def is_local(path: str, mounts: list[tuple[str, str]] | None = None) -> bool:
    """Whether `path` (absolute, real) is on a filesystem in LOCAL_TYPES; False when unknown."""
    return fs_type(path, mounts) in LOCAL_TYPES


_no_nowait: set[str] = set()
"""Mount points whose filesystem refused a `RWF_NOWAIT` read (tmpfs on some kernels)."""


def loop_readable(path: str) -> bool:
    """Whether a read of `path` may be tried on the event loop: a local filesystem that
    did not refuse non-blocking reads before."""
    mount = mount_of(path)
    return mount is not None and mount[1] in LOCAL_TYPES and mount[0] not in _no_nowait


def refuses_nowait(path: str) -> None:
    """Remember that the filesystem of `path` has no `RWF_NOWAIT` reads (its reads then
    stay on a thread instead of failing on the loop first every time)."""
    mount = mount_of(path)
    if mount is not None:
        _no_nowait.add(mount[0])
