"""Crash recovery: turning what a dead process left in the store back into a live agent.

`Recovery` is one part of `Agent` (see agent.py). Unfinished tool calls are
sealed (state SEALED, a synthetic error result), pending approvals are
re-registered and re-issued with the same ids, a turn paused on approvals
continues once they are answered, and any other running turn ends with
`done {reason: "interrupted"}` (strategy `crash`) or waits for the client
(strategy `manual`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import events as ev
from ..protocol.events import ToolCall
from ..store.base import AgentSnapshot, ToolCallRow
from ..tools.base import ToolResult
from .records import CallRun, Turn

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

SEALED_ERROR = "the server stopped while this call was running; it was sealed on resume"


class Recovery:
    """The crash-recovery part of an `Agent`."""

    loaded: AgentSnapshot | None = None
    """What the pool read when it loaded the agent; recover() uses it once instead of re-reading."""

    async def recover(self, strategy: str) -> tuple[list[str], Callable[[], None]]:
        """Rebuild an unfinished turn after a crash; returns sealed call ids and the
        work to start once the `agent/resume` response is out (re-issued approvals,
        ending or continuing the turn, queued turns)."""
        self.recovered = True
        store = self.svc.store
        snap, self.loaded = self.loaded, None  # read when the agent was loaded (pool._load)
        turns = snap.turns if snap is not None else await store.load_turns(self.id, ["queued", "running"])
        running = [t for t in turns if t.status == "running"]
        if running:
            recent = snap.recent_events if snap is not None else await store.read_events(
                self.id, max(0, self.svc.events.last_seq(self.id) - 20))
            ended = {e.turn_id for e in recent if e.type == "done"}
            for row in [t for t in running if t.turn_id in ended]:  # died right after its done
                row.status = "done"
                store.put_turn(row)
                running.remove(row)
        for row in turns:
            if row.status == "queued":
                turn = Turn(row, asyncio.get_running_loop().create_future())
                self.turns[turn.id] = turn
                self.queue.append(turn)
        if not running:
            return [], self._kick
        row = running[-1]
        turn = Turn(row, asyncio.get_running_loop().create_future(), recovered=True)
        self.turns[turn.id] = turn
        calls = snap.calls_of(row.turn_id) if snap is not None else await store.load_tool_calls(self.id, row.turn_id)
        pending = snap.pending_approvals if snap is not None else await store.load_approvals(self.id, "pending")
        records = {r.call_id: r for r in calls}
        approvals = {a.call_id: a for a in pending if a.turn_id == row.turn_id}
        runs = self._calls_of_last_step(turn, records)
        sealed: list[str] = []
        if strategy == "crash" or approvals:
            for run in runs:
                if run.final or (run.call.id in approvals and run.call.state == "APPROVAL_REQUIRED"):
                    continue
                run.call.state = "SEALED"
                run.call.error = SEALED_ERROR
                run.call.result = ToolResult.fail(SEALED_ERROR, "sealed").wire()
                sealed.append(run.call.id)
        for run in runs:
            if run.call.id in approvals and not run.final:
                run.approval = self._register_pending(approvals[run.call.id].request)

        def start() -> None:
            for run in runs:
                if run.call.id in sealed:
                    self._store_call(turn, run, "sealed")
                    self.emit(ev.ToolEnd(call=run.call), turn.id)
            for pa in self.pending.values():
                self.emit(ev.PermissionRequired(approval_id=pa.approval_id, call=pa.request["call"]), turn.id)
            if self.pending:
                turn.resume_calls = runs
                self.queue.appendleft(turn)
            elif strategy == "crash":
                self.end_crashed(turn, runs)
            else:
                self.stalled = turn
            self._kick()

        return sealed, start

    def _calls_of_last_step(self, turn: Turn, records: dict[str, ToolCallRow]) -> list[CallRun]:
        """Tool calls of the turn's last assistant message that have no tool_result yet."""
        last = self.messages[-1] if self.messages else None
        if not last or last["role"] != "assistant" or last.get("turnId") != turn.id:
            return []
        runs = []
        for block in last["content"]:
            if block.get("type") != "tool_use":
                continue
            rec = records.get(block["id"])
            call = ToolCall(id=block["id"], name=block["name"], input=block.get("input") or {},
                            input_preview=block["name"], state="PENDING")
            if rec is not None:
                call.state = rec.state  # type: ignore[assignment]
                call.result = rec.result
                call.error = rec.error
                call.started_at = rec.started_at
                call.duration_ms = rec.duration_ms
            tool = self.tools.get(call.name)
            if tool:
                call.input_preview = tool.preview(call.input)
            runs.append(CallRun(call, turn.row.step))
        return runs

    def end_crashed(self, turn: Turn, runs: list[CallRun] | None = None) -> asyncio.Task[None]:
        """End a turn a crash left running (`_end_stalled`) as the agent's `ending` task:
        queued turns start after it (its end snapshot may take a while), a rewind waits
        for it, a close lets it finish; a failure is logged."""
        self.ending = asyncio.ensure_future(self._end_stalled(turn, runs))
        self.ending.add_done_callback(self._ended)
        return self.ending

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("agent %s: ending a turn after a crash failed", self.id, exc_info=task.exception())
        self._kick()

    async def _end_stalled(self, turn: Turn, runs: list[CallRun] | None = None) -> None:
        """End a turn left running by a dead process: results for dangling calls, then done."""
        if runs is None:
            records = {r.call_id: r for r in await self.svc.store.load_tool_calls(self.id, turn.id)}
            runs = self._calls_of_last_step(turn, records)
            for run in runs:
                if not run.final:
                    run.call.state = "SEALED"
                    run.call.error = SEALED_ERROR
                    run.call.result = ToolResult.fail(SEALED_ERROR, "sealed").wire()
                    self._store_call(turn, run, "sealed")
                    self.emit(ev.ToolEnd(call=run.call), turn.id)
        if runs:
            self._append_message("tool", [r.result_block() for r in runs], turn.id)
        await self._finish_turn(turn, turn.row.step, "interrupted")
