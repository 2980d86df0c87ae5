"""The method table: every request and notification with its params and result types.

The server validates against it, `kode-rpc schema` exports it, and the docs are
written from it, so a method exists in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from . import agents as a
from . import approvals as ap
from . import events as ev
from . import system as s


@dataclass(frozen=True)
class Method:
    name: str
    direction: Literal["client->server", "server->client"]
    kind: Literal["request", "notification"]
    params: type[BaseModel]
    result: type[BaseModel] | None
    summary: str


def _req(name: str, params: type[BaseModel], result: type[BaseModel] | None, summary: str) -> Method:
    return Method(name, "client->server", "request", params, result, summary)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        _req("initialize", s.InitializeParams, s.InitializeResult, "Must come first; negotiates protocol version 1."),
        _req("shutdown", s.Empty, None, "Graceful shutdown; result null. Afterwards only `exit` is acted on."),
        _req("agent/create", a.AgentConfig, a.AgentInfo, "Create an agent (subscribes the caller)."),
        _req("agent/resume", a.ResumeParams, a.ResumeResult, "Activate an agent, replay events after `since`, recover from a crash."),
        _req("agent/send", a.SendParams, a.SendResult, "Queue a user message; returns at once, progress arrives as events."),
        _req("agent/complete", a.SendParams, a.CompleteResult, "Send and wait for the turn's `done`."),
        _req("agent/interrupt", a.InterruptParams, a.InterruptResult, "Stop the running turn, deny pending approvals, kill tools."),
        _req("agent/decide", a.DecideParams, a.DecideResult, "Answer a pending approval (first answer wins)."),
        _req("agent/status", a.AgentRef, ap.AgentStatus, "Agent info plus breakpoint, usage, pending approvals, todos."),
        _req("agent/list", a.ListParams, a.ListResult, "Page through stored agents."),
        _req("agent/messages", a.MessagesParams, a.MessagesResult, "Read stored messages."),
        _req("agent/events", a.EventsParams, ev.EventsResult, "Read stored events after `since`."),
        _req("agent/fork", a.ForkParams, a.AgentInfo, "Copy an agent's conversation into a new agent."),
        _req("agent/todos", a.TodosParams, a.TodosResult, "Read, or set when `todos` is given, the agent's todos."),
        _req("agent/checkpoints", a.AgentRef, a.CheckpointsResult, "The agent's checkpoints, oldest first."),
        _req("agent/rewind", a.RewindParams, a.RewindResult, "Restore the workDir and/or the conversation to a checkpoint."),
        _req("agent/compact", a.CompactParams, a.CompactResult, "Compress the agent's context now (after the running turn, if any)."),
        _req("agent/delete", a.AgentRef, a.DeleteResult, "Delete an agent and everything stored for it."),
        _req("pool/stats", s.Empty, s.PoolStats, "Agents in memory, working and hibernated."),
        _req("templates/list", s.Empty, s.TemplatesResult, "Agent templates known to the server."),
        _req("store/health", s.Empty, s.StoreHealth, "Database and data-dir health."),
        _req("store/consistency", s.ConsistencyParams, s.ConsistencyResult, "Check one agent's stored data."),
        _req("store/metrics", s.Empty, s.StoreMetrics, "Store operation counters and sizes."),
        _req("metrics/prometheus", s.Empty, s.PrometheusResult, "Prometheus exposition text."),
        Method("initialized", "client->server", "notification", s.Empty, None, "Accepted and ignored."),
        Method("exit", "client->server", "notification", s.Empty, None, "Ends the process (0 after shutdown, 1 without)."),
        Method("$/cancelRequest", "client->server", "notification", s.CancelParams, None, "Cancel a request; it is answered with -32800."),
        Method("agent/event", "server->client", "notification", ev.EventEnvelope, None, "One stored event of a subscribed agent."),
        Method("templates/changed", "server->client", "notification", s.TemplatesChanged, None, "A template file was added, changed or removed (params: the new `templates/list` result)."),
        Method("approval/request", "server->client", "request", ap.ApprovalRequest, ap.ApprovalResponse, "Ask the client to allow or deny a tool call."),
    ]
}

REQUESTS: frozenset[str] = frozenset(
    name for name, m in METHODS.items() if m.direction == "client->server" and m.kind == "request"
)
