"""Checkpoints of a workDir in a shadow git repository of the server's own (contract 14).

`ShadowRepo(dir, work_dir)` keeps, under `dir` (`<fileStoreBaseDir>/checkpoints/<agentId>`):

- `git/`: a bare repository (objects only; no branch is ever checked out),
- `index`: the shadow index, the stat cache that makes the next snapshot cheap,
- `checkpoints.json`: the checkpoints' metadata (written atomically), so they survive
  restarts without touching the store.

Every git command gets `GIT_DIR`, `GIT_WORK_TREE` and `GIT_INDEX_FILE` set, no system or
global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`) and
`--no-optional-locks`, so the user's `.git` (and their git config) are never read or
written: git itself never adds a path named `.git`. A snapshot is `git add -A` into the
shadow index + `git write-tree` (no commit, no checkout). Left out: paths the workDir's
`.gitignore` files ignore (git's own rules, with the work tree being the workDir) and
files over 10 MiB (found from `git ls-files` and written to the shadow repo's
`info/exclude`).

Everything here is blocking; the runtime runs it in a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

MAX_FILE = 10 * 1024 * 1024
"""Files larger than this are left out of snapshots."""
MAX_DIFF = 1024 * 1024
"""A turn_diff's unified diff is cut at this many bytes."""
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
META = "checkpoints.json"
_CONFIG = """\
[core]
\trepositoryformatversion = 0
\tfilemode = true
\tbare = true
\tautocrlf = false
\tsafecrlf = false
\tsymlinks = true
\tquotepath = false
\tfsmonitor = false
\tuntrackedCache = false
\tprecomposeunicode = false
[gc]
\tauto = 0
[advice]
\taddEmbeddedRepo = false
\taddIgnoredFile = false
[diff]
\trenames = false
\texternal =
[color]
\tui = false
"""
_EXCLUDE = "# kode-rpc checkpoints: never the user's repository, never huge files\n.git\n"


class CheckpointError(Exception):
    """git failed (the message says how) or is missing."""


def git_available() -> str | None:
    """The path of `git` on PATH, or None."""
    return shutil.which("git")


@dataclass
class FileChange:
    path: str
    change: str
    """added | modified | deleted"""
    additions: int = 0
    deletions: int = 0


class ShadowRepo:
    def __init__(self, directory: str, work_dir: str) -> None:
        self.dir = directory
        self.work_dir = os.path.realpath(work_dir)
        self.git_dir = os.path.join(directory, "git")
        self.index = os.path.join(directory, "index")
        self._env: dict[str, str] | None = None
        self._ignore_files: dict[str, tuple[int, int]] | None = None
        """(mtime_ns, size) of every .gitignore at the last snapshot: unchanged, no path
        in the shadow index can have become ignored, and one git call is saved."""

    # --- git ---------------------------------------------------------------------
    def env(self, index: str | None = None) -> dict[str, str]:
        if self._env is None:
            base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
            base.update(GIT_DIR=self.git_dir, GIT_WORK_TREE=self.work_dir, GIT_CONFIG_NOSYSTEM="1",
                        GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0",
                        LC_ALL="C", GIT_NO_REPLACE_OBJECTS="1", GIT_LITERAL_PATHSPECS="1")
            self._env = base
        return dict(self._env, GIT_INDEX_FILE=index or self.index)

    def git(self, *args: str, index: str | None = None, data: bytes | None = None, ok: tuple[int, ...] = (0,)) -> bytes:
        try:
            proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=self.work_dir, env=self.env(index),
                                  input=data, capture_output=True, check=False)
        except FileNotFoundError as exc:
            raise CheckpointError(f"git could not run: {exc}") from None
        if proc.returncode not in ok:
            err = proc.stderr.decode("utf-8", "replace").strip()
            raise CheckpointError(f"git {args[0]} failed ({proc.returncode}): {err[:500]}")
        return proc.stdout

    def ensure(self) -> None:
        """Create the shadow repository on first use (its own config; no hooks, no templates)."""
        if os.path.isfile(os.path.join(self.git_dir, "config")):
            return
        if not os.path.isdir(self.work_dir):
            raise CheckpointError(f"workDir does not exist: {self.work_dir}")
        os.makedirs(self.dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".git-", dir=self.dir)
        env = {k: v for k, v in self.env().items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
        proc = subprocess.run(["git", "init", "-q", "--bare", "--template=", tmp], env=env, cwd=self.dir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"git init failed: {proc.stderr.decode('utf-8', 'replace').strip()[:500]}")
        with open(os.path.join(tmp, "config"), "w", encoding="utf-8") as fh:
            fh.write(_CONFIG)
        os.makedirs(os.path.join(tmp, "info"), exist_ok=True)
        with open(os.path.join(tmp, "info", "exclude"), "w", encoding="utf-8") as fh:
            fh.write(_EXCLUDE)
        os.replace(tmp, self.git_dir)

    # --- snapshots ---------------------------------------------------------------
    def snapshot(self) -> str:
        """The workDir as a tree (its id); files over 10 MiB and ignored paths left out."""
        self.ensure()
        self._exclude_large()
        self.git("add", "-A", "--ignore-errors", ok=(0, 1))
        return self.git("write-tree").decode().strip()

    def _exclude_large(self) -> None:
        # The workDir's .gitignore files only: our own info/exclude lists the large files.
        listing = self.git("ls-files", "-z", "-t", "--cached", "--others", "--exclude-per-directory=.gitignore",
                           "--exclude=.git")
        large: list[str] = []
        tracked_large: list[str] = []
        seen: set[str] = set()
        ignore_files: dict[str, tuple[int, int]] = {}
        for entry in listing.split(b"\0"):
            if len(entry) < 3:
                continue
            tag, path = entry[:1], os.fsdecode(entry[2:])
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.lstat(os.path.join(self.work_dir, path))
            except OSError:
                continue
            if st.st_size > MAX_FILE and not stat.S_ISLNK(st.st_mode):
                large.append(path)
                if tag != b"?":
                    tracked_large.append(path)
            elif path == ".gitignore" or path.endswith("/.gitignore"):
                ignore_files[path] = (st.st_mtime_ns, st.st_size)
        lines = [_EXCLUDE] + [_pattern(p) + "\n" for p in large if "\n" not in p]
        exclude = os.path.join(self.git_dir, "info", "exclude")
        text = "".join(lines)
        try:
            with open(exclude, encoding="utf-8") as fh:
                same = fh.read() == text
        except OSError:
            same = False
        if not same:
            with open(exclude, "w", encoding="utf-8") as fh:
                fh.write(text)
        # Paths in the shadow index that are now ignored (a changed .gitignore) or too large.
        ignored: list[str] = []
        if ignore_files != self._ignore_files:
            ignored = [os.fsdecode(p) for p in self.git("ls-files", "-z", "--cached", "--ignored",
                                                        "--exclude-standard").split(b"\0") if p]
            self._ignore_files = ignore_files
        drop = sorted(set(tracked_large) | set(ignored))
        if drop:
            self.git("rm", "--cached", "-f", "-q", "--ignore-unmatch", "-r", "--pathspec-from-file=-",
                     "--pathspec-file-nul", data=b"\0".join(os.fsencode(p) for p in drop))

    # --- differences ---------------------------------------------------------------
    def changes(self, old: str, new: str) -> list[FileChange]:
        """Files that differ from tree `old` to tree `new`, with line counts."""
        # One call: every raw record (":modes ids status" NUL path NUL), then every numstat
        # record ("adds TAB dels TAB path" NUL; "-" for binary files).
        tokens = self.git("diff-tree", "-r", "-z", "--no-renames", "--raw", "--numstat", old, new).split(b"\0")
        out: dict[str, FileChange] = {}
        i = 0
        while i + 1 < len(tokens) and tokens[i].startswith(b":"):
            status = tokens[i].split()[-1][:1]
            path = os.fsdecode(tokens[i + 1])
            out[path] = FileChange(path, {b"A": "added", b"D": "deleted"}.get(status, "modified"))
            i += 2
        for entry in tokens[i:]:
            parts = entry.split(b"\t", 2)
            if len(parts) != 3:
                continue
            fc = out.get(os.fsdecode(parts[2]))
            if fc is not None:
                fc.additions = int(parts[0]) if parts[0].isdigit() else 0
                fc.deletions = int(parts[1]) if parts[1].isdigit() else 0
        return sorted(out.values(), key=lambda f: f.path)

    def patch(self, old: str, new: str, limit: int = MAX_DIFF) -> tuple[str, bool]:
        """The unified diff from `old` to `new`, cut at `limit` bytes (on a line end)."""
        proc = subprocess.Popen(["git", "--no-optional-locks", "diff-tree", "-r", "-p", "--no-renames", "--no-color",
                                 "--no-ext-diff", "--no-textconv", old, new],
                                cwd=self.work_dir, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        data = proc.stdout.read(limit + 1)
        truncated = len(data) > limit
        if truncated:
            proc.kill()
            data = data[:limit]
            cut = data.rfind(b"\n")
            data = data[:cut + 1] if cut >= 0 else b""
        proc.stdout.close()
        proc.wait()
        return data.decode("utf-8", "replace"), truncated

    def changed_paths(self, old: str, new: str) -> list[str]:
        out = self.git("diff-tree", "-r", "-z", "--no-renames", "--name-only", old, new)
        return sorted(os.fsdecode(p) for p in out.split(b"\0") if p)

    # --- restoring -----------------------------------------------------------------
    def restore(self, target: str, current: str) -> list[FileChange]:
        """Make the workDir equal tree `target` (it is `current` now): files that are not
        in `target` are removed, the others written. Ignored and large files, which no
        tree holds, are left alone. Returns what was done to each file."""
        changes = self.changes(current, target)
        for fc in changes:
            if fc.change == "deleted":
                self._remove(fc.path)
        write = [fc.path for fc in changes if fc.change != "deleted"]
        if write:
            fd, tmp_index = tempfile.mkstemp(prefix="restore-", suffix=".index", dir=self.dir)
            os.close(fd)
            os.unlink(tmp_index)
            try:
                self.git("read-tree", target, index=tmp_index)
                for path in write:  # a file where a directory must go, or the reverse
                    self._clear_way(path)
                self.git("checkout-index", "-f", "-z", "--stdin", index=tmp_index,
                         data=b"\0".join(os.fsencode(p) for p in write) + b"\0")
            finally:
                if os.path.exists(tmp_index):
                    os.unlink(tmp_index)
        return changes

    def _inside(self, rel: str) -> str:
        """The absolute path of `rel`, refusing any path whose parent leads out of the
        workDir through a symlink or `..` (a tree never holds one, but be sure)."""
        full = os.path.normpath(os.path.join(self.work_dir, rel))
        parent = os.path.realpath(os.path.dirname(full))
        if parent != self.work_dir and not parent.startswith(self.work_dir + os.sep):
            raise CheckpointError(f"refusing to touch {rel}: it leads outside the workDir")
        if ".git" in rel.split("/"):
            raise CheckpointError(f"refusing to touch {rel}")
        return full

    def _remove(self, rel: str) -> None:
        full = self._inside(rel)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except FileNotFoundError:
            pass
        parent = os.path.dirname(full)
        while parent != self.work_dir and parent.startswith(self.work_dir + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def _clear_way(self, rel: str) -> None:
        full = self._inside(rel)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        # a file standing where one of the path's directories must be
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = os.path.join(self.work_dir, *parts[:i])
            if os.path.lexists(p) and (os.path.islink(p) or not os.path.isdir(p)):
                os.unlink(p)
                break

    # --- metadata -------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.dir, META), encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
                return data
        except (OSError, ValueError):
            pass
        return {"checkpoints": []}

    def save(self, meta: dict[str, Any]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".meta-", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, separators=(",", ":"))
        os.replace(tmp, os.path.join(self.dir, META))


def load_meta(directory: str) -> dict[str, Any]:
    """The metadata of an agent's checkpoints without opening the repository."""
    return ShadowRepo(directory, directory).load()


def _pattern(path: str) -> str:
    """An anchored gitignore pattern matching exactly `path`."""
    out = []
    for ch in path:
        if ch in "\\*?[!#":
            out.append("\\")
        out.append(ch)
    text = "".join(out)
    if text.endswith(" "):
        text = text[:-1] + "\\ "
    return "/" + text
