"""Approvals: asking the client before a call runs, and the first answer winning.

`Approvals` is one part of `Agent` (see agent.py). A pending approval is stored
before it is announced (`permission_required`), so it survives a crash and is
re-issued with the same id; the agent's state follows from what is pending
(`_update_pause`): PAUSED at AWAITING_APPROVAL while anything is.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..protocol import events as ev
from ..store.base import ApprovalRow
from ..tools.base import Tool
from .errors import ApprovalNotPending, NotFound
from .calls import safe_subject
from .records import CallRun, PendingApproval, Turn
from .util import new_id, now_iso

if TYPE_CHECKING:
    pass


class Approvals:
    """The approval part of an `Agent`."""

    async def _ask(self, turn: Turn, run: CallRun, tool: Tool, args: Any) -> dict[str, Any]:
        call = run.call
        approval_id = new_id("apr")
        call.state = "APPROVAL_REQUIRED"
        self._store_call(turn, run, "approval required")
        perm = self.config.permission
        expires = None
        if perm and perm.approval_timeout_ms:
            expires = _iso_in(perm.approval_timeout_ms)
        request = {
            "agentId": self.id,
            "approvalId": approval_id,
            "turnId": turn.id,
            "call": call.wire(),
            "title": f"{call.name}: {call.input_preview}"[:300],
            "subject": safe_subject(tool, args, self.sandbox),
            "options": ["allow", "deny"],
        }
        if expires:
            request["expiresAt"] = expires
        self.svc.store.put_approval(ApprovalRow(self.id, approval_id, call.id, turn.id, "pending", request, now_iso()))
        run.approval = self._register_pending(request)
        self.emit(ev.PermissionRequired(approval_id=approval_id, call=call), turn.id)
        return await self._await_decision(run.approval)

    def _register_pending(self, request: dict[str, Any]) -> PendingApproval:
        pa = PendingApproval(request["approvalId"], request["call"]["id"], request["call"]["name"], request,
                             asyncio.get_running_loop().create_future())
        self.pending[pa.approval_id] = pa
        self._update_pause(request["turnId"])
        return pa

    async def _await_decision(self, pa: PendingApproval) -> dict[str, Any]:
        perm = self.config.permission
        timeout = perm.approval_timeout_ms if perm else None
        if timeout:
            try:
                return await asyncio.wait_for(asyncio.shield(pa.future), timeout / 1000)
            except TimeoutError:
                if pa.approval_id in self.pending:
                    await self.decide(pa.approval_id, "deny", f"no answer within {timeout} ms", False, "timeout")
        return await pa.future

    def _update_pause(self, turn_id: str | None) -> None:
        turn = self.current or self.stalled
        if self.pending:
            self._set_breakpoint("AWAITING_APPROVAL", turn_id)
            self._set_state("PAUSED", turn_id)
            if turn:
                turn.paused.set()
        else:
            if turn:
                turn.paused.clear()
            if self.state == "PAUSED":
                self._set_state("WORKING", turn_id)
                self._set_breakpoint("TOOL_EXECUTING" if self.executing else "PRE_TOOL", turn_id)

    async def decide(self, approval_id: str, decision: str, note: str | None, remember: bool, by: str) -> asyncio.Future[None]:
        """Record the first answer to an approval; later answers get -32011."""
        pa = self.pending.get(approval_id)
        if pa is None:
            recorded = self.decided.get(approval_id)
            if recorded is None:
                for row in await self.svc.store.load_approvals(self.id):
                    if row.approval_id == approval_id and row.status != "pending":
                        recorded = {"decision": row.status, "decidedBy": row.decided_by, "note": row.note}
            if recorded is None:
                raise NotFound("approval", approval_id)
            raise ApprovalNotPending(approval_id, recorded)
        del self.pending[approval_id]
        record = {"decision": decision, "decidedBy": by, "note": note}
        self.decided[approval_id] = record
        if remember and decision == "allow":
            self.remembered.add(pa.tool)
            self.persist()
        req = pa.request
        stored = self.svc.store.put_approval(ApprovalRow(
            self.id, approval_id, pa.call_id, req["turnId"], decision, req, now_iso(),
            decided_by=by, note=note, decided_at=now_iso()))
        self.emit(ev.PermissionDecided(approval_id=approval_id, call_id=pa.call_id, decision=decision, decided_by=by,
                                       note=note or None), req["turnId"])
        if not pa.future.done():
            pa.future.set_result(record)
        self._update_pause(req["turnId"])
        return stored

    def pending_requests(self) -> list[dict[str, Any]]:
        return [pa.request for pa in self.pending.values()]


def _iso_in(ms: int) -> str:
    from datetime import datetime, timedelta, timezone

    t = datetime.now(timezone.utc) + timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
