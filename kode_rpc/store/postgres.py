"""PostgreSQL implementation of the `Store` interface (psycopg 3, psycopg_pool).

Imported only when a `postgresql://` / `postgres://` store is made (`url.py`), so a
server on SQLite or JSON never loads the driver.

Why this shape:

* Writes go through the shared group-commit writer (`writer.py`). A batch is
  sent as one pipeline (`BEGIN`, every item's statements, the counter raises)
  on a pooled connection and committed with one more round trip: two network
  hops per batch, however many events it carries. When anything in the batch
  fails, the transaction is rolled back and the batch is re-run item by item,
  each in its own savepoint, so only the failing item fails (the SQLite rule).
* A connection lost before `COMMIT` was sent retries the batch (backoff, up to
  `connectTimeoutMs`); nothing is acknowledged that is not committed. Past
  that, or when the `COMMIT` itself was cut off, the items fail with
  `StoreUnavailable` (retryable). The pool replaces dead connections by itself,
  and is replaced when its reconnection backoff lags a database that is back
  (`_connection`).
* Reads run on a thread pool, each on a pooled connection. A read of several
  tables (`load_agent_snapshot`, `load_messages`, `consistency_view`) is one
  pipelined `REPEATABLE READ READ ONLY` transaction: one round trip.
* Who runs an agent: a session-level advisory lock per running agent, all held
  on ONE dedicated connection per process (never on pooled connections: a
  returned connection would keep them). Locks vanish with that connection, so
  when the process dies (SIGKILL included) another server takes the agent over
  at once. A `leases` row next to each lock names the owner `{pid, host}` for
  `-32012`. After an outage the lock connection is re-opened and every lock
  re-taken before the next write batch; an agent another server took meanwhile
  is reported by `renew_leases` and its writes are refused.
* The schema version lives in `kode_schema(version)`; migrations run under a
  transaction-level advisory lock, so servers starting together do not race.
  Agent ids use the "C" collation: `list_agents` orders by code point, as SQLite.
* The password (URI, `PGPASSWORD` or `~/.pgpass`, all read by libpq) is never
  logged or shown: messages go through `_scrub`, URLs through `mask_url`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import (
    RECENT_EVENTS,
    AgentDump,
    AgentExists,
    AgentRow,
    AgentSnapshot,
    ApprovalRow,
    EventRow,
    LeaseHeld,
    LeaseOwner,
    MessageRow,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    ToolAuditRow,
    ToolCallRow,
    TurnRow,
    check_agent_fields,
)
from .common import (
    AGENT_COLUMNS,
    APPROVAL_COLUMNS,
    EVENT_COLUMNS,
    MESSAGE_COLUMNS,
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
from .consistency import ConsistencyView
from .lease import lease_is_free, pid_alive
from .url import mask_url, url_password
from .writer import KIND_DELETE, BatchCounters, GroupCommitWriter, Result, WriteItem

if TYPE_CHECKING:
    from typing import Unpack

    from ..protocol.system import StoreHealth, StoreMetrics
    from .base import AgentFields

__all__ = ["PostgresStore", "MIGRATIONS", "SCHEMA_VERSION", "lock_key"]

logger = logging.getLogger(__name__)

CONNECTIVITY = (psycopg.OperationalError, psycopg.InterfaceError)
"""Errors that mean "the database is not there right now" (PoolTimeout is an OperationalError)."""

_MIGRATION_LOCK = 0x6B6F6465_00000001  # "kode" + 1: serializes schema migrations
DYING_HOLDER_WAIT_S = 3.0
"""How long to wait for the lock of a holder whose process is gone on this host (its backend
notices the closed connection within milliseconds)."""
HOLDER_ROW_WAIT_S = 1.0
"""How long to wait for the row of a lock holder that took the lock a moment ago (it commits the
row with the statement that took the lock)."""
MAX_BATCH = 256

# ---------------------------------------------------------------------- schema

_C = 'COLLATE "C"'


def _migration_1(conn: psycopg.Connection[Any]) -> None:
    """Create every table of schema version 1 (mirrors SQLite's, plus `ord` columns for creation order)."""
    for statement in (
        f"""CREATE TABLE agents (
            agent_id text {_C} PRIMARY KEY,
            template_id text NOT NULL,
            created_at text NOT NULL,
            updated_at text NOT NULL,
            state text NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0,
            message_count bigint NOT NULL DEFAULT 0,
            config_json text NOT NULL DEFAULT '{{}}',
            runtime_json text NOT NULL DEFAULT '{{}}',
            metadata_json text NOT NULL DEFAULT '{{}}'
        )""",
        f"""CREATE TABLE events (
            agent_id text {_C} NOT NULL,
            seq bigint NOT NULL,
            ts text NOT NULL,
            channel text NOT NULL,
            turn_id text,
            type text NOT NULL,
            json text NOT NULL,
            PRIMARY KEY (agent_id, seq)
        )""",
        f"""CREATE TABLE messages (
            agent_id text {_C} NOT NULL,
            idx bigint NOT NULL,
            role text NOT NULL,
            content_json text NOT NULL,
            turn_id text,
            created_at text NOT NULL,
            PRIMARY KEY (agent_id, idx)
        )""",
        f"""CREATE TABLE tool_calls (
            ord bigserial NOT NULL,
            agent_id text {_C} NOT NULL,
            call_id text NOT NULL,
            turn_id text NOT NULL,
            step integer NOT NULL,
            name text NOT NULL,
            input_json text NOT NULL,
            state text NOT NULL,
            result_json text,
            error text,
            started_at text,
            duration_ms bigint,
            updated_at text NOT NULL,
            PRIMARY KEY (agent_id, call_id)
        )""",
        "CREATE INDEX tool_calls_by_turn ON tool_calls (agent_id, turn_id)",
        f"""CREATE TABLE tool_audit (
            id bigserial PRIMARY KEY,
            agent_id text {_C} NOT NULL,
            call_id text NOT NULL,
            ts text NOT NULL,
            state text NOT NULL,
            note text
        )""",
        "CREATE INDEX tool_audit_by_call ON tool_audit (agent_id, call_id)",
        f"""CREATE TABLE approvals (
            ord bigserial NOT NULL,
            approval_id text PRIMARY KEY,
            agent_id text {_C} NOT NULL,
            call_id text NOT NULL,
            turn_id text NOT NULL,
            status text NOT NULL,
            request_json text NOT NULL,
            created_at text NOT NULL,
            decided_by text,
            note text,
            decided_at text
        )""",
        "CREATE INDEX approvals_by_agent ON approvals (agent_id, status)",
        f"""CREATE TABLE turns (
            ord bigserial NOT NULL,
            agent_id text {_C} NOT NULL,
            turn_id text NOT NULL,
            message_index bigint NOT NULL,
            status text NOT NULL,
            created_at text NOT NULL,
            step integer NOT NULL DEFAULT 0,
            reason text,
            message_json text,
            PRIMARY KEY (agent_id, turn_id)
        )""",
        "CREATE INDEX turns_by_status ON turns (agent_id, status)",
        f"""CREATE TABLE todos (
            agent_id text {_C} PRIMARY KEY,
            todos_json text NOT NULL
        )""",
        # Who holds each agent's advisory lock (the lock itself is the truth).
        f"""CREATE TABLE leases (
            agent_id text {_C} PRIMARY KEY,
            pid integer NOT NULL,
            host text NOT NULL,
            token text NOT NULL,
            taken_at text NOT NULL
        )""",
    ):
        conn.execute(statement)


MIGRATIONS: list[Callable[[psycopg.Connection[Any]], None]] = [_migration_1]
"""Ordered migrations; migration i (0-based) brings the schema to version i + 1.

Append new ones, never edit or reorder the published ones."""

SCHEMA_VERSION = len(MIGRATIONS)

# ------------------------------------------------------------------ row coding


_INSERT_AGENT = f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) " \
                "ON CONFLICT (agent_id) DO NOTHING RETURNING 1"
_INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)"
_INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s)"
_INSERT_AUDIT = "INSERT INTO tool_audit (agent_id, call_id, ts, state, note) VALUES (%s,%s,%s,%s,%s)"
_UPSERT_TOOL = (
    f"INSERT INTO tool_calls ({TOOL_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (agent_id, call_id) DO UPDATE SET turn_id = EXCLUDED.turn_id, step = EXCLUDED.step, "
    "name = EXCLUDED.name, input_json = EXCLUDED.input_json, state = EXCLUDED.state, "
    "result_json = EXCLUDED.result_json, error = EXCLUDED.error, started_at = EXCLUDED.started_at, "
    "duration_ms = EXCLUDED.duration_ms, updated_at = EXCLUDED.updated_at"
)
_UPSERT_APPROVAL = (
    f"INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (approval_id) DO UPDATE SET agent_id = EXCLUDED.agent_id, call_id = EXCLUDED.call_id, "
    "turn_id = EXCLUDED.turn_id, status = EXCLUDED.status, request_json = EXCLUDED.request_json, "
    "created_at = EXCLUDED.created_at, decided_by = EXCLUDED.decided_by, note = EXCLUDED.note, "
    "decided_at = EXCLUDED.decided_at"
)
_UPSERT_TURN = (
    f"INSERT INTO turns ({TURN_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (agent_id, turn_id) DO UPDATE SET message_index = EXCLUDED.message_index, "
    "status = EXCLUDED.status, created_at = EXCLUDED.created_at, step = EXCLUDED.step, "
    "reason = EXCLUDED.reason, message_json = EXCLUDED.message_json"
)
_UPSERT_TODOS = (
    "INSERT INTO todos (agent_id, todos_json) VALUES (%s, %s) "
    "ON CONFLICT (agent_id) DO UPDATE SET todos_json = EXCLUDED.todos_json"
)
_OPEN_TURNS = "('queued', 'running')"


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; JSON columns never do (json escapes it), free text might."""
    return None if value is None else value.replace("\x00", "\ufffd")


def _agent_params(row: AgentRow) -> tuple[Any, ...]:
    return (row.agent_id, row.template_id, row.created_at, row.updated_at, row.state, int(row.last_seq),
            int(row.message_count), dumps(row.config), dumps(row.runtime), dumps(row.metadata))


def _agent_from(r: tuple[Any, ...]) -> AgentRow:
    return AgentRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), json.loads(r[7]), json.loads(r[8]),
                    json.loads(r[9]))


def _event_params(r: EventRow) -> tuple[Any, ...]:
    return (r.agent_id, r.seq, r.ts, r.channel, r.turn_id, r.type, r.json)


def _message_params(r: MessageRow) -> tuple[Any, ...]:
    return (r.agent_id, r.index, r.role, dumps(r.content), r.turn_id, r.created_at)


def _message_from(r: tuple[Any, ...]) -> MessageRow:
    return MessageRow(r[0], int(r[1]), r[2], json.loads(r[3]), r[4], r[5])


def _tool_params(row: ToolCallRow) -> tuple[Any, ...]:
    return (row.agent_id, row.call_id, row.turn_id, row.step, row.name, dumps(row.input), row.state,
            None if row.result is None else dumps(row.result), _text(row.error), row.started_at,
            row.duration_ms, row.updated_at)


def _tool_from(r: tuple[Any, ...]) -> ToolCallRow:
    return ToolCallRow(r[0], r[1], r[2], int(r[3]), r[4], json.loads(r[5]), r[6],
                       None if r[7] is None else json.loads(r[7]), r[8], r[9],
                       None if r[10] is None else int(r[10]), r[11])


def _approval_params(row: ApprovalRow) -> tuple[Any, ...]:
    return (row.agent_id, row.approval_id, row.call_id, row.turn_id, row.status, dumps(row.request),
            row.created_at, _text(row.decided_by), _text(row.note), row.decided_at)


def _approval_from(r: tuple[Any, ...]) -> ApprovalRow:
    return ApprovalRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])


def _turn_params(row: TurnRow) -> tuple[Any, ...]:
    return (row.agent_id, row.turn_id, row.message_index, row.status, row.created_at, row.step, row.reason,
            None if row.message is None else dumps(row.message))


def _turn_from(r: tuple[Any, ...]) -> TurnRow:
    return TurnRow(r[0], r[1], int(r[2]), r[3], r[4], int(r[5]), r[6],
                   message=None if r[7] is None else json.loads(r[7]))


def _event_from(agent_id: str, r: tuple[Any, ...]) -> EventRow:
    return EventRow(agent_id, int(r[0]), r[1], r[2], r[3], r[4], r[5])


def lock_key(namespace: str, agent_id: str) -> int:
    """The advisory lock key of an agent: 64 bits of SHA-256 over the schema name and the id
    (two kode-rpc schemas in one database do not block each other)."""
    digest = hashlib.sha256(f"kode-rpc\0{namespace}\0{agent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Retry(Exception):
    """The connection was lost before COMMIT was sent: the batch may run again."""


class _Ambiguous(Exception):
    """The connection was lost while COMMIT was in flight: its outcome is unknown."""


# ------------------------------------------------------------------ the store


class PostgresStore(WriterStore):
    """The store on a PostgreSQL database; see the module docstring for the design."""

    name = "postgres"

    def __init__(self, conninfo: str, *, display_url: str | None = None, pool_max: int = 20,
                 idle_timeout_ms: int = 30000, connect_timeout_ms: int = 5000, file_dir: str | None = None,
                 offline_ok: bool = False) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.display_url = display_url or mask_url(conninfo)
        self.pool_max = max(1, pool_max)
        self.idle_timeout_s = max(idle_timeout_ms / 1000.0, 1.0)
        self.connect_timeout_s = max(connect_timeout_ms / 1000.0, 0.5)
        self.file_dir = file_dir
        self.offline_ok = offline_ok
        self._password = url_password(conninfo) or os.environ.get("PGPASSWORD") or ""
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"bad PostgreSQL URL {self.display_url}: {self._scrub(str(exc))}") from None
        self._password = str(params.get("password") or self._password)
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(2, int(round(self.connect_timeout_s)))
        if "application_name" not in params:
            self._kwargs["application_name"] = "kode-rpc"
        self._pool: ConnectionPool[Any] | None = None
        self._revive_lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._namespace = ""
        self._counters = BatchCounters()
        self._outage = False
        """Set when a connection was lost; the writer re-checks the lock connection before its next batch."""
        # Advisory locks: all on one connection, all touched on one thread.
        self._lock_exec: ThreadPoolExecutor | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._held: dict[str, tuple[LeaseOwner, float]] = {}
        """agent_id -> (owner, in-process expiry) of the locks this process holds."""
        self._lost: dict[str, tuple[int, str]] = {}
        """Agents whose lock another process took while ours was gone -> that owner's (pid, host)."""

    # ------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Open the pool, create/migrate the schema, start the writer.

        Unreachable database: StoreUnavailable, unless `offline_ok` (then the
        schema is checked on the first successful connection). A newer schema:
        SchemaTooNew, always.
        """
        if self._closing:
            raise StoreError("store is closed")
        if self._opened:
            return
        self._pool = self._new_pool()
        self._lock_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kode-store-locks")
        writer: GroupCommitWriter[ConnectionPool[Any]] = GroupCommitWriter(
            "kode-store-writer", self._writer_connect, lambda pool, items: self._run_batch(pool, items),
            lambda pool: None, self._closed_error, MAX_BATCH)
        try:
            await writer.start()
        except BaseException:
            await self._close_backend()
            raise
        self._writer = writer
        self._readers = ThreadPoolExecutor(max_workers=self.pool_max, thread_name_prefix="kode-store-read")
        self._opened = True

    async def _close_backend(self) -> None:
        if self._readers is not None:
            readers, self._readers = self._readers, None
            await asyncio.to_thread(readers.shutdown, True)
        if self._lock_exec is not None:
            lock_exec, self._lock_exec = self._lock_exec, None
            await asyncio.wrap_future(lock_exec.submit(self._close_lock_conn))
            await asyncio.to_thread(lock_exec.shutdown, True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.close, 5.0)

    # --------------------------------------------------------- connections

    def _new_pool(self) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            self.conninfo, kwargs=self._kwargs, min_size=1, max_size=self.pool_max, open=False,
            timeout=self.connect_timeout_s, max_idle=self.idle_timeout_s, reconnect_timeout=3600.0,
            name="kode-store",
        )
        pool.open(wait=False)
        return pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (as `ConnectionPool.connection()`), reviving the pool after an outage.

        psycopg_pool retries lost connections with a backoff that doubles without bound, so
        after a long outage its next attempt may be minutes away although the database is
        back. When no connection comes within `connectTimeoutMs` and the pool is not simply
        busy, one direct connection decides: the database is away (the caller answers
        store_unavailable), or it is back and a fresh pool replaces the stuck one.
        """
        pool = self._pool
        if pool is None:
            raise self._closed_error()
        try:
            conn = pool.getconn()
        except PoolTimeout:
            if pool.get_stats().get("pool_size", 0) >= self.pool_max:
                raise  # every connection is busy: not an outage
            pool = self._revive(pool)
            conn = pool.getconn()
        try:
            with conn:
                yield conn
        finally:
            pool.putconn(conn)

    def _revive(self, stuck: ConnectionPool[Any]) -> ConnectionPool[Any]:
        """A pool that can connect now (raises a connectivity error while the database is away)."""
        with self._revive_lock:
            current = self._pool
            if current is None:
                raise self._closed_error()
            if current is not stuck:
                return current  # another thread revived it already
            psycopg.connect(self.conninfo, **self._kwargs).close()  # raises while the database is away
            fresh = self._new_pool()
            self._pool = fresh
            logger.info("the database is back; replaced the connection pool")
        threading.Thread(target=stuck.close, args=(1.0,), name="kode-store-old-pool", daemon=True).start()
        return fresh

    def _writer_connect(self) -> ConnectionPool[Any]:
        """Writer thread: the first connection and the schema (or, offline_ok, later)."""
        assert self._pool is not None
        try:
            with self._connection() as conn:
                self._ensure_schema(conn)
        except SchemaTooNew:
            raise
        except CONNECTIVITY as exc:
            message = f"cannot reach the database {self.display_url}: {self._describe(exc)}"
            if not self.offline_ok:
                raise StoreUnavailable(message) from None
            logger.warning("%s; will keep trying", message)
        return self._pool

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create or migrate the schema once per store (any thread); SchemaTooNew for a newer one."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            target = len(MIGRATIONS)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                exists = conn.execute("SELECT to_regclass('kode_schema') IS NOT NULL").fetchone()
                if not (exists and exists[0]):
                    conn.execute("CREATE TABLE kode_schema (version integer NOT NULL)")
                    conn.execute("INSERT INTO kode_schema (version) VALUES (0)")
                row = conn.execute("SELECT max(version) FROM kode_schema").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                if version > target:
                    raise SchemaTooNew(version, target)
                for step in range(version, target):
                    logger.info("migrating store schema from version %d to %d", step, step + 1)
                    MIGRATIONS[step](conn)
                if version < target:
                    conn.execute("UPDATE kode_schema SET version = %s", (target,))
                ns = conn.execute("SELECT current_schema()").fetchone()
            self._namespace = str(ns[0]) if ns else ""
            self.schema_version = target
            self._schema_ready = True
            logger.debug("store opened at %s (schema version %d)", self.display_url, target)

    # ------------------------------------------------------------- errors

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()
        return self._scrub(text[0] if text else type(exc).__name__)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        self._outage = True
        return StoreUnavailable(f"database unavailable: {self._describe(exc)}")

    # --------------------------------------------------------------- writer

    def _run_batch(self, pool: ConnectionPool[Any], items: list[WriteItem]) -> list[Result]:
        """Commit `items` as one transaction (see the module docstring); one outcome per item."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.connect_timeout_s
        delay = 0.05
        while True:
            try:
                results = self._attempt(pool, items)
                break
            except _Retry as retry:
                cause = retry.__cause__ or retry
                self._outage = True
                if time.monotonic() + delay > deadline or self._closing:
                    logger.error("store write batch of %d items failed: database unavailable", len(items))
                    return [(item.fut, None, self._unavailable(cause)) for item in items]
                logger.warning("store write batch: database unavailable (%s); retrying", self._describe(cause))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except _Ambiguous as ambiguous:
                cause = ambiguous.__cause__ or ambiguous
                logger.error("store write batch of %d items: connection lost during COMMIT", len(items))
                return [(item.fut, None, self._unavailable(cause)) for item in items]
            except SchemaTooNew as exc:
                return [(item.fut, None, exc) for item in items]
            except Exception as exc:
                logger.error("store write batch of %d items failed: %s", len(items), self._describe(exc))
                return [(item.fut, None, StoreError(f"write failed: {self._describe(exc)}")) for item in items]
        self._stats.batch(items, results, (time.perf_counter() - t0) * 1000.0)
        return results

    def _attempt(self, pool: ConnectionPool[Any], items: list[WriteItem]) -> list[Result]:
        try:
            with self._connection() as conn:
                self._ensure_schema(conn)
                if self._outage and self._held:
                    try:
                        self._on_lock_thread(self._relock)  # re-take our locks before writing
                    except StoreUnavailable as exc:
                        raise _Retry() from exc
                self._outage = False
                try:
                    results = self._fast(conn, items)
                except CONNECTIVITY:
                    raise
                except Exception as exc:
                    logger.debug("batch failed as a whole (%s); running its items one by one", exc)
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.execute("ROLLBACK")
                    results = self._slow(conn, items)
                try:
                    conn.execute("COMMIT")
                except CONNECTIVITY as exc:
                    raise _Ambiguous() from exc
                return results
        except (_Retry, _Ambiguous, SchemaTooNew):
            raise
        except CONNECTIVITY as exc:
            raise _Retry() from exc

    def _refused(self, item: WriteItem) -> Result | None:
        """A write of an agent another process took over meanwhile is refused (never written)."""
        if item.agent_id is not None and item.agent_id in self._lost:
            pid, host = self._lost[item.agent_id]
            return (item.fut, None, LeaseHeld(item.agent_id, pid, host))
        return None

    def _fast(self, conn: psycopg.Connection[Any], items: list[WriteItem]) -> list[Result]:
        """The whole batch in one pipeline, no savepoints; raises if anything fails."""
        self._counters.clear()
        results: list[Result] = []
        with conn.pipeline():
            conn.execute("BEGIN")
            for item in items:
                refused = self._refused(item)
                if refused is not None:
                    results.append(refused)
                    continue
                assert item.fn is not None
                results.append((item.fut, item.fn(conn), None))
            self._flush_counters(conn)
        return results

    def _slow(self, conn: psycopg.Connection[Any], items: list[WriteItem]) -> list[Result]:
        """Item by item, each in a savepoint: only the failing ones fail."""
        self._counters.clear()
        results: list[Result] = []
        conn.execute("BEGIN")
        for item in items:
            refused = self._refused(item)
            if refused is not None:
                results.append(refused)
                continue
            assert item.fn is not None
            seq, msgs = dict(self._counters.seq), dict(self._counters.msgs)
            conn.execute("SAVEPOINT item")
            try:
                value = item.fn(conn)
            except CONNECTIVITY:
                raise
            except Exception as exc:
                conn.execute("ROLLBACK TO SAVEPOINT item")
                conn.execute("RELEASE SAVEPOINT item")
                self._counters.seq, self._counters.msgs = seq, msgs
                results.append((item.fut, None, self._wrap(exc)))
            else:
                conn.execute("RELEASE SAVEPOINT item")
                results.append((item.fut, value, None))
        self._flush_counters(conn)
        return results

    def _flush_counters(self, conn: psycopg.Connection[Any]) -> None:
        counters = self._counters
        with conn.cursor() as cur:
            if counters.seq:
                cur.executemany("UPDATE agents SET last_seq = %s WHERE agent_id = %s AND last_seq < %s",
                                [(v, k, v) for k, v in counters.seq.items()])
            if counters.msgs:
                cur.executemany("UPDATE agents SET message_count = %s WHERE agent_id = %s AND message_count < %s",
                                [(v, k, v) for k, v in counters.msgs.items()])

    def _wrap(self, exc: Exception) -> Exception:
        if isinstance(exc, psycopg.Error):
            wrapped = StoreError(f"write failed: {self._describe(exc)}")
            wrapped.__cause__ = exc
            return wrapped
        return exc

    # --------------------------------------------------------------- writes

    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        params = _agent_params(row)
        agent_id = row.agent_id

        def op(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(_INSERT_AGENT, params).fetchone() is None:
                raise AgentExists(agent_id)

        return self._enqueue(op, agent_id=agent_id)

    def update_agent(self, agent_id: str, **fields: Unpack[AgentFields]) -> asyncio.Future[None]:
        """Update some agent columns; unknown keys raise ValueError right here; a missing agent is a no-op."""
        check_agent_fields(dict(fields))
        sets: list[str] = []
        params: list[Any] = []
        for key, value in fields.items():
            column, encode = UPDATE_FIELDS[key]
            sets.append(f"{column} = %s")
            params.append(dumps(value) if encode else value)
        params.append(agent_id)
        sql = f"UPDATE agents SET {', '.join(sets)} WHERE agent_id = %s" if sets else None

        def op(conn: psycopg.Connection[Any]) -> None:
            if sql is not None:
                conn.execute(sql, params)

        return self._enqueue(op, agent_id=agent_id)

    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        def op(conn: psycopg.Connection[Any]) -> bool:
            existed = conn.execute("DELETE FROM agents WHERE agent_id = %s RETURNING 1", (agent_id,)).fetchone()
            for table in ("events", "messages", "tool_calls", "tool_audit", "approvals", "turns", "todos", "leases"):
                conn.execute(f"DELETE FROM {table} WHERE agent_id = %s", (agent_id,))
            return existed is not None

        return self._enqueue(op, KIND_DELETE, agent_id)

    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]:
        params = [_event_params(r) for r in rows]
        highest: dict[str, int] = {}
        for r in rows:
            if r.seq > highest.get(r.agent_id, 0):
                highest[r.agent_id] = r.seq

        def op(conn: psycopg.Connection[Any]) -> None:
            if params:
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_EVENT, params)
            for aid, seq in highest.items():
                BatchCounters.raise_(self._counters.seq, aid, seq)

        return self._enqueue(op, agent_id=rows[0].agent_id if len(highest) == 1 else None)

    def append_message(self, row: MessageRow) -> asyncio.Future[None]:
        params = _message_params(row)
        count = row.index + 1
        agent_id = row.agent_id

        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_INSERT_MESSAGE, params)
            BatchCounters.raise_(self._counters.msgs, agent_id, count)

        return self._enqueue(op, agent_id=agent_id)

    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        params = _tool_params(row)
        audit = (row.agent_id, row.call_id, row.updated_at or utc_now_iso(), row.state, _text(note))

        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_UPSERT_TOOL, params)
            conn.execute(_INSERT_AUDIT, audit)

        return self._enqueue(op, agent_id=row.agent_id)

    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]:
        params = _approval_params(row)
        return self._enqueue(lambda conn: conn.execute(_UPSERT_APPROVAL, params) and None, agent_id=row.agent_id)

    def put_turn(self, row: TurnRow) -> asyncio.Future[None]:
        params = _turn_params(row)
        return self._enqueue(lambda conn: conn.execute(_UPSERT_TURN, params) and None, agent_id=row.agent_id)

    def set_todos(self, agent_id: str, todos: list[dict[str, Any]]) -> asyncio.Future[None]:
        params = (agent_id, dumps(todos))
        return self._enqueue(lambda conn: conn.execute(_UPSERT_TODOS, params) and None, agent_id=agent_id)

    def fork_agent(self, source_id: str, row: AgentRow, at_seq: int | None) -> asyncio.Future[None]:
        """As `SQLiteStore.fork_agent` (same rules, same result)."""
        from .sqlite import fork_envelope, fork_messages

        params = _agent_params(row)
        new_id = row.agent_id

        def op(conn: psycopg.Connection[Any]) -> None:
            if conn.execute("SELECT 1 FROM agents WHERE agent_id = %s", (source_id,)).fetchone() is None:
                raise StoreError(f"no such agent: {source_id}")
            if conn.execute(_INSERT_AGENT, params).fetchone() is None:
                raise AgentExists(new_id)
            sql = "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = %s"
            args: tuple[Any, ...] = (source_id,)
            if at_seq is not None:
                sql += " AND seq <= %s"
                args = (source_id, at_seq)
            events = conn.execute(sql + " ORDER BY seq", args).fetchall()
            copied = [(new_id, seq, ts, channel, turn_id, type_, fork_envelope(text, new_id))
                      for seq, ts, channel, turn_id, type_, text in events]
            last_seq = int(events[-1][0]) if events else 0
            messages = conn.execute(
                "SELECT idx, role, content_json, turn_id, created_at FROM messages WHERE agent_id = %s ORDER BY idx",
                (source_id,)).fetchall()
            if at_seq is not None:
                messages = fork_messages(messages, events[-1][1] if events else None, lambda m: int(m[0]),
                                         lambda m: m[4])
            with conn.cursor() as cur:
                if copied:
                    cur.executemany(_INSERT_EVENT, copied)
                if messages:
                    cur.executemany(_INSERT_MESSAGE, [(new_id, *m) for m in messages])
            conn.execute("INSERT INTO todos (agent_id, todos_json) SELECT %s, todos_json FROM todos "
                         "WHERE agent_id = %s", (new_id, source_id))
            conn.execute("UPDATE agents SET last_seq = %s, message_count = %s WHERE agent_id = %s",
                         (last_seq, len(messages), new_id))

        return self._enqueue(op, agent_id=new_id)

    def import_agent(self, dump: AgentDump) -> asyncio.Future[None]:
        agent_id = dump.row.agent_id
        agent = _agent_params(dump.row)
        batches = [
            (_INSERT_EVENT, [_event_params(r) for r in dump.events]),
            (_INSERT_MESSAGE, [_message_params(r) for r in dump.messages]),
            (_UPSERT_TOOL, [_tool_params(r) for r in dump.tool_calls]),
            (_INSERT_AUDIT, [(r.agent_id, r.call_id, r.ts, r.state, _text(r.note)) for r in dump.tool_audit]),
            (_UPSERT_APPROVAL, [_approval_params(r) for r in dump.approvals]),
            (_UPSERT_TURN, [_turn_params(r) for r in dump.turns]),
            (_UPSERT_TODOS, [(agent_id, dumps(dump.todos))] if dump.todos else []),
        ]

        def op(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(_INSERT_AGENT, agent).fetchone() is None:
                raise AgentExists(agent_id)
            with conn.cursor() as cur:
                for sql, rows in batches:
                    if rows:
                        cur.executemany(sql, rows)

        return self._enqueue(op, agent_id=agent_id)

    # --------------------------------------------------------------- leases

    def _on_lock_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the lock thread and wait (from another thread)."""
        if self._lock_exec is None:
            raise StoreError("store is closed")
        return self._lock_exec.submit(fn, *args).result()

    def _lock_future(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._check_open()
        assert self._lock_exec is not None
        return asyncio.wrap_future(self._lock_exec.submit(fn, *args))

    def _lock_connection(self) -> psycopg.Connection[Any]:
        """The process's lock connection, (re)opened when needed (lock thread only)."""
        conn = self._lock_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._close_lock_conn()
        try:
            conn = psycopg.connect(self.conninfo, **{**self._kwargs, "application_name": "kode-rpc locks"})
        except CONNECTIVITY as exc:
            raise self._unavailable(exc) from None
        if not self._schema_ready:
            try:
                self._ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
        self._lock_conn = conn
        return conn

    def _close_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("closing the lock connection failed", exc_info=True)

    def _try_lock(self, conn: psycopg.Connection[Any], agent_id: str, owner: LeaseOwner) -> tuple[bool, int, str]:
        """One round trip: take the lock and record us as owner, or read who holds it."""
        row = conn.execute(
            "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock(%(key)s) AS ok), "
            "ins AS (INSERT INTO leases (agent_id, pid, host, token, taken_at) "
            "  SELECT %(id)s, %(pid)s, %(host)s, %(token)s, %(now)s FROM l WHERE l.ok "
            "  ON CONFLICT (agent_id) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host, "
            "  token = EXCLUDED.token, taken_at = EXCLUDED.taken_at RETURNING 1) "
            "SELECT l.ok, le.pid, le.host FROM l LEFT JOIN leases le ON le.agent_id = %(id)s",
            {"key": lock_key(self._namespace, agent_id), "id": agent_id, "pid": owner.pid, "host": owner.host,
             "token": owner.token, "now": utc_now_iso()},
        ).fetchone()
        assert row is not None
        return bool(row[0]), int(row[1] or 0), str(row[2] or "unknown")

    def _relock(self) -> None:
        """Lock thread: if the lock connection died, reconnect and re-take every lock we held;
        those another process took meanwhile go to `_lost`."""
        conn = self._lock_conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.execute("SELECT 1")
                return
            except CONNECTIVITY:
                pass
        self._close_lock_conn()
        if not self._held:
            return
        conn = self._lock_connection()
        for agent_id, (owner, _expires) in list(self._held.items()):
            ok, pid, host = self._try_lock(conn, agent_id, owner)
            if not ok:
                del self._held[agent_id]
                self._lost[agent_id] = (pid, host)
                logger.warning("agent %s was taken by process %s on %s while the database was away", agent_id,
                               pid, host)
        logger.info("lock connection re-opened; %d agent locks re-taken", len(self._held))

    def _acquire(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> None:
        now = time.time()
        held = self._held.get(agent_id)
        if held is not None:
            h_owner, h_expires = held
            if not lease_is_free(h_owner.pid, h_owner.host, h_owner.token, h_expires, owner.pid, owner.host,
                                 owner.token, now):
                raise LeaseHeld(agent_id, h_owner.pid, h_owner.host)
            self._held[agent_id] = (owner, now + ttl_s)  # ours already, or taken over inside this process
            return
        for attempt in (0, 1):
            conn = self._lock_connection()
            try:
                ok, pid, host = self._try_lock(conn, agent_id, owner)
                break
            except CONNECTIVITY as exc:
                if attempt:
                    raise self._unavailable(exc) from None
                self._relock()  # a dead lock connection lost every lock: re-take them, then retry
        if not ok and host == owner.host and not pid_alive(pid):
            ok, pid, host = self._await_dying_holder(conn, agent_id, owner, pid, host)
        if not ok:
            raise LeaseHeld(agent_id, *self._holder(conn, agent_id, owner))
        self._held[agent_id] = (owner, now + ttl_s)
        self._lost.pop(agent_id, None)

    def _await_dying_holder(self, conn: psycopg.Connection[Any], agent_id: str, owner: LeaseOwner, pid: int,
                            host: str) -> tuple[bool, int, str]:
        """The holder's process is gone (same host) but its backend has not noticed yet: the lock
        goes within moments, so wait for it (bounded) rather than refuse an agent nobody runs."""
        deadline = time.monotonic() + DYING_HOLDER_WAIT_S
        delay = 0.005
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            ok, pid, host = self._try_lock(conn, agent_id, owner)
            if ok or host != owner.host or pid_alive(pid):
                return ok, pid, host
        return False, pid, host

    def _holder(self, conn: psycopg.Connection[Any], agent_id: str, owner: LeaseOwner) -> tuple[int, str]:
        """Who holds the agent's lock, for `LeaseHeld`. `_try_lock` read the leases row in the
        snapshot its statement began with, before it tried the lock, so a holder that took the
        lock a moment earlier may be missing (no row: the last owner released it) or shown as the
        previous owner. Re-read it in fresh statements, `FOR SHARE` (which waits for a row being
        written or deleted), until it names a live owner; briefly."""
        deadline = time.monotonic() + HOLDER_ROW_WAIT_S
        delay = 0.002
        while True:
            row = conn.execute("SELECT pid, host FROM leases WHERE agent_id = %s FOR SHARE", (agent_id,)).fetchone()
            pid, host = (int(row[0]), str(row[1])) if row is not None else (0, "unknown")
            if (row is not None and (host != owner.host or pid_alive(pid))) or time.monotonic() > deadline:
                return pid, host
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _release(self, agent_id: str, owner: LeaseOwner) -> None:
        self._lost.pop(agent_id, None)
        held = self._held.get(agent_id)
        if held is None or held[0].token != owner.token:
            return
        del self._held[agent_id]
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            return  # the lock went with the connection
        try:
            # the row goes before the lock (an unread data-modifying WITH would run after it), so
            # whoever takes the lock next never reads us as its holder
            conn.execute("WITH d AS (DELETE FROM leases WHERE agent_id = %s AND token = %s RETURNING 1) "
                         "SELECT pg_advisory_unlock(%s) FROM (SELECT count(*) FROM d) AS gone",
                         (agent_id, owner.token, lock_key(self._namespace, agent_id)))
        except CONNECTIVITY as exc:
            logger.info("releasing the lock of %s: %s (it went with the connection)", agent_id, self._describe(exc))

    def _renew(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> list[str]:
        if self._held:
            self._relock()
        expires = time.time() + ttl_s
        lost = []
        for agent_id in agent_ids:
            held = self._held.get(agent_id)
            if held is None or held[0].token != owner.token:
                lost.append(agent_id)
            else:
                self._held[agent_id] = (owner, expires)
        if lost:
            logger.warning("renew_leases: %d of %d agents are no longer ours", len(lost), len(agent_ids))
        return lost

    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Take the agent's advisory lock, or fail with LeaseHeld naming the holder.

        Within this process the lease rule of `lease.py` applies between owners; across
        processes the lock decides: free only when released or when its holder's
        connection closed (its process died).
        """
        return self._lock_future(self._acquire, agent_id, owner, ttl_s)

    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[list[str]]:
        """Check the lock connection (re-taking the locks after an outage); resolves to the
        ids among `agent_ids` that are no longer ours."""
        return self._lock_future(self._renew, list(agent_ids), owner, ttl_s)

    def release_lease(self, agent_id: str, owner: LeaseOwner) -> asyncio.Future[None]:
        return self._lock_future(self._release, agent_id, owner)

    # ---------------------------------------------------------------- reads

    async def _read(self, fn: Callable[[psycopg.Connection[Any]], Any], kind: str | None) -> Any:
        if not self._opened or self._readers is None:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn, kind)

    def _run_read(self, fn: Callable[[psycopg.Connection[Any]], Any], kind: str | None) -> Any:
        if self._pool is None:
            raise self._closed_error()
        t0 = time.perf_counter()
        try:
            for attempt in (0, 1):
                got = False
                try:
                    with self._connection() as conn:
                        got = True
                        self._ensure_schema(conn)
                        return fn(conn)
                except CONNECTIVITY as exc:
                    # A connection that died while idle in the pool (a database restart):
                    # once more on a fresh one. No connection at all: already waited.
                    if attempt or not got:
                        raise self._unavailable(exc) from None
                    self._outage = True
            raise AssertionError("unreachable")
        except (StoreError, SchemaTooNew):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"read failed: {self._describe(exc)}") from None
        finally:
            self._stats.read(kind, (time.perf_counter() - t0) * 1000.0)

    @staticmethod
    def _snapshot(conn: psycopg.Connection[Any], queries: list[tuple[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Several queries in one REPEATABLE READ transaction, pipelined: one round trip."""
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursors = [conn.execute(sql, params) for sql, params in queries]
            conn.execute("COMMIT")
        return [cur.fetchall() for cur in cursors]

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        def fn(conn: psycopg.Connection[Any]) -> AgentRow | None:
            r = conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = %s", (agent_id,)).fetchone()
            return None if r is None else _agent_from(r)

        result: AgentRow | None = await self._read(fn, "load")
        return result

    async def load_agent_snapshot(self, agent_id: str) -> AgentSnapshot | None:
        """One pipelined read transaction (one round trip) for everything `AgentSnapshot` holds."""
        q = (agent_id,)

        def fn(conn: psycopg.Connection[Any]) -> AgentSnapshot | None:
            agent, messages, todos, turns, calls, approvals, events = self._snapshot(conn, [
                (f"SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = %s", q),
                (f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE agent_id = %s ORDER BY idx", q),
                ("SELECT todos_json FROM todos WHERE agent_id = %s", q),
                (f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = %s AND status IN {_OPEN_TURNS} ORDER BY ord", q),
                (f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = %s AND turn_id IN "
                 f"(SELECT turn_id FROM turns WHERE agent_id = %s AND status IN {_OPEN_TURNS}) ORDER BY ord",
                 (agent_id, agent_id)),
                (f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = %s AND status = 'pending' ORDER BY ord",
                 q),
                ("SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = %s AND seq > "
                 "(SELECT last_seq FROM agents WHERE agent_id = %s) - %s ORDER BY seq",
                 (agent_id, agent_id, RECENT_EVENTS)),
            ])
            if not agent:
                return None
            return AgentSnapshot(
                row=_agent_from(agent[0]),
                messages=[_message_from(r) for r in messages],
                todos=list(json.loads(todos[0][0])) if todos else [],
                turns=[_turn_from(r) for r in turns],
                tool_calls=[_tool_from(r) for r in calls],
                pending_approvals=[_approval_from(r) for r in approvals],
                recent_events=[_event_from(agent_id, r) for r in events],
            )

        result: AgentSnapshot | None = await self._read(fn, "load")
        return result

    async def export_agent(self, agent_id: str) -> AgentDump | None:
        q = (agent_id,)

        def fn(conn: psycopg.Connection[Any]) -> AgentDump | None:
            agent, events, messages, calls, audit, approvals, turns, todos = self._snapshot(conn, [
                (f"SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = %s", q),
                ("SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = %s ORDER BY seq", q),
                (f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE agent_id = %s ORDER BY idx", q),
                (f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = %s ORDER BY ord", q),
                ("SELECT agent_id, call_id, ts, state, note FROM tool_audit WHERE agent_id = %s ORDER BY id", q),
                (f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = %s ORDER BY ord", q),
                (f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = %s ORDER BY ord", q),
                ("SELECT todos_json FROM todos WHERE agent_id = %s", q),
            ])
            if not agent:
                return None
            return AgentDump(
                row=_agent_from(agent[0]),
                events=[_event_from(agent_id, r) for r in events],
                messages=[_message_from(r) for r in messages],
                tool_calls=[_tool_from(r) for r in calls],
                tool_audit=[ToolAuditRow(*r) for r in audit],
                approvals=[_approval_from(r) for r in approvals],
                turns=[_turn_from(r) for r in turns],
                todos=list(json.loads(todos[0][0])) if todos else [],
            )

        result: AgentDump | None = await self._read(fn, "load")
        return result

    async def list_agents(self, prefix: str | None, limit: int, cursor: str | None
                          ) -> tuple[list[AgentRow], str | None]:
        if limit <= 0:
            return [], None
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("agent_id > %s")
            params.append(cursor)
        if prefix:
            where.append("agent_id >= %s AND starts_with(agent_id, %s)")
            params += [prefix, prefix]
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                where.append("agent_id < %s")
                params.append(upper)
        sql = f"SELECT {AGENT_COLUMNS} FROM agents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY agent_id LIMIT %s"
        params.append(limit + 1)

        def fn(conn: psycopg.Connection[Any]) -> tuple[list[AgentRow], str | None]:
            rows = [_agent_from(r) for r in conn.execute(sql, params).fetchall()]
            if len(rows) > limit:
                rows = rows[:limit]
                return rows, rows[-1].agent_id
            return rows, None

        result: tuple[list[AgentRow], str | None] = await self._read(fn, "query")
        return result

    async def load_messages(self, agent_id: str, limit: int | None = None, before: int | None = None
                            ) -> tuple[list[MessageRow], int]:
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE agent_id = %s AND idx < %s ORDER BY idx DESC"
        params: list[Any] = [agent_id, before if before is not None else 1 << 62]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, limit))

        def fn(conn: psycopg.Connection[Any]) -> tuple[list[MessageRow], int]:
            rows, total = self._snapshot(conn, [
                (sql, params), ("SELECT count(*) FROM messages WHERE agent_id = %s", (agent_id,))])
            rows.reverse()
            return [_message_from(r) for r in rows], int(total[0][0])

        result: tuple[list[MessageRow], int] = await self._read(fn, "load")
        return result

    async def read_events(self, agent_id: str, since: int = 0, limit: int | None = None,
                          channels: list[str] | None = None) -> list[EventRow]:
        if channels is not None and not channels:
            return []
        sql = "SELECT seq, ts, channel, turn_id, type, json FROM events WHERE agent_id = %s AND seq > %s"
        params: list[Any] = [agent_id, since]
        if channels is not None:
            sql += " AND channel = ANY(%s)"
            params.append(list(channels))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, limit))

        def fn(conn: psycopg.Connection[Any]) -> list[EventRow]:
            return [_event_from(agent_id, r) for r in conn.execute(sql, params).fetchall()]

        result: list[EventRow] = await self._read(fn, "query")
        return result

    async def read_event_json(self, agent_id: str, since: int = 0) -> list[tuple[int, str]]:
        def fn(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
            return [(int(s), j) for s, j in conn.execute(
                "SELECT seq, json FROM events WHERE agent_id = %s AND seq > %s ORDER BY seq", (agent_id, since))]

        result: list[tuple[int, str]] = await self._read(fn, "query")
        return result

    async def load_tool_calls(self, agent_id: str, turn_id: str | None = None) -> list[ToolCallRow]:
        sql = f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE agent_id = %s"
        params: tuple[Any, ...] = (agent_id,)
        if turn_id is not None:
            sql += " AND turn_id = %s"
            params = (agent_id, turn_id)

        def fn(conn: psycopg.Connection[Any]) -> list[ToolCallRow]:
            return [_tool_from(r) for r in conn.execute(sql + " ORDER BY ord", params)]

        result: list[ToolCallRow] = await self._read(fn, "load")
        return result

    async def load_approvals(self, agent_id: str, status: str | None = None) -> list[ApprovalRow]:
        sql = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent_id = %s"
        params: tuple[Any, ...] = (agent_id,)
        if status is not None:
            sql += " AND status = %s"
            params = (agent_id, status)

        def fn(conn: psycopg.Connection[Any]) -> list[ApprovalRow]:
            return [_approval_from(r) for r in conn.execute(sql + " ORDER BY ord", params)]

        result: list[ApprovalRow] = await self._read(fn, "load")
        return result

    async def load_turns(self, agent_id: str, statuses: list[str] | None = None) -> list[TurnRow]:
        if statuses is not None and not statuses:
            return []
        sql = f"SELECT {TURN_COLUMNS} FROM turns WHERE agent_id = %s"
        params: list[Any] = [agent_id]
        if statuses is not None:
            sql += " AND status = ANY(%s)"
            params.append(list(statuses))

        def fn(conn: psycopg.Connection[Any]) -> list[TurnRow]:
            return [_turn_from(r) for r in conn.execute(sql + " ORDER BY ord", params)]

        result: list[TurnRow] = await self._read(fn, "load")
        return result

    async def get_todos(self, agent_id: str) -> list[dict[str, Any]]:
        def fn(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            r = conn.execute("SELECT todos_json FROM todos WHERE agent_id = %s", (agent_id,)).fetchone()
            return [] if r is None else list(json.loads(r[0]))

        result: list[dict[str, Any]] = await self._read(fn, "load")
        return result

    # -------------------------------------------------------- observability

    async def check_health(self) -> StoreHealth:
        """`SELECT 1` latency on a pooled connection; `connected: false` with the reason when
        the database is away (never raises). `fileSystem` is the file store dir (workspaces)."""
        directory = self.file_dir or tempfile.gettempdir()

        def probe() -> tuple[bool, float, str | None]:
            if self._pool is None:
                return False, 0.0, "store is not open"
            try:
                with self._connection() as conn:
                    t0 = time.perf_counter()
                    conn.execute("SELECT 1").fetchone()
                    latency = (time.perf_counter() - t0) * 1000.0
                    self._ensure_schema(conn)
                    return True, latency, None
            except SchemaTooNew as exc:
                return False, 0.0, str(exc)
            except psycopg.Error as exc:
                self._outage = True
                return False, 0.0, self._describe(exc)

        def writable() -> bool:
            try:
                os.makedirs(directory, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".kode-health-", dir=directory)
                os.close(fd)
                os.remove(tmp)
                return True
            except OSError:
                return False

        if self._readers is None:
            connected, latency, error = False, 0.0, "store is not open"
        else:
            connected, latency, error = await asyncio.get_running_loop().run_in_executor(self._readers, probe)
        if error:
            logger.warning("store health: database probe failed: %s", error)
        return health_model(connected, latency, await asyncio.to_thread(writable), error)

    async def consistency_view(self, agent_id: str) -> ConsistencyView | None:
        q = (agent_id,)

        def fn(conn: psycopg.Connection[Any]) -> ConsistencyView | None:
            agent, seqs, messages, states, open_turns, pending = self._snapshot(conn, [
                ("SELECT last_seq, message_count FROM agents WHERE agent_id = %s", q),
                ("SELECT seq FROM events WHERE agent_id = %s ORDER BY seq", q),
                ("SELECT idx, role, content_json, turn_id FROM messages WHERE agent_id = %s ORDER BY idx", q),
                ("SELECT call_id, state FROM tool_calls WHERE agent_id = %s", q),
                (f"SELECT turn_id FROM turns WHERE agent_id = %s AND status IN {_OPEN_TURNS}", q),
                ("SELECT approval_id, call_id FROM approvals WHERE agent_id = %s AND status = 'pending' ORDER BY ord",
                 q),
            ])
            if not agent:
                return None
            return ConsistencyView(
                last_seq=int(agent[0][0]), message_count=int(agent[0][1]), seqs=[int(r[0]) for r in seqs],
                messages=[(int(r[0]), r[1], r[2], r[3]) for r in messages], tool_states=dict(states),
                open_turns={r[0] for r in open_turns}, pending_approvals=[(r[0], r[1]) for r in pending])

        result: ConsistencyView | None = await self._read(fn, "query")
        return result

    async def collect_metrics(self) -> StoreMetrics:
        tables = ["agents", "events", "messages", "tool_calls", "tool_audit", "approvals", "turns", "todos", "leases",
                  "kode_schema"]

        def fn(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
            agents, messages, size = self._snapshot(conn, [
                ("SELECT count(*) FROM agents", None),
                ("SELECT count(*) FROM messages", None),
                ("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s)", (tables,)),
            ])
            return int(agents[0][0]), int(messages[0][0]), int(size[0][0])

        total_agents, total_messages, size = await self._read(fn, None)
        return metrics_model(self._stats, total_agents, total_messages, size)


def probe(conninfo: str, connect_timeout_s: float = 5.0) -> dict[str, Any]:
    """`kode-rpc doctor`'s look at a database, read-only: reachable, latency, schema version, agents.

    `ok` is False when the database cannot be reached or its schema is newer than
    this program. The password never appears in the result.
    """
    password = str(conninfo_to_dict(conninfo).get("password") or os.environ.get("PGPASSWORD") or "")

    def scrub(text: str) -> str:
        return text.replace(password, "***") if password else text

    kwargs: dict[str, Any] = {"autocommit": True, "application_name": "kode-rpc doctor"}
    if "connect_timeout" not in conninfo_to_dict(conninfo):
        kwargs["connect_timeout"] = max(2, int(round(connect_timeout_s)))
    try:
        with psycopg.connect(conninfo, **kwargs) as conn:
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            latency = (time.perf_counter() - t0) * 1000.0
            server = conn.info.server_version
            exists = conn.execute("SELECT to_regclass('kode_schema') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                return {"ok": True, "exists": False, "latencyMs": round(latency, 3), "serverVersion": server,
                        "note": "reachable; the schema is created on first start"}
            row = conn.execute("SELECT max(version) FROM kode_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            agents = 0
            if 0 < version <= SCHEMA_VERSION:
                counted = conn.execute("SELECT count(*) FROM agents").fetchone()
                agents = int(counted[0]) if counted else 0
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return {"ok": False, "exists": False, "note": "unreachable: " + scrub(lines[0] if lines else type(exc).__name__)}
    note = "" if version <= SCHEMA_VERSION else f"schema {version} is newer than this kode-rpc ({SCHEMA_VERSION})"
    return {"ok": version <= SCHEMA_VERSION, "exists": True, "schemaVersion": version, "agents": agents,
            "latencyMs": round(latency, 3), "serverVersion": server, "note": note}
