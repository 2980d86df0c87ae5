"""File tools: read, write, edit, multi-edit, glob and grep inside the sandbox.

Every path goes through the sandbox: `resolve` (symlinks followed, boundary
checked) for the path a result names, and `open_fd` / `list_dir` for every byte
read, written or listed. The latter open the checked real path without following
any symlink, so a path swapped for a symlink between the check and the use (by a
background `bash_run`, say) is refused instead of leading outside.

Blocking file I/O runs in a worker thread so a big grep never stalls the event
loop. The exception is `fs_read` of a small file on a local filesystem whose bytes
are all in the page cache: that is read on the loop, where it cannot wait (see
`_read_cached` and `sandbox/fstype.py`; the thread hop cost more than the read). Events (`file_changed`) are emitted back on the loop thread after the work
is done. Walks (glob, grep) are bounded: a pattern or path leading outside is
refused before anything is listed, a walk stops at its result limit and at
`WALK_BUDGET_S`, and when the awaiting task is cancelled (an interrupt) the thread
is told to stop too, since a thread cannot be cancelled from outside.

Files are decoded as UTF-8 with `surrogateescape` when they are going to be
written back, so an edit of a file with a few invalid bytes leaves those bytes
exactly as they were instead of turning them into U+FFFD.
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import fnmatch
import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from ..sandbox.base import BoundaryError, Sandbox
from ..sandbox.fstype import loop_readable, refuses_nowait
from .base import Tool, ToolContext, ToolInput, ToolResult, register

log = logging.getLogger(__name__)

BIG_FILE_BYTES = 10 * 1024 * 1024
"""Above this, fs_read streams the file and keeps only the requested lines."""
SNIFF_BYTES = 8192
"""How much of a file is checked for a NUL byte to call it binary (as git does)."""
DEFAULT_READ_LIMIT = 2000
DIFF_LIMIT = 20_000
GREP_LINE_LIMIT = 500
SKIP_DIRS = frozenset({".git", "node_modules"})
WALK_BUDGET_S = 10.0
"""Longest a glob or grep walks before returning what it has (marked truncated):
a legal pattern over a huge tree must still end the turn in reasonable time."""
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
"""Opening a FIFO for reading blocks until a writer comes; non-blocking, it opens
at once and is then refused as not a regular file."""


ON_LOOP_READS = sys.platform.startswith("linux") and hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")
"""Whether `fs_read` may read a small cached file on the event loop (see `_read_cached`)."""
ON_LOOP_READ_MAX = 256 * 1024
"""The largest file `fs_read` reads on the loop; bigger ones go to a thread."""


class _NotNow(Exception):
    """An `fs_read` on the loop would have to wait (remote filesystem, big or uncached file):
    it runs on a thread instead."""


class _Fail(Exception):
    """An expected failure raised deep inside a worker function, carried out as a ToolResult."""

    def __init__(self, message: str, error_type: str, data: Any = None) -> None:
        super().__init__(message)
        self.result = ToolResult.fail(message, error_type, data=data)


class _Cancelled(Exception):
    """Raised inside a worker thread whose awaiting task was cancelled; nobody reads the result."""


class _Budget:
    """How far a walk may go: until `seconds` have passed or the awaiting task is cancelled.

    A cancelled `asyncio.to_thread` only abandons the thread, which would go on
    walking (holding an executor worker and burning CPU); the walk polls this
    instead, between directory entries and every few hundred lines.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancelled = threading.Event()
        self.timed_out = False

    def spent(self) -> bool:
        """True once the time is up; raises _Cancelled once the task is gone."""
        if self.cancelled.is_set():
            raise _Cancelled()
        if not self.timed_out and time.monotonic() >= self.deadline:
            self.timed_out = True
        return self.timed_out

    def note(self, what: str) -> str:
        return (f"stopped after the {self.seconds:g} s time budget; {what} are partial: "
                "narrow the pattern or the directory")


async def _guarded(fn: Callable[..., dict[str, Any]], *args: Any, budget: _Budget | None = None) -> ToolResult:
    """Run blocking `fn` in a thread: its dict is the `data` of an ok result, and
    expected failures become failed results. Cancelling the caller also stops a
    walk that polls `budget`."""
    try:
        return ToolResult(ok=True, data=await asyncio.to_thread(fn, *args))
    except asyncio.CancelledError:
        if budget is not None:
            budget.cancelled.set()
        raise
    except (_Fail, BoundaryError, OSError) as exc:
        return _failure(exc)


def _failure(exc: _Fail | BoundaryError | OSError) -> ToolResult:
    """The failed result an expected exception of a file operation stands for."""
    if isinstance(exc, _Fail):
        return exc.result
    if isinstance(exc, BoundaryError):
        return ToolResult.fail(str(exc), "boundary")
    if isinstance(exc, FileNotFoundError):
        return ToolResult.fail(f"file not found: {exc.filename or exc}", "not_found")
    if isinstance(exc, IsADirectoryError):
        return ToolResult.fail(f"is a directory: {exc.filename or exc}", "invalid_input")
    if isinstance(exc, NotADirectoryError):
        return ToolResult.fail(f"file not found (a parent is not a directory): {exc.filename or exc}", "not_found")
    if isinstance(exc, PermissionError):
        return ToolResult.fail(f"permission denied: {exc.filename or exc}", "permission_denied")
    return ToolResult.fail(f"I/O error: {exc}", "io_error")


# ---------------------------------------------------------------- helpers


def _split_lines(text: str) -> list[str]:
    """Split on '\\n' only, keeping line ends (str.splitlines also splits on \\x0c, U+2028...)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _encode(text: str) -> bytes:
    """UTF-8 bytes of `text`; surrogate escapes from a decoded file become their original bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _open_regular(sandbox: Sandbox, path: str, given: str) -> int:
    """Descriptor of the regular file at `path`, opened through the sandbox (see module docstring).

    What is checked (regular file, not a directory) is the opened descriptor, not
    the name, so the check cannot be raced either.
    """
    try:
        fd = sandbox.open_fd(path, os.O_RDONLY | _NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):  # also a dangling symlink
        raise _Fail(f"file not found: {given}", "not_found") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _Fail(f"is a directory, not a file: {given}", "invalid_input")
        if not stat.S_ISREG(mode):
            raise _Fail(f"not a regular file: {given}", "invalid_input")
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain_local_path(path: str, work_dir: str) -> bool:
    """Whether `path` (absolute, normalized) is on a local filesystem and no part of it
    below the work dir (or below `/`, for a path outside it) is a symlink: then resolving
    and opening it stays on that filesystem. A symlink could lead into a network mount,
    where even the lookups of `resolve` may wait; such paths are read on a thread."""
    if not loop_readable(path):
        return False
    base = work_dir if path.startswith(work_dir.rstrip(os.sep) + os.sep) else os.sep
    part = base
    for name in os.path.relpath(path, base).split(os.sep):
        if name in ("", "."):
            continue
        part = os.path.join(part, name)
        try:
            if stat.S_ISLNK(os.lstat(part).st_mode):
                return False
        except OSError:  # missing or unreadable: the thread reports it as before
            return False
    return True


def _read_cached(fd: int, path: str) -> bytes:
    """The whole file if it is at most ON_LOOP_READ_MAX bytes and every byte is in the page
    cache (`RWF_NOWAIT`: the kernel answers EAGAIN instead of going to the disk), else
    `_NotNow`. One byte more is asked for, so a file that grew since `fstat` goes to a thread."""
    size = os.fstat(fd).st_size
    if size > ON_LOOP_READ_MAX:
        raise _NotNow()
    buf = bytearray(size + 1)
    try:
        n = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
    except OSError as exc:  # EAGAIN (not cached), EOPNOTSUPP (no RWF_NOWAIT here), or an error the thread reports
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            refuses_nowait(path)
        raise _NotNow() from None
    if n != size:  # partly cached, or changed meanwhile
        raise _NotNow()
    return bytes(buf[:n])


def _is_binary_head(head: bytes) -> bool:
    return b"\x00" in head


def _load_text(sandbox: Sandbox, path: str, given: str) -> str:
    """Whole file as text for editing (round-trippable decoding); refuses binary files."""
    with os.fdopen(_open_regular(sandbox, path, given), "rb") as fh:
        data = fh.read()
    if _is_binary_head(data[:SNIFF_BYTES]):
        raise _Fail(f"refusing to edit a binary file: {given}", "binary")
    return data.decode("utf-8", "surrogateescape")


def _write_text(sandbox: Sandbox, path: str, text: str, given: str) -> tuple[int, bool]:
    """Write `text` (creating parent directories); returns (byte count, whether the file was created).

    The file is opened through the sandbox and truncated only after its
    descriptor proved to be a regular file, so neither a swapped-in symlink nor
    a FIFO or device is ever written. Writing in place (not via a temporary
    file) keeps the file's mode, owner and hard links as an editor would.
    """
    data = _encode(text)
    try:
        fd = sandbox.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NONBLOCK, 0o666, makedirs=True)
        created = True
    except FileExistsError:
        try:
            fd = sandbox.open_fd(path, os.O_WRONLY | _NONBLOCK)
        except IsADirectoryError:
            raise _Fail(f"is a directory, not a file: {given}", "invalid_input") from None
        created = False
    with os.fdopen(fd, "wb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Fail(f"not a regular file: {given}", "invalid_input")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        fh.truncate(0)
        fh.write(data)
    return len(data), created


def _apply_edit(content: str, old: str, new: str, replace_all: bool, given: str) -> tuple[str, int]:
    """Replace `old` by `new` in `content`; the rules are what keep edits unambiguous.

    A model that guesses at a snippet occurring several times would silently edit
    the wrong place, so more than one match needs `replace_all` or more context.
    If the file uses CRLF and the snippet uses bare LF, the CRLF form is tried too.
    """
    if old == "":
        raise _Fail("old_string must not be empty (use fs_write to create or overwrite a file)", "invalid_input")
    if old == new:
        raise _Fail("old_string and new_string are identical; nothing to change", "invalid_input")
    count = content.count(old)
    if count == 0 and "\r\n" in content and "\n" in old and "\r\n" not in old:
        crlf_old = old.replace("\n", "\r\n")
        if content.count(crlf_old):
            old, new = crlf_old, new.replace("\r\n", "\n").replace("\n", "\r\n")
            count = content.count(old)
    if count == 0:
        raise _Fail(
            f"old_string was not found in {given}; read the file again and copy the text exactly "
            "(including whitespace and indentation)",
            "not_found",
        )
    if count > 1 and not replace_all:
        raise _Fail(
            f"old_string occurs {count} times in {given}; add surrounding context so it matches "
            "exactly one place, or set replace_all to true to replace every occurrence",
            "ambiguous",
        )
    if replace_all:
        return content.replace(old, new), count
    return content.replace(old, new, 1), 1


def _diff(path: str, old: str | None, new: str) -> str:
    """Unified diff for approval prompts, bounded to DIFF_LIMIT characters."""
    out: list[str] = []
    size = 0
    for line in difflib.unified_diff(
        _split_lines(old or ""),
        _split_lines(new),
        fromfile="/dev/null" if old is None else path,
        tofile=path,
    ):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
        size += len(line)
        if size > DIFF_LIMIT:
            break
    return _truncate_diff("".join(out))


def _truncate_diff(text: str) -> str:
    if len(text) <= DIFF_LIMIT:
        return text
    marker = "\n... (diff truncated)\n"
    return text[: DIFF_LIMIT - len(marker)] + marker


def _read_existing(sandbox: Sandbox, path: str) -> str | None:
    """Current text of `path` for a diff, or None if it is not an existing regular file."""
    try:
        fd = _open_regular(sandbox, path, path)
    except _Fail:
        return None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fd).st_size > BIG_FILE_BYTES:
            raise _Fail("file too large to diff", "too_large")
        return fh.read().decode("utf-8", "surrogateescape")


def _resolve_or_given(sandbox: Sandbox, path: str) -> tuple[str, bool]:
    try:
        return sandbox.resolve(path), True
    except Exception:
        return path, False


def _display(path: str, real_work_dir: str) -> str:
    """A path the model can pass straight back to another tool: relative when under work_dir."""
    norm = os.path.normpath(path)
    try:
        if os.path.commonpath([norm, real_work_dir]) == real_work_dir:
            return os.path.relpath(norm, real_work_dir)
    except ValueError:
        pass
    return norm


# ---------------------------------------------------------------- fs_read


class FsReadInput(ToolInput):
    path: str = Field(description="File to read, relative to the work directory or absolute.")
    offset: int = Field(default=1, ge=1, description="First line to return (1-based).")
    limit: int = Field(default=DEFAULT_READ_LIMIT, ge=1, description="Maximum number of lines to return.")


class FsReadTool(Tool):
    """Read a text file by lines; binary files are refused rather than dumped into the context."""

    name = "fs_read"
    description = (
        "Read a text file. Returns up to `limit` lines (default 2000) starting at line `offset` "
        "(1-based), with the file's total line count and whether more lines exist."
    )
    input_model = FsReadInput
    readonly = True

    async def run(self, ctx: ToolContext, args: FsReadInput) -> ToolResult:
        if ON_LOOP_READS:
            try:
                return ToolResult(ok=True, data=self._read(ctx.sandbox, args, on_loop=True))
            except _NotNow:
                pass
            except (_Fail, BoundaryError, OSError) as exc:
                return _failure(exc)
        return await _guarded(self._read, ctx.sandbox, args)

    @staticmethod
    def _read(sandbox: Sandbox, args: FsReadInput, on_loop: bool = False) -> dict[str, Any]:
        """The lines asked for. `on_loop`: only what cannot wait (`_NotNow` otherwise): a
        file on a local filesystem (`sandbox/fstype.py`), at most ON_LOOP_READ_MAX bytes,
        all of them in the page cache."""
        if on_loop and not _plain_local_path(os.path.normpath(os.path.join(sandbox.work_dir, args.path)),
                                             sandbox.work_dir):
            raise _NotNow()
        path = sandbox.resolve(args.path)
        start = args.offset - 1
        with os.fdopen(_open_regular(sandbox, path, args.path), "rb") as fh:
            data = _read_cached(fh.fileno(), path) if on_loop else None
            if _is_binary_head(data[:SNIFF_BYTES] if data is not None else fh.read(SNIFF_BYTES)):
                raise _Fail(f"refusing to read a binary file: {args.path}", "binary")
            if data is None and os.fstat(fh.fileno()).st_size <= BIG_FILE_BYTES:
                fh.seek(0)
                data = fh.read()
            if data is not None:
                lines = _split_lines(data.decode("utf-8", "replace"))
                total = len(lines)
                selected = lines[start : start + args.limit]
            else:
                fh.seek(0)
                # Stream: only the requested window is decoded and kept in memory.
                selected = []
                total = 0
                for total, raw in enumerate(fh, 1):
                    if start < total <= start + args.limit:
                        selected.append(raw.decode("utf-8", "replace"))
        return {
            "path": path,
            "content": "".join(selected),
            "totalLines": total,
            "truncated": start + len(selected) < total,
        }


# ---------------------------------------------------------------- fs_write


class FsWriteInput(ToolInput):
    path: str = Field(description="File to create or overwrite.")
    content: str = Field(description="The complete new content of the file.")


class FsWriteTool(Tool):
    """Create or overwrite a file (parent directories are created)."""

    name = "fs_write"
    description = "Write a file with the given content, creating it and its parent directories if needed."
    input_model = FsWriteInput

    async def run(self, ctx: ToolContext, args: FsWriteInput) -> ToolResult:
        result = await _guarded(self._write, ctx.sandbox, args)
        if result.ok:
            ctx.file_changed(result.data["path"], "added" if result.data["created"] else "modified")
        return result

    def edited_paths(self, args: Any, sandbox: Sandbox) -> list[str]:
        return _resolved(sandbox, [_field(args, "path")])

    @staticmethod
    def _write(sandbox: Sandbox, args: FsWriteInput) -> dict[str, Any]:
        path = sandbox.resolve(args.path)
        written, created = _write_text(sandbox, path, args.content, args.path)
        return {"path": path, "bytes": written, "created": created}

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """Diff of the file's current content against the new one; never raises."""
        given = _field(args, "path")
        path, ok = _resolve_or_given(sandbox, given)
        diff = ""
        try:
            if ok:
                diff = _diff(path, _read_existing(sandbox, path), _field(args, "content"))
        except Exception:
            log.debug("fs_write subject diff failed for %s", path, exc_info=True)
        return {"type": "file_change", "path": path, "diff": diff}

    def preview(self, args: dict[str, Any]) -> str:
        content = args.get("content")
        size = f" ({len(content)} chars)" if isinstance(content, str) else ""
        return f"{args.get('path')}{size}"


def _resolved(sandbox: Sandbox, paths: list[Any]) -> list[str]:
    """The paths inside the sandbox, resolved, without repeats (others are left out)."""
    out: list[str] = []
    for given in paths:
        try:
            path = sandbox.resolve(given) if isinstance(given, str) and given else None
        except (BoundaryError, OSError, ValueError):
            path = None
        if path is not None and path not in out:
            out.append(path)
    return out


def _field(args: Any, name: str, default: Any = "") -> Any:
    """Read an input field from a validated model or a raw dict (subject() may get either)."""
    if isinstance(args, dict):
        return args.get(name, default)
    return getattr(args, name, default)


# ---------------------------------------------------------------- fs_edit


class FsEditInput(ToolInput):
    path: str = Field(description="File to edit.")
    old_string: str = Field(description="Exact text to replace; must match exactly one place unless replace_all.")
    new_string: str = Field(description="Replacement text.")
    replace_all: bool = Field(default=False, description="Replace every occurrence of old_string.")


class FsEditTool(Tool):
    """Exact-string replacement in one file; refuses ambiguous matches."""

    name = "fs_edit"
    description = (
        "Replace old_string with new_string in a file. old_string must occur exactly once "
        "(include enough surrounding context), unless replace_all is true."
    )
    input_model = FsEditInput

    async def run(self, ctx: ToolContext, args: FsEditInput) -> ToolResult:
        result = await _guarded(self._edit, ctx.sandbox, args)
        if result.ok:
            ctx.file_changed(result.data["path"], "modified")
        return result

    def edited_paths(self, args: Any, sandbox: Sandbox) -> list[str]:
        return _resolved(sandbox, [_field(args, "path")])

    @staticmethod
    def _edit(sandbox: Sandbox, args: FsEditInput) -> dict[str, Any]:
        path = sandbox.resolve(args.path)
        content = _load_text(sandbox, path, args.path)
        new_content, count = _apply_edit(content, args.old_string, args.new_string, args.replace_all, args.path)
        _write_text(sandbox, path, new_content, args.path)
        return {"path": path, "replacements": count}

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """Diff of the edit as it would be applied (empty if it would fail); never raises."""
        given = _field(args, "path")
        path, ok = _resolve_or_given(sandbox, given)
        diff = ""
        try:
            if ok:
                old = _load_text(sandbox, path, given)
                new, _ = _apply_edit(
                    old,
                    _field(args, "old_string"),
                    _field(args, "new_string"),
                    bool(_field(args, "replace_all", False)),
                    given,
                )
                diff = _diff(path, old, new)
        except Exception:
            log.debug("fs_edit subject diff failed for %s", path, exc_info=True)
        return {"type": "file_change", "path": path, "diff": diff}

    def preview(self, args: dict[str, Any]) -> str:
        return str(args.get("path"))


# ---------------------------------------------------------------- fs_multi_edit


class EditSpec(ToolInput):
    path: str
    old_string: str
    new_string: str
    replace_all: bool = False


class FsMultiEditInput(ToolInput):
    edits: list[EditSpec] = Field(min_length=1, description="Edits applied in order; all succeed or none is written.")


def _plan_multi(sandbox: Sandbox, edits: list[EditSpec]) -> tuple[dict[str, str], dict[str, str], int]:
    """Apply every edit in memory, in order; returns (originals, results, replacements).

    Raises _Fail naming the failing edit's index, before anything is written.
    Edits to the same file see the result of the earlier ones.
    """
    originals: dict[str, str] = {}
    current: dict[str, str] = {}
    total = 0
    for index, edit in enumerate(edits):
        try:
            path = sandbox.resolve(edit.path)
            if path not in current:
                originals[path] = current[path] = _load_text(sandbox, path, edit.path)
            current[path], count = _apply_edit(
                current[path], edit.old_string, edit.new_string, edit.replace_all, edit.path
            )
        except _Fail as exc:
            raise _Fail(
                f"edits[{index}] failed: {exc}; no file was changed",
                exc.result.error_type or "invalid_input",
                data={"index": index},
            ) from None
        except BoundaryError as exc:
            raise _Fail(f"edits[{index}] failed: {exc}; no file was changed", "boundary", data={"index": index}) from None
        except OSError as exc:
            raise _Fail(f"edits[{index}] failed: {exc}; no file was changed", "io_error", data={"index": index}) from None
        total += count
    return originals, current, total


class FsMultiEditTool(Tool):
    """Several exact-string edits across files, applied all-or-nothing."""

    name = "fs_multi_edit"
    description = (
        "Apply several edits ({path, old_string, new_string, replace_all?}) in order, possibly "
        "across files. Either every edit succeeds and all files are written, or nothing is written."
    )
    input_model = FsMultiEditInput

    async def run(self, ctx: ToolContext, args: FsMultiEditInput) -> ToolResult:
        result = await _guarded(self._multi_edit, ctx.sandbox, args)
        for path in result.data["files"] if result.ok else []:
            ctx.file_changed(path, "modified")
        return result

    def edited_paths(self, args: Any, sandbox: Sandbox) -> list[str]:
        return _resolved(sandbox, [_field(e, "path") for e in _field(args, "edits", []) or []])

    @staticmethod
    def _multi_edit(sandbox: Sandbox, args: FsMultiEditInput) -> dict[str, Any]:
        originals, current, total = _plan_multi(sandbox, args.edits)
        written: list[str] = []
        try:
            for path, text in current.items():
                _write_text(sandbox, path, text, path)
                written.append(path)
        except (OSError, BoundaryError, _Fail) as exc:
            # Keep the all-or-nothing promise even when a write fails half-way.
            for done in written:
                try:
                    _write_text(sandbox, done, originals[done], done)
                except (OSError, BoundaryError, _Fail):
                    log.warning("could not roll back %s after a failed multi-edit", done)
            error_type = "boundary" if isinstance(exc, BoundaryError) else "io_error"
            raise _Fail(f"writing {path} failed: {exc}; earlier files were restored", error_type) from None
        return {"files": written, "replacements": total}

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """Combined diff of all files (empty if the edits would fail); never raises."""
        path = ""
        diff = ""
        try:
            model = args if isinstance(args, FsMultiEditInput) else FsMultiEditInput.model_validate(args)
            if model.edits:
                path, _ = _resolve_or_given(sandbox, model.edits[0].path)
            originals, current, _ = _plan_multi(sandbox, model.edits)
            diff = _truncate_diff("".join(_diff(p, originals[p], current[p]) for p in current))
        except Exception:
            log.debug("fs_multi_edit subject diff failed", exc_info=True)
        return {"type": "file_change", "path": path, "diff": diff}

    def preview(self, args: dict[str, Any]) -> str:
        edits = args.get("edits")
        if isinstance(edits, list):
            paths = sorted({str(e.get("path")) for e in edits if isinstance(e, dict)})
            text = f"{len(edits)} edits: " + ", ".join(paths)
            return text if len(text) <= 200 else text[:197] + "..."
        return super().preview(args)


# ---------------------------------------------------------------- walking (glob, grep)


_MAGIC = re.compile(r"[*?[]")
_SEPARATORS = re.compile(r"[\\/]" if os.sep == "\\" else "/")


def _split_pattern(pattern: str) -> tuple[str, list[str], bool]:
    """Split a glob pattern into its literal leading directory and the segments left to match.

    Returns (literal prefix, wildcard segments, whether only directories match).
    The literal prefix (everything before the first segment with a wildcard) is
    resolved and checked before anything is listed: that is how `/**` or
    `../**` is refused at once rather than walked and filtered afterwards.
    """
    dironly = bool(_SEPARATORS.match(pattern[-1:]))
    drive, rest = os.path.splitdrive(pattern)
    anchor = drive + os.sep if os.path.isabs(pattern) else drive
    parts = [p for p in _SEPARATORS.split(rest) if p not in ("", ".")]
    literal: list[str] = []
    while parts and not _MAGIC.search(parts[0]):
        literal.append(parts.pop(0))
    # `**/**` means what `**` means; collapsing keeps the walk's state sets small.
    segments = [p for i, p in enumerate(parts) if not (p == "**" and i and parts[i - 1] == "**")]
    return os.path.join(anchor, *literal) if (anchor or literal) else ".", segments, dironly


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _segment_matches(name: str, segment: str) -> bool:
    """fnmatch as glob does it: a wildcard matches a hidden name only if the segment starts with '.'."""
    if _hidden(name) and not _hidden(segment):
        return False
    return fnmatch.fnmatch(name, segment)


def _symlink_target_ok(sandbox: Sandbox, path: str, dironly: bool) -> bool:
    """A symlink is listed only if it resolves inside the sandbox (it is listed, never followed)."""
    try:
        real = sandbox.resolve(path)
    except BoundaryError:
        return False
    return os.path.isdir(real) if dironly else os.path.lexists(real)


def _glob_walk(sandbox: Sandbox, base: str, segments: list[str], dironly: bool, budget: _Budget) -> Iterator[str]:
    """Paths (as `base` joined with entry names) below directory `base` matching `segments`.

    One pass over the tree: each directory is listed once, carrying the set of
    pattern positions still to match there (an NFA over the segments), so no
    pattern, however many `**` it has, makes the walk more than linear in the tree.
    Directories are listed through the sandbox's descriptors and symlinked
    directories are never descended (each is listed as an entry, if it resolves
    inside). Stops quietly when the budget is spent; the caller reports it.
    """
    last = len(segments) - 1

    def closure(states: set[int]) -> frozenset[int]:
        # `**` also matches zero directories: the next segment may match right here.
        return frozenset(states | {i + 1 for i in states if segments[i] == "**" and i < last})

    stack = [(base, closure({0}))]
    while stack:
        directory, states = stack.pop()
        try:
            entries = sorted(sandbox.list_dir(directory))
        except (OSError, BoundaryError):
            log.debug("glob: cannot list %s", directory, exc_info=True)
            continue
        below: list[tuple[str, frozenset[int]]] = []
        for name, kind in entries:
            if budget.spent():
                return
            hit = False
            next_states: set[int] = set()
            for i in states:
                if segments[i] == "**":
                    if not _hidden(name):
                        next_states.add(i)
                        hit = hit or i == last
                elif _segment_matches(name, segments[i]):
                    if i == last:
                        hit = True
                    else:
                        next_states.add(i + 1)
            path = os.path.join(directory, name)
            if hit and (
                kind == "dir"
                or (kind == "symlink" and _symlink_target_ok(sandbox, path, dironly))
                or (kind != "symlink" and not dironly)
            ):
                yield path
            if next_states and kind == "dir":
                below.append((path, closure(next_states)))
        stack.extend(reversed(below))


def _walk_files(sandbox: Sandbox, root: str, budget: _Budget) -> Iterator[str]:
    """Files (and symlinks, checked when opened) below `root`, in `os.walk`'s sorted top-down order.

    .git and node_modules are skipped and symlinked directories are not descended.
    """
    stack = [root]
    while stack and not budget.spent():
        directory = stack.pop()
        try:
            entries = sorted(sandbox.list_dir(directory))
        except (OSError, BoundaryError):
            log.debug("grep: cannot list %s", directory, exc_info=True)
            continue
        for name, kind in entries:
            if kind in ("file", "symlink"):
                yield os.path.join(directory, name)
        stack.extend(os.path.join(directory, n) for n, k in reversed(entries) if k == "dir" and n not in SKIP_DIRS)


# ---------------------------------------------------------------- fs_glob


class FsGlobInput(ToolInput):
    pattern: str = Field(description="Glob pattern, e.g. 'src/**/*.py' ('**' matches any depth).")
    cwd: str | None = Field(default=None, description="Directory the pattern is relative to (default: work dir).")
    limit: int = Field(default=1000, ge=1, description="Maximum number of matches.")


class FsGlobTool(Tool):
    """Find files by glob pattern; results are paths usable directly with the other fs tools."""

    name = "fs_glob"
    description = (
        "List files matching a glob pattern (recursive '**' supported). Paths are returned sorted, "
        "relative to the work directory. Symlinked directories are not descended."
    )
    input_model = FsGlobInput
    readonly = True

    async def run(self, ctx: ToolContext, args: FsGlobInput) -> ToolResult:
        budget = _Budget(WALK_BUDGET_S)
        return await _guarded(self._glob, ctx.sandbox, args, budget, budget=budget)

    @staticmethod
    def _glob(sandbox: Sandbox, args: FsGlobInput, budget: _Budget) -> dict[str, Any]:
        root = sandbox.resolve(args.cwd or ".")
        if not os.path.isdir(root):
            raise _Fail(f"directory not found: {args.cwd}", "not_found")
        if not args.pattern:
            return {"matches": [], "truncated": False}
        literal, segments, dironly = _split_pattern(args.pattern)
        if ".." in segments:
            raise _Fail(
                f"'..' after a wildcard could lead outside the sandbox: {args.pattern}; "
                "put '..' only before the first wildcard (or use cwd)",
                "boundary",
            )
        base = os.path.join(root, literal)  # an absolute pattern replaces root
        try:
            sandbox.resolve(base)
        except BoundaryError as exc:  # the pattern leads outside: refused, nothing is listed
            raise BoundaryError(
                args.pattern, exc.resolved,
                f"pattern leads outside the sandbox: {args.pattern} ({literal} resolves to {exc.resolved})",
            ) from None
        real_work_dir = os.path.realpath(sandbox.work_dir)
        if not segments:  # no wildcard: the pattern names one path
            real = sandbox.resolve(base)
            found = os.path.isdir(real) if dironly else os.path.lexists(real)
            return {"matches": [_display(base, real_work_dir)] if found else [], "truncated": False}
        matches: list[str] = []
        note = None
        for path in _glob_walk(sandbox, base, segments, dironly, budget):
            if len(matches) >= args.limit:
                note = f"stopped at limit={args.limit} matches; more exist: narrow the pattern or raise limit"
                break
            matches.append(_display(path, real_work_dir))
        if budget.timed_out:
            note = budget.note("matches")
        matches.sort()
        out: dict[str, Any] = {"matches": matches, "truncated": note is not None}
        if note:
            out["note"] = note
        return out


# ---------------------------------------------------------------- fs_grep


class FsGrepInput(ToolInput):
    pattern: str = Field(description="Text (or regular expression when regex is true) to search for.")
    path: str | None = Field(default=None, description="File or directory to search (default: work dir).")
    regex: bool = Field(default=False, description="Treat pattern as a Python regular expression.")
    case_sensitive: bool = Field(default=True)
    max_results: int = Field(default=200, ge=1)


class FsGrepTool(Tool):
    """Search file contents line by line, skipping .git, node_modules and binary files."""

    name = "fs_grep"
    description = (
        "Search files for a string (or a regular expression with regex=true). Returns matching "
        "lines as {path, line, text}; .git, node_modules and binary files are skipped."
    )
    input_model = FsGrepInput
    readonly = True

    LINES_PER_BUDGET_CHECK = 256

    async def run(self, ctx: ToolContext, args: FsGrepInput) -> ToolResult:
        flags = 0 if args.case_sensitive else re.IGNORECASE
        try:
            rx = re.compile(args.pattern if args.regex else re.escape(args.pattern), flags)
        except re.error as exc:
            return ToolResult.fail(f"invalid regular expression: {exc}", "invalid_input")
        budget = _Budget(WALK_BUDGET_S)
        return await _guarded(self._grep, ctx.sandbox, args, rx, budget, budget=budget)

    @classmethod
    def _grep(cls, sandbox: Sandbox, args: FsGrepInput, rx: re.Pattern[str], budget: _Budget) -> dict[str, Any]:
        root = sandbox.resolve(args.path or ".")  # BoundaryError here: refused before any walk
        try:
            fd = sandbox.open_fd(root, os.O_RDONLY | _NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise _Fail(f"path not found: {args.path}", "not_found") from None
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        real_work_dir = os.path.realpath(sandbox.work_dir)
        matches: list[dict[str, Any]] = []
        for file in _walk_files(sandbox, root, budget) if is_dir else iter([root]):
            if budget.spent():
                break
            try:
                fd = _open_regular(sandbox, file, file)
            except (_Fail, BoundaryError, OSError):
                continue  # not a regular file, a symlink leading out, or swapped meanwhile
            try:
                with os.fdopen(fd, "rb") as fh:
                    if _is_binary_head(fh.read(SNIFF_BYTES)):
                        continue
                    fh.seek(0)
                    for lineno, raw in enumerate(fh, 1):
                        if lineno % cls.LINES_PER_BUDGET_CHECK == 0 and budget.spent():
                            break
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if not rx.search(line):
                            continue
                        if len(matches) >= args.max_results:
                            return {"matches": matches, "truncated": True,
                                    "note": f"stopped at max_results={args.max_results}; more matches exist"}
                        matches.append(
                            {"path": _display(file, real_work_dir), "line": lineno, "text": line[:GREP_LINE_LIMIT]}
                        )
            except OSError:
                log.debug("grep: cannot read %s", file, exc_info=True)
                continue
        if budget.timed_out:
            return {"matches": matches, "truncated": True, "note": budget.note("matches")}
        return {"matches": matches, "truncated": False}


register(FsReadTool())
register(FsWriteTool())
register(FsEditTool())
register(FsMultiEditTool())
register(FsGlobTool())
register(FsGrepTool())
