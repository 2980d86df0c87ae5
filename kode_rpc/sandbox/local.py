"""The local-filesystem sandbox: a work directory plus optional extra roots.

Paths are checked *after* following symlinks, because a symlink inside the work
directory that points at `/etc` must not become a way out. Paths that do not exist
yet are resolved too (`os.path.realpath` resolves the existing prefix and appends
the rest), so `fs_write` of `link/new.txt` cannot escape through `link`.

A check by name is not enough on its own: a process in the work dir (a background
`bash_run`) can swap a checked file or directory for a symlink before the tool
opens it. So files are opened with `open_fd`, which opens the *checked real path*
one component at a time, each relative to the descriptor of its parent and none
of them following a symlink (`O_NOFOLLOW`). A symlink swapped in anywhere after
the check makes that open fail (ELOOP / ENOTDIR), and the failure is reported as a
BoundaryError; the descriptor that is returned is the object that was checked.

Platforms: Linux and macOS have `dir_fd` support and use the walk above (Linux
with `O_PATH` for the directories on the way, so a searchable but unreadable
ancestor still works). Where `os.open` has no `dir_fd` (Windows) the file is
opened by name and then verified: the opened file's device and inode must equal a
no-follow `lstat` of the real path, and that path must still resolve to itself.
That protects what is read; a file created through a swapped-in link would exist
before the check fails (creating symlinks needs a privilege on Windows).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys

from .base import BoundaryError, Sandbox
from .env import child_env, restore_frozen

log = logging.getLogger(__name__)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_WALK_DIR_FLAGS = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
"""Flags for each directory on the way down: never follow a symlink, and on Linux
(`O_PATH`) only look the directory up, so no read permission is needed."""
HAS_DIR_FD = (
    os.open in os.supports_dir_fd
    and os.mkdir in os.supports_dir_fd
    and os.stat in os.supports_dir_fd
    and os.scandir in os.supports_fd
    and bool(_NOFOLLOW)
)
"""True where `open_fd` can walk component by component (Linux, macOS, BSDs)."""
_LOOP_ERRNOS = (
    {errno.ELOOP}
    | ({errno.EMLINK} if sys.platform.startswith(("freebsd", "dragonfly")) else set())
    | ({errno.EFTYPE} if hasattr(errno, "EFTYPE") else set())  # NetBSD
)
"""What an O_NOFOLLOW open of a symlink fails with (ELOOP on Linux and macOS)."""


def restore_env(env: dict[str, str], frozen: bool) -> dict[str, str]:
    """A copy of `env` with a frozen bundle's overrides undone (see `env.restore_frozen`);
    unchanged (as a copy) when not frozen."""
    out = dict(env)
    return restore_frozen(out) if frozen else out


def _kind(entry: os.DirEntry[str]) -> str:
    """What a directory entry is, without following it."""
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _swapped(exc: OSError, dir_fd: int, name: str) -> bool:
    """Whether a failed no-follow open of `name` met a symlink where the checked path had none.

    ELOOP (EMLINK, EFTYPE on BSDs) from a single-component O_NOFOLLOW open can only
    mean a symlink. ENOTDIR means a symlink or a plain file where a directory was
    expected; only a plain file that is still there is a genuine "not a directory".
    """
    if exc.errno in _LOOP_ERRNOS:
        return True
    if exc.errno != errno.ENOTDIR:
        return False
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return True  # gone again: it changed under us
    return stat.S_ISLNK(mode) or stat.S_ISDIR(mode)


def _realpath(given: str, joined: str, attempts: int = 3) -> str:
    """`os.path.realpath`, tolerating a path that changes while it is resolved.

    realpath lstat()s a component and then readlink()s it; if a symlink is
    swapped for a file in between, readlink fails (EINVAL, ENOENT). That is a
    race, not an I/O error: try again, and refuse (BoundaryError) if the path
    keeps changing.
    """
    for _ in range(attempts):
        try:
            return os.path.realpath(joined)
        except OSError:
            continue
    raise BoundaryError(given, joined, f"path kept changing while it was resolved: {given}; refused")


def _is_within(path: str, root: str) -> bool:
    """True if `path` equals `root` or lies below it (component-wise, so /work2 is not in /work)."""
    p = os.path.normcase(path)
    r = os.path.normcase(root)
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:  # different drives on Windows, or mixed abs/rel
        return False


class LocalSandbox(Sandbox):
    """Tools may touch `work_dir` and `allow_paths`; everything else is a BoundaryError."""

    def __init__(
        self,
        work_dir: str,
        allow_paths: list[str] | None = None,
        enforce_boundary: bool = True,
        env_remove: list[str] | None = None,
        env_allow: list[str] | None = None,
    ) -> None:
        self.env_remove = list(env_remove or [])
        """Variables no child process may see (the agent's `apiKeyEnv`, configured key variables)."""
        self.env_allow = list(env_allow or [])
        """Secret-looking variables let through on purpose (`[sandbox] envAllow`)."""
        # The real path is stored so relative results (glob, grep) and the check
        # itself compare like with like even when work_dir is reached via a symlink.
        self.work_dir = os.path.realpath(os.path.abspath(work_dir))
        self.allow_paths = [os.path.realpath(os.path.abspath(p)) for p in (allow_paths or [])]
        self.enforce_boundary = enforce_boundary
        self._roots = [self.work_dir, *self.allow_paths]

    def resolve(self, path: str) -> str:
        """Absolute real path of `path` (relative to work_dir), or BoundaryError.

        `~` is deliberately literal: a model writing `~/x` gets `<work_dir>/~/x`
        rather than the user's home directory.
        """
        joined = os.path.join(self.work_dir, path)  # an absolute `path` replaces work_dir
        resolved = _realpath(path, joined)
        if not self.enforce_boundary:
            return resolved
        for root in self._roots:
            if _is_within(resolved, root):
                return resolved
        raise BoundaryError(path, resolved)

    def open_fd(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666, *, makedirs: bool = False) -> int:
        """Resolve and check `path` like `resolve`, then open exactly that real path.

        The open never follows a symlink (see the module docstring), so a path
        swapped for a symlink after the check fails with BoundaryError instead of
        reaching outside. The caller owns (and closes) the descriptor.
        """
        real = self.resolve(path)
        if not self.enforce_boundary:  # no boundary to keep: behave like a plain open
            if makedirs:
                os.makedirs(os.path.dirname(real), exist_ok=True)
            return os.open(real, flags | _BINARY, mode)
        if not HAS_DIR_FD:
            return self._open_verified(path, real, flags, mode, makedirs)
        return self._open_nofollow(path, real, flags, mode, makedirs)

    def list_dir(self, path: str) -> list[tuple[str, str]]:
        """`(name, kind)` of each entry of directory `path`, kind `dir`, `file`, `symlink` or `other`.

        Listed from a descriptor that `open_fd` opened (not by name), so a
        directory swapped for a symlink after the check is refused, not listed.
        """
        if not HAS_DIR_FD:
            real = self.resolve(path)  # Windows: names only; whatever is opened later is checked again
            with os.scandir(real) as it:
                return [(entry.name, _kind(entry)) for entry in it]
        fd = self.open_fd(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            with os.scandir(fd) as it:  # scandir works on a duplicate; the kinds are read while it is open
                return [(entry.name, _kind(entry)) for entry in it]
        finally:
            os.close(fd)

    def _open_nofollow(self, given: str, real: str, flags: int, mode: int, makedirs: bool) -> int:
        """Open `real` from `/` down, each component relative to its parent's descriptor, none followed.

        Starting at `/` rather than at the root of the sandbox also catches an
        ancestor of the work dir being swapped. `real` is absolute and free of
        `.`/`..` and symlinks (it came from realpath), so a walk that follows
        nothing lands exactly on the path that was checked.
        """
        anchor = os.path.splitdrive(real)[0] + os.sep
        parts = [p for p in real[len(anchor):].split(os.sep) if p]
        if not parts:
            return os.open(anchor, flags | _BINARY, mode)
        dir_fd = os.open(anchor, _WALK_DIR_FLAGS)
        try:
            for name in parts[:-1]:
                next_fd = self._open_component(given, real, dir_fd, name, _WALK_DIR_FLAGS, 0, makedirs)
                os.close(dir_fd)
                dir_fd = next_fd
            return self._open_component(given, real, dir_fd, parts[-1], flags | _NOFOLLOW | _BINARY, mode, False)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _open_component(given: str, real: str, dir_fd: int, name: str, flags: int, mode: int, makedirs: bool) -> int:
        """`os.open(name, dir_fd=dir_fd)`; a symlink found there means the path was swapped after the check."""
        try:
            try:
                return os.open(name, flags, mode, dir_fd=dir_fd)
            except FileNotFoundError:
                if not makedirs:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=dir_fd)
                except FileExistsError:
                    pass  # made meanwhile by someone else: the open below checks what it is
                return os.open(name, flags, mode, dir_fd=dir_fd)
        except OSError as exc:
            if _swapped(exc, dir_fd, name):
                raise BoundaryError(
                    given, real, f"path changed while it was being opened (a symlink appeared at {name!r}): "
                    f"{given}; refused",
                ) from None
            raise

    def _open_verified(self, given: str, real: str, flags: int, mode: int, makedirs: bool) -> int:
        """Fallback without `dir_fd`: open by name, then prove the descriptor is the checked file."""
        if makedirs:
            os.makedirs(os.path.dirname(real), exist_ok=True)
        try:
            fd = os.open(real, flags | _NOFOLLOW | _BINARY, mode)
        except OSError as exc:
            if exc.errno in _LOOP_ERRNOS:
                raise BoundaryError(given, real, f"path changed while it was being opened: {given}; refused") from None
            raise
        try:
            opened = os.fstat(fd)
            now = os.lstat(real)
            moved = os.path.normcase(os.path.realpath(real)) != os.path.normcase(real)
            if stat.S_ISLNK(now.st_mode) or not os.path.samestat(opened, now) or moved:
                raise BoundaryError(given, real, f"path changed while it was being opened: {given}; refused")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def child_env(self) -> dict[str, str]:
        """The environment for tool subprocesses: the user's, without secrets (`env.child_env`)."""
        return child_env(remove=self.env_remove, allow=self.env_allow)
