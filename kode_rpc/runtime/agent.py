"""One agent: its conversation, turn queue and the agent loop.

Its other jobs are parts of the class in their own modules: tool calls and the
permission policy (`calls.py`), approvals (`approvals.py`), crash recovery
(`recovery.py`); the in-memory records they share are in `records.py`.

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
from typing import Any


from .. import secrets
from ..logs import redact
from ..protocol.agents import AgentConfig, AgentInfo, ModelConfig, Usage
from ..protocol import events as ev
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
from ..sandbox.watch import DirWatcher  # watchfiles itself loads on DirWatcher.start()
from ..store.base import AgentRow, MessageRow, TurnRow
from ..tools.bash import ShellRegistry
from .approvals import Approvals
from .calls import ToolCalls
from .errors import Unavailable
from .events import Envelope
from .records import CallRun, PendingApproval, Services, StepOutput, Turn
from .recovery import Recovery
from .compression import AgentCompression
from .rewind import AgentCheckpoints, rewound_of
from .instructions import ProjectInstructions
from .templates import TEMPLATES
from .util import new_id, now_iso

__all__ = ["Agent", "CallRun", "PendingApproval", "Services", "Turn"]

log = logging.getLogger(__name__)


class Agent(ToolCalls, Approvals, Recovery):
    def __init__(self, svc: Services, row: AgentRow, messages: list[dict[str, Any]], todos: list[dict[str, Any]]) -> None:
        self.svc = svc
        self.id = row.agent_id
        self.row = row
        self.config = AgentConfig.model_validate(row.config)
        # The template was resolved into the config at create (contract 15: an agent keeps
        # the template it was created from); rows from before that fall back to the built-in.
        self.template = TEMPLATES.get(row.template_id, TEMPLATES["default"])
        self.max_steps: int = int(row.config.get("maxSteps") or self.template.max_steps)
        self.messages = messages
        """The conversation, append-only (a rewind or a compaction hides messages, never removes them)."""
        self._model_view: list[dict[str, Any]] = []
        """`{role, content}` of `messages[:len(_model_view)]`, extended as messages come (`_model_messages`)."""
        self.todos = todos
        runtime = row.runtime
        self.model_calls: int = runtime.get("modelCalls", 0)
        self.usage = Usage.model_validate(runtime.get("usage", {}))
        self.remembered: set[str] = set(runtime.get("remembered", []))
        self.checkpoints = AgentCheckpoints(self, rewound_of(runtime))
        self.compaction = AgentCompression(self, runtime)
        self.state = "READY"
        self.breakpoint = "READY"
        self.queue: deque[Turn] = deque()
        self.current: Turn | None = None
        self.stalled: Turn | None = None
        self.ending: asyncio.Task[None] | None = None
        """Recovery ending a turn a crash interrupted (its end snapshot may take a while):
        queued turns start after it, so they keep their order and stay out of its diff."""
        self.turns: dict[str, Turn] = {}
        self.pending: dict[str, PendingApproval] = {}
        self.decided: dict[str, dict[str, Any]] = {}
        self.runner: asyncio.Task[None] | None = None
        self._model_config: dict[str, Any] | None = None
        self._executing_n = 0
        self._idle_since = 0.0
        self._idle_turn: str | None = None
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
        self.mcp = _mcp_hub(self)
        self.instructions = ProjectInstructions(self.sandbox.work_dir)
        """AGENTS.md / KODE.md of the workDir, appended to the system prompt (contract 15)."""
        self.files = DirWatcher(self.sandbox.work_dir, self._files_changed)
        """Reports changes under the workDir as `file_changed`; the pool starts and stops it."""
        """The agent's MCP servers (None without any); the pool starts and stops them."""

    # --- small helpers -----------------------------------------------------
    @property
    def executing(self) -> int:
        """Tool calls running right now (a call may run while a sibling waits on approval)."""
        return self._executing_n

    @executing.setter
    def executing(self, value: int) -> None:
        if value <= 0 < self._executing_n:
            self._idle_since = time.monotonic()
            self._idle_turn = self.current.id if self.current is not None else None
        self._executing_n = value

    def _files_changed(self, changes: list[tuple[str, str]]) -> None:
        """The watcher's net changes of one window. A change is the agent's when a tool
        call ran at the time: one runs now, or one ended within the watcher's window."""
        by = "agent" if self.executing > 0 or time.monotonic() - self._idle_since < _AGENT_WINDOW_S else "external"
        turn_id = self.current.id if self.current is not None else None
        if by == "agent" and self.executing == 0:
            turn_id = self._idle_turn  # the turn whose tool call made it (it may have ended since)
        for path, change in changes:
            self.emit(ev.FileChanged(path=path, change=change, by=by), turn_id)  # type: ignore[arg-type]

    @property
    def busy(self) -> bool:
        """Not to be hibernated: work in memory, or a request holding it (`pins`)."""
        return bool(self.has_turns or self.pending or self.pins)

    @property
    def has_turns(self) -> bool:
        """A turn is running, queued, stalled after a crash, or being ended after one."""
        return bool(self.current or self.queue or self.stalled or self.ending_turn)

    @property
    def ending_turn(self) -> bool:
        """Whether recovery is still ending a turn a crash interrupted (`ending`)."""
        return self.ending is not None and not self.ending.done()

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def emit(self, event: ev.Event | ev.Chunk, turn_id: str | None = None) -> Envelope:
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
            "rewound": self.checkpoints.runtime(),
            "compaction": self.compaction.runtime(),
        }

    def persist(self) -> asyncio.Future[None]:
        self.row.updated_at = now_iso()
        return self.svc.store.update_agent(self.id, state=self.state, updated_at=self.row.updated_at, runtime=self._runtime())

    def _append_message(self, role: str, content: list[dict[str, Any]], turn_id: str | None) -> asyncio.Future[None]:
        msg = {"index": len(self.messages), "role": role, "content": content, "turnId": turn_id, "createdAt": now_iso()}
        self.messages.append(msg)
        return self.svc.store.append_message(MessageRow(self.id, msg["index"], role, content, turn_id, msg["createdAt"]))

    def reconfigure(self, *, mode: str | None = None, model: dict[str, Any] | None = None) -> asyncio.Future[None]:
        """Change the permission mode or the model for the turns to come (ACP's
        `session/set_mode` and model picker); the new config is stored with the agent."""
        if mode is not None:
            assert self.config.permission is not None
            self.config.permission.mode = mode  # type: ignore[assignment]
        if model is not None:
            self.config.model = ModelConfig.model_validate(model)
            self._model_config = None
        self.row.config = {**self.row.config, **self.config.wire()}  # keeps resolved template extras (maxSteps)
        return self.svc.store.update_agent(self.id, config=self.row.config)

    async def add_mcp_servers(self, servers: dict[str, Any]) -> None:
        """Connect the MCP servers a client names when it loads or resumes the agent (ACP's
        `session/load` and `session/resume` carry the editor's current list): each is added,
        or replaces the agent's server of that name, and is stored with the agent. Servers
        the list leaves out stay (the agent's config does not say which ones the editor gave
        and which a template did). Only new or changed servers (re)connect; a list that says
        what the agent already has changes nothing. `servers` must be valid (`mcpServers`)."""
        current = _agent_servers(self)
        merged = {**current, **servers}
        if merged == current:
            return
        self.config.mcp_servers = AgentConfig.model_validate({"mcpServers": merged}).mcp_servers
        self.row.config = {**self.row.config, **self.config.wire()}
        await self.svc.store.update_agent(self.id, config=self.row.config)
        if self.mcp is None:
            self.mcp = _mcp_hub(self)
            if self.mcp is not None:
                self.mcp.start()
        else:
            from ..tools.mcp import merge_servers

            await self.mcp.update(merge_servers(self.svc.settings.mcp_servers, _agent_servers(self)))

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
        queued = self.has_turns  # behind other work
        row = TurnRow(self.id, new_id("turn"), -1, "queued", now_iso(), message={"role": "user", "content": content})
        turn = Turn(row, asyncio.get_running_loop().create_future())
        await self.svc.store.put_turn(row)  # only a stored send becomes a turn
        self.turns[turn.id] = turn
        self.queue.append(turn)
        self._kick()
        return turn, queued

    def _kick(self) -> None:
        if ((self.runner is None or self.runner.done()) and self.queue and not self.stalled and not self.closing
                and not self.ending_turn):
            self.runner = asyncio.create_task(self._run_queue(), name=f"agent-{self.id}")

    async def _run_queue(self) -> None:
        while self.queue and not self.stalled and not self.closing:
            if self.compaction.lock.locked():  # an agent/compact runs: the turn starts after it
                async with self.compaction.lock:
                    pass
                continue
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
                if step > self.max_steps:
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
        await self.checkpoints.end_turn(turn)  # turn_diff
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
        """The agent's model config over the configured provider defaults (never a key).
        Computed once per config: a scripted model's config holds its whole script."""
        if self._model_config is None:
            model = self.config.model
            assert model is not None
            self._model_config = self.svc.settings.model_defaults(model.wire())
        return self._model_config

    async def _model_step(self, turn: Turn, step: int, out: StepOutput) -> None:
        tid = turn.id
        if self.mcp is not None:
            await self.mcp.ready()  # the model sees the tools of servers still starting
        await self.compaction.before_model_call(turn)  # context compression (contract 13)
        config = self.model_config()
        provider = get_provider(config["provider"])
        sent = len(self.messages)
        request = ModelRequest(
            system=self._system_prompt(),
            messages=self._model_messages(),
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
        events = self.svc.events
        try:
            stream = stream_with_retry(provider, request, RetryPolicy.from_wire(config.get("retry")), on_retry)
            async for delta in stream:
                if isinstance(delta, (TextDelta, ThinkingDelta)):
                    kind = "text" if isinstance(delta, TextDelta) else "think"
                    etype = "text_chunk" if kind == "text" else "think_chunk"
                    if isinstance(delta, ThinkingDelta) and delta.signature:
                        out.signature = delta.signature
                        if not delta.text:
                            continue
                    if open_kind != kind:
                        self._close_block(open_kind, step, out, tid)
                        open_kind = kind
                        self.emit((ev.TextChunkStart if kind == "text" else ev.ThinkChunkStart)(step=step), tid)
                    (out.text if kind == "text" else out.thinking).append(delta.text)
                    if not events.merge_delta(self.id, etype, step, delta.text, tid):
                        self.emit(ev.chunk(kind, step, delta.text), tid)
                elif isinstance(delta, RedactedThinking):
                    out.redacted.append(delta.data)
                elif isinstance(delta, ToolCallRequest):
                    out.calls.append(delta)
                elif isinstance(delta, UsageReport):
                    out.usage = delta
            self.compaction.observe(sent, out.usage)
        finally:
            self._close_block(open_kind, step, out, tid)

    def _model_messages(self) -> list[dict[str, Any]]:
        """`{role, content}` of each message the model sees. While it sees the whole
        conversation (nothing rewound or compacted) the list is kept and extended instead
        of rebuilt: rebuilding cost time that grew with every turn of a long session."""
        context = self.compaction.context(self.messages)
        if context is not self.messages:
            return [{"role": m["role"], "content": m["content"]} for m in context]
        view = self._model_view
        view.extend({"role": m["role"], "content": m["content"]} for m in self.messages[len(view):])
        return list(view)  # the provider's own list: one it changed would not change ours

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
        return self.instructions.append_to(prompt.replace("{workDir}", self.sandbox.work_dir))

    # --- tools ---------------------------------------------------------------
    # --- interrupt, shutdown -----------------------------------------------
    # --- interrupt, recovery, shutdown -----------------------------------------------
    async def interrupt(self, note: str | None = None) -> bool:
        turn = self.current
        if turn is not None and turn.finishing and turn.task is not None:
            await asyncio.wait([turn.task], timeout=10)  # its `done` is already on the way
            return False
        if turn is None or turn.task is None or turn.task.done():
            if self.stalled is not None:
                stalled, self.stalled = self.stalled, None
                await asyncio.wait([self.end_crashed(stalled)])
                return True
            return False
        for pa in list(self.pending.values()):
            await self.decide(pa.approval_id, "deny", note or "interrupted", False, "interrupt")
        turn.task.cancel()
        await asyncio.wait([turn.task], timeout=10)
        return True

    async def close(self, keep_pending: bool = True) -> None:
        """Stop: queued turns stay queued (in the store), the running one is interrupted,
        or, with `keep_pending` (a graceful shutdown), detached when it only waits on
        approvals so they survive the restart. Background shells are killed."""
        self.closing = True
        if self.ending is not None and self.ending_turn:  # recovery is ending a crashed turn: let it
            await asyncio.wait([self.ending], timeout=10)
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
        await self.files.stop()
        if self.mcp is not None:
            await self.mcp.close()
        await self.persist()


_AGENT_WINDOW_S = 0.3
"""How long after its last tool call ended a change still counts as the agent's: the
watcher reports a change at most ~(debounce + step) = 150 ms after it happened."""


def _agent_servers(agent: Agent) -> dict[str, Any]:
    """The agent's own `mcpServers` as wire dicts (None: a config-file server turned off)."""
    return {k: (v.wire() if v is not None else None) for k, v in (agent.config.mcp_servers or {}).items()}


def _mcp_hub(agent: Agent) -> Any:
    """The agent's `McpHub` when it (or the config file) names MCP servers, else None."""
    if not agent.config.mcp_servers and not agent.svc.settings.mcp_servers:
        return None
    from ..tools.mcp import hub_for

    return hub_for(agent.id, agent.svc.settings.mcp_servers, _agent_servers(agent), agent.tools,
                   lambda event: agent.emit(event, agent.current.id if agent.current else None),
                   work_dir=agent.sandbox.work_dir, env_remove=agent.sandbox.env_remove,
                   env_allow=agent.sandbox.env_allow)


def _text_of(content: list[dict[str, Any]]) -> str:
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def _not_run(call_id: str, why: str) -> dict[str, Any]:
    return {"type": "tool_result", "toolUseId": call_id, "content": {"ok": False, "error": f"not run: {why}"},
            "isError": True}
