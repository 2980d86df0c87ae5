"""Watching a workDir for file changes (contract section 15: `file_changed`).

One `DirWatcher` per loaded agent runs `watchfiles.awatch` over its workDir in a
task. Changes are coalesced over about 100 ms (watchfiles' `step`/`debounce`), reduced
to one net change per file per window, `.git/` and `.gitignore`d paths left out, and
handed to `report` as `[(path relative to the workDir, change)]`. watchfiles is
imported on the first `start()`, never at server start-up.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO

Change = Literal["added", "modified", "deleted"]
Report = Callable[[list[tuple[str, Change]]], None]

STEP_MS = 50
DEBOUNCE_MS = 100


class DirWatcher:
    def __init__(self, root: str, report: Report, *, step_ms: int = STEP_MS, debounce_ms: int = DEBOUNCE_MS) -> None:
        self.root = os.path.realpath(root)
        self.report = report
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.active = False
        """Watching right now: the tools' own file reports are then left to us."""
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirs: set[str] = set()
        self._scanned: dict[str, tuple[int, int]] = {}
        """Files reported from a new directory's scan (see `_net`), by (mtime, size)."""

    def start(self) -> None:
        if self._task is not None or not os.path.isdir(self.root):
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.root}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.active = False
        if task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 2)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:
            log.debug("watcher of %s failed", self.root, exc_info=True)

    async def _run(self) -> None:
        try:
            import watchfiles
        except ImportError:  # the tools' own reports stay on
            log.warning("watchfiles is not installed: file changes by others are not reported")
            return
        assert self._stop is not None
        gen = watchfiles.awatch(self.root, watch_filter=self._keep, step=self.step_ms, debounce=self.debounce_ms,
                                stop_event=self._stop, recursive=True, ignore_permission_denied=True)
        self.active = True  # the first step of the generator (below) sets up the OS watch at once
        try:
            async for changes in gen:
                events = self._net(changes)
                if events:
                    events = await self._not_ignored(events)
                if events:
                    try:
                        self.report(events)
                    except Exception:
                        log.exception("file change report failed")
        except Exception:
            log.warning("watching %s stopped", self.root, exc_info=True)
        finally:
            self.active = False

    # --- filtering -------------------------------------------------------------------
    def _keep(self, change: object, path: str) -> bool:
        rel = os.path.relpath(path, self.root)
        return not any(part == ".git" for part in rel.split(os.sep))

    def _net(self, changes: set[tuple[object, str]]) -> list[tuple[str, Change]]:
        """One net change per file (watchfiles' batch is a set: order is lost, so the file's
        state now decides): there now -> added (only added seen) or modified; gone ->
        deleted, unless it was also added in this window (created and removed)."""
        seen: dict[str, set[str]] = {}
        for change, path in changes:
            seen.setdefault(path, set()).add(getattr(change, "name", str(change)))
        scanned, self._scanned = self._scanned, {}
        for path, kinds in list(seen.items()):
            if "added" in kinds and os.path.isdir(path):
                # A new directory is watched only once the OS told us about it: files made
                # in it before that (`mkdir -p a && echo > a/f`) are found by a scan.
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames[:] = [d for d in dirnames if d != ".git"]
                    for name in filenames:
                        file = os.path.join(dirpath, name)
                        if file not in seen:
                            seen[file] = {"added"}
                            try:
                                st = os.stat(file)
                                self._scanned[file] = (st.st_mtime_ns, st.st_size)
                            except OSError:
                                pass
        out: list[tuple[str, Change]] = []
        for path, kinds in sorted(seen.items()):
            if os.path.isdir(path):
                self._dirs.add(path)
                continue
            rel = os.path.relpath(path, self.root)
            if os.path.lexists(path):
                if path in scanned and kinds == {"added"}:
                    try:
                        st = os.stat(path)
                        if (st.st_mtime_ns, st.st_size) == scanned[path]:
                            continue  # the late OS event of a file the scan already reported
                    except OSError:
                        pass
                out.append((rel, "added" if kinds == {"added"} else "modified"))
            elif path in self._dirs:
                self._dirs.discard(path)
            elif "added" not in kinds:
                out.append((rel, "deleted"))
        return [(rel.replace(os.sep, "/"), c) for rel, c in out]

    async def _not_ignored(self, events: list[tuple[str, Change]]) -> list[tuple[str, Change]]:
        ignored = await asyncio.to_thread(self._ignored, [rel for rel, _ in events])
        return [(rel, c) for rel, c in events if rel not in ignored]

    def _ignored(self, paths: list[str]) -> set[str]:
        """Which of `paths` `.gitignore` leaves out: `git check-ignore` in a repository,
        else a plain match of the top-level `.gitignore`'s patterns."""
        git = shutil.which("git")
        if git is not None:
            try:
                proc = subprocess.run([git, "check-ignore", "-z", "--stdin"], cwd=self.root,
                                      input="\0".join(paths).encode() + b"\0", capture_output=True, timeout=10)
                if proc.returncode in (0, 1):
                    return {p.decode() for p in proc.stdout.split(b"\0") if p}
            except (OSError, subprocess.SubprocessError):
                pass
        return {p for p in paths if _fnmatch_ignored(p, _top_patterns(self.root))}


def _top_patterns(root: str) -> list[str]:
    try:
        with open(os.path.join(root, ".gitignore"), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f]
    except OSError:
        return []
    return [line for line in lines if line and not line.startswith(("#", "!"))]


def _fnmatch_ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        pat = pattern.rstrip("/")
        if pat.startswith("/"):
            pat = pat[1:]
            if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*"):
                return True
        elif "/" in pat:
            if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*"):
                return True
        elif any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False
