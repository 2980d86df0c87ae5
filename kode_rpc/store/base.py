"""The store interface: append-only rows per change, never whole-state rewrites.

Writes are *enqueued in call order* and return an `asyncio.Future` that resolves
after the write is committed (group commit: the writer batches whatever is
queued into one transaction). Callers that must not acknowledge before the data
is durable await the future; others may fire and forget, ordering is still kept.
Reads are coroutines on separate connections and see committed data only; a
caller that needs its own earlier writes awaits `barrier()` first.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """Base of store failures."""


class AgentExists(StoreError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent exists: {agent_id}")
        self.agent_id = agent_id


class LeaseHeld(StoreError):
    """Another live process runs this agent."""

    def __init__(self, agent_id: str, pid: int, host: str) -> None:
        super().__init__(f"agent {agent_id} is run by process {pid} on {host}")
        self.agent_id = agent_id
        self.pid = pid
        self.host = host


@dataclass
class AgentRow:
    agent_id: str
    template_id: str
    created_at: str
    updated_at: str
    state: str
    last_seq: int
    message_count: int
    config: dict[str, Any]
    """The resolved AgentConfig as wire JSON (never an API key)."""
    runtime: dict[str, Any] = field(default_factory=dict)
    """Small mutable runtime state: script position, usage, breakpoint, remembered allows."""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventRow:
    agent_id: str
    seq: int
    ts: str
    channel: str
    turn_id: str | None
    type: str
    json: str
    """The whole envelope as sent (without `replay`), so replay sends it unchanged."""


@dataclass
class MessageRow:
    agent_id: str
    index: int
    role: str
    content: list[dict[str, Any]]
    turn_id: str | None
    created_at: str


@dataclass
class ToolCallRow:
    agent_id: str
    call_id: str
    turn_id: str
    step: int
    name: str
    input: dict[str, Any]
    state: str
    result: Any = None
    error: str | None = None
    started_at: str | None = None
    duration_ms: int | None = None
    updated_at: str = ""


@dataclass
class ApprovalRow:
    agent_id: str
    approval_id: str
    call_id: str
    turn_id: str
    status: str
    """`pending`, `allow` or `deny`."""
    request: dict[str, Any]
    """The `approval/request` params as wire JSON."""
    created_at: str
    decided_by: str | None = None
    note: str | None = None
    decided_at: str | None = None


@dataclass
class TurnRow:
    agent_id: str
    turn_id: str
    message_index: int
    status: str
    """`queued`, `running` or `done`."""
    created_at: str
    step: int = 0
    reason: str | None = None
    message: dict[str, Any] | None = None
    """The user message `{role, content}` of a queued turn: it joins the conversation only
    when the turn starts, so a send during a running turn cannot split a tool_use from
    its tool_result; stored here so a queued send survives a crash."""


@dataclass
class LeaseOwner:
    pid: int
    host: str
    token: str


class Store(ABC):
    name: str

    @abstractmethod
    async def open(self) -> None:
        """Create/migrate the schema and start the writer."""

    @abstractmethod
    async def close(self) -> None:
        """Flush queued writes, stop the writer, close connections."""

    # --- writes: enqueued in order, future resolves after commit -------------
    @abstractmethod
    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        """Fails the future with AgentExists when the id is taken."""

    @abstractmethod
    def update_agent(self, agent_id: str, **fields: Any) -> asyncio.Future[None]:
        """Update some of: state, updated_at, last_seq, message_count, config, runtime, metadata."""

    @abstractmethod
    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        """Delete the agent and every row of it (events, messages, tools, approvals, turns, todos, lease)."""

    @abstractmethod
    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]: ...

    @abstractmethod
    def append_message(self, row: MessageRow) -> asyncio.Future[None]: ...

    @abstractmethod
    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        """Upsert the record and append an audit row (call_id, ts, state, note)."""

    @abstractmethod
    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]: ...

    @abstractmethod
    def put_turn(self, row: TurnRow) -> asyncio.Future[None]: ...

    @abstractmethod
    def set_todos(self, agent_id: str, todos: list[dict[str, Any]]) -> asyncio.Future[None]: ...

    @abstractmethod
    def fork_agent(self, source_id: str, row: AgentRow, at_seq: int | None) -> asyncio.Future[None]:
        """Create `row` with the source's messages, todos and events up to `at_seq` (all when None).

        Messages are copied up to the timestamp of the last event at or before `at_seq`
        (timestamps share one ISO UTC format, so they compare as strings); seqs in the copy
        keep their numbers and the new agent continues after the last copied one.
        """

    @abstractmethod
    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything enqueued before it is committed."""

    # --- leases ----------------------------------------------------------------
    @abstractmethod
    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Take the agent's lease, or fail with LeaseHeld.

        Free, expired, ours, or held by a dead pid on this same host: taken.
        """

    @abstractmethod
    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]: ...

    @abstractmethod
    def release_lease(self, agent_id: str, owner: LeaseOwner) -> asyncio.Future[None]: ...

    # --- reads -----------------------------------------------------------------
    @abstractmethod
    async def get_agent(self, agent_id: str) -> AgentRow | None: ...

    @abstractmethod
    async def list_agents(self, prefix: str | None, limit: int, cursor: str | None) -> tuple[list[AgentRow], str | None]:
        """Ordered by agent_id; cursor is the last id of the previous page."""

    @abstractmethod
    async def load_messages(self, agent_id: str, limit: int | None = None, before: int | None = None) -> tuple[list[MessageRow], int]:
        """Messages with index < before (all when None), the last `limit` of them, in index order; and the total count."""

    @abstractmethod
    async def read_events(self, agent_id: str, since: int = 0, limit: int | None = None, channels: list[str] | None = None) -> list[EventRow]:
        """Events with seq > since in seq order."""

    @abstractmethod
    async def read_event_json(self, agent_id: str, since: int = 0) -> list[tuple[int, str]]:
        """`(seq, envelope JSON)` of events after `since`, in seq order (the replay path)."""

    @abstractmethod
    async def load_tool_calls(self, agent_id: str, turn_id: str | None = None) -> list[ToolCallRow]: ...

    @abstractmethod
    async def load_approvals(self, agent_id: str, status: str | None = None) -> list[ApprovalRow]: ...

    @abstractmethod
    async def load_turns(self, agent_id: str, statuses: list[str] | None = None) -> list[TurnRow]:
        """In creation order."""

    @abstractmethod
    async def get_todos(self, agent_id: str) -> list[dict[str, Any]]: ...

    # --- observability -------------------------------------------------------
    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """`{healthy, database: {connected, latencyMs}, fileSystem: {writable}, checkedAt}`."""

    @abstractmethod
    async def consistency(self, agent_id: str) -> dict[str, Any]:
        """`{consistent, issues}`: seq gaps, message index gaps, tool_use without result, counters."""

    @abstractmethod
    async def metrics(self) -> dict[str, Any]:
        """`{operations, performance, storage, collectedAt}` as contract section 7."""
