"""One short handler per protocol method: validate params, call the runtime, dump the result.

Also the two things only a connection knows: which agents this client watches
(event fan-out with a replay cursor, so resume has no gap and no duplicate) and
the approval bridge (`permission_required` -> `approval/request` -> `decide`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from .. import __version__
from ..protocol import agents as a
from ..protocol import approvals as ap
from ..protocol import events as ev
from ..protocol import system as s
from ..protocol.approvals import ApprovalResponse
from ..protocol.errors import INVALID_PARAMS, UNSUPPORTED_PROTOCOL, RpcError, invalid_params, not_found
from ..protocol.methods import METHODS
from ..providers.registry import AVAILABLE
from ..runtime.agent import Agent
from ..runtime.events import Envelope
from ..runtime.metrics import Metrics
from ..runtime.pool import AgentPool, idle_ms
from ..runtime.templates import TEMPLATES
from ..store.base import AgentRow
from .dispatch import AfterResponse, RawResult
from .rpc import Connection

log = logging.getLogger(__name__)


def row_info(row: AgentRow) -> a.AgentInfo:
    model = row.config.get("model") or {}
    return a.AgentInfo(
        agent_id=row.agent_id, template_id=row.template_id, created_at=row.created_at, updated_at=row.updated_at,
        state=row.state if row.state in ("READY", "WORKING", "PAUSED") else "READY",  # type: ignore[arg-type]
        last_seq=row.last_seq, message_count=row.message_count,
        model={"provider": model.get("provider", "echo"), "model": model.get("model")},
        work_dir=(row.config.get("sandbox") or {}).get("workDir"), metadata=row.metadata,
    )


class Session:
    """The protocol state of one client connection."""

    def __init__(self, conn: Connection, pool: AgentPool, metrics: Metrics, data_dir: str,
                 shutdown: Callable[[], Awaitable[None]]) -> None:
        self.conn = conn
        self.pool = pool
        self.store = pool.svc.store
        self.events = pool.svc.events
        self.metrics = metrics
        self.data_dir = data_dir
        self._shutdown = shutdown
        self.approvals = True
        self.process_id: int | None = None
        self.sent: dict[str, int] = {}
        self.buffering: dict[str, list[Envelope]] = {}
        self.outstanding: dict[str, str] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        for name, method in METHODS.items():
            if method.direction == "client->server" and method.kind == "request":
                conn.register(name, getattr(self, "h_" + name.replace("/", "_")))

    def lock(self, agent_id: str) -> asyncio.Lock:
        """Requests on one agent start in arrival order (create before a pipelined send)."""
        return self.locks.setdefault(agent_id, asyncio.Lock())

    # --- event fan-out --------------------------------------------------------------
    def deliver(self, env: Envelope) -> None:
        buf = self.buffering.get(env.agent_id)
        if buf is not None:
            buf.append(env)
            return
        if env.seq <= self.sent.get(env.agent_id, 0):
            return
        self.sent[env.agent_id] = env.seq
        self.conn.send_raw(b'{"jsonrpc":"2.0","method":"agent/event","params":' + env.json.encode("utf-8") + b"}")
        etype = env.event["type"]
        if etype == "permission_required" and self.approvals:
            self._spawn(self._ask_client(env.agent_id, env.event["approvalId"]))
        elif etype == "permission_decided":
            # Still outstanding means decided elsewhere (agent/decide, timeout, interrupt):
            # our own request's reply removes it before it decides.
            msg_id = self.outstanding.pop(env.event.get("approvalId") or "", None)
            if msg_id is not None:
                self.conn.cancel_outgoing(msg_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ask_client(self, agent_id: str, approval_id: str) -> None:
        agent = self.pool.agents.get(agent_id)
        pa = agent.pending.get(approval_id) if agent else None
        if agent is None or pa is None:
            return
        msg_id, fut = self.conn.request("approval/request", pa.request)
        self.outstanding[approval_id] = msg_id
        decision, note, remember = "deny", None, False
        try:
            reply = await fut
            parsed = ApprovalResponse.model_validate(reply)
            decision, note, remember = parsed.decision, parsed.note, parsed.remember
        except asyncio.CancelledError:
            return
        except ValidationError:
            note = "malformed approval reply"
        except Exception as exc:  # an error reply means deny
            note = f"client error: {exc}"
        finally:
            self.outstanding.pop(approval_id, None)
        if approval_id in agent.pending:
            try:
                await agent.decide(approval_id, decision, note, remember, "client")
            except RpcError:
                pass  # answered elsewhere first: a late reply is ignored

    def _start_buffering(self, agent_id: str) -> None:
        self.buffering.setdefault(agent_id, [])

    def _release_buffer(self, agent_id: str) -> None:
        for env in self.buffering.pop(agent_id, []):
            self.deliver(env)

    # --- lifecycle ------------------------------------------------------------------------
    async def h_initialize(self, p: s.InitializeParams) -> s.InitializeResult:
        if p.protocol_version != 1:
            raise RpcError(UNSUPPORTED_PROTOCOL, f"protocol version {p.protocol_version} is not supported",
                           "unsupported_protocol", supported=[1])
        self.approvals = p.capabilities.approvals
        self.process_id = p.process_id
        if p.workspace_folders:
            self.pool.settings.default_work_dir = p.workspace_folders[0]
        from ..tools.base import builtin_tools

        return s.InitializeResult(
            server_info=s.ServerInfo(version=__version__),
            capabilities=s.ServerCapabilities(providers=list(AVAILABLE), tools=sorted(builtin_tools()),
                                              stores=[self.store.name], acp=False),
            data_dir=self.data_dir,
        )

    async def h_shutdown(self, p: s.Empty) -> None:
        self.conn.shutting_down = True
        await self._shutdown()
        return None

    # --- agents ------------------------------------------------------------------------------
    async def h_agent_create(self, cfg: a.AgentConfig) -> a.AgentInfo:
        if cfg.agent_id is None:
            agent = await self.pool.create(cfg, self.deliver)
            return agent.info()
        async with self.lock(cfg.agent_id):
            agent = await self.pool.create(cfg, self.deliver)
            return agent.info()

    async def h_agent_resume(self, p: a.ResumeParams) -> AfterResponse:
        async with self.lock(p.agent_id):
            self._start_buffering(p.agent_id)
            agent: Agent | None = None
            try:
                agent = await self.pool.get(p.agent_id, self.deliver, recover=False)
                agent.pins += 1
                base = self.events.last_seq(p.agent_id)
                sealed: list[str] = []
                start: Callable[[], None] = lambda: None
                if not agent.recovered:  # once per load, whoever loaded it
                    sealed, start = await agent.recover(p.strategy)
                self.events.flush()
                await self.store.barrier()
                replayed = 0
                if p.since is not None:
                    replayed = await self._replay(p.agent_id, p.since)
                else:
                    self.sent[p.agent_id] = max(self.sent.get(p.agent_id, 0), base)
                env = agent.emit(ev.AgentResumed(strategy=p.strategy, sealed=sealed))
            finally:
                self._release_buffer(p.agent_id)
                if agent is not None:
                    agent.pins -= 1
            assert env.delivered is not None
            await env.delivered
            result = a.ResumeResult(**agent.info().model_dump(), replayed=replayed)
            return AfterResponse(result, start)

    async def _replay(self, agent_id: str, since: int) -> int:
        rows = await self.store.read_event_json(agent_id, since)
        prefix = '{"jsonrpc":"2.0","method":"agent/event","params":{"replay":true,'
        for _, body in rows:
            self.conn.send_raw((prefix + body[1:] + "}").encode("utf-8"))
        if rows:
            self.sent[agent_id] = max(self.sent.get(agent_id, 0), rows[-1][0])
        return len(rows)

    async def _send(self, p: a.SendParams) -> tuple[Agent, Any, bool]:
        if p.content:
            content = [b.wire() for b in p.content]
        elif p.text is not None:
            content = [{"type": "text", "text": p.text}]
        else:
            raise invalid_params([{"field": "text", "message": "text or content is required"}])
        async with self.lock(p.agent_id):
            agent = await self.pool.get(p.agent_id, self.deliver)
            agent.pins += 1
            try:
                turn, queued = await agent.send(content, p.kind)
            finally:
                agent.pins -= 1
        return agent, turn, queued

    async def h_agent_send(self, p: a.SendParams) -> a.SendResult:
        _, turn, queued = await self._send(p)
        return a.SendResult(message_id="msg_" + turn.id.split("_", 1)[1], turn_id=turn.id, queued=queued)

    async def h_agent_complete(self, p: a.SendParams) -> a.CompleteResult:
        agent, turn, _ = await self._send(p)
        while True:
            waiters: set[asyncio.Future[Any]] = {turn.done}
            paused: asyncio.Task[Any] | None = None
            if not self.approvals:
                paused = asyncio.ensure_future(turn.paused.wait())
                waiters.add(paused)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if paused is not None:
                    paused.cancel()
            if turn.done.done():
                out = turn.done.result()
                status = {"completed": "ok", "interrupted": "interrupted", "budget_exceeded": "interrupted"}.get(out["reason"], "error")
                err = out.get("error")
                error = None
                if status == "error":
                    if err is not None:
                        error = a.TurnError(type=err.type, message=err.message, retryable=err.retryable)
                    elif out["reason"] == "max_steps":
                        error = a.TurnError(type="max_steps", message="the turn reached its template's step limit")
                    else:
                        error = a.TurnError(type="internal", message="the turn failed inside the server (see its log)")
                return a.CompleteResult(status=status, text=out["text"], turn_id=turn.id, last_seq=out["seq"],
                                        permission_ids=[], error=error)
            ids = [pa.approval_id for pa in agent.pending.values() if pa.request.get("turnId") == turn.id]
            if ids:
                self.events.flush()
                await self.store.barrier()
                return a.CompleteResult(status="paused", text="\n\n".join(t for t in turn.texts if t), turn_id=turn.id,
                                        last_seq=self.events.last_seq(agent.id), permission_ids=ids)

    async def h_agent_interrupt(self, p: a.InterruptParams) -> a.InterruptResult:
        agent = self.pool.agents.get(p.agent_id)
        if agent is None:
            if await self.store.get_agent(p.agent_id) is None:
                raise not_found("agent", p.agent_id)
            return a.InterruptResult(interrupted=False)
        return a.InterruptResult(interrupted=await agent.interrupt(p.note))

    async def h_agent_decide(self, p: a.DecideParams) -> a.DecideResult:
        async with self.lock(p.agent_id):
            agent = await self.pool.get(p.agent_id, self.deliver)
            agent.pins += 1
            try:
                stored = await agent.decide(p.approval_id, p.decision, p.note, p.remember, "client")
                await stored
            finally:
                agent.pins -= 1
        return a.DecideResult(accepted=True)

    async def h_agent_status(self, p: a.AgentRef) -> ap.AgentStatus:
        agent = self.pool.agents.get(p.agent_id)
        if agent is not None:
            import time

            return ap.AgentStatus(
                **agent.info().model_dump(), breakpoint=agent.breakpoint, active=True,
                idle_ms=0 if agent.current else int((time.monotonic() - agent.last_active) * 1000),
                pending_approvals=agent.pending_requests(), usage=agent.usage, todos=agent.todos)
        row = await self.store.get_agent(p.agent_id)
        if row is None:
            raise not_found("agent", p.agent_id)
        pending = [r.request for r in await self.store.load_approvals(p.agent_id, "pending")]
        info = row_info(row)
        if pending:  # a stored agent waiting on approvals is paused, whatever its row says
            info.state = "PAUSED"
        return ap.AgentStatus(
            **info.model_dump(), breakpoint="AWAITING_APPROVAL" if pending else "READY", active=False,
            idle_ms=idle_ms(row.updated_at), pending_approvals=pending,
            usage=a.Usage.model_validate(row.runtime.get("usage", {})), todos=await self.store.get_todos(p.agent_id))

    async def h_agent_list(self, p: a.ListParams) -> a.ListResult:
        rows, cursor = await self.store.list_agents(p.prefix, p.limit, p.cursor)
        agents = []
        for row in rows:
            live = self.pool.agents.get(row.agent_id)
            agents.append(live.info() if live else row_info(row))
        return a.ListResult(agents=agents, next_cursor=cursor or None)

    async def _settle(self, agent_id: str) -> None:
        """Make the store reflect everything this process emitted for the agent."""
        if agent_id in self.pool.agents:
            self.events.flush()
            await self.store.barrier()
        elif await self.store.get_agent(agent_id) is None:
            raise not_found("agent", agent_id)

    async def h_agent_messages(self, p: a.MessagesParams) -> a.MessagesResult:
        await self._settle(p.agent_id)
        rows, total = await self.store.load_messages(p.agent_id, p.limit, p.before)
        return a.MessagesResult(messages=[a.Message(index=m.index, role=m.role, content=m.content, turn_id=m.turn_id,
                                                    created_at=m.created_at) for m in rows], total=total)

    async def h_agent_events(self, p: a.EventsParams) -> RawResult:
        """Stored events were built from the event models when emitted; they are sent as stored."""
        await self._settle(p.agent_id)
        rows = await self.store.read_events(p.agent_id, p.since, p.limit, list(p.channels) if p.channels else None)
        live = self.pool.agents.get(p.agent_id)
        last = self.events.last_seq(p.agent_id) if live else (await self.store.get_agent(p.agent_id)).last_seq  # type: ignore[union-attr]
        return RawResult('{"events":[' + ",".join(r.json for r in rows) + '],"lastSeq":' + str(int(last)) + "}")

    async def h_agent_fork(self, p: a.ForkParams) -> a.AgentInfo:
        row = await self.pool.fork(p.agent_id, p.new_agent_id, p.at_seq)
        return row_info(row)

    async def h_agent_todos(self, p: a.TodosParams) -> a.TodosResult:
        if p.todos is None:
            live = self.pool.agents.get(p.agent_id)
            if live is not None:
                return a.TodosResult(todos=live.todos)
            if await self.store.get_agent(p.agent_id) is None:
                raise not_found("agent", p.agent_id)
            return a.TodosResult(todos=await self.store.get_todos(p.agent_id))
        ids = [t.id for t in p.todos]
        if len(set(ids)) != len(ids):
            raise RpcError(INVALID_PARAMS, "todo ids must be unique", "invalid_params",
                           errors=[{"field": "todos", "message": "duplicate id"}])
        async with self.lock(p.agent_id):
            agent = await self.pool.get(p.agent_id, self.deliver)
            agent.pins += 1
            try:
                return a.TodosResult(todos=await agent.set_todos([t.wire() for t in p.todos]))
            finally:
                agent.pins -= 1

    async def h_agent_delete(self, p: a.AgentRef) -> a.DeleteResult:
        async with self.lock(p.agent_id):
            deleted = await self.pool.delete(p.agent_id)
        self.events.unsubscribe(p.agent_id, self.deliver)
        self.sent.pop(p.agent_id, None)
        return a.DeleteResult(deleted=deleted)

    # --- pool, templates, store, metrics ------------------------------------------------------
    async def h_pool_stats(self, p: s.Empty) -> s.PoolStats:
        return s.PoolStats.model_validate(self.pool.stats())

    async def h_templates_list(self, p: s.Empty) -> s.TemplatesResult:
        return s.TemplatesResult(templates=[s.TemplateInfo(id=t.id, version=t.version, description=t.description)
                                            for t in TEMPLATES.values()])

    async def h_store_health(self, p: s.Empty) -> s.StoreHealth:
        return s.StoreHealth.model_validate(await self.store.health())

    async def h_store_consistency(self, p: s.ConsistencyParams) -> s.ConsistencyResult:
        await self._settle(p.agent_id)
        return s.ConsistencyResult.model_validate(await self.store.consistency(p.agent_id))

    async def h_store_metrics(self, p: s.Empty) -> s.StoreMetrics:
        return s.StoreMetrics.model_validate(await self.store.metrics())

    async def h_metrics_prometheus(self, p: s.Empty) -> s.PrometheusResult:
        stored = (await self.store.metrics())["storage"]["totalAgents"]
        return s.PrometheusResult(content_type="text/plain; version=0.0.4",
                                  text=self.metrics.exposition(self.pool.stats(), stored))
