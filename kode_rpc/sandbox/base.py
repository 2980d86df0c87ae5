"""The sandbox interface: where a tool may read, write and run processes."""

from __future__ import annotations

from abc import ABC, abstractmethod


class BoundaryError(Exception):
    """A path resolves (after symlinks) outside the sandbox's workDir and allowPaths."""

    def __init__(self, path: str, resolved: str) -> None:
        super().__init__(f"path is outside the sandbox: {path} (resolves to {resolved})")
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
    def child_env(self) -> dict[str, str]:
        """Environment for tool subprocesses (the user's original one, not the frozen app's)."""
