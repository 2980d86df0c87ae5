"""The sandbox interface: where a tool may read, write and run processes."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod


class BoundaryError(Exception):
    """A path resolves (after symlinks) outside the sandbox's workDir and allowPaths,
    or changed into a symlink between the check and the open (`reason` says so)."""

    def __init__(self, path: str, resolved: str, reason: str | None = None) -> None:
        super().__init__(reason or f"path is outside the sandbox: {path} (resolves to {resolved})")
        self.path = path
        self.resolved = resolved


class Sandbox(ABC):
    work_dir: str

    @abstractmethod
    def resolve(self, path: str) -> str:
        """Absolute real path of `path` (relative to workDir), or BoundaryError.

        Symlinks are followed before the check, also for a path that does not exist
        yet (its nearest existing ancestor is resolved). `~` is literal.
        """

    @abstractmethod
    def open_fd(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666, *, makedirs: bool = False) -> int:
        """A descriptor for `path` opened so that what is opened is what was checked.

        Checking a path and then opening it by name is a race: a symlink swapped in
        between the two makes the open reach outside. Every file tool opens through
        this instead, and reads, writes or lists only the descriptor it returns.
        `makedirs` creates missing parent directories (inside the boundary) first.
        Raises BoundaryError (also for a detected swap) or OSError.
        """

    @abstractmethod
    def list_dir(self, path: str) -> list[tuple[str, str]]:
        """`(name, kind)` of each entry of the directory `path`, kind being `dir`, `file`,
        `symlink` or `other` (never followed), listed through a descriptor from `open_fd`."""

    @abstractmethod
    def child_env(self) -> dict[str, str]:
        """Environment for tool subprocesses (the user's original one, not the frozen app's)."""
