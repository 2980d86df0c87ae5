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

import threading
import time

__all__ = ["LOCAL_TYPES", "fs_type", "is_local", "parse_mountinfo"]

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


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (`\\040`)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """`(mount point, filesystem type)` of each line of a mountinfo table, in order."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            mounts.append((_unescape(fields[4]), tail[0]))
    return mounts


def _mounts() -> list[tuple[str, str]] | None:
    global _cache
    now = time.monotonic()
    with _lock:
        if _cache is not None and now - _cache[0] < REFRESH_S:
            return _cache[1]
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        return None
    with _lock:
        _cache = (now, mounts)
    return mounts


def fs_type(path: str, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the filesystem holding `path` (absolute and real: no symlink is resolved
    here); None when unknown. `mounts` defaults to this process's mount table."""
    if mounts is None:
        mounts = _mounts()
        if mounts is None:
            return None
    best: tuple[int, str] | None = None
    for point, kind in mounts:
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):  # a later mount over the same point wins
            best = (len(point), kind)
    return best[1] if best else None


def is_local(path: str, mounts: list[tuple[str, str]] | None = None) -> bool:
    """Whether `path` (absolute, real) is on a filesystem in LOCAL_TYPES; False when unknown."""
    return fs_type(path, mounts) in LOCAL_TYPES
