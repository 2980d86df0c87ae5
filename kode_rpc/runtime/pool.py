"""The agent pool: which agents are in memory, their leases, hibernation and recovery.

At most `max_agents` agents live in memory; the least recently used idle one is
hibernated (it is already fully stored, so that only drops it and its lease) to
make room. Every active agent holds a lease row in the store so a second server
process on the same data dir cannot run it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..protocol import events as ev
from ..protocol.agents import AgentConfig, ModelConfig, PermissionConfig, SandboxConfig
from ..store.base import AgentExists, AgentRow, LeaseHeld, LeaseOwner
from . import errors
from .agent import Agent, Services
from .errors import NotFound
from .events import Envelope
from .templates import TemplateRegistry
from .util import new_id, now_iso

log = logging.getLogger(__name__)

Subscriber = Callable[[Envelope], None]


@dataclass
class PoolSettings:
    data_dir: str
    max_agents: int = 50
    lease_ttl_s: float = 30.0
    default_model: dict[str, Any] = field(default_factory=lambda: {"provider": "echo"})
    default_work_dir: str | None = None
    templates_dir: str | None = None
    """The user's templates (`<config dir>/templates`); None: built-ins and workspaces only."""


class AgentPool:
    def __init__(self, svc: Services, settings: PoolSettings) -> None:
        self.svc = svc
        self.settings = settings
        self.agents: OrderedDict[str, Agent] = OrderedDict()
        self.hibernated: set[str] = set()
        self.owner = LeaseOwner(os.getpid(), socket.gethostname(), new_id("owner"))
        self._loading: dict[str, asyncio.Future[Agent]] = {}
        self._hibernating: dict[str, asyncio.Future[None]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.templates = TemplateRegistry(settings.templates_dir)

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_leases(), name="lease-renewer")

    # --- configuration ---------------------------------------------------------
    def resolve_config(self, cfg: AgentConfig, agent_id: str) -> dict[str, Any]:
        """The template's defaults under the call's fields; stored with the agent, resolved
        (its prompt, tools, model, maxSteps, ...), so a later edit of the template file
        changes only agents created afterwards. The workDir's own templates count."""
        work_dir = cfg.sandbox.work_dir if cfg.sandbox is not None else self.settings.default_work_dir
        template = self.templates.get(cfg.template_id, work_dir)
        if template is None:
            raise NotFound("template", cfg.template_id)
        out = cfg.model_copy(deep=True)
        out.agent_id = agent_id
        if out.model is None:
            out.model = ModelConfig.model_validate(template.model or self.settings.default_model)
        if out.system_prompt is None:
            out.system_prompt = template.system_prompt
        if template.context is not None and out.context is None:
            out.context = AgentConfig.model_validate({"context": template.context}).context
        if template.mcp_servers:  # the call's entries over the template's, by name
            merged = {**template.mcp_servers,
                      **{k: (v.wire() if v is not None else None) for k, v in (out.mcp_servers or {}).items()}}
            out.mcp_servers = AgentConfig.model_validate({"mcpServers": merged}).mcp_servers
        if out.model.model is None and out.model.provider in ("echo", "scripted"):
            out.model.model = out.model.provider  # AgentInfo.model always names a model
        if out.permission is None:
            out.permission = PermissionConfig.model_validate(template.permission)
        if out.tools is None:
            out.tools = template.tools  # type: ignore[assignment]
        if out.sandbox is None:
            work_dir = self.settings.default_work_dir or os.path.join(self.settings.data_dir, "workspaces", agent_id)
            os.makedirs(work_dir, exist_ok=True)
            out.sandbox = SandboxConfig(work_dir=work_dir)
        return {**out.wire(), "maxSteps": template.max_steps, "templateVersion": template.version}

    # --- lifecycle ---------------------------------------------------------------
    async def create(self, cfg: AgentConfig, subscriber: Subscriber | None) -> Agent:
        agent_id = cfg.agent_id or new_id("agt")
        config = self.resolve_config(cfg, agent_id)
        await self._make_room()
        now = now_iso()
        row = AgentRow(agent_id, cfg.template_id, now, now, "READY", 0, 0, config, {}, cfg.metadata or {})
        try:
            await self.svc.store.create_agent(row)
        except AgentExists:
            raise errors.AgentExists(agent_id) from None
        await self._lease(agent_id)
        agent = self._admit(row, [], [], subscriber)
        agent.recovered = True  # new: nothing to recover
        agent.emit(ev.StateChanged(state="READY"))
        return agent

    async def get(self, agent_id: str, subscriber: Subscriber | None = None, *, recover: bool = True) -> Agent:
        """The active agent, loading (and, with `recover`, crash-recovering) it when hibernated."""
        agent = self.agents.get(agent_id)
        if agent is None and agent_id in self._hibernating:
            await asyncio.shield(self._hibernating[agent_id])  # load only once it is fully put away
            agent = self.agents.get(agent_id)
        if agent is None:
            loading = self._loading.get(agent_id)
            if loading is not None:
                agent = await asyncio.shield(loading)
            else:
                fut: asyncio.Future[Agent] = asyncio.get_running_loop().create_future()
                self._loading[agent_id] = fut
                try:
                    agent = await self._load(agent_id, subscriber, recover)
                    fut.set_result(agent)
                except BaseException as exc:
                    fut.set_exception(exc)
                    fut.exception()
                    raise
                finally:
                    self._loading.pop(agent_id, None)
        self.agents.move_to_end(agent_id)
        agent.touch()
        if subscriber is not None:
            self.svc.events.subscribe(agent_id, subscriber)
        return agent

    def in_flight(self, agent_id: str) -> list[asyncio.Future[Any]]:
        """What is under way for the agent that a read must not overtake: a load, a hibernation."""
        return [f for f in (self._loading.get(agent_id), self._hibernating.get(agent_id)) if f is not None]

    async def _load(self, agent_id: str, subscriber: Subscriber | None, recover: bool) -> Agent:
        store = self.svc.store
        await self._make_room()
        await self._lease(agent_id)  # first: what we read next cannot change under us
        try:
            snap = await store.load_agent_snapshot(agent_id)  # one read (one round trip on PostgreSQL)
            if snap is None:
                raise NotFound("agent", agent_id)
            msgs = [{"index": m.index, "role": m.role, "content": m.content, "turnId": m.turn_id,
                     "createdAt": m.created_at} for m in snap.messages]
            agent = self._admit(snap.row, msgs, snap.todos, subscriber)
            agent.loaded = snap  # recover() reads turns, calls, approvals, recent events from it
        except BaseException:
            await store.release_lease(agent_id, self.owner)
            raise
        if recover:
            agent.pins += 1
            try:
                sealed, start = await agent.recover("crash")
            finally:
                agent.pins -= 1
            if sealed or agent.pending or agent.queue:
                agent.emit(ev.AgentResumed(strategy="crash", sealed=sealed))
            start()
        return agent

    def _admit(self, row: AgentRow, messages: list[dict[str, Any]], todos: list[dict[str, Any]],
               subscriber: Subscriber | None) -> Agent:
        agent = Agent(self.svc, row, messages, todos)
        self.svc.events.register(row.agent_id, row.last_seq)
        if subscriber is not None:
            self.svc.events.subscribe(row.agent_id, subscriber)
        self.agents[row.agent_id] = agent
        self.hibernated.discard(row.agent_id)
        if agent.mcp is not None:
            agent.mcp.start()  # connects in the background; mcp_status events tell how it goes
        agent.files.start()  # file_changed for every change under the workDir (contract 15)
        return agent

    async def _lease(self, agent_id: str) -> None:
        try:
            await self.svc.store.acquire_lease(agent_id, self.owner, self.settings.lease_ttl_s)
        except LeaseHeld as held:
            raise errors.AgentLocked(agent_id, held.pid, held.host) from None

    async def _make_room(self) -> None:
        while len(self.agents) >= self.settings.max_agents:
            idle = next((a for a in self.agents.values() if not a.busy), None)
            if idle is None:
                raise errors.Unavailable(f"all {self.settings.max_agents} agents in memory are busy", "pool_full")
            await self.hibernate(idle)

    async def hibernate(self, agent: Agent) -> None:
        """Drop an idle agent from memory; everything about it is already stored.

        A request for the agent that arrives meanwhile waits (see `get`) until the
        lease is released, so it cannot lose its fresh lease or seq counter to us.
        """
        self.agents.pop(agent.id, None)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hibernating[agent.id] = done
        try:
            await agent.shells.kill_all()
            await agent.files.stop()
            if agent.mcp is not None:
                await agent.mcp.close()
            await agent.persist()
            self.svc.events.unregister(agent.id)
            await self.svc.store.release_lease(agent.id, self.owner)
            self.hibernated.add(agent.id)
            log.debug("hibernated %s", agent.id)
        finally:
            del self._hibernating[agent.id]
            done.set_result(None)

    async def delete(self, agent_id: str) -> bool:
        agent = self.agents.pop(agent_id, None)
        if agent is not None:
            await agent.close(keep_pending=False)  # deny pending approvals, end the turn
            self.svc.events.unregister(agent_id)
        else:
            if await self.svc.store.get_agent(agent_id) is None:
                return False
            await self._lease(agent_id)
        self.hibernated.discard(agent_id)
        try:
            return await self.svc.store.delete_agent(agent_id)
        finally:  # else the lock outlives the agent (PostgreSQL) and a new one of that id is locked
            await self.svc.store.release_lease(agent_id, self.owner)

    async def fork(self, agent_id: str, new_agent_id: str | None, at_seq: int | None) -> AgentRow:
        source = await self.svc.store.get_agent(agent_id)
        if source is None:
            raise NotFound("agent", agent_id)
        live = self.agents.get(agent_id)
        last = self.svc.events.last_seq(agent_id) if live else source.last_seq
        if at_seq is not None and at_seq > last:
            raise errors.InvalidInput(f"atSeq {at_seq} is after the agent's last seq {last}", "atSeq",
                                      f"must be <= {last}")
        if live:
            self.svc.events.flush()
            await self.svc.store.barrier()
        new_id_ = new_agent_id or new_id("agt")
        config = dict(source.config, agentId=new_id_)
        now = now_iso()
        row = AgentRow(new_id_, source.template_id, now, now, "READY", 0, 0, config,
                       ({"modelCalls": source.runtime.get("modelCalls", 0)} if at_seq is None else {})
                       | {"rewound": source.runtime.get("rewound") or [],  # the copy's context is the same
                          "compaction": {"records": (source.runtime.get("compaction") or {}).get("records") or []}},
                       dict(source.metadata, forkedFrom=agent_id))
        try:
            await self.svc.store.fork_agent(agent_id, row, at_seq)
        except AgentExists:
            raise errors.AgentExists(new_id_, "newAgentId") from None
        self.hibernated.add(new_id_)
        stored = await self.svc.store.get_agent(new_id_)
        assert stored is not None
        return stored

    # --- observability -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "active": len(self.agents),
            "maxAgents": self.settings.max_agents,
            "working": sum(1 for a in self.agents.values() if a.current is not None),
            "hibernated": len(self.hibernated),
        }

    # --- shutdown -------------------------------------------------------------------
    async def shutdown(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        agents = list(self.agents.values())
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
        self.svc.events.flush()
        for agent in agents:
            await self.svc.store.release_lease(agent.id, self.owner)
        self.agents.clear()

    async def _renew_leases(self) -> None:
        interval = max(self.settings.lease_ttl_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            if self.agents:
                try:
                    lost = await self.svc.store.renew_leases(list(self.agents), self.owner, self.settings.lease_ttl_s)
                except Exception as exc:
                    log.warning("lease renewal failed: %s", exc)
                    continue
                for agent_id in lost or []:  # another server took it (e.g. during a database outage)
                    agent = self.agents.pop(agent_id, None)
                    if agent is not None:
                        log.warning("agent %s is run by another server now; dropping it", agent_id)
                        self.svc.events.unregister(agent_id)
                        self.hibernated.add(agent_id)
                        asyncio.ensure_future(agent.shells.kill_all())


def idle_ms(updated_at: str) -> int:
    """Milliseconds since an ISO timestamp (for agents not in memory)."""
    try:
        then = datetime.fromisoformat(updated_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0
    return max(0, int((time.time() - then) * 1000))
