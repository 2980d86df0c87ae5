"""The runtime service: the one API every face (kode protocol, ACP) calls.

Typed calls in, typed results out (the `protocol/` models), domain exceptions
(`runtime/errors.py`) for what goes wrong. What used to live in the protocol
handlers and would otherwise be copied into every face lives here once:

- `using(agent_id)`: load (or wake) an agent and pin it for the duration of a
  request, so hibernation never takes it away mid-request; requests naming the
  same agent start in arrival order (create before a pipelined send).
- `Watcher`: one client's view of agents' events: subscribed before its request
  is handled, a per-agent cursor so resume replays with no gap and no duplicate,
  buffering while a replay runs, and the approval bridge (a face that can ask
  its user gets each `permission_required` as a question; the first answer wins,
  and a question answered elsewhere is withdrawn).
- the complete-wait loop, settling the store before reads, status of stored or
  live agents, and crash recovery on resume.
- reads in arrival order too: requests run concurrently, but a read waits for the
  create, delete, load or hibernation of its agent that an earlier request started
  (`agent/list`: for every create and delete), so it never answers from before them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ..protocol import agents as a
from ..protocol import approvals as ap
from ..protocol import events as ev
from ..protocol.approvals import ApprovalResponse
from ..store.base import AgentRow
from .agent import Agent, Turn
from .errors import InvalidInput, NotFound, RuntimeFault
from .events import Envelope
from .pool import AgentPool, idle_ms
from . import compression as cz
from . import rewind as rw

log = logging.getLogger(__name__)

Ask = Callable[[dict[str, Any]], tuple[Callable[[], None], Awaitable[ApprovalResponse]]]
"""A face's way to ask its user about an approval request: returns a withdraw function
(called when the approval was decided elsewhere) and the awaitable answer."""


class Watcher:
    """One client's subscription to agents' events (a connection of a face).

    `deliver(env)` is called with every event of a watched agent exactly once, in
    `seq` order, never before it is stored; `ask`, when given, turns each
    `permission_required` into a question to the client.
    """

    def __init__(self, service: "RuntimeService", deliver: Callable[[Envelope], None], ask: Ask | None = None) -> None:
        self.service = service
        self._deliver = deliver
        self.ask = ask
        self.sent: dict[str, int] = {}
        self._buffering: dict[str, list[Envelope]] = {}
        self._withdraw: dict[str, Callable[[], None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __call__(self, env: Envelope) -> None:
        """The event log's subscriber."""
        buf = self._buffering.get(env.agent_id)
        if buf is not None:
            buf.append(env)
            return
        if env.seq <= self.sent.get(env.agent_id, 0):
            return
        self.sent[env.agent_id] = env.seq
        self._deliver(env)
        etype = env.event["type"]
        if etype == "permission_required" and self.ask is not None:
            task = asyncio.ensure_future(self._ask(env.agent_id, env.event["approvalId"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif etype == "permission_decided":
            # Still outstanding means decided elsewhere (agent/decide, timeout, interrupt):
            # our own question's answer removes it before it decides.
            withdraw = self._withdraw.pop(env.event.get("approvalId") or "", None)
            if withdraw is not None:
                withdraw()

    async def _ask(self, agent_id: str, approval_id: str) -> None:
        agent = self.service.pool.agents.get(agent_id)
        pa = agent.pending.get(approval_id) if agent else None
        if agent is None or pa is None or self.ask is None:
            return
        withdraw, answer = self.ask(pa.request)
        self._withdraw[approval_id] = withdraw
        try:
            reply = await answer
            decision, note, remember = reply.decision, reply.note, reply.remember
        except asyncio.CancelledError:
            return
        except Exception as exc:  # an error reply or a malformed answer means deny
            decision, note, remember = "deny", f"client error: {exc}", False
        finally:
            self._withdraw.pop(approval_id, None)
        if approval_id in agent.pending:
            try:
                await agent.decide(approval_id, decision, note, remember, "client")
            except RuntimeFault:
                pass  # answered elsewhere first: a late reply is ignored

    def watch(self, agent_id: str) -> None:
        self.service.pool.svc.events.subscribe(agent_id, self)

    def forget(self, agent_id: str) -> None:
        self.service.pool.svc.events.unsubscribe(agent_id, self)
        self.sent.pop(agent_id, None)

    def hold(self, agent_id: str) -> None:
        """Buffer the agent's live events (a replay is being sent)."""
        self._buffering.setdefault(agent_id, [])

    def release(self, agent_id: str) -> None:
        for env in self._buffering.pop(agent_id, []):
            self(env)

    def mark_sent(self, agent_id: str, seq: int) -> None:
        self.sent[agent_id] = max(self.sent.get(agent_id, 0), seq)


@dataclass
class Resumed:
    info: a.AgentInfo
    replayed: int
    start: Callable[[], None]
    """Run once the face has answered: re-issues approvals, ends or continues the turn."""


@dataclass
class Sent:
    agent: Agent
    turn: Turn
    queued: bool

    @property
    def result(self) -> a.SendResult:
        return a.SendResult(message_id="msg_" + self.turn.id.split("_", 1)[1], turn_id=self.turn.id,
                            queued=self.queued)


def content_of(p: a.SendParams) -> list[dict[str, Any]]:
    if p.content:
        return [b.wire() for b in p.content]
    if p.text is not None:
        return [{"type": "text", "text": p.text}]
    raise InvalidInput("text or content is required", "text", "text or content is required")


def row_info(row: AgentRow) -> a.AgentInfo:
    """AgentInfo of a stored agent that is not in memory."""
    model = row.config.get("model") or {}
    return a.AgentInfo(
        agent_id=row.agent_id, template_id=row.template_id, created_at=row.created_at, updated_at=row.updated_at,
        state=row.state if row.state in ("READY", "WORKING", "PAUSED") else "READY",  # type: ignore[arg-type]
        last_seq=row.last_seq, message_count=row.message_count,
        model={"provider": model.get("provider", "echo"), "model": model.get("model")},
        work_dir=(row.config.get("sandbox") or {}).get("workDir"), metadata=row.metadata,
    )


class RuntimeService:
    def __init__(self, pool: AgentPool) -> None:
        self.pool = pool
        self.store = pool.svc.store
        self.events = pool.svc.events
        self._locks: dict[str, asyncio.Lock] = {}
        self._changing: dict[str, asyncio.Future[None]] = {}
        """Agents a create, fork or delete is making or removing; done when that is stored or failed."""

    def watcher(self, deliver: Callable[[Envelope], None], ask: Ask | None = None) -> Watcher:
        return Watcher(self, deliver, ask)

    # --- pinning -------------------------------------------------------------------
    def _lock(self, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    @asynccontextmanager
    async def using(self, agent_id: str, watcher: Watcher | None = None, *,
                    recover: bool = True) -> AsyncIterator[Agent]:
        """The agent, loaded and pinned (never hibernated) while the block runs; requests
        naming one agent enter in arrival order. `watcher` is subscribed first."""
        async with self._lock(agent_id):
            agent = await self.pool.get(agent_id, watcher, recover=recover)
            agent.pins += 1
            try:
                yield agent
            finally:
                agent.pins -= 1

    @asynccontextmanager
    async def _changing_agent(self, agent_id: str | None) -> AsyncIterator[None]:
        """Mark `agent_id` as being made or deleted until the block ends (entered before the
        request's first await, so every read that arrived later sees the mark)."""
        if agent_id is None:
            yield
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changing[agent_id] = done
        try:
            yield
        finally:
            done.set_result(None)
            if self._changing.get(agent_id) is done:
                del self._changing[agent_id]

    def _earlier(self, agent_id: str | None) -> list[asyncio.Future[Any]]:
        """What requests that arrived before this moment have under way for the agent: its
        create (the row may not be stored yet) or delete, load or hibernation; with None, every
        create and delete."""
        if agent_id is None:
            return list(self._changing.values())
        changing = self._changing.get(agent_id)
        return ([changing] if changing is not None else []) + self.pool.in_flight(agent_id)

    async def _after_earlier(self, agent_id: str | None) -> None:
        """Requests are handled concurrently, but a read sees what the requests that arrived
        before it did: wait for `_earlier(agent_id)`."""
        pending = self._earlier(agent_id)
        if pending:
            await asyncio.wait(pending)

    async def settle(self, agent_id: str) -> None:
        """Make the store reflect everything this process emitted for the agent."""
        await self._after_earlier(agent_id)
        if agent_id in self.pool.agents:
            self.events.flush()
            await self.store.barrier()
        elif await self.store.get_agent(agent_id) is None:
            raise NotFound("agent", agent_id)

    # --- agents -------------------------------------------------------------------
    async def create(self, cfg: a.AgentConfig, watcher: Watcher | None) -> a.AgentInfo:
        if cfg.agent_id is None:
            return (await self.pool.create(cfg, watcher)).info()
        async with self._changing_agent(cfg.agent_id), self._lock(cfg.agent_id):
            return (await self.pool.create(cfg, watcher)).info()

    async def resume(self, agent_id: str, since: int | None, strategy: str, watcher: Watcher,
                     replay: Callable[[list[tuple[int, str]]], None],
                     mcp_servers: dict[str, Any] | None = None) -> Resumed:
        """Activate an agent for `watcher`: recover it once per load, `replay` the stored
        events after `since` (as `(seq, json)`), then `agent_resumed`; live events
        emitted meanwhile follow the replay with no gap and no duplicate. `mcp_servers`
        (validated): added to the agent's (`Agent.add_mcp_servers`) before its servers are
        retried, while what recovery restarts still waits for `Resumed.start`."""
        watcher.hold(agent_id)
        try:
            async with self.using(agent_id, watcher, recover=False) as agent:
                base = self.events.last_seq(agent_id)
                sealed: list[str] = []
                start: Callable[[], None] = lambda: None
                if not agent.recovered:  # once per load, whoever loaded it
                    sealed, start = await agent.recover(strategy)
                if mcp_servers:
                    await agent.add_mcp_servers(mcp_servers)
                if agent.mcp is not None:
                    agent.mcp.retry()  # reconnect MCP servers that failed or stopped
                self.events.flush()
                await self.store.barrier()
                replayed = 0
                if since is not None:
                    rows = await self.store.read_event_json(agent_id, since)
                    replay(rows)
                    replayed = len(rows)
                    if rows:
                        watcher.mark_sent(agent_id, rows[-1][0])
                else:
                    watcher.mark_sent(agent_id, base)
                env = agent.emit(ev.AgentResumed(strategy=strategy, sealed=sealed))  # type: ignore[arg-type]
        finally:
            watcher.release(agent_id)
        assert env.delivered is not None
        await env.delivered
        return Resumed(agent.info(), replayed, start)

    async def send(self, agent_id: str, content: list[dict[str, Any]], kind: str, watcher: Watcher | None) -> Sent:
        async with self.using(agent_id, watcher) as agent:
            turn, queued = await agent.send(content, kind)
        return Sent(agent, turn, queued)

    async def wait(self, sent: Sent, stop_on_pause: bool) -> a.CompleteResult:
        """Wait for the turn's `done` (its result is sent after the done event). With
        `stop_on_pause` (a client that answers approvals through events), return
        `paused` as soon as the turn waits on one of its approvals."""
        agent, turn = sent.agent, sent.turn
        while True:
            waiters: set[asyncio.Future[Any]] = {turn.done}
            paused: asyncio.Task[Any] | None = None
            if stop_on_pause:
                paused = asyncio.ensure_future(turn.paused.wait())
                waiters.add(paused)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if paused is not None:
                    paused.cancel()
            if turn.done.done():
                return _complete_result(turn)
            ids = [pa.approval_id for pa in agent.pending.values() if pa.request.get("turnId") == turn.id]
            if ids:
                self.events.flush()
                await self.store.barrier()
                return a.CompleteResult(status="paused", text="\n\n".join(t for t in turn.texts if t), turn_id=turn.id,
                                        last_seq=self.events.last_seq(agent.id), permission_ids=ids)

    async def interrupt(self, agent_id: str, note: str | None) -> bool:
        await self._after_earlier(agent_id)
        agent = self.pool.agents.get(agent_id)
        if agent is None:
            if await self.store.get_agent(agent_id) is None:
                raise NotFound("agent", agent_id)
            return False
        return await agent.interrupt(note)

    async def decide(self, agent_id: str, approval_id: str, decision: str, note: str | None, remember: bool,
                     watcher: Watcher | None) -> None:
        async with self.using(agent_id, watcher) as agent:
            stored = await agent.decide(approval_id, decision, note, remember, "client")
            await stored

    async def status(self, agent_id: str) -> ap.AgentStatus:
        await self._after_earlier(agent_id)
        agent = self.pool.agents.get(agent_id)
        if agent is not None:
            return ap.AgentStatus(
                **agent.info().model_dump(), breakpoint=agent.breakpoint, active=True,
                idle_ms=0 if agent.current else int((time.monotonic() - agent.last_active) * 1000),
                pending_approvals=agent.pending_requests(), usage=agent.usage, todos=agent.todos,
                mcp=agent.mcp.statuses() if agent.mcp is not None else [], checkpoints=agent.checkpoints.status())
        row = await self.store.get_agent(agent_id)
        if row is None:
            raise NotFound("agent", agent_id)
        pending = [r.request for r in await self.store.load_approvals(agent_id, "pending")]
        info = row_info(row)
        if pending:  # a stored agent waiting on approvals is paused, whatever its row says
            info.state = "PAUSED"
        return ap.AgentStatus(
            **info.model_dump(), breakpoint="AWAITING_APPROVAL" if pending else "READY", active=False,
            idle_ms=idle_ms(row.updated_at), pending_approvals=pending,
            usage=a.Usage.model_validate(row.runtime.get("usage", {})), todos=await self.store.get_todos(agent_id),
            mcp=self._mcp_closed(row), checkpoints=rw.status_of(row.config, self.pool.svc.checkpoint_dir))

    def _mcp_closed(self, row: AgentRow) -> list[ap.McpServerState]:
        """The MCP servers of an agent not in memory: configured, none connected."""
        if not row.config.get("mcpServers") and not self.pool.svc.settings.mcp_servers:
            return []
        from ..tools.mcp import merge_servers

        servers = merge_servers(self.pool.svc.settings.mcp_servers, row.config.get("mcpServers"))
        return [ap.McpServerState(server=name, status="closed") for name in servers]

    async def list(self, prefix: str | None, limit: int, cursor: str | None) -> a.ListResult:
        await self._after_earlier(None)
        rows, next_cursor = await self.store.list_agents(prefix, limit, cursor)
        agents = []
        for row in rows:
            live = self.pool.agents.get(row.agent_id)
            agents.append(live.info() if live else row_info(row))
        return a.ListResult(agents=agents, next_cursor=next_cursor or None)

    async def messages(self, agent_id: str, limit: int | None = None, before: int | None = None) -> a.MessagesResult:
        await self.settle(agent_id)
        rows, total = await self.store.load_messages(agent_id, limit, before)
        live = self.pool.agents.get(agent_id)
        row = None if live is not None else await self.store.get_agent(agent_id)
        ranges = live.checkpoints.rewound if live is not None else rw.rewound_of(row.runtime if row else {})
        flags = live.compaction.flags() if live is not None else cz.flags_of(row.runtime if row else {}, ranges, total)
        return a.MessagesResult(messages=[a.Message(index=m.index, role=m.role, content=m.content, turn_id=m.turn_id,
                                                    created_at=m.created_at,
                                                    kind="summary" if m.index in flags.summaries else None,
                                                    compacted=flags.is_compacted(m.index) or None,
                                                    rewound=rw.is_rewound(ranges, m.index) or None) for m in rows],
                                total=total)

    async def events_json(self, agent_id: str, since: int, limit: int | None,
                          channels: list[str] | None) -> tuple[list[str], int]:
        """Stored events as stored (JSON built from the event models when emitted), and the last seq."""
        await self.settle(agent_id)
        rows = await self.store.read_events(agent_id, since, limit, channels)
        if agent_id in self.pool.agents:
            last = self.events.last_seq(agent_id)
        else:
            row = await self.store.get_agent(agent_id)
            last = row.last_seq if row else 0
        return [r.json for r in rows], last

    async def fork(self, agent_id: str, new_agent_id: str | None, at_seq: int | None) -> a.AgentInfo:
        source = self._earlier(agent_id)  # before the mark: a fork onto its own id must not wait on itself
        async with self._changing_agent(new_agent_id):
            if source:
                await asyncio.wait(source)
            return row_info(await self.pool.fork(agent_id, new_agent_id, at_seq))

    async def todos(self, agent_id: str) -> list[dict[str, Any]]:
        await self._after_earlier(agent_id)
        live = self.pool.agents.get(agent_id)
        if live is not None:
            return live.todos
        if await self.store.get_agent(agent_id) is None:
            raise NotFound("agent", agent_id)
        return await self.store.get_todos(agent_id)

    async def set_todos(self, agent_id: str, todos: list[a.Todo], watcher: Watcher | None) -> list[dict[str, Any]]:
        ids = [t.id for t in todos]
        if len(set(ids)) != len(ids):
            raise InvalidInput("todo ids must be unique", "todos", "duplicate id")
        async with self.using(agent_id, watcher) as agent:
            return await agent.set_todos([t.wire() for t in todos])

    async def delete(self, agent_id: str, watcher: Watcher | None) -> bool:
        async with self._changing_agent(agent_id), self._lock(agent_id):
            deleted = await self.pool.delete(agent_id)
            if deleted:
                await rw.remove_checkpoints(self.pool.svc.checkpoint_dir, agent_id)
        if watcher is not None:
            watcher.forget(agent_id)
        lock = self._locks.get(agent_id)
        if deleted and lock is not None and not lock.locked():
            del self._locks[agent_id]
        return deleted

    async def checkpoints(self, agent_id: str) -> a.CheckpointsResult:
        """The agent's checkpoints, oldest first (read without loading the agent)."""
        await self._after_earlier(agent_id)
        live = self.pool.agents.get(agent_id)
        if live is not None:
            return await live.checkpoints.list()
        row = await self.store.get_agent(agent_id)
        if row is None:
            raise NotFound("agent", agent_id)
        return await rw.stored_checkpoints(self.pool.svc.checkpoint_dir, agent_id, row.created_at)

    async def rewind(self, p: a.RewindParams, watcher: Watcher | None) -> a.RewindResult:
        """Restore the workDir and/or the conversation to a checkpoint (AgentBusy during a turn)."""
        async with self.using(p.agent_id, watcher) as agent:
            return await agent.checkpoints.rewind(p)

    async def compact(self, p: a.CompactParams, watcher: Watcher | None) -> a.CompactResult:
        """Compress the agent's context now; a running (or queued) turn finishes first."""
        async with self.using(p.agent_id, watcher) as agent:
            agent.pins += 1  # stays in memory while it waits outside the request lock
        try:
            while True:
                waits: list[asyncio.Future[Any]] = [t.done for t in (agent.current, agent.stalled, *agent.queue)
                                                    if t is not None]
                if agent.ending is not None and agent.ending_turn:
                    waits.append(agent.ending)
                if waits:  # outside the lock: answering the turn's approvals needs it
                    await asyncio.wait(waits)
                async with self.using(p.agent_id, watcher) as live:
                    if live is not agent:
                        agent.pins -= 1
                        agent = live
                        agent.pins += 1
                    if agent.current is not None or agent.stalled is not None or agent.ending_turn:
                        continue
                    compressed, ratio, count = await agent.compaction.compact(p.instructions)
                    self.events.flush()
                    await self.store.barrier()  # the events and the summary are stored before the answer
                    return a.CompactResult(compressed=compressed, ratio=ratio, compacted_messages=count)
        finally:
            agent.pins -= 1

    async def reconfigure(self, agent_id: str, watcher: Watcher | None, *, mode: str | None = None,
                          model: dict[str, Any] | None = None) -> a.AgentInfo:
        """Change the agent's permission mode or model (for the turns to come)."""
        async with self.using(agent_id, watcher) as agent:
            await agent.reconfigure(mode=mode, model=model)
            return agent.info()

    async def config(self, agent_id: str) -> a.AgentConfig:
        """The agent's resolved config (live or stored)."""
        await self._after_earlier(agent_id)
        live = self.pool.agents.get(agent_id)
        if live is not None:
            return live.config
        row = await self.store.get_agent(agent_id)
        if row is None:
            raise NotFound("agent", agent_id)
        return a.AgentConfig.model_validate(row.config)

    async def release(self, agent_id: str) -> None:
        """The client is done with the agent for now: let it hibernate if it is idle."""
        await self._after_earlier(agent_id)
        agent = self.pool.agents.get(agent_id)
        if agent is None:
            if await self.store.get_agent(agent_id) is None:
                raise NotFound("agent", agent_id)
            return
        async with self._lock(agent_id):
            if not agent.busy and self.pool.agents.get(agent_id) is agent:
                await self.pool.hibernate(agent)

    async def recent(self, work_dir: str | None = None) -> list[a.AgentInfo]:
        """Every stored agent (optionally only those working in `work_dir`), most recently
        updated first."""
        found: list[a.AgentInfo] = []
        cursor: str | None = None
        while True:
            page = await self.list(None, 1000, cursor)
            found.extend(i for i in page.agents if work_dir is None or i.work_dir == work_dir)
            cursor = page.next_cursor
            if not cursor:
                break
        return sorted(found, key=lambda i: i.updated_at, reverse=True)

    async def first_user_text(self, agent_id: str) -> str | None:
        """The text of the agent's first message, when it is the user's (a session title)."""
        await self._after_earlier(agent_id)
        rows, _ = await self.store.load_messages(agent_id, 1, 1)
        if not rows or rows[0].role != "user":
            return None
        return "".join(b.get("text", "") for b in rows[0].content if b.get("type") == "text") or None

    async def consistency(self, agent_id: str) -> dict[str, Any]:
        await self.settle(agent_id)
        return await self.store.consistency(agent_id)


def _complete_result(turn: Turn) -> a.CompleteResult:
    out = turn.done.result()
    status = {"completed": "ok", "interrupted": "interrupted", "budget_exceeded": "interrupted"}.get(out["reason"], "error")
    error = None
    if status == "error":
        err = out.get("error")
        if err is not None:
            error = a.TurnError(type=err.type, message=err.message, retryable=err.retryable)
        elif out["reason"] == "max_steps":
            error = a.TurnError(type="max_steps", message="the turn reached its template's step limit")
        else:
            error = a.TurnError(type="internal", message="the turn failed inside the server (see its log)")
    return a.CompleteResult(status=status, text=out["text"], turn_id=turn.id, last_seq=out["seq"],  # type: ignore[arg-type]
                            permission_ids=[], error=error)
