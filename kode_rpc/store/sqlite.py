"""SQLite implementation of the `Store` interface (stdlib sqlite3 only).

Why this shape:

* The shared group-commit writer (`writer.py`) owns the only write connection and,
  on the server's loop, commits on the event loop thread whenever the loop goes
  idle (inline mode; a locked database hands that batch to a thread instead of
  blocking the loop). Write methods snapshot their arguments (JSON-encoding
  dicts right away, so later mutation by the caller cannot leak into the row),
  enqueue a closure and return an `asyncio.Future` at once. `_run_batch` runs
  everything queued in ONE `BEGIN IMMEDIATE` transaction (group commit: one WAL
  commit for many writes); if an item fails, the batch is rolled back and run
  again with a `SAVEPOINT` per item, so a failing item rolls back only itself and
  fails only its own future. Order of commits is call order. WAL checkpoints run
  on their own thread (`checkpointer.py`).
* Reads are coroutines on a two-thread pool, each thread with its own
  connection; WAL lets them run concurrently with the writer and see committed
  data only.
* WAL with `synchronous=NORMAL`: a committed transaction survives a process
  crash (also SIGKILL); only an OS crash/power loss may lose the last commits.
* The schema is versioned with `PRAGMA user_version` and an ordered list of
  migrations; a database written by newer code is refused rather than damaged.
* Leases are rows (pid, host, token, expiry); `lease.py` decides when one is free.
* An agent's config and metadata live in `agent_config`, apart from its often
  updated `agents` row (schema version 2, see `_migration_2`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from .base import (
    RECENT_EVENTS,
    AgentDump,
    AgentExists,
    AgentRow,
    ApprovalRow,
    EventRow,
    LeaseHeld,
    LeaseOwner,
    MessageRow,
    SchemaTooNew,
    StoreError,
    ToolAuditRow,
    ToolCallRow,
    TurnRow,
    check_agent_fields,
)
from .checkpointer import WRITER_AUTOCHECKPOINT_PAGES, Checkpointer
from .common import (
    AGENT_COLUMNS,
    APPROVAL_COLUMNS,
    EVENT_COLUMNS,
    TOOL_COLUMNS,
    TURN_COLUMNS,
    UPDATE_FIELDS,
    WriterStore,
    dumps,
    health_model,
    metrics_model,
    prefix_upper_bound,
    utc_now_iso,
)
from .consistency import FINAL_TOOL_STATES, ConsistencyView
from .lease import lease_is_free, pid_alive
from .writer import KIND_DELETE, BatchCounters, GroupCommitWriter, Result, WouldBlock, WriteItem, split_joined

if TYPE_CHECKING:
    from typing import Unpack

    from ..protocol.system import StoreHealth, StoreMetrics
    from .base import AgentFields, AgentSnapshot

__all__ = ["SQLiteStore", "pid_alive", "MIGRATIONS", "SCHEMA_VERSION", "FINAL_TOOL_STATES"]

logger = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 10000
_CACHE_KIB = 1024
"""Page cache per connection (writer, two readers, checkpointer). The default 2 MiB each
held ~8 MiB of pages a server barely reuses (the OS caches the file too): measured
~25 KB of RSS per loaded agent in the 50-agent bench."""
_dumps = dumps  # the old private name, for importers
_utc_now_iso = utc_now_iso


# ---------------------------------------------------------------------- schema


def _migration_1(conn: sqlite3.Connection) -> None:
    """Create every table of schema version 1."""
    statements = [
        """CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            template_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            state TEXT NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            message_count INTEGER NOT NULL DEFAULT 0,
            config_json TEXT NOT NULL DEFAULT '{}',
            runtime_json TEXT NOT NULL DEFAULT '{}',
            metadata_json TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE events (
            agent_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts TEXT NOT NULL,
            channel TEXT NOT NULL,
            turn_id TEXT,
            type TEXT NOT NULL,
            json TEXT NOT NULL,
            PRIMARY KEY (agent_id, seq)
        ) WITHOUT ROWID""",
        # Rowid table: message content can be large, which WITHOUT ROWID handles badly.
        """CREATE TABLE messages (
            agent_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,
            content_json TEXT NOT NULL,
            turn_id TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (agent_id, idx)
        )""",
        """CREATE TABLE tool_calls (
            agent_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            turn_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            name TEXT NOT NULL,
            input_json TEXT NOT NULL,
            state TEXT NOT NULL,
            result_json TEXT,
            error TEXT,
            started_at TEXT,
            duration_ms INTEGER,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (agent_id, call_id)
        )""",
        "CREATE INDEX tool_calls_by_turn ON tool_calls (agent_id, turn_id)",
        """CREATE TABLE tool_audit (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            ts TEXT NOT NULL,
            state TEXT NOT NULL,
            note TEXT
        )""",
        "CREATE INDEX tool_audit_by_call ON tool_audit (agent_id, call_id)",
        """CREATE TABLE approvals (
            approval_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            call_id TEXT NOT NULL,
            turn_id TEXT NOT NULL,
            status TEXT NOT NULL,
            request_json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            decided_by TEXT,
            note TEXT,
            decided_at TEXT
        )""",
        "CREATE INDEX approvals_by_agent ON approvals (agent_id, status)",
        # `ord` keeps creation order: an upsert (ON CONFLICT DO UPDATE) keeps it.
        """CREATE TABLE turns (
            ord INTEGER PRIMARY KEY AUTOINCREMENT,
            agent_id TEXT NOT NULL,
            turn_id TEXT NOT NULL,
            message_index INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            message_json TEXT,
            UNIQUE (agent_id, turn_id)
        )""",
        """CREATE TABLE todos (
            agent_id TEXT PRIMARY KEY,
            todos_json TEXT NOT NULL
        )""",
        """CREATE TABLE leases (
            agent_id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ]
    for statement in statements:
        conn.execute(statement)


def _migration_2(conn: sqlite3.Connection) -> None:
    """Move each agent's config and metadata out of its `agents` row into `agent_config`.

    SQLite rewrites a whole row, overflow pages included, whenever an UPDATE changes its
    size, and the `agents` row is updated several times a turn (state, runtime, the seq
    and message counters). With the config in it, an agent with a large config (a long
    system prompt, many MCP servers; the bench's scripted agent: 165 KB) rewrote and
    committed all of it each time: measured 416 us instead of 13 us per update+commit.
    The old columns stay (SQLite cannot drop them portably), emptied to `'{}'`."""
    conn.execute("""CREATE TABLE agent_config (
        agent_id TEXT PRIMARY KEY,
        config_json TEXT NOT NULL DEFAULT '{}',
        metadata_json TEXT NOT NULL DEFAULT '{}'
    )""")
    conn.execute("INSERT INTO agent_config (agent_id, config_json, metadata_json) "
                 "SELECT agent_id, config_json, metadata_json FROM agents")
    conn.execute("UPDATE agents SET config_json = '{}', metadata_json = '{}'")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2]
"""Ordered migrations; migration i (0-based) brings the schema to version i + 1.

Append new ones, never edit or reorder the published ones."""

SCHEMA_VERSION = len(MIGRATIONS)
MAX_BATCH = 256
"""Most write items committed in one transaction."""


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations, each in its own transaction.

    `BEGIN IMMEDIATE` before reading the version makes two processes opening
    the same new file at once serialize instead of both creating tables.
    """
    migrations = list(MIGRATIONS)
    target = len(migrations)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > target:
                raise SchemaTooNew(version, target)
            if version == target:
                conn.execute("COMMIT")
                return
            logger.info("migrating store schema from version %d to %d", version, version + 1)
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# ------------------------------------------------------------------ row coding



def _agent_params(row: AgentRow) -> tuple[Any, ...]:
    return (
        row.agent_id,
        row.template_id,
        row.created_at,
        row.updated_at,
        row.state,
        int(row.last_seq),
        int(row.message_count),
        dumps(row.config),
        dumps(row.runtime),
        dumps(row.metadata),
    )


_AGENT_SELECT = (
    "a.agent_id, a.template_id, a.created_at, a.updated_at, a.state, a.last_seq, a.message_count, "
    "c.config_json, a.runtime_json, c.metadata_json"
)
"""An agent's columns in `AGENT_COLUMNS` order, from `_AGENT_FROM`."""
_AGENT_FROM = "agents a JOIN agent_config c ON c.agent_id = a.agent_id"
_CONFIG_FIELDS = frozenset({"config", "metadata"})
"""update_agent keys stored in `agent_config` (see `_migration_2`); the rest are in `agents`."""


def _insert_agent(conn: sqlite3.Connection, params: tuple[Any, ...] | list[Any]) -> bool:
    """Insert an agent (`_agent_params` order) into `agents` and `agent_config`; False when
    the id is taken (nothing written then)."""
    core = (*params[:7], "{}", params[8], "{}")
    cur = conn.execute(
        f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(agent_id) DO NOTHING", core)
    if cur.rowcount == 0:
        return False
    conn.execute("INSERT OR REPLACE INTO agent_config (agent_id, config_json, metadata_json) VALUES (?,?,?)",
                 (params[0], params[7], params[9]))
    return True


def _agent_from(r: tuple[Any, ...]) -> AgentRow:
    return AgentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]), json.loads(r[9]))


def _tool_from(r: tuple[Any, ...]) -> ToolCallRow:
    return ToolCallRow(
        r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6],
        None if r[7] is None else json.loads(r[7]), r[8], r[9], r[10], r[11],
    )


def _approval_from(r: tuple[Any, ...]) -> ApprovalRow:
    return ApprovalRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])


def _message_from(r: tuple[Any, ...]) -> MessageRow:
    return MessageRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])


def _turn_from(r: tuple[Any, ...]) -> TurnRow:
    return TurnRow(*r[:7], message=None if r[7] is None else json.loads(r[7]))


# ------------------------------------------------------------------ the store


class SQLiteStore(WriterStore):
    """The store on one SQLite file; see the module docstring for the design.

    Life cycle: `SQLiteStore(path)` does no I/O; `await open()` creates or
    migrates the schema and starts the writer; `await close()` flushes and
    stops (idempotent). Write methods raise `StoreError` at once when the store
    is not open, and `RuntimeError` when called outside a running event loop.
    """

    name = "sqlite"

    def __init__(self, path: str) -> None:
        if path == ":memory:" or path.startswith("file:"):
            raise ValueError("SQLiteStore needs a plain file path (several connections share it)")
        super().__init__()
        self.path = os.path.abspath(path)
        self.display_url = "sqlite://" + self.path
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._counters = BatchCounters()
        """Counter raises of the batch being written (whoever runs batches: one at a time)."""
        self._writer_waits = True
        """Whether the write connection waits for a lock held elsewhere (`busy_timeout`); see `_run_batch`."""
        self._checkpointer: Checkpointer | None = None

    # ------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Create/migrate the schema on the writer thread, then accept writes.

        Raises SchemaTooNew when the file's schema is newer than this code.
        Opening an open store does nothing.
        """
        if self._closing:
            raise StoreError("store is closed")
        if self._opened:
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        writer: GroupCommitWriter[sqlite3.Connection] = GroupCommitWriter(
            "kode-store-writer", self._writer_connect, lambda conn, items: self._run_batch(conn, items),
            self._writer_disconnect, self._closed_error, MAX_BATCH,
            run_inline=lambda conn, items: self._run_batch(conn, items, wait=False))
        await writer.start()
        self._writer = writer
        self._checkpointer = Checkpointer(self._connect)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kode-store-read")
        self._opened = True
        self.schema_version = SCHEMA_VERSION
        logger.debug("store opened at %s (schema version %d)", self.path, SCHEMA_VERSION)

    async def _close_backend(self) -> None:
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await asyncio.to_thread(checkpointer.stop)
        if self._readers is not None:
            readers, self._readers = self._readers, None
            await asyncio.to_thread(readers.shutdown, True)
        with self._read_conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                logger.warning("closing a read connection failed", exc_info=True)

    # ---------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode: transactions are explicit, never implicit.
        Its page cache is capped at `_CACHE_KIB` (SQLite's default is 2 MiB per connection)."""
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        """This reader thread's own connection (sqlite3 connections are not shared)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    # --------------------------------------------------------------- writer

    def _writer_connect(self) -> sqlite3.Connection:
        """Writer thread: open, switch to WAL, migrate."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")  # see checkpointer.py
            _migrate(conn)
        except BaseException as exc:
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            if not isinstance(exc, StoreError):
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
            raise
        return conn

    @staticmethod
    def _writer_disconnect(conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error:
            logger.warning("closing the write connection failed", exc_info=True)

    def _run_batch(self, conn: sqlite3.Connection, items: list[WriteItem], wait: bool = True) -> list[Result]:
        """Run `items` in one transaction; return per-item outcomes.

        `wait=False` (the writer's inline mode, on the event loop): never wait for
        another connection's write lock; raise `WouldBlock` instead, before anything
        is written (the writer then runs the batch on a thread with `wait=True`).

        Items almost never fail, so the batch first runs without savepoints (a third
        of the statements: SAVEPOINT/RELEASE around each item cost more than most
        items). If an item raises, that attempt is rolled back whole and the batch
        runs again with a savepoint per item, so a failing item is rolled back alone
        and fails alone. A failure of the transaction itself (BEGIN/COMMIT, disk
        full, ...) fails them all.
        """
        t0 = time.perf_counter()
        if wait != self._writer_waits:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS if wait else 0}")
            self._writer_waits = wait
        try:
            results = self._attempt(conn, items, savepoints=False)
            if results is None:  # each call of a joined append on its own, in its place
                results = self._attempt(conn, split_joined(items), savepoints=True)
                assert results is not None
        except WouldBlock:
            raise
        except Exception as exc:
            logger.error("store write batch of %d items failed: %s", len(items), exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.warning("rollback failed", exc_info=True)
            return [(item.fut, None, StoreError(f"write failed: {exc}")) for item in items]
        self._stats.batch(items, results, (time.perf_counter() - t0) * 1000.0)
        return results

    def _attempt(self, conn: sqlite3.Connection, items: list[WriteItem], savepoints: bool) -> list[Result] | None:
        """One try at committing `items`. Without savepoints, a failing item rolls the
        attempt back and returns None (the caller retries with savepoints)."""
        results: list[Result] = []
        counters = self._counters
        counters.clear()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not self._writer_waits and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise WouldBlock(str(exc)) from exc
            raise
        for item in items:
            assert item.fn is not None
            if not savepoints:
                try:
                    results.append((item.fut, item.fn(conn), None))
                except Exception:
                    conn.execute("ROLLBACK")
                    return None
                continue
            conn.execute("SAVEPOINT item")
            try:
                value = item.fn(conn)
            except Exception as exc:
                # Raises (and aborts the batch) when SQLite already rolled back
                # the whole transaction (e.g. SQLITE_FULL).
                conn.execute("ROLLBACK TO item")
                conn.execute("RELEASE item")
                results.append((item.fut, None, _wrap_error(exc)))
            else:
                conn.execute("RELEASE item")
                results.append((item.fut, value, None))
        # Counters are raised once per agent per batch: an UPDATE rewrites the whole
        # agents row (config JSON included), far too costly once per streamed event.
        conn.executemany("UPDATE agents SET last_seq = ? WHERE agent_id = ? AND last_seq < ?",
                         [(v, k, v) for k, v in counters.seq.items()])
        conn.executemany("UPDATE agents SET message_count = ? WHERE agent_id = ? AND message_count < ?",
                         [(v, k, v) for k, v in counters.msgs.items()])
        conn.execute("COMMIT")
        if self._checkpointer is not None:
            self._checkpointer.wrote()
        return results

    # --------------------------------------------------------------- writes

    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        """Insert the agent row; the future fails with AgentExists when the id is taken."""
        params = _agent_params(row)
        agent_id = row.agent_id

        def op(conn: sqlite3.Connection) -> None:
            if not _insert_agent(conn, params):
                raise AgentExists(agent_id)

        return self._enqueue(op, agent_id=agent_id)

    def update_agent(self, agent_id: str, **fields: Unpack[AgentFields]) -> asyncio.Future[None]:
        """Update some agent columns; unknown keys raise ValueError right here.

        Updating an agent that does not exist (e.g. deleted meanwhile) is a
        no-op, so fire-and-forget updates racing a delete do not fail.
        """
        check_agent_fields(dict(fields))
        statements: list[tuple[str, list[Any]]] = []
        for table, keys in (("agents", [k for k in fields if k not in _CONFIG_FIELDS]),
                            ("agent_config", [k for k in fields if k in _CONFIG_FIELDS])):
            if keys:
                sets = [f"{UPDATE_FIELDS[k][0]} = ?" for k in keys]
                params: list[Any] = [dumps(fields[k]) if UPDATE_FIELDS[k][1] else fields[k] for k in keys]  # type: ignore[literal-required]
                statements.append((f"UPDATE {table} SET {', '.join(sets)} WHERE agent_id = ?", [*params, agent_id]))

        def op(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                if conn.execute(sql, params).rowcount == 0:
                    logger.debug("update_agent: no agent %s", agent_id)

        return self._enqueue(op, agent_id=agent_id)

    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        """Delete the agent and all its rows; resolves to whether the agent existed."""

        def op(conn: sqlite3.Connection) -> bool:
            existed = conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,)).rowcount > 0
            for table in ("agent_config", "events", "messages", "tool_calls", "tool_audit", "approvals", "turns",
                          "todos", "leases"):
                conn.execute(f"DELETE FROM {table} WHERE agent_id = ?", (agent_id,))
            return existed

        return self._enqueue(op, KIND_DELETE, agent_id, heavy=True)

    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]:
        """Insert events (a duplicate seq fails the future with StoreError).

        Also raises `agents.last_seq` to the highest appended seq (never lowers
        it), in the same transaction, so the counter can never lag the events.
        """
        params = [(r.agent_id, r.seq, r.ts, r.channel, r.turn_id, r.type, r.json) for r in rows]
        agents = {r.agent_id for r in rows}
        return self._append("events", params, self._insert_events, next(iter(agents)) if len(agents) == 1 else None)

    def _insert_events(self, conn: sqlite3.Connection, params: list[tuple[Any, ...]]) -> None:
        conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", params)
        seq = self._counters.seq
        for agent_id, n, *_ in params:
            BatchCounters.raise_(seq, agent_id, n)

    def append_message(self, row: MessageRow) -> asyncio.Future[None]:
        """Insert a message (a duplicate index fails with StoreError).

        Also raises `agents.message_count` to index + 1 (never lowers it).
        """
        params = (row.agent_id, row.index, row.role, dumps(row.content), row.turn_id, row.created_at)
        count = row.index + 1
        agent_id = row.agent_id

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO messages (agent_id, idx, role, content_json, turn_id, created_at) VALUES (?,?,?,?,?,?)",
                params,
            )
            BatchCounters.raise_(self._counters.msgs, agent_id, count)

        return self._enqueue(op, agent_id=agent_id)

    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        """Upsert the call and append an audit row (ts = row.updated_at, or now when empty)."""
        params = _tool_params(row)
        audit = (row.agent_id, row.call_id, row.updated_at or utc_now_iso(), row.state, note)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_TOOL, params)
            conn.execute("INSERT INTO tool_audit (agent_id, call_id, ts, state, note) VALUES (?,?,?,?,?)", audit)

        return self._enqueue(op, agent_id=row.agent_id)

    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]:
        """Upsert by approval_id (creation order is kept for `load_approvals`)."""
        params = _approval_params(row)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_APPROVAL, params)

        return self._enqueue(op, agent_id=row.agent_id)

    def put_turn(self, row: TurnRow) -> asyncio.Future[None]:
        """Upsert by (agent_id, turn_id); an update keeps the turn's creation position."""
        params = _turn_params(row)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_TURN, params)

        return self._enqueue(op, agent_id=row.agent_id, key=("turn", row.agent_id, row.turn_id))

    def set_todos(self, agent_id: str, todos: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Replace the agent's todo list."""
        params = (agent_id, dumps(todos))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_TODOS, params)

        return self._enqueue(op, agent_id=agent_id)

    def fork_agent(self, source_id: str, row: AgentRow, at_seq: int | None) -> asyncio.Future[None]:
        """Create `row` as a copy of `source_id` up to event `at_seq`, atomically.

        Copied: events with seq <= at_seq (all when None), keeping their seq
        numbers, with `agent_id` and the envelope's `"agentId"` rewritten;
        todos; and messages:

        * at_seq None: all messages;
        * otherwise the leading messages (index 0, 1, ... stopping at the first
          that fails) whose `created_at` <= the `ts` of the last source event
          with seq <= at_seq (that is the event `at_seq` itself when it
          exists); no messages when there is no such event. This relies on
          `ts`/`created_at` being ISO-8601 UTC strings of one format, which
          compare correctly as strings, and on messages being stored with the
          time they were created. A message stamped in the same clock tick as
          the cut event is included.

        Not copied: tool calls, audit, approvals, turns, lease. The new row's
        `last_seq` and `message_count` are overwritten with the copied
        figures (last copied seq, or 0; number of copied messages). Fails with
        AgentExists when `row.agent_id` is taken and StoreError when the
        source does not exist; nothing is written then.
        """
        params = list(_agent_params(row))
        new_id = row.agent_id

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (source_id,)).fetchone() is None:
                raise StoreError(f"no such agent: {source_id}")
            if not _insert_agent(conn, params):
                raise AgentExists(new_id)

            if at_seq is None:
                events = conn.execute(
                    "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = ? ORDER BY seq",
                    (source_id,),
                ).fetchall()
            else:
                events = conn.execute(
                    "SELECT seq, ts, channel, turn_id, type, json FROM events "
                    "WHERE agent_id = ? AND seq <= ? ORDER BY seq",
                    (source_id, at_seq),
                ).fetchall()
            copied = [(new_id, seq, ts, channel, turn_id, type_, fork_envelope(text, new_id))
                      for seq, ts, channel, turn_id, type_, text in events]
            conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", copied)
            last_seq = events[-1][0] if events else 0

            messages = conn.execute(
                "SELECT idx, role, content_json, turn_id, created_at FROM messages WHERE agent_id = ? ORDER BY idx",
                (source_id,),
            ).fetchall()
            if at_seq is not None:
                messages = fork_messages(messages, events[-1][1] if events else None, lambda m: m[0], lambda m: m[4])
            conn.executemany(
                "INSERT INTO messages (agent_id, idx, role, content_json, turn_id, created_at) VALUES (?,?,?,?,?,?)",
                [(new_id, *m) for m in messages],
            )

            conn.execute(
                "INSERT INTO todos (agent_id, todos_json) SELECT ?, todos_json FROM todos WHERE agent_id = ?",
                (new_id, source_id),
            )
            conn.execute(
                "UPDATE agents SET last_seq = ?, message_count = ? WHERE agent_id = ?",
                (last_seq, len(messages), new_id),
            )

        return self._enqueue(op, agent_id=new_id, heavy=True)

    def import_agent(self, dump: AgentDump) -> asyncio.Future[None]:
        """Write the agent and all its rows as they are, in one savepoint; AgentExists when taken."""
        agent_id = dump.row.agent_id
        agent = _agent_params(dump.row)
        events = [(r.agent_id, r.seq, r.ts, r.channel, r.turn_id, r.type, r.json) for r in dump.events]
        messages = [(r.agent_id, r.index, r.role, dumps(r.content), r.turn_id, r.created_at) for r in dump.messages]
        tools = [_tool_params(r) for r in dump.tool_calls]
        audit = [(r.agent_id, r.call_id, r.ts, r.state, r.note) for r in dump.tool_audit]
        approvals = [_approval_params(r) for r in dump.approvals]
        turns = [_turn_params(r) for r in dump.turns]
        todos = (agent_id, dumps(dump.todos))

        def op(conn: sqlite3.Connection) -> None:
            if not _insert_agent(conn, agent):
                raise AgentExists(agent_id)
            conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", events)
            conn.executemany(
                "INSERT INTO messages (agent_id, idx, role, content_json, turn_id, created_at) VALUES (?,?,?,?,?,?)",
                messages)
            conn.executemany(_UPSERT_TOOL, tools)
            conn.executemany("INSERT INTO tool_audit (agent_id, call_id, ts, state, note) VALUES (?,?,?,?,?)", audit)
            conn.executemany(_UPSERT_APPROVAL, approvals)
            conn.executemany(_UPSERT_TURN, turns)
            if dump.todos:
                conn.execute(_UPSERT_TODOS, todos)

        return self._enqueue(op, agent_id=agent_id, heavy=True)

    # --------------------------------------------------------------- leases

    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Take the lease, or fail with LeaseHeld(agent_id, pid, host) of the holder.

        Taken when free, expired, already ours (same token), or held by a dead
        pid on our host (`lease.lease_is_free`). The check and the upsert share
        the writer's `BEGIN IMMEDIATE` transaction, which holds SQLite's write
        lock, so two processes cannot both win.
        """
        pid, host, token = owner.pid, owner.host, owner.token

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            held = conn.execute(
                "SELECT pid, host, token, expires_at FROM leases WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if held is not None:
                h_pid, h_host, h_token, h_expires = held
                if not lease_is_free(int(h_pid), h_host, h_token, h_expires, pid, host, token, now):
                    raise LeaseHeld(agent_id, int(h_pid), h_host)
                if h_token != token:
                    logger.info("taking over lease of %s from pid %s on %s", agent_id, h_pid, h_host)
            conn.execute(
                "INSERT INTO leases (agent_id, pid, host, token, expires_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(agent_id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
                "token = excluded.token, expires_at = excluded.expires_at",
                (agent_id, pid, host, token, now + ttl_s),
            )

        return self._enqueue(op)

    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[list[str]]:
        """Extend the leases among `agent_ids` that are ours (by token); others are left alone.

        A lease lost meanwhile (expired and taken over) is not re-created; a
        warning is logged, and the future resolves to those ids.
        """
        ids = list(agent_ids)
        token = owner.token

        def op(conn: sqlite3.Connection) -> list[str]:
            expires = time.time() + ttl_s
            lost: list[str] = []
            for agent_id in ids:
                if conn.execute(
                    "UPDATE leases SET expires_at = ? WHERE agent_id = ? AND token = ?",
                    (expires, agent_id, token),
                ).rowcount == 0:
                    lost.append(agent_id)
            if lost:
                logger.warning("renew_leases: %d of %d leases are no longer ours", len(lost), len(ids))
            return lost

        return self._enqueue(op)

    def release_lease(self, agent_id: str, owner: LeaseOwner) -> asyncio.Future[None]:
        """Drop the lease if it is ours; someone else's is left untouched."""
        params = (agent_id, owner.token)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE agent_id = ? AND token = ?", params)

        return self._enqueue(op)

    # ---------------------------------------------------------------- reads

    async def _read(self, fn: Callable[[sqlite3.Connection], Any], kind: str | None, snapshot: bool = False) -> Any:
        """Run `fn` on a reader thread; `snapshot` wraps it in one read transaction."""
        if not self._opened or self._readers is None:
            raise StoreError("store is closed" if self._closing else "store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn, kind, snapshot)

    def _run_read(self, fn: Callable[[sqlite3.Connection], Any], kind: str | None, snapshot: bool) -> Any:
        conn = self._reader_conn()
        t0 = time.perf_counter()
        try:
            if snapshot:
                conn.execute("BEGIN")
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    logger.warning("ending a read transaction failed", exc_info=True)
            self._stats.read(kind, (time.perf_counter() - t0) * 1000.0)

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        def fn(conn: sqlite3.Connection) -> AgentRow | None:
            return _get_agent(conn, agent_id)

        result: AgentRow | None = await self._read(fn, "load")
        return result

    async def load_agent_snapshot(self, agent_id: str) -> AgentSnapshot | None:
        """Row, messages, todos, unfinished turns with their tool calls, pending approvals and
        the last RECENT_EVENTS events, from one read transaction."""
        from .base import AgentSnapshot

        def fn(conn: sqlite3.Connection) -> AgentSnapshot | None:
            row = _get_agent(conn, agent_id)
            if row is None:
                return None
            messages = [_message_from(r) for r in conn.execute(
                "SELECT agent_id, idx, role, content_json, turn_id, created_at FROM messages "
                "WHERE agent_id = ? ORDER BY idx", (agent_id,))]
            turns = [_turn_from(r) for r in conn.execute(
                f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = ? AND status IN ('queued', 'running') "
                "ORDER BY ord", (agent_id,))]
            open_ids = {t.turn_id for t in turns}
            calls = [_tool_from(r) for r in conn.execute(
                f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? AND turn_id IN "
                "(SELECT turn_id FROM turns WHERE agent_id = ? AND status IN ('queued', 'running')) ORDER BY rowid",
                (agent_id, agent_id))] if open_ids else []
            approvals = [_approval_from(r) for r in conn.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? AND status = 'pending' ORDER BY rowid",
                (agent_id,))]
            events = [EventRow(agent_id, *r) for r in conn.execute(
                "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = ? AND seq > ? ORDER BY seq",
                (agent_id, max(0, row.last_seq - RECENT_EVENTS)))]
            return AgentSnapshot(row, messages, _todos(conn, agent_id), turns, calls, approvals, events)

        result: AgentSnapshot | None = await self._read(fn, "load", snapshot=True)
        return result

    async def export_agent(self, agent_id: str) -> AgentDump | None:
        def fn(conn: sqlite3.Connection) -> AgentDump | None:
            row = _get_agent(conn, agent_id)
            if row is None:
                return None
            q = (agent_id,)
            return AgentDump(
                row=row,
                events=[EventRow(agent_id, *r) for r in conn.execute(
                    "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = ? ORDER BY seq", q)],
                messages=[_message_from(r) for r in conn.execute(
                    "SELECT agent_id, idx, role, content_json, turn_id, created_at FROM messages "
                    "WHERE agent_id = ? ORDER BY idx", q)],
                tool_calls=[_tool_from(r) for r in conn.execute(
                    f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? ORDER BY rowid", q)],
                tool_audit=[ToolAuditRow(*r) for r in conn.execute(
                    "SELECT agent_id, call_id, ts, state, note FROM tool_audit WHERE agent_id = ? ORDER BY id", q)],
                approvals=[_approval_from(r) for r in conn.execute(
                    f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? ORDER BY rowid", q)],
                turns=[_turn_from(r) for r in conn.execute(
                    f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = ? ORDER BY ord", q)],
                todos=_todos(conn, agent_id),
            )

        result: AgentDump | None = await self._read(fn, "load", snapshot=True)
        return result

    async def list_agents(
        self, prefix: str | None, limit: int, cursor: str | None
    ) -> tuple[list[AgentRow], str | None]:
        """Ordered by agent_id; the returned cursor is the last id when more rows follow, else None."""
        if limit <= 0:
            return [], None
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("a.agent_id > ?")
            params.append(cursor)
        if prefix:
            where.append("a.agent_id >= ? AND substr(a.agent_id, 1, ?) = ?")
            params += [prefix, len(prefix), prefix]
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                where.append("a.agent_id < ?")
                params.append(upper)
        sql = f"SELECT {_AGENT_SELECT} FROM {_AGENT_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.agent_id LIMIT ?"
        params.append(limit + 1)

        def fn(conn: sqlite3.Connection) -> tuple[list[AgentRow], str | None]:
            rows = [_agent_from(r) for r in conn.execute(sql, params).fetchall()]
            if len(rows) > limit:
                rows = rows[:limit]
                return rows, rows[-1].agent_id
            return rows, None

        result: tuple[list[AgentRow], str | None] = await self._read(fn, "query")
        return result

    async def load_messages(
        self, agent_id: str, limit: int | None = None, before: int | None = None
    ) -> tuple[list[MessageRow], int]:
        """Messages with index < before (all when None), the last `limit` of them,
        in index order; and the agent's total message count (from one snapshot)."""

        def fn(conn: sqlite3.Connection) -> tuple[list[MessageRow], int]:
            rows = conn.execute(
                "SELECT agent_id, idx, role, content_json, turn_id, created_at FROM messages "
                "WHERE agent_id = ? AND idx < ? ORDER BY idx DESC LIMIT ?",
                (agent_id, before if before is not None else 1 << 62, limit if limit is not None else -1),
            ).fetchall()
            rows.reverse()
            total = conn.execute("SELECT COUNT(*) FROM messages WHERE agent_id = ?", (agent_id,)).fetchone()[0]
            return [_message_from(r) for r in rows], int(total)

        result: tuple[list[MessageRow], int] = await self._read(fn, "load", snapshot=True)
        return result

    async def read_events(
        self, agent_id: str, since: int = 0, limit: int | None = None, channels: list[str] | None = None
    ) -> list[EventRow]:
        """Events with seq > since in seq order, at most `limit`, of `channels` (all when None)."""
        if channels is not None and not channels:
            return []
        # agent_id is not selected: it is known, and skipping 10,000 string copies matters here.
        sql = "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = ? AND seq > ?"
        params: list[Any] = [agent_id, since]
        if channels is not None:
            sql += f" AND channel IN ({','.join('?' * len(channels))})"
            params += channels
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit if limit is not None else -1)

        def fn(conn: sqlite3.Connection) -> list[EventRow]:
            return [EventRow(agent_id, *r) for r in conn.execute(sql, params).fetchall()]

        result: list[EventRow] = await self._read(fn, "query")
        return result

    async def read_event_json(self, agent_id: str, since: int = 0) -> list[tuple[int, str]]:
        """`(seq, envelope JSON)` after `since`: all a replay sends, without building rows."""
        sql = "SELECT seq, json FROM events WHERE agent_id = ? AND seq > ? ORDER BY seq"

        def fn(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(sql, (agent_id, since)).fetchall()

        result: list[tuple[int, str]] = await self._read(fn, "query")
        return result

    async def load_tool_calls(self, agent_id: str, turn_id: str | None = None) -> list[ToolCallRow]:
        """In creation order (an upsert keeps the call's position)."""
        if turn_id is None:
            sql, params = f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? ORDER BY rowid", (agent_id,)
        else:
            sql = f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? AND turn_id = ? ORDER BY rowid"
            params = (agent_id, turn_id)

        def fn(conn: sqlite3.Connection) -> list[ToolCallRow]:
            return [_tool_from(r) for r in conn.execute(sql, params).fetchall()]

        result: list[ToolCallRow] = await self._read(fn, "load")
        return result

    async def load_approvals(self, agent_id: str, status: str | None = None) -> list[ApprovalRow]:
        """In creation order, optionally only those with `status`."""
        if status is None:
            sql, params = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? ORDER BY rowid", (agent_id,)
        else:
            sql = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? AND status = ? ORDER BY rowid"
            params = (agent_id, status)

        def fn(conn: sqlite3.Connection) -> list[ApprovalRow]:
            return [_approval_from(r) for r in conn.execute(sql, params).fetchall()]

        result: list[ApprovalRow] = await self._read(fn, "load")
        return result

    async def load_turns(self, agent_id: str, statuses: list[str] | None = None) -> list[TurnRow]:
        """In creation order (first `put_turn` of each turn), optionally filtered by status."""
        if statuses is not None and not statuses:
            return []
        sql = f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = ?"
        params: list[Any] = [agent_id]
        if statuses is not None:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            params += statuses
        sql += " ORDER BY ord"

        def fn(conn: sqlite3.Connection) -> list[TurnRow]:
            return [_turn_from(r) for r in conn.execute(sql, params).fetchall()]

        result: list[TurnRow] = await self._read(fn, "load")
        return result

    async def get_todos(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's todos, [] when none were set."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return _todos(conn, agent_id)

        result: list[dict[str, Any]] = await self._read(fn, "load")
        return result

    # -------------------------------------------------------- observability

    async def check_health(self) -> StoreHealth:
        """`SELECT 1` latency on a reader connection and a write test in the db's directory.

        Never raises for a sick database: that is what it reports. Not counted
        in the metrics.
        """
        directory = os.path.dirname(self.path) or "."

        def probe() -> tuple[bool, float, bool, str | None]:
            connected = False
            latency_ms = 0.0
            error = None
            try:
                conn = self._reader_conn()
                t0 = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                latency_ms = (time.perf_counter() - t0) * 1000.0
                connected = True
            except sqlite3.Error as exc:
                error = str(exc)
                logger.warning("store health: database probe failed", exc_info=True)
            writable = False
            try:
                fd, tmp = tempfile.mkstemp(prefix=".kode-health-", dir=directory)
                os.close(fd)
                os.remove(tmp)
                writable = True
            except OSError:
                logger.warning("store health: %s is not writable", directory, exc_info=True)
            return connected, latency_ms, writable, error

        if self._readers is None:
            connected, latency_ms, writable, error = False, 0.0, os.access(directory, os.W_OK), "store is not open"
        else:
            loop = asyncio.get_running_loop()
            connected, latency_ms, writable, error = await loop.run_in_executor(self._readers, probe)
        return health_model(connected, latency_ms, writable, error)

    async def consistency_view(self, agent_id: str) -> ConsistencyView | None:
        """The rows the consistency rules need, from one read transaction (counted as a query)."""

        def fn(conn: sqlite3.Connection) -> ConsistencyView | None:
            agent = conn.execute(
                "SELECT last_seq, message_count FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if agent is None:
                return None
            q = (agent_id,)
            return ConsistencyView(
                last_seq=agent[0],
                message_count=agent[1],
                seqs=[r[0] for r in conn.execute("SELECT seq FROM events WHERE agent_id = ? ORDER BY seq", q)],
                messages=[(r[0], r[1], r[2], r[3]) for r in conn.execute(
                    "SELECT idx, role, content_json, turn_id FROM messages WHERE agent_id = ? ORDER BY idx", q)],
                tool_states=dict(conn.execute("SELECT call_id, state FROM tool_calls WHERE agent_id = ?", q).fetchall()),
                open_turns={r[0] for r in conn.execute(
                    "SELECT turn_id FROM turns WHERE agent_id = ? AND status IN ('running', 'queued')", q)},
                pending_approvals=[(r[0], r[1]) for r in conn.execute(
                    "SELECT approval_id, call_id FROM approvals WHERE agent_id = ? AND status = 'pending' "
                    "ORDER BY rowid", q)],
            )

        result: ConsistencyView | None = await self._read(fn, "query", snapshot=True)
        return result

    async def collect_metrics(self) -> StoreMetrics:
        """Counters since open, latency over write batches and counted reads, storage totals.

        saves = write items committed (barriers and deletes excluded), loads =
        get_agent/load_*/get_todos calls, queries = read_events/list_agents/
        consistency calls, deletes = delete_agent calls committed.
        """

        def fn(conn: sqlite3.Connection) -> tuple[int, int, int]:
            agents = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
            messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            return int(agents), int(messages), int(pages) * int(page_size)

        total_agents, total_messages, size = await self._read(fn, None, snapshot=True)
        return metrics_model(self._stats, total_agents, total_messages, size)


# ------------------------------------------------------------------ helpers

_UPSERT_TOOL = (
    f"INSERT INTO tool_calls ({TOOL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(agent_id, call_id) DO UPDATE SET turn_id = excluded.turn_id, "
    "step = excluded.step, name = excluded.name, input_json = excluded.input_json, "
    "state = excluded.state, result_json = excluded.result_json, error = excluded.error, "
    "started_at = excluded.started_at, duration_ms = excluded.duration_ms, "
    "updated_at = excluded.updated_at"
)
_UPSERT_APPROVAL = (
    f"INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(approval_id) DO UPDATE SET agent_id = excluded.agent_id, "
    "call_id = excluded.call_id, turn_id = excluded.turn_id, status = excluded.status, "
    "request_json = excluded.request_json, created_at = excluded.created_at, "
    "decided_by = excluded.decided_by, note = excluded.note, decided_at = excluded.decided_at"
)
_UPSERT_TURN = (
    f"INSERT INTO turns ({TURN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT(agent_id, turn_id) DO UPDATE SET message_index = excluded.message_index, "
    "status = excluded.status, created_at = excluded.created_at, step = excluded.step, "
    "reason = excluded.reason, message_json = excluded.message_json"
)
_UPSERT_TODOS = (
    "INSERT INTO todos (agent_id, todos_json) VALUES (?, ?) "
    "ON CONFLICT(agent_id) DO UPDATE SET todos_json = excluded.todos_json"
)


def _tool_params(row: ToolCallRow) -> tuple[Any, ...]:
    return (
        row.agent_id, row.call_id, row.turn_id, row.step, row.name, dumps(row.input), row.state,
        None if row.result is None else dumps(row.result), row.error, row.started_at,
        row.duration_ms, row.updated_at,
    )


def _approval_params(row: ApprovalRow) -> tuple[Any, ...]:
    return (
        row.agent_id, row.approval_id, row.call_id, row.turn_id, row.status, dumps(row.request),
        row.created_at, row.decided_by, row.note, row.decided_at,
    )


def _turn_params(row: TurnRow) -> tuple[Any, ...]:
    return (row.agent_id, row.turn_id, row.message_index, row.status, row.created_at, row.step, row.reason,
            None if row.message is None else dumps(row.message))


def _get_agent(conn: sqlite3.Connection, agent_id: str) -> AgentRow | None:
    r = conn.execute(f"SELECT {_AGENT_SELECT} FROM {_AGENT_FROM} WHERE a.agent_id = ?", (agent_id,)).fetchone()
    return None if r is None else _agent_from(r)


def _todos(conn: sqlite3.Connection, agent_id: str) -> list[dict[str, Any]]:
    r = conn.execute("SELECT todos_json FROM todos WHERE agent_id = ?", (agent_id,)).fetchone()
    return [] if r is None else list(json.loads(r[0]))


def fork_envelope(text: str, new_id: str) -> str:
    """An event envelope with its `agentId` rewritten for a fork (other keys as they were)."""
    envelope = json.loads(text)
    if isinstance(envelope, dict):
        envelope["agentId"] = new_id
        return dumps(envelope)
    return text


def fork_messages(messages: list[Any], cut_ts: str | None, index: Callable[[Any], int],
                  created: Callable[[Any], str]) -> list[Any]:
    """The leading messages (0, 1, ... up to the first gap) created at or before `cut_ts`."""
    kept = []
    for expected, message in enumerate(messages):
        if cut_ts is None or index(message) != expected or created(message) > cut_ts:
            break
        kept.append(message)
    return kept


def _wrap_error(exc: Exception) -> Exception:
    """Store errors pass through; raw sqlite3 errors become StoreError (cause kept)."""
    if isinstance(exc, sqlite3.Error):
        wrapped = StoreError(f"write failed: {exc}")
        wrapped.__cause__ = exc
        return wrapped
    return exc
