"""One agent: its conversation, turn queue, tool calls, approvals and the agent loop.

The loop walks the contract's breakpoints (PRE_MODEL, STREAMING_MODEL,
TOOL_PENDING, AWAITING_APPROVAL, PRE_TOOL, TOOL_EXECUTING, POST_TOOL, READY).
Each turn runs in its own task so `interrupt` can cancel exactly it; every
change is appended to the store as it happens, so a crash at any instant leaves
a prefix that `recover()` turns back into a consistent agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from .. import secrets
from ..config import Settings
from ..logs import redact
from ..protocol.agents import AgentConfig, AgentInfo, Usage
from ..protocol import events as ev
from ..protocol.events import FINAL_TOOL_STATES, ToolCall
from ..providers.base import (
    ModelRequest,
    ProviderError,
    RedactedThinking,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
)
from ..providers.pricing import cost_usd
from ..providers.registry import get_provider
from ..providers.retry import RetryPolicy, stream_with_retry
from ..sandbox.local import LocalSandbox
from ..store.base import AgentRow, ApprovalRow, MessageRow, Store, ToolCallRow, TurnRow
from ..tools.base import Tool, ToolResult
from ..tools.bash import ShellRegistry
from .errors import ApprovalNotPending, NotFound, Unavailable
from .events import Envelope, EventLog
from .toolctx import CallContext
from .permission import evaluate
from .templates import TEMPLATES
from .util import new_id, now_iso

log = logging.getLogger(__name__)

SEALED_ERROR = "the server stopped while this call was running; it was sealed on resume"


@dataclass
class Services:
    """What an agent needs from the process around it."""

    store: Store
    events: EventLog
    tools: dict[str, Tool]
    settings: Settings = field(default_factory=lambda: Settings({"provider": "echo"}, "builtin"))
    tool_concurrency: int = 4


@dataclass
class PendingApproval:
    approval_id: str
    call_id: str
    tool: str
    request: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]


@dataclass
class CallRun:
    """One tool call of a step, with its live record."""

    call: ToolCall
    step: int
    approval: PendingApproval | None = None
    executed: bool = False
    started: float | None = None
    """monotonic() when the tool started running."""

    def stop_clock(self) -> None:
        if self.started is not None and self.call.duration_ms is None:
            self.call.duration_ms = int((time.monotonic() - self.started) * 1000)

    @property
    def final(self) -> bool:
        return self.call.state in FINAL_TOOL_STATES

    def result_block(self) -> dict[str, Any]:
        result = self.call.result if self.call.result is not None else {"ok": False, "error": self.call.error}
        return {
            "type": "tool_result",
            "toolUseId": self.call.id,
            "content": result,
            "isError": self.call.state != "COMPLETED",
        }


@dataclass
class Turn:
    row: TurnRow
    done: asyncio.Future[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    texts: list[str] = field(default_factory=list)
    error: ProviderError | None = None
    finishing: bool = False
    detach: bool = False
    """Set at shutdown for a turn that only waits on approvals: it stops in memory and
    stays pending in the store, exactly as after a crash, so the approvals survive."""
    resume_calls: list[CallRun] | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.row.turn_id


class StepOutput:
    """What one model call produced so far (kept when the stream is interrupted)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCallRequest] = []
        self.usage: UsageReport | None = None
        self.signature: str | None = None
        self.redacted: list[str] = []


class Agent:
    def __init__(self, svc: Services, row: AgentRow, messages: list[dict[str, Any]], todos: list[dict[str, Any]]) -> None:
        self.svc = svc
        self.id = row.agent_id
        self.row = row
        self.config = AgentConfig.model_validate(row.config)
        self.template = TEMPLATES.get(row.template_id, TEMPLATES["default"])
        self.messages = messages
        self.todos = todos
        runtime = row.runtime
        self.model_calls: int = runtime.get("modelCalls", 0)
        self.usage = Usage.model_validate(runtime.get("usage", {}))
        self.remembered: set[str] = set(runtime.get("remembered", []))
        self.state = "READY"
        self.breakpoint = "READY"
        self.queue: deque[Turn] = deque()
        self.current: Turn | None = None
        self.stalled: Turn | None = None
        self.turns: dict[str, Turn] = {}
        self.pending: dict[str, PendingApproval] = {}
        self.decided: dict[str, dict[str, Any]] = {}
        self.runner: asyncio.Task[None] | None = None
        self.executing = 0
        """Tool calls running right now (a call may run while a sibling waits on approval)."""
        self.pins = 0
        """Requests using this agent right now; a pinned agent is never hibernated."""
        self.closing = False
        """Set by close(): no queued turn starts any more (they stay queued in the store)."""
        self.recovered = False
        """Crash recovery ran (or was not needed); it must run at most once per load."""
        self.last_active = time.monotonic()
        sandbox = self.config.sandbox
        assert sandbox is not None, "the pool always resolves a sandbox"
        key_env = self.config.model.api_key_env if self.config.model else None
        if key_env:
            secrets.register(os.environ.get(key_env))
        self.sandbox = LocalSandbox(sandbox.work_dir, sandbox.allow_paths, sandbox.enforce_boundary,
                                    env_remove=[*svc.settings.key_env_names(), *([key_env] if key_env else [])],
                                    env_allow=svc.settings.env_allow)
        secrets.register_dotenv(self.sandbox.work_dir)
        self.shells = ShellRegistry()
        self._sem = asyncio.Semaphore(svc.tool_concurrency)
        wanted = self.config.tools if self.config.tools is not None else self.template.tools
        self.tools = {n: t for n, t in svc.tools.items() if wanted == "*" or n in wanted}

    # --- small helpers -----------------------------------------------------
    @property
    def busy(self) -> bool:
        """Not to be hibernated: work in memory, or a request holding it (`pins`)."""
        return bool(self.current or self.queue or self.pending or self.stalled or self.pins)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def emit(self, event: ev.Event, turn_id: str | None = None) -> Envelope:
        """Emit an event built from its wire model (so no field can be forgotten)."""
        return self.svc.events.emit(self.id, event, turn_id)

    def info(self) -> AgentInfo:
        model = self.config.model
        return AgentInfo(
            agent_id=self.id,
            template_id=self.row.template_id,
            created_at=self.row.created_at,
            updated_at=self.row.updated_at,
            state=self.state,  # type: ignore[arg-type]
            last_seq=self.svc.events.last_seq(self.id),
            message_count=len(self.messages),
            model={"provider": model.provider if model else "echo", "model": model.model if model else None},
            work_dir=self.sandbox.work_dir,
            metadata=self.row.metadata,
        )

    def _set_state(self, state: str, turn_id: str | None) -> None:
        if state != self.state:
            self.state = state
            self.emit(ev.StateChanged(state=state), turn_id)

    def _set_breakpoint(self, bp: str, turn_id: str | None) -> None:
        if bp != self.breakpoint:
            prev, self.breakpoint = self.breakpoint, bp
            self.emit(ev.BreakpointChanged(previous=prev, current=bp), turn_id)

    def _runtime(self) -> dict[str, Any]:
        return {
            "modelCalls": self.model_calls,
            "usage": self.usage.wire(),
            "remembered": sorted(self.remembered),
        }

    def persist(self) -> asyncio.Future[None]:
        self.row.updated_at = now_iso()
        return self.svc.store.update_agent(self.id, state=self.state, updated_at=self.row.updated_at, runtime=self._runtime())

    def _append_message(self, role: str, content: list[dict[str, Any]], turn_id: str | None) -> asyncio.Future[None]:
        msg = {"index": len(self.messages), "role": role, "content": content, "turnId": turn_id, "createdAt": now_iso()}
        self.messages.append(msg)
        return self.svc.store.append_message(MessageRow(self.id, msg["index"], role, content, turn_id, msg["createdAt"]))

    async def set_todos(self, todos: list[dict[str, Any]], turn_id: str | None = None) -> list[dict[str, Any]]:
        self.todos = todos
        self.emit(ev.TodoChanged(todos=todos), turn_id)
        await self.svc.store.set_todos(self.id, todos)
        return todos

    # --- sending -------------------------------------------------------------
    async def send(self, content: list[dict[str, Any]], kind: str) -> tuple[Turn, bool]:
        """Queue a turn; returns (turn, queued behind other work) once it is durably stored."""
        self.touch()
        if kind == "reminder":
            content = [{"type": "text", "text": f"<system-reminder>{_text_of(content)}</system-reminder>"}]
        queued = bool(self.current or self.queue or self.stalled)  # behind other work
        row = TurnRow(self.id, new_id("turn"), -1, "queued", now_iso(), message={"role": "user", "content": content})
        turn = Turn(row, asyncio.get_running_loop().create_future())
        await self.svc.store.put_turn(row)  # only a stored send becomes a turn
        self.turns[turn.id] = turn
        self.queue.append(turn)
        self._kick()
        return turn, queued

    def _kick(self) -> None:
        if (self.runner is None or self.runner.done()) and self.queue and not self.stalled and not self.closing:
            self.runner = asyncio.create_task(self._run_queue(), name=f"agent-{self.id}")

    async def _run_queue(self) -> None:
        while self.queue and not self.stalled and not self.closing:
            turn = self.queue.popleft()
            self.current = turn
            turn.task = asyncio.create_task(self._run_turn(turn), name=f"turn-{turn.id}")
            await asyncio.wait([turn.task])
            self.current = None
            self.touch()

    # --- the loop --------------------------------------------------------------
    async def _run_turn(self, turn: Turn) -> None:
        tid = turn.id
        step = turn.row.step
        reason = "completed"
        try:
            # A turn resumed after a crash may start waiting on re-issued approvals: the
            # state follows from what is pending (see _update_pause), not from "a turn runs".
            self._set_state("PAUSED" if self.pending else "WORKING", tid)
            if turn.resume_calls is None:
                assert turn.row.message is not None
                turn.row.message_index = len(self.messages)
                self._append_message("user", turn.row.message["content"], tid)
                turn.row.status = "running"
                self.svc.store.put_turn(turn.row)
            calls = turn.resume_calls
            turn.resume_calls = None
            while True:
                if calls:
                    await self._tool_phase(turn, step, calls)
                    calls = None
                step += 1
                if step > self.template.max_steps:
                    reason = "max_steps"
                    break
                turn.row.step = step
                self.svc.store.put_turn(turn.row)
                started = time.monotonic()
                self._set_breakpoint("PRE_MODEL", tid)
                out = StepOutput()
                await self._model_step(turn, step, out)
                requests = out.calls
                self._record_assistant(turn, step, out)
                self.emit(ev.StepComplete(step=step, duration_ms=int((time.monotonic() - started) * 1000)), tid)
                if self._over_budget():
                    if requests:
                        self._append_message("tool", [_not_run(r.id, "token budget exceeded") for r in requests], tid)
                    reason = "budget_exceeded"
                    break
                if not requests:
                    break
                calls = [self._new_call(turn, step, r) for r in requests]
        except asyncio.CancelledError:
            if turn.detach:
                return
            reason = "interrupted"
        except ProviderError as exc:
            exc.message = redact(exc.message)  # servers echo keys back in error bodies
            turn.error = exc
            self.emit(ev.ErrorEvent(severity="error", phase="model", message=f"{exc.type}: {exc.message}",
                                    retryable=exc.retryable), tid)
            reason = "error"
        except Exception as exc:  # the server's own fault: report it, keep the agent usable
            log.exception("turn %s of agent %s failed", tid, self.id)
            self.emit(ev.ErrorEvent(severity="error", phase="system", message=f"internal error: {exc}",
                                    retryable=False), tid)
            reason = "error"
        await self._finish_turn(turn, step, reason)

    async def _finish_turn(self, turn: Turn, step: int, reason: str) -> None:
        tid = turn.id
        self._set_breakpoint("READY", tid)
        self._set_state("READY", tid)
        self.persist()
        turn.finishing = True  # an interrupt from here on has nothing left to stop
        env = self.emit(ev.Done(step=max(step, 0), reason=reason), tid)
        # Stored after the done event (writes are ordered): a crash between the two leaves
        # a "running" turn whose done is stored, which recover() recognises.
        turn.row.status = "done"
        turn.row.reason = reason
        self.svc.store.put_turn(turn.row)
        assert env.delivered is not None
        try:
            await asyncio.shield(env.delivered)
        except Exception:
            log.exception("done event of turn %s not stored", tid)
        finally:
            if not turn.done.done():
                turn.done.set_result({"reason": reason, "seq": env.seq,
                                      "text": "\n\n".join(t for t in turn.texts if t), "error": turn.error})
            self.turns.pop(tid, None)

    def model_config(self) -> dict[str, Any]:
        """The agent's model config over the configured provider defaults (never a key)."""
        model = self.config.model
        assert model is not None
        return self.svc.settings.model_defaults(model.wire())

    async def _model_step(self, turn: Turn, step: int, out: StepOutput) -> None:
        tid = turn.id
        config = self.model_config()
        provider = get_provider(config["provider"])
        request = ModelRequest(
            system=self._system_prompt(),
            messages=[{"role": m["role"], "content": m["content"]} for m in self.messages],
            tools=[t.spec() for t in self.tools.values()],
            config=config,
            position=self.model_calls,
        )
        self.model_calls += 1
        self._set_breakpoint("STREAMING_MODEL", tid)

        def on_retry(attempt: int, delay_ms: int, err: ProviderError) -> None:
            if self.svc.settings.debug.log_retries:
                log.warning("agent %s: %s (%s), retry %d in %d ms", self.id, err.type, err.message, attempt, delay_ms)
            self.emit(ev.Retry(attempt=attempt, delay_ms=delay_ms,
                               error=ev.RetryErrorInfo(type=err.type, message=redact(err.message))), tid)

        open_kind: str | None = None
        try:
            stream = stream_with_retry(provider, request, RetryPolicy.from_wire(config.get("retry")), on_retry)
            async for delta in stream:
                if isinstance(delta, (TextDelta, ThinkingDelta)):
                    kind = "text" if isinstance(delta, TextDelta) else "think"
                    if isinstance(delta, ThinkingDelta) and delta.signature:
                        out.signature = delta.signature
                        if not delta.text:
                            continue
                    if open_kind != kind:
                        self._close_block(open_kind, step, out, tid)
                        open_kind = kind
                        self.emit((ev.TextChunkStart if kind == "text" else ev.ThinkChunkStart)(step=step), tid)
                    (out.text if kind == "text" else out.thinking).append(delta.text)
                    self.emit((ev.TextChunk if kind == "text" else ev.ThinkChunk)(step=step, delta=delta.text), tid)
                elif isinstance(delta, RedactedThinking):
                    out.redacted.append(delta.data)
                elif isinstance(delta, ToolCallRequest):
                    out.calls.append(delta)
                elif isinstance(delta, UsageReport):
                    out.usage = delta
        finally:
            self._close_block(open_kind, step, out, tid)

    def _close_block(self, kind: str | None, step: int, out: StepOutput, tid: str) -> None:
        if kind is not None:
            text = "".join(out.text if kind == "text" else out.thinking)
            self.emit((ev.TextChunkEnd if kind == "text" else ev.ThinkChunkEnd)(step=step, text=text), tid)

    def _record_assistant(self, turn: Turn, step: int, out: StepOutput) -> None:
        tid = turn.id
        text = "".join(out.text)
        turn.texts.append(text)
        content: list[dict[str, Any]] = []
        if out.thinking:
            block: dict[str, Any] = {"type": "thinking", "thinking": "".join(out.thinking)}
            if out.signature:
                block["signature"] = out.signature
            content.append(block)
        content.extend({"type": "redacted_thinking", "data": data} for data in out.redacted)
        if text:
            content.append({"type": "text", "text": text})
        for call in out.calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
        self._append_message("assistant", content, tid)
        usage = out.usage or UsageReport()
        config = self.model_config()
        cost = cost_usd(config.get("model"), usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                        usage.cache_write_tokens, self.svc.settings.prices)
        self.usage.input_tokens += usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        self.usage.output_tokens += usage.output_tokens
        self.usage.cost_usd += cost
        debug = self.svc.settings.debug
        if debug.log_token_usage or debug.log_cache:
            log.info("agent %s usage: in=%d out=%d cache_read=%d cache_write=%d cost=$%.6f", self.id,
                     usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens, cost)
        self.emit(ev.TokenUsage(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
            cost_usd=round(cost, 8)), tid)
        self.persist()

    def _over_budget(self) -> bool:
        budget = self.config.budget
        if budget is None:
            return False
        if budget.max_tokens is not None and self.usage.input_tokens + self.usage.output_tokens > budget.max_tokens:
            return True
        return budget.max_cost_usd is not None and self.usage.cost_usd > budget.max_cost_usd

    def _system_prompt(self) -> str:
        prompt = self.config.system_prompt or self.template.system_prompt
        return prompt.replace("{workDir}", self.sandbox.work_dir)

    # --- tools ---------------------------------------------------------------
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
                await self._finish_call(turn, run, "FAILED", ToolResult.fail(f"unknown tool: {call.name}", "unknown_tool"))
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
                self._tool_breakpoint("PRE_TOOL", turn.id)
                call.state = "EXECUTING"
                call.started_at = now_iso()
                self._store_call(turn, run, "executing")
                self.executing += 1
                self._tool_breakpoint("TOOL_EXECUTING", turn.id)
                run.started = time.monotonic()
                run.executed = True
                ctx = CallContext(self, turn, run)
                try:
                    result = redact_result(await tool.run(ctx, args))
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

    # --- approvals -------------------------------------------------------------
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
            "subject": _safe_subject(tool, args, self.sandbox),
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

    def _tool_breakpoint(self, bp: str, turn_id: str) -> None:
        """A call's own breakpoint, unless a sibling call waits on an approval: the agent is
        PAUSED at AWAITING_APPROVAL until every pending approval is answered (contract 5)."""
        if not self.pending:
            self._set_breakpoint(bp, turn_id)

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

    # --- interrupt, recovery, shutdown -----------------------------------------------
    async def interrupt(self, note: str | None = None) -> bool:
        turn = self.current
        if turn is not None and turn.finishing and turn.task is not None:
            await asyncio.wait([turn.task], timeout=10)  # its `done` is already on the way
            return False
        if turn is None or turn.task is None or turn.task.done():
            if self.stalled is not None:
                stalled, self.stalled = self.stalled, None
                await self._end_stalled(stalled)
                self._kick()
                return True
            return False
        for pa in list(self.pending.values()):
            await self.decide(pa.approval_id, "deny", note or "interrupted", False, "interrupt")
        turn.task.cancel()
        await asyncio.wait([turn.task], timeout=10)
        return True

    async def recover(self, strategy: str) -> tuple[list[str], Callable[[], None]]:
        """Rebuild an unfinished turn after a crash; returns sealed call ids and the
        work to start once the `agent/resume` response is out (re-issued approvals,
        ending or continuing the turn, queued turns)."""
        self.recovered = True
        store = self.svc.store
        turns = await store.load_turns(self.id, ["queued", "running"])
        running = [t for t in turns if t.status == "running"]
        if running:
            recent = await store.read_events(self.id, max(0, self.svc.events.last_seq(self.id) - 20))
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
        turn = Turn(row, asyncio.get_running_loop().create_future())
        self.turns[turn.id] = turn
        records = {r.call_id: r for r in await store.load_tool_calls(self.id, row.turn_id)}
        approvals = {a.call_id: a for a in await store.load_approvals(self.id, "pending") if a.turn_id == row.turn_id}
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
                asyncio.create_task(self._end_stalled(turn, runs))
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

    async def close(self, keep_pending: bool = True) -> None:
        """Stop: queued turns stay queued (in the store), the running one is interrupted,
        or, with `keep_pending` (a graceful shutdown), detached when it only waits on
        approvals so they survive the restart. Background shells are killed."""
        self.closing = True
        turn = self.current
        if turn is not None and turn.task is not None and not turn.task.done():
            if keep_pending and self.pending and self.breakpoint == "AWAITING_APPROVAL" and not self._executing():
                turn.detach = True
                turn.task.cancel()
                await asyncio.wait([turn.task], timeout=5)
                if not turn.done.done():  # an agent/complete waiting on it gets an answer
                    turn.done.set_exception(Unavailable("the server is shutting down; the turn stays pending "
                                                        "and continues after agent/resume", "shutting_down"))
                    turn.done.exception()
            else:
                await self.interrupt("server shutting down" if keep_pending else "agent deleted")
        if self.runner is not None and not self.runner.done():
            self.runner.cancel()
        await self.shells.kill_all()
        await self.persist()

    def _executing(self) -> bool:
        return self.executing > 0


def redact_result(result: ToolResult) -> ToolResult:
    """A tool's result with known secrets redacted: what the model, the store and the
    client see of it (a tool may have read a key from a file)."""
    return replace(result, data=secrets.redact_value(result.data),
                   error=secrets.redact(result.error) if result.error else result.error)


def _text_of(content: list[dict[str, Any]]) -> str:
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def _not_run(call_id: str, why: str) -> dict[str, Any]:
    return {"type": "tool_result", "toolUseId": call_id, "content": {"ok": False, "error": f"not run: {why}"},
            "isError": True}


def _validation_text(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()]
    return "invalid input: " + "; ".join(parts)


def _safe_subject(tool: Tool, args: Any, sandbox: LocalSandbox) -> dict[str, Any]:
    try:
        return tool.subject(args, sandbox)
    except Exception:
        log.exception("subject() of %s failed", tool.name)
        return {"type": "tool_call"}


def _iso_in(ms: int) -> str:
    from datetime import datetime, timedelta, timezone

    t = datetime.now(timezone.utc) + timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
