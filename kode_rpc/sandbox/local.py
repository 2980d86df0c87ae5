"""The local-filesystem sandbox: a work directory plus optional extra roots.

Paths are checked *after* following symlinks, because a symlink inside the work
directory that points at `/etc` must not become a way out. Paths that do not exist
yet are resolved too (`os.path.realpath` resolves the existing prefix and appends
the rest), so `fs_write` of `link/new.txt` cannot escape through `link`.
"""

from __future__ import annotations

import logging
import os
import sys

from .base import BoundaryError, Sandbox

log = logging.getLogger(__name__)

_LIB_PATH_VARS = ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")


def restore_env(env: dict[str, str], frozen: bool) -> dict[str, str]:
    """Return a copy of `env` with the library path a frozen bundle overrode put back.

    PyInstaller prepends its bundle directory to `LD_LIBRARY_PATH` (keeping the
    user's value in `LD_LIBRARY_PATH_ORIG`); tool subprocesses inheriting the
    bundle's libraries can crash or load the wrong `libssl`. When not frozen the
    environment is the user's own and is returned unchanged (as a copy).
    """
    out = dict(env)
    if not frozen:
        return out
    for key in [k for k in out if k.startswith("_PYI_") or k == "_MEIPASS2"]:
        del out[key]  # PyInstaller's own bookkeeping: a frozen program a tool starts must start fresh
    for var in _LIB_PATH_VARS:
        orig = out.pop(f"{var}_ORIG", None)
        if orig is not None:
            out[var] = orig
        else:
            out.pop(var, None)
    return out


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
    ) -> None:
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
        resolved = os.path.realpath(joined)
        if not self.enforce_boundary:
            return resolved
        for root in self._roots:
            if _is_within(resolved, root):
                return resolved
        raise BoundaryError(path, resolved)

    def child_env(self) -> dict[str, str]:
        """The user's environment for tool subprocesses (undoing a frozen bundle's overrides)."""
        return restore_env(dict(os.environ), bool(getattr(sys, "frozen", False)))
