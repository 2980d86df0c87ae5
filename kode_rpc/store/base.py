"""The store interface: append-only rows per change, never whole-state rewrites.

Writes are *enqueued in call order* and return an `asyncio.Future` that resolves
after the write is committed (group commit: the writer batches whatever is
queued into one transaction, see `writer.py`). Callers that must not acknowledge
before the data is durable await the future; others may fire and forget,
ordering is still kept. Reads are coroutines on separate connections and see
committed data only; a caller that needs its own earlier writes awaits
`barrier()` first.

Backends: `sqlite.py` (one file, WAL), `postgres.py` (psycopg 3, advisory locks),
`jsonfiles.py` (a folder of JSON-lines files). `url.py: make_store(url)` picks one.
Nothing here is about agent rules: those live in `consistency.py` and `lease.py`
and in the runtime.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from typing import Unpack

    from ..protocol.system import ConsistencyResult, StoreHealth, StoreMetrics
    from .consistency import ConsistencyView


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now (retryable); the store reconnects by itself.

    The runtime answers it with `-32001`, `data.reason: "store_unavailable"`,
    `data.retryable: true`.
    """


class SchemaTooNew(StoreError):
    """The store was written by a newer kode-rpc; this one refuses to touch it."""

    def __init__(self, found: int, supported: int, where: str = "database") -> None:
        super().__init__(f"{where} schema version {found} is newer than this program supports ({supported})")
        self.found = found
        self.supported = supported


class StoreLocked(StoreError):
    """Another process has this store open and the store allows one process only (JSON)."""

    def __init__(self, path: str, pid: int, host: str) -> None:
        super().__init__(f"store {path} is in use by process {pid} on {host}")
        self.path = path
        self.pid = pid
        self.host = host


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


@dataclass
class ToolAuditRow:
    """One state change of a tool call, as `put_tool_call` recorded it (kept for `store copy`)."""

    agent_id: str
    call_id: str
    ts: str
    state: str
    note: str | None = None


class AgentFields(TypedDict, total=False):
    """What `update_agent` may change; keys left out stay as they are."""

    state: str
    updated_at: str
    last_seq: int
    message_count: int
    config: dict[str, Any]
    runtime: dict[str, Any]
    metadata: dict[str, Any]


AGENT_FIELDS = frozenset(AgentFields.__annotations__)


def check_agent_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError naming keys `update_agent` does not know (at the call, not in the writer)."""
    unknown = sorted(set(fields) - AGENT_FIELDS)
    if unknown:
        raise ValueError(f"update_agent: unknown fields {unknown}")


RECENT_EVENTS = 20
"""Events before `last_seq` an `AgentSnapshot` carries (recovery looks for a `done` among them)."""


@dataclass
class AgentSnapshot:
    """Everything a server needs to bring a stored agent into memory, read in one call.

    One consistent read (one transaction; on PostgreSQL one pipelined round trip)
    instead of one call per table.
    """

    row: AgentRow
    messages: list[MessageRow]
    """All messages, in index order."""
    todos: list[dict[str, Any]]
    turns: list[TurnRow]
    """Unfinished turns (`queued` or `running`), in creation order."""
    tool_calls: list[ToolCallRow]
    """Tool calls of those turns, in creation order."""
    pending_approvals: list[ApprovalRow]
    """Approvals with status `pending`, in creation order."""
    recent_events: list[EventRow]
    """Events with seq > last_seq - RECENT_EVENTS, in seq order."""

    def calls_of(self, turn_id: str) -> list[ToolCallRow]:
        return [c for c in self.tool_calls if c.turn_id == turn_id]


@dataclass
class AgentDump:
    """An agent with every row of it: what `store copy` moves between stores."""

    row: AgentRow
    events: list[EventRow]
    messages: list[MessageRow]
    tool_calls: list[ToolCallRow]
    tool_audit: list[ToolAuditRow]
    approvals: list[ApprovalRow]
    turns: list[TurnRow]
    todos: list[dict[str, Any]]


class Store(ABC):
    """The interface every backend implements (see the module docstring).

    `name` is the store type on the wire (`sqlite`, `postgres`, `json`);
    `display_url` is the store's URL with any password masked as `***`, safe to
    log and show; `schema_version` is what the open store found or created.
    """

    name: str
    display_url: str = ""
    schema_version: int = 0

    @abstractmethod
    async def open(self) -> None:
        """Create/migrate the schema and start the writer.

        Raises SchemaTooNew for a store written by a newer program, StoreLocked
        for a JSON folder another process has open, StoreUnavailable when the
        database cannot be reached (unless the store was made `offline_ok`).
        """

    @abstractmethod
    async def close(self) -> None:
        """Flush queued writes, stop the writer, close connections (idempotent)."""

    # --- writes: enqueued in order, future resolves after commit -------------
    @abstractmethod
    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        """Fails the future with AgentExists when the id is taken."""

    @abstractmethod
    def update_agent(self, agent_id: str, **fields: Unpack[AgentFields]) -> asyncio.Future[None]:
        """Update some of: state, updated_at, last_seq, message_count, config, runtime, metadata.

        Unknown keys raise ValueError at the call. Updating a missing agent is a no-op.
        """

    @abstractmethod
    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        """Delete the agent and every row of it (events, messages, tools, approvals, turns, todos, lease);
        resolves to whether it existed."""

    @abstractmethod
    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]:
        """Insert events (a duplicate `(agent_id, seq)` fails the future); raises `last_seq`."""

    @abstractmethod
    def append_message(self, row: MessageRow) -> asyncio.Future[None]:
        """Insert a message (a duplicate index fails the future); raises `message_count`."""

    @abstractmethod
    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        """Upsert the record and append an audit row (call_id, ts, state, note)."""

    @abstractmethod
    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]:
        """Upsert by approval_id (creation order kept)."""

    @abstractmethod
    def put_turn(self, row: TurnRow) -> asyncio.Future[None]:
        """Upsert by (agent_id, turn_id) (creation order kept)."""

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
    def import_agent(self, dump: AgentDump) -> asyncio.Future[None]:
        """Write an agent with all its rows as they are (same seqs), atomically;
        AgentExists when the id is taken (then nothing is written)."""

    @abstractmethod
    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything enqueued before it is committed."""

    # --- leases ----------------------------------------------------------------
    @abstractmethod
    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Take the right to run the agent, or fail with LeaseHeld naming the holder.

        SQLite: a lease row, free when expired, ours, or held by a dead pid on this
        host. PostgreSQL: a session advisory lock on the process's lock connection
        (gone with the process). JSON: the folder lock makes the process the only
        one; leases are kept in memory.
        """

    @abstractmethod
    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[list[str]]:
        """Keep our leases of `agent_ids`; resolves to the ids that are no longer ours
        (taken over by another process, e.g. during a database outage): the pool
        should drop those agents."""

    @abstractmethod
    def release_lease(self, agent_id: str, owner: LeaseOwner) -> asyncio.Future[None]: ...

    # --- reads -----------------------------------------------------------------
    @abstractmethod
    async def get_agent(self, agent_id: str) -> AgentRow | None: ...

    @abstractmethod
    async def load_agent_snapshot(self, agent_id: str) -> AgentSnapshot | None:
        """The agent's row, messages, todos, unfinished turns and their tool calls,
        pending approvals and recent events, from one consistent read; None when missing."""

    @abstractmethod
    async def export_agent(self, agent_id: str) -> AgentDump | None:
        """Every row of the agent from one consistent read; None when missing."""

    @abstractmethod
    async def list_agents(self, prefix: str | None, limit: int, cursor: str | None) -> tuple[list[AgentRow], str | None]:
        """Ordered by agent_id (code point order); cursor is the last id of the previous page."""

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

    # --- observability (typed) -------------------------------------------------
    @abstractmethod
    async def check_health(self) -> StoreHealth:
        """`{healthy, database: {connected, latencyMs, error?}, fileSystem: {writable}, checkedAt}`;
        never raises for a sick database: that is what it reports."""

    @abstractmethod
    async def consistency_view(self, agent_id: str) -> ConsistencyView | None:
        """The rows `consistency.check` needs, read in one snapshot; None when the agent is missing."""

    async def check_consistency(self, agent_id: str) -> ConsistencyResult:
        """`{consistent, issues}` by the rules of `consistency.py` (the same on every backend)."""
        from ..protocol.system import ConsistencyResult
        from .consistency import check

        issues = check(agent_id, await self.consistency_view(agent_id))
        return ConsistencyResult(consistent=not issues, issues=issues)

    @abstractmethod
    async def collect_metrics(self) -> StoreMetrics:
        """`{operations, performance, storage, collectedAt}` as contract section 7."""

    # --- the dict forms (kept while callers move to the typed methods) ---------
    async def health(self) -> dict[str, Any]:
        """`check_health()` as a wire dict."""
        return (await self.check_health()).wire()

    async def consistency(self, agent_id: str) -> dict[str, Any]:
        """`check_consistency()` as a wire dict."""
        return (await self.check_consistency(agent_id)).wire()

    async def metrics(self) -> dict[str, Any]:
        """`collect_metrics()` as a wire dict."""
        return (await self.collect_metrics()).wire()
