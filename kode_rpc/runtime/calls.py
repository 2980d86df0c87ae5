"""Tool calls of a step: the permission policy, approvals asked, execution, results.

`ToolCalls` is one part of `Agent` (see agent.py): every call of a model step
runs concurrently (bounded by the agent's semaphore), each one's record is
appended to the store as its state changes, and the step's results are appended
as one tool message when the last call has ended, interrupted or not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .. import secrets
from ..protocol import events as ev
from ..protocol.events import ToolCall
from ..providers.base import ToolCallRequest
from ..sandbox.base import BoundaryError
from ..sandbox.local import LocalSandbox
from ..store.base import ToolCallRow
from ..tools.base import Tool, ToolResult
from .permission import evaluate
from .records import CallRun, Turn
from .toolctx import CallContext
from .util import now_iso

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class ToolCalls:
    """The tool-call part of an `Agent`."""

    def _new_call(self, turn: Turn, step: int, req: ToolCallRequest) -> CallRun:
        tool = self.tools.get(req.name)
        preview = tool.preview(req.input) if tool else req.name
        run = CallRun(ToolCall(id=req.id, name=req.name, input=req.input, input_preview=preview, state="PENDING"), step)
        self._store_call(turn, run, "created")
        self.emit(ev.ToolStart(call=run.call), turn.id)
        return run

    def _store_call(self, turn: Turn, run: CallRun, note: str | None = None) -> asyncio.Future[None]:
        c = run.call
        return self.svc.store.put_tool_call(
            ToolCallRow(self.id, c.id, turn.id, run.step, c.name, c.input, c.state, c.result, c.error,
                        c.started_at, c.duration_ms, now_iso()),
            note,
        )

    async def _tool_phase(self, turn: Turn, step: int, calls: list[CallRun]) -> None:
        # Resumed with approvals pending (after a crash), the agent stays at AWAITING_APPROVAL.
        self._set_breakpoint("AWAITING_APPROVAL" if self.pending else "TOOL_PENDING", turn.id)
        tasks = [asyncio.create_task(self._run_call(turn, run)) for run in calls]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Runs on interrupt too (gather waits for every call's own cleanup first),
            # so every tool_use in the conversation gets its tool_result.
            for task in tasks:
                if not task.done():
                    task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            if not turn.detach:  # a detached turn resumes from its stored tool records
                self._append_message("tool", [run.result_block() for run in calls], turn.id)
                self._set_breakpoint("POST_TOOL", turn.id)

    async def _run_call(self, turn: Turn, run: CallRun) -> None:
        if run.final:
            return
        call = run.call
        tool = self.tools.get(call.name)
        try:
            if tool is None:
                gone = self.mcp.gone(call.name) if self.mcp is not None else None  # an MCP server is down
                await self._finish_call(turn, run, "FAILED", ToolResult.fail(gone, "unavailable", retryable=True) if gone
                                        else ToolResult.fail(f"unknown tool: {call.name}", "unknown_tool"))
                return
            try:
                args = tool.input_model.model_validate(call.input)
            except ValidationError as exc:
                await self._finish_call(turn, run, "FAILED", ToolResult.fail(_validation_text(exc), "invalid_input"))
                return
            if run.approval is not None:  # resumed while waiting on an approval
                decision = await self._await_decision(run.approval)
            else:
                assert self.config.permission is not None, "the pool always resolves a policy"
                verdict, why = evaluate(self.config.permission, call.name, tool.readonly, self.remembered)
                if verdict == "deny":
                    self.emit(ev.PermissionDecided(approval_id=None, call_id=call.id, decision="deny",
                                                   decided_by="policy", note=why), turn.id)
                    await self._finish_call(turn, run, "DENIED", ToolResult.fail(f"denied by policy: {why}", "denied"))
                    return
                decision = await self._ask(turn, run, tool, args) if verdict == "ask" else {"decision": "allow"}
            if decision["decision"] != "allow":
                who = decision.get("decidedBy")
                note = decision.get("note")
                text = {
                    "timeout": "nobody answered the approval request in time; the call was not run",
                    "interrupt": "the user interrupted the turn; the call was not run",
                }.get(who or "", "the user denied this call")
                if note:
                    text += f" (note: {note})"
                await self._finish_call(turn, run, "DENIED", ToolResult.fail(text, "denied"))
                return
            if run.approval is not None:
                call.state = "APPROVED"
                self._store_call(turn, run, "approved")
            async with self._sem:
                await self.checkpoints.before_change(turn, tool)  # the turn's checkpoint, before it changes files
                self._tool_breakpoint("PRE_TOOL", turn.id)
                call.state = "EXECUTING"
                call.started_at = now_iso()
                self._store_call(turn, run, "executing")
                self.executing += 1
                self._tool_breakpoint("TOOL_EXECUTING", turn.id)
                run.started = time.monotonic()
                run.executed = True
                ctx = CallContext(self, turn, run)
                edits = self._before_edit(tool, args)
                try:
                    result = redact_result(await tool.run(ctx, args))
                    self._after_edit(call.id, edits)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("tool %s raised", call.name)
                    call.error = secrets.redact(f"{type(exc).__name__}: {exc}")
                    run.stop_clock()
                    self.emit(ev.ToolError(call=call, error=call.error), turn.id)
                    await self._finish_call(turn, run, "FAILED", ToolResult.fail(call.error, "tool_error"))
                    return
                finally:
                    self.executing -= 1
                    ctx.flush()
            await self._finish_call(turn, run, "COMPLETED" if result.ok else "FAILED", result)
        except asyncio.CancelledError:
            if turn.detach or run.final:
                return
            if run.approval is not None and run.approval.approval_id in self.pending:
                await self.decide(run.approval.approval_id, "deny", "interrupted", False, "interrupt")
            await self._finish_call(turn, run, "FAILED" if run.executed else "DENIED",
                                    ToolResult.fail("interrupted by the user", "interrupted"))

    async def _finish_call(self, turn: Turn, run: CallRun, state: str, result: ToolResult) -> None:
        call = run.call
        run.stop_clock()  # every executed call reports its duration, an interrupted one too
        call.state = state  # type: ignore[assignment]
        call.result = result.wire()
        if not result.ok and call.error is None:
            call.error = result.error
        self._store_call(turn, run, state.lower())
        self.emit(ev.ToolEnd(call=call), turn.id)
        if run.executed:
            self.emit(ev.ToolExecuted(call=call), turn.id)

    def _before_edit(self, tool: Tool, args: Any) -> dict[str, str | None]:
        """Texts of the files the call will edit, when a face wants whole-file diffs."""
        if not self.svc.edit_taps:
            return {}
        return {path: read_text(self.sandbox, path) for path in tool.edited_paths(args, self.sandbox)}

    def _after_edit(self, call_id: str, before: dict[str, str | None]) -> None:
        if not before:
            return
        texts = {path: (old, read_text(self.sandbox, path)) for path, old in before.items()}
        changed = {p: t for p, t in texts.items() if t[0] != t[1]}
        for tap in self.svc.edit_taps:
            try:
                tap(self.id, call_id, changed)
            except Exception:
                log.exception("edit tap failed")

    def _tool_breakpoint(self, bp: str, turn_id: str) -> None:
        """A call's own breakpoint, unless a sibling call waits on an approval: the agent is
        PAUSED at AWAITING_APPROVAL until every pending approval is answered (contract 5)."""
        if not self.pending:
            self._set_breakpoint(bp, turn_id)

    def _executing(self) -> bool:
        return self.executing > 0


MAX_DIFF_TEXT = 1024 * 1024
"""Files larger than this are not read for diffs (editors hold both whole texts)."""


def read_text(sandbox: LocalSandbox, path: str) -> str | None:
    """A file's text for a diff, opened through the sandbox's boundary check (a symlink
    swapped in is refused); None when it is missing, outside, binary or too large."""
    try:
        fd = sandbox.open_fd(path, os.O_RDONLY)
    except (BoundaryError, OSError, ValueError):
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_DIFF_TEXT + 1)
        return None if len(data) > MAX_DIFF_TEXT else data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def redact_result(result: ToolResult) -> ToolResult:
    """A tool's result with known secrets redacted: what the model, the store and the
    client see of it (a tool may have read a key from a file)."""
    return replace(result, data=secrets.redact_value(result.data),
                   error=secrets.redact(result.error) if result.error else result.error)


def _validation_text(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()]
    return "invalid input: " + "; ".join(parts)


def safe_subject(tool: Tool, args: Any, sandbox: LocalSandbox) -> dict[str, Any]:
    try:
        return tool.subject(args, sandbox)
    except Exception:
        log.exception("subject() of %s failed", tool.name)
        return {"type": "tool_call"}
