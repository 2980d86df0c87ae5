"""Watching workDirs for file changes (contract section 15: `file_changed`).

Each loaded agent has a `DirWatcher` over its workDir; all of them in a process
share one OS watch (`WatchHub`: one `watchfiles.watch` over every watched root, on
its own thread), rebuilt when the set of roots changes. One watch per agent cost two OS threads and
an inotify instance each (~57 KB of RSS per agent, measured with 50 agents), and
inotify instances are capped per user (`max_user_instances`, 128 by default), so a
few servers with many agents ran out and lost their watchers ("Too many open
files"). On a rebuild the new watch starts before the old one stops, and the old
one keeps reporting for one more window, so no change falls in between; a file
both report in that overlap is reported by the first to see it (so a second
change to it within that ~0.25 s is folded into the first). While a new root's
watch is being set up (up to `UP_MS` after it is), the agent's tools report their
own changes, and one made in that moment may also come from the watch.

Changes are coalesced over about 100 ms (watchfiles' `step`/`debounce`), reduced to
one net change per file per window, `.git/` and `.gitignore`d paths left out, and
handed to each watcher's `report` as `[(path relative to its workDir, change)]`.
watchfiles is imported on the first `start()`, never at server start-up.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import shutil
import subprocess
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal

log = logging.getLogger(__name__)
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO

Change = Literal["added", "modified", "deleted"]
Report = Callable[[list[tuple[str, Change]]], None]
RawChanges = set[tuple[Any, str]]

STEP_MS = 50
DEBOUNCE_MS = 100
UP_MS = 200
"""The watch thread wakes at least this often (a cheap return from the OS wait); its
first wake-up says the watch is up."""
OVERLAP_S = (STEP_MS + DEBOUNCE_MS) / 1000 + 0.1
"""How long a replaced watch keeps reporting: one whole window after the new one is up."""
REBUILD_DELAY_S = 0.05
"""A new root is watched after this long, so agents loaded together (a restart, a script
creating many) cost one rebuild, not one each (each left threads' memory behind)."""
RETRY_S = (1.0, 30.0)
"""After a watch failed (a root removed, an inotify limit reached), rebuild after 1 s,
doubling up to 30 s while it keeps failing."""


class DirWatcher:
    """One agent's view of the shared watch: its root, its net changes, its report."""

    def __init__(self, root: str, report: Report) -> None:
        self.root = os.path.realpath(root)
        self.report = report
        self.active = False
        """Watching right now: the tools' own file reports are then left to us."""
        self._hub: WatchHub | None = None
        self._dirs: set[str] = set()
        self._scanned: dict[str, tuple[int, int]] = {}
        """Files reported from a new directory's scan (see `_net`), by (mtime, size)."""
        self._last: asyncio.Task[None] | None = None
        """The latest report in progress: reports of one watcher go out in order."""

    def start(self) -> None:
        if self._hub is not None or not os.path.isdir(self.root):
            return
        self._hub = WatchHub.of_loop()
        self._hub.add(self)

    async def stop(self) -> None:
        hub, self._hub = self._hub, None
        self.active = False
        if hub is not None:
            await hub.remove(self)
        last, self._last = self._last, None
        if last is not None and not last.done():
            last.cancel()

    def changed(self, changes: list[tuple[Any, str]]) -> None:
        """The hub's raw changes under this root (one window): reported after the ones before."""
        prev = self._last
        self._last = asyncio.get_running_loop().create_task(self._handle(changes, prev))

    async def _handle(self, raw: list[tuple[Any, str]], prev: asyncio.Task[None] | None) -> None:
        if prev is not None and not prev.done():
            await asyncio.wait([prev])
        kept = {(c, p) for c, p in raw if self._keep(p)}
        events = self._net(kept) if kept else []
        if events:
            events = await self._not_ignored(events)
        if events and self._hub is not None:
            try:
                self.report(events)
            except Exception:
                log.exception("file change report failed")

    # --- filtering -------------------------------------------------------------------
    def _keep(self, path: str) -> bool:
        rel = os.path.relpath(path, self.root)
        return not any(part == ".git" for part in rel.split(os.sep))

    def _net(self, changes: RawChanges) -> list[tuple[str, Change]]:
        """One net change per file (watchfiles' batch is a set: order is lost, so the file's
        state now decides): there now -> added (created in the window: added seen, deleted not)
        or modified; gone ->
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
                if path in scanned:
                    try:
                        st = os.stat(path)
                        if (st.st_mtime_ns, st.st_size) == scanned[path]:
                            continue  # the late OS event of a file the scan already reported
                    except OSError:
                        pass
                # Created in this window (and not deleted first: then it was there before).
                out.append((rel, "added" if "added" in kinds and "deleted" not in kinds else "modified"))
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


class _Watch:
    """One `watchfiles.watch` over a fixed set of roots, on its own thread.

    Not `awatch` in the loop: setting up the OS watch walks every directory under the
    roots inside the generator's first step, which blocked the event loop (measured:
    0.5 s for a tree of 64,000 directories), and the shared watch is set up again
    whenever an agent loads. The watch is taken as up at its first yield (changes, or
    an empty set after `UP_MS` without any)."""

    def __init__(self, roots: list[str], on_changes: Callable[[_Watch, RawChanges], None],
                 on_up: Callable[[_Watch], None], on_end: Callable[[_Watch, BaseException | None], None]) -> None:
        self.roots = roots
        self.up = False
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._stop = threading.Event()
        self._on_changes, self._on_up, self._on_end = on_changes, on_up, on_end
        threading.Thread(target=self._run, name="kode-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        """The watch thread: hands every batch to the loop."""
        error: BaseException | None = None
        announced = False
        try:
            import watchfiles

            for changes in watchfiles.watch(*self.roots, watch_filter=_not_git, debounce=DEBOUNCE_MS, step=STEP_MS,
                                            stop_event=self._stop, rust_timeout=UP_MS, yield_on_timeout=True,
                                            raise_interrupt=False, recursive=True, ignore_permission_denied=True):
                if not announced:
                    announced = True
                    self._call(self._came_up)
                if changes:
                    self._call(self._on_changes, self, changes)
        except BaseException as exc:  # ImportError, a root gone, an inotify limit: the hub decides
            error = exc
        finally:
            self._call(self._finish, error)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _came_up(self) -> None:
        if not self._stop.is_set() and not self.done.done():
            self.up = True
            self._on_up(self)

    def _finish(self, error: BaseException | None) -> None:
        self.up = False
        if not self.done.done():
            self.done.set_result(None)
        self._on_end(self, error)


def _not_git(change: object, path: str) -> bool:
    """Nothing under a `.git` directory (git's own churn); the rest is filtered per root."""
    return f"{os.sep}.git{os.sep}" not in path + os.sep


class WatchHub:
    """The process's one OS watch over every loaded agent's workDir (see the module doc)."""

    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WatchHub] = weakref.WeakKeyDictionary()

    @classmethod
    def of_loop(cls) -> WatchHub:
        loop = asyncio.get_running_loop()
        hub = cls._hubs.get(loop)
        if hub is None:
            hub = cls._hubs[loop] = cls()
        return hub

    def __init__(self) -> None:
        self._watchers: dict[str, set[DirWatcher]] = {}
        self._current: _Watch | None = None
        self._retiring: set[_Watch] = set()
        self._reported: dict[str, tuple[_Watch, float]] = {}
        """Around an overlap of two watches: which one last reported a path, and when."""
        self._dedupe_until = 0.0
        """The overlap's late reports (a window that closed as the old watch stopped) last until then."""
        self._scheduled = False
        self._unavailable = False
        self._retry_s = RETRY_S[0]

    def add(self, watcher: DirWatcher) -> None:
        watchers = self._watchers.setdefault(watcher.root, set())
        watchers.add(watcher)
        if len(watchers) == 1:
            self._schedule(REBUILD_DELAY_S)
        elif self._current is not None and self._current.up:
            watcher.active = True

    async def remove(self, watcher: DirWatcher) -> None:
        watchers = self._watchers.get(watcher.root)
        if watchers is None or watcher not in watchers:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.root]
            self._schedule()
        if not self._watchers:  # the last one: wait until the OS watch is gone
            await asyncio.sleep(0)  # let the scheduled rebuild stop it
            ends = [w.done for w in (self._current, *self._retiring) if w is not None]
            if ends:
                await asyncio.wait(ends, timeout=2)

    # --- the one watch ------------------------------------------------------------
    def _schedule(self, delay: float = 0) -> None:
        """Rebuild once for all the adds and removes until then (this tick, or `delay`)."""
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if delay:
                loop.call_later(delay, self._rebuild)
            else:
                loop.call_soon(self._rebuild)

    def _rebuild(self) -> None:
        self._scheduled = False
        if self._unavailable:
            return
        roots = sorted(r for r in self._watchers if os.path.isdir(r))
        old = self._current
        if old is not None and old.roots == roots:
            return
        self._current = None
        if old is not None:
            self._retire(old, at_once=not roots)
        if roots:
            self._current = _Watch(roots, self._changes, self._up, self._ended)
        else:
            for watch in self._retiring:  # nothing to wait for: all of them stop now
                watch.stop()
            self._mark_active(None)

    def _retire(self, watch: _Watch, at_once: bool) -> None:
        """Stop a replaced watch: at once if nothing replaces it, else one window after
        the first of its successors to come up (it reports what happened before that)."""
        self._retiring.add(watch)
        if at_once or not watch.up:
            watch.stop()

    def _up(self, watch: _Watch) -> None:
        if watch is not self._current:
            return
        self._retry_s = RETRY_S[0]
        self._mark_active(watch)
        loop = asyncio.get_running_loop()
        for old in list(self._retiring):
            loop.call_later(OVERLAP_S, old.stop)

    def _ended(self, watch: _Watch, error: BaseException | None) -> None:
        if watch in self._retiring:
            self._retiring.discard(watch)
            self._dedupe_until = asyncio.get_running_loop().time() + 2 * OVERLAP_S
        if watch is not self._current:
            return
        self._current = None
        self._mark_active(None)
        if isinstance(error, ImportError):
            self._unavailable = True  # the tools' own reports stay on
            log.warning("watchfiles is not installed: file changes by others are not reported")
        else:  # a root removed, a watch limit reached: try again with the roots there are now
            log.warning("watching %d workDirs stopped (%s); retrying in %.0f s", len(watch.roots), error,
                        self._retry_s)
            self._schedule(self._retry_s)
            self._retry_s = min(self._retry_s * 2, RETRY_S[1])

    def _mark_active(self, watch: _Watch | None) -> None:
        roots = set(watch.roots) if watch is not None else set()
        for root, watchers in self._watchers.items():
            for w in watchers:
                w.active = root in roots

    def _changes(self, watch: _Watch, changes: RawChanges) -> None:
        now = asyncio.get_running_loop().time()
        if self._retiring or now < self._dedupe_until:  # watches overlap: a file both saw is reported once
            kept: RawChanges = set()
            for change in changes:
                first = self._reported.get(change[1])
                if first is not None and first[0] is not watch and now - first[1] < 2 * OVERLAP_S:
                    continue
                self._reported[change[1]] = (watch, now)
                kept.add(change)
            changes = kept
        elif self._reported:
            self._reported.clear()
        by_root: dict[str, list[tuple[Any, str]]] = {}
        for change in changes:
            path = change[1]
            for root in self._watchers:
                if path == root or path.startswith(root + os.sep):
                    by_root.setdefault(root, []).append(change)
        for root, part in by_root.items():
            for w in list(self._watchers.get(root, ())):
                w.changed(part)


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
