"""File tools: read, write, edit, multi-edit, glob and grep inside the sandbox.

Every path goes through `ctx.sandbox.resolve` (symlinks followed, boundary
checked) before it is touched. Blocking file I/O runs in a worker thread so a big
grep never stalls the event loop; events (`file_changed`) are emitted back on the
loop thread after the work is done.

Files are decoded as UTF-8 with `surrogateescape` when they are going to be
written back, so an edit of a file with a few invalid bytes leaves those bytes
exactly as they were instead of turning them into U+FFFD.
"""

from __future__ import annotations

import asyncio
import difflib
import glob as globmod
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from ..sandbox.base import BoundaryError, Sandbox
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



class _Fail(Exception):
    """An expected failure raised deep inside a worker function, carried out as a ToolResult."""

    def __init__(self, message: str, error_type: str, data: Any = None) -> None:
        super().__init__(message)
        self.result = ToolResult.fail(message, error_type, data=data)


async def _guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> ToolResult:
    """Run blocking `fn` in a thread: its dict is the `data` of an ok result, and
    expected failures become failed results."""
    try:
        return ToolResult(ok=True, data=await asyncio.to_thread(fn, *args))
    except _Fail as exc:
        return exc.result
    except BoundaryError as exc:
        return ToolResult.fail(str(exc), "boundary")
    except FileNotFoundError as exc:
        return ToolResult.fail(f"file not found: {exc.filename or exc}", "not_found")
    except IsADirectoryError as exc:
        return ToolResult.fail(f"is a directory: {exc.filename or exc}", "invalid_input")
    except PermissionError as exc:
        return ToolResult.fail(f"permission denied: {exc.filename or exc}", "permission_denied")
    except OSError as exc:
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


def _check_regular_file(path: str, given: str) -> None:
    if not os.path.exists(path):  # also a dangling symlink
        raise _Fail(f"file not found: {given}", "not_found")
    if os.path.isdir(path):
        raise _Fail(f"is a directory, not a file: {given}", "invalid_input")


def _is_binary_head(head: bytes) -> bool:
    return b"\x00" in head


def _load_text(path: str, given: str) -> str:
    """Whole file as text for editing (round-trippable decoding); refuses binary files."""
    _check_regular_file(path, given)
    with open(path, "rb") as fh:
        data = fh.read()
    if _is_binary_head(data[:SNIFF_BYTES]):
        raise _Fail(f"refusing to edit a binary file: {given}", "binary")
    return data.decode("utf-8", "surrogateescape")


def _write_text(path: str, text: str) -> int:
    """Write `text` (creating parent directories); returns the byte count."""
    data = _encode(text)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


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


def _read_existing(path: str) -> str | None:
    """Current text of `path` for a diff, or None if it does not exist (or is too big to diff)."""
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) > BIG_FILE_BYTES:
        raise _Fail("file too large to diff", "too_large")
    with open(path, "rb") as fh:
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
        return await _guarded(self._read, ctx.sandbox, args)

    @staticmethod
    def _read(sandbox: Sandbox, args: FsReadInput) -> dict[str, Any]:
        path = sandbox.resolve(args.path)
        _check_regular_file(path, args.path)
        start = args.offset - 1
        with open(path, "rb") as fh:
            if _is_binary_head(fh.read(SNIFF_BYTES)):
                raise _Fail(f"refusing to read a binary file: {args.path}", "binary")
            fh.seek(0)
            if os.fstat(fh.fileno()).st_size <= BIG_FILE_BYTES:
                lines = _split_lines(fh.read().decode("utf-8", "replace"))
                total = len(lines)
                selected = lines[start : start + args.limit]
            else:
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

    @staticmethod
    def _write(sandbox: Sandbox, args: FsWriteInput) -> dict[str, Any]:
        path = sandbox.resolve(args.path)
        if os.path.isdir(path):
            raise _Fail(f"is a directory, not a file: {args.path}", "invalid_input")
        created = not os.path.exists(path)
        written = _write_text(path, args.content)
        return {"path": path, "bytes": written, "created": created}

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """Diff of the file's current content against the new one; never raises."""
        given = _field(args, "path")
        path, ok = _resolve_or_given(sandbox, given)
        diff = ""
        try:
            if ok:
                diff = _diff(path, _read_existing(path), _field(args, "content"))
        except Exception:
            log.debug("fs_write subject diff failed for %s", path, exc_info=True)
        return {"type": "file_change", "path": path, "diff": diff}

    def preview(self, args: dict[str, Any]) -> str:
        content = args.get("content")
        size = f" ({len(content)} chars)" if isinstance(content, str) else ""
        return f"{args.get('path')}{size}"


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

    @staticmethod
    def _edit(sandbox: Sandbox, args: FsEditInput) -> dict[str, Any]:
        path = sandbox.resolve(args.path)
        content = _load_text(path, args.path)
        new_content, count = _apply_edit(content, args.old_string, args.new_string, args.replace_all, args.path)
        _write_text(path, new_content)
        return {"path": path, "replacements": count}

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """Diff of the edit as it would be applied (empty if it would fail); never raises."""
        given = _field(args, "path")
        path, ok = _resolve_or_given(sandbox, given)
        diff = ""
        try:
            if ok:
                old = _load_text(path, given)
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
                originals[path] = current[path] = _load_text(path, edit.path)
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

    @staticmethod
    def _multi_edit(sandbox: Sandbox, args: FsMultiEditInput) -> dict[str, Any]:
        originals, current, total = _plan_multi(sandbox, args.edits)
        written: list[str] = []
        try:
            for path, text in current.items():
                _write_text(path, text)
                written.append(path)
        except OSError as exc:
            # Keep the all-or-nothing promise even when a write fails half-way.
            for path in written:
                try:
                    _write_text(path, originals[path])
                except OSError:
                    log.warning("could not roll back %s after a failed multi-edit", path)
            raise _Fail(f"writing {path} failed: {exc}; earlier files were restored", "io_error") from None
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
        "relative to the work directory."
    )
    input_model = FsGlobInput
    readonly = True

    async def run(self, ctx: ToolContext, args: FsGlobInput) -> ToolResult:
        return await _guarded(self._glob, ctx.sandbox, args)

    @staticmethod
    def _glob(sandbox: Sandbox, args: FsGlobInput) -> dict[str, Any]:
        root = sandbox.resolve(args.cwd or ".")
        if not os.path.isdir(root):
            raise _Fail(f"directory not found: {args.cwd}", "not_found")
        real_work_dir = os.path.realpath(sandbox.work_dir)
        matches: list[str] = []
        truncated = False
        for match in globmod.iglob(args.pattern, root_dir=root, recursive=True):
            full = os.path.join(root, match)
            try:
                sandbox.resolve(full)
            except BoundaryError:
                continue  # a symlink or '..' leading out of the sandbox
            if len(matches) >= args.limit:
                truncated = True
                break
            matches.append(_display(full, real_work_dir))
        matches.sort()
        return {"matches": matches, "truncated": truncated}


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

    async def run(self, ctx: ToolContext, args: FsGrepInput) -> ToolResult:
        flags = 0 if args.case_sensitive else re.IGNORECASE
        try:
            rx = re.compile(args.pattern if args.regex else re.escape(args.pattern), flags)
        except re.error as exc:
            return ToolResult.fail(f"invalid regular expression: {exc}", "invalid_input")
        return await _guarded(self._grep, ctx.sandbox, args, rx)

    @staticmethod
    def _files(root: str) -> Iterator[str]:
        if os.path.isfile(root):
            yield root
            return
        for dirpath, dirnames, filenames in os.walk(root):  # symlinked dirs are not descended
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                yield os.path.join(dirpath, name)

    @classmethod
    def _grep(cls, sandbox: Sandbox, args: FsGrepInput, rx: re.Pattern[str]) -> dict[str, Any]:
        root = sandbox.resolve(args.path or ".")
        if not os.path.exists(root):
            raise _Fail(f"path not found: {args.path}", "not_found")
        real_work_dir = os.path.realpath(sandbox.work_dir)
        matches: list[dict[str, Any]] = []
        for file in cls._files(root):
            try:
                real = sandbox.resolve(file)
            except BoundaryError:
                continue  # a symlinked file pointing out of the sandbox
            if not os.path.isfile(real):
                continue
            try:
                with open(real, "rb") as fh:
                    if _is_binary_head(fh.read(SNIFF_BYTES)):
                        continue
                    fh.seek(0)
                    for lineno, raw in enumerate(fh, 1):
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if not rx.search(line):
                            continue
                        if len(matches) >= args.max_results:
                            return {"matches": matches, "truncated": True}
                        matches.append(
                            {"path": _display(file, real_work_dir), "line": lineno, "text": line[:GREP_LINE_LIMIT]}
                        )
            except OSError:
                log.debug("grep: cannot read %s", real, exc_info=True)
                continue
        return {"matches": matches, "truncated": False}


register(FsReadTool())
register(FsWriteTool())
register(FsEditTool())
register(FsMultiEditTool())
register(FsGlobTool())
register(FsGrepTool())
