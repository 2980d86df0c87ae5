"""The kode protocol's handlers: one short function per method over `runtime/service.py`.

Params arrive validated (the dispatcher checked them against the method table) and
each handler returns its result model; the runtime's failures are translated to
error codes by the dispatcher. What only a connection knows stays here: the
client's capabilities, and how its events and approval questions are written
(`agent/event` notifications, `approval/request` requests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import __version__
from ..protocol import agents as a
from ..protocol import approvals as ap
from ..protocol import system as s
from ..protocol.approvals import ApprovalResponse
from ..protocol.errors import UNSUPPORTED_PROTOCOL, RpcError
from ..providers.registry import AVAILABLE
from ..runtime.events import Envelope
from ..runtime.metrics import Metrics
from ..runtime.service import RuntimeService, content_of
from ..runtime.templates import TemplateRegistry
from ..protocol.methods import METHODS
from ..store.url import STORE_TYPES
from .dispatch import AfterResponse, RawResult
from .rpc import Connection

log = logging.getLogger(__name__)
_EVENT_HEAD = b'{"jsonrpc":"2.0","method":"agent/event","params":'
_REPLAY_HEAD = '{"jsonrpc":"2.0","method":"agent/event","params":{"replay":true,'


class Session:
    """The protocol state of one client connection."""

    def __init__(self, conn: Connection, service: RuntimeService, metrics: Metrics, data_dir: str,
                 shutdown: Callable[[], Awaitable[None]]) -> None:
        self.conn = conn
        self.service = service
        self.pool = service.pool
        self.store = service.store
        self.metrics = metrics
        self.data_dir = data_dir
        self._shutdown = shutdown
        self.approvals = True
        self.process_id: int | None = None
        self._templates_stop = asyncio.Event()
        self._templates_watch: asyncio.Task[None] | None = None
        self.watcher = service.watcher(self._send_event, self._ask)
        for name, method in METHODS.items():
            if method.direction == "client->server" and method.kind == "request":
                conn.register(name, getattr(self, "h_" + name.replace("/", "_")))

    # --- how this connection writes events and asks about approvals ----------------------
    def _send_event(self, env: Envelope) -> None:
        self.conn.send_raw(_EVENT_HEAD + env.json.encode("utf-8") + b"}")

    def _ask(self, request: dict[str, Any]) -> tuple[Callable[[], None], Awaitable[ApprovalResponse]]:
        msg_id, fut = self.conn.request("approval/request", request)

        async def answer() -> ApprovalResponse:
            return ApprovalResponse.model_validate(await fut)

        return (lambda: self.conn.cancel_outgoing(msg_id)), answer()

    def _replay(self, rows: list[tuple[int, str]]) -> None:
        for _, body in rows:
            self.conn.send_raw((_REPLAY_HEAD + body[1:] + "}").encode("utf-8"))

    # --- lifecycle ------------------------------------------------------------------------
    async def h_initialize(self, p: s.InitializeParams) -> s.InitializeResult:
        if p.protocol_version != 1:
            raise RpcError(UNSUPPORTED_PROTOCOL, f"protocol version {p.protocol_version} is not supported",
                           "unsupported_protocol", supported=[1])
        self.approvals = p.capabilities.approvals
        self.watcher.ask = self._ask if self.approvals else None
        self.process_id = p.process_id
        if p.workspace_folders:
            self.pool.settings.default_work_dir = p.workspace_folders[0]
        self.pool.templates.set_workspaces(p.workspace_folders or [])
        if self._templates_watch is None:  # templates/changed; watchfiles loads in the task, after this answer
            self._templates_watch = asyncio.create_task(
                self.pool.templates.watch(self._templates_changed, self._templates_stop), name="templates-watch")
        from ..tools.base import builtin_tools

        return s.InitializeResult(
            server_info=s.ServerInfo(version=__version__),
            capabilities=s.ServerCapabilities(providers=list(AVAILABLE), tools=sorted(builtin_tools()),
                                              stores=list(STORE_TYPES), acp=True),
            data_dir=self.data_dir,
            store=s.StoreInfo(type=self.store.name, url=self.store.display_url),  # type: ignore[arg-type]
        )

    async def h_shutdown(self, p: s.Empty) -> None:
        self.conn.shutting_down = True
        self._templates_stop.set()
        await self._shutdown()

    # --- agents ------------------------------------------------------------------------------
    async def h_agent_create(self, p: a.AgentConfig) -> a.AgentInfo:
        return await self.service.create(p, self.watcher)

    async def h_agent_resume(self, p: a.ResumeParams) -> AfterResponse:
        r = await self.service.resume(p.agent_id, p.since, p.strategy, self.watcher, self._replay)
        return AfterResponse(a.ResumeResult(**r.info.model_dump(), replayed=r.replayed), r.start)

    async def h_agent_send(self, p: a.SendParams) -> a.SendResult:
        return (await self.service.send(p.agent_id, content_of(p), p.kind, self.watcher)).result

    async def h_agent_complete(self, p: a.SendParams) -> a.CompleteResult:
        sent = await self.service.send(p.agent_id, content_of(p), p.kind, self.watcher)
        return await self.service.wait(sent, stop_on_pause=not self.approvals)

    async def h_agent_interrupt(self, p: a.InterruptParams) -> a.InterruptResult:
        return a.InterruptResult(interrupted=await self.service.interrupt(p.agent_id, p.note))

    async def h_agent_decide(self, p: a.DecideParams) -> a.DecideResult:
        await self.service.decide(p.agent_id, p.approval_id, p.decision, p.note, p.remember, self.watcher)
        return a.DecideResult(accepted=True)

    async def h_agent_status(self, p: a.AgentRef) -> ap.AgentStatus:
        return await self.service.status(p.agent_id)

    async def h_agent_list(self, p: a.ListParams) -> a.ListResult:
        return await self.service.list(p.prefix, p.limit, p.cursor)

    async def h_agent_messages(self, p: a.MessagesParams) -> a.MessagesResult:
        return await self.service.messages(p.agent_id, p.limit, p.before)

    async def h_agent_events(self, p: a.EventsParams) -> RawResult:
        rows, last = await self.service.events_json(p.agent_id, p.since, p.limit,
                                                    list(p.channels) if p.channels else None)
        return RawResult('{"events":[' + ",".join(rows) + '],"lastSeq":' + str(int(last)) + "}")

    async def h_agent_fork(self, p: a.ForkParams) -> a.AgentInfo:
        return await self.service.fork(p.agent_id, p.new_agent_id, p.at_seq)

    async def h_agent_todos(self, p: a.TodosParams) -> a.TodosResult:
        if p.todos is None:
            return a.TodosResult(todos=await self.service.todos(p.agent_id))
        return a.TodosResult(todos=await self.service.set_todos(p.agent_id, p.todos, self.watcher))

    async def h_agent_checkpoints(self, p: a.AgentRef) -> a.CheckpointsResult:
        return await self.service.checkpoints(p.agent_id)

    async def h_agent_rewind(self, p: a.RewindParams) -> a.RewindResult:
        return await self.service.rewind(p, self.watcher)

    async def h_agent_compact(self, p: a.CompactParams) -> a.CompactResult:
        return await self.service.compact(p, self.watcher)

    async def h_agent_delete(self, p: a.AgentRef) -> a.DeleteResult:
        return a.DeleteResult(deleted=await self.service.delete(p.agent_id, self.watcher))

    # --- pool, templates, store, metrics ------------------------------------------------------
    async def h_pool_stats(self, p: s.Empty) -> s.PoolStats:
        return s.PoolStats.model_validate(self.pool.stats())

    async def h_templates_list(self, p: s.Empty) -> s.TemplatesResult:
        return templates_result(self.pool.templates)

    def _templates_changed(self) -> None:
        self.conn.notify("templates/changed", s.TemplatesChanged(**templates_result(self.pool.templates).model_dump()).wire())

    async def h_store_health(self, p: s.Empty) -> s.StoreHealth:
        return await self.store.check_health()

    async def h_store_consistency(self, p: s.ConsistencyParams) -> s.ConsistencyResult:
        return s.ConsistencyResult.model_validate(await self.service.consistency(p.agent_id))

    async def h_store_metrics(self, p: s.Empty) -> s.StoreMetrics:
        return await self.store.collect_metrics()

    async def h_metrics_prometheus(self, p: s.Empty) -> s.PrometheusResult:
        scraped = await self.metrics.scrape(self.store, self.pool)  # the same text as GET /metrics
        return s.PrometheusResult(content_type=scraped.content_type, text=scraped.text)


def templates_result(registry: TemplateRegistry) -> s.TemplatesResult:
    """`templates/list`: the winner per id (built-ins, user dir, workspace folders), skipped files."""
    templates, errors = registry.load()
    return s.TemplatesResult(
        templates=[s.TemplateInfo(id=t.id, version=t.version, description=t.description, source=t.source, path=t.path)
                   for t in templates.values()],
        errors=[s.TemplateError(path=e.path, message=e.message) for e in errors])
