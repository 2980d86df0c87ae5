"""SQLite implementation of the `Store` interface (stdlib sqlite3 only).

Why this shape:

* One dedicated writer thread owns the only write connection. Write methods are
  plain methods called on the event loop thread: they snapshot their arguments
  (JSON-encoding dicts right away, so later mutation by the caller cannot leak
  into the row), enqueue a closure and return an `asyncio.Future` at once. The
  writer drains everything queued, runs it in ONE `BEGIN IMMEDIATE` transaction
  (group commit: one WAL commit for many writes) with a `SAVEPOINT`
  per item, so a failing item rolls back only itself and fails only its own
  future. Order of commits is call order.
* Reads are coroutines on a two-thread pool, each thread with its own
  connection; WAL lets them run concurrently with the writer and see committed
  data only.
* WAL with `synchronous=NORMAL`: a committed transaction survives a process
  crash (also SIGKILL); only an OS crash/power loss may lose the last commits.
* The schema is versioned with `PRAGMA user_version` and an ordered list of
  migrations; a database written by newer code is refused rather than damaged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kode_rpc.store.base import (
    AgentExists,
    AgentRow,
    ApprovalRow,
    EventRow,
    LeaseHeld,
    LeaseOwner,
    MessageRow,
    Store,
    StoreError,
    ToolCallRow,
    TurnRow,
)

__all__ = ["SQLiteStore", "pid_alive", "MIGRATIONS", "SCHEMA_VERSION", "FINAL_TOOL_STATES"]

logger = logging.getLogger(__name__)

FINAL_TOOL_STATES = frozenset({"COMPLETED", "FAILED", "DENIED", "SEALED"})
"""Tool call states after which nothing more happens to the call."""

_BUSY_TIMEOUT_MS = 10000


def _dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (smaller rows, readable in the db)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- pids


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host.

    Used to take over a lease whose owner died without releasing it (same host
    only: a pid means nothing on another machine). A pid we may not signal
    still exists, so it counts as alive. Non-positive pids are never alive
    (`os.kill(0, 0)` would address our own process group).
    """
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid beyond pid_t exists nowhere
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:
    """Windows has no signal 0: open the process and look at its exit code."""
    import ctypes
    from ctypes import wintypes

    process_query_limited_information = 0x1000
    still_active = 259
    error_access_denied = 5
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        # The process exists but belongs to someone we may not query.
        return bool(ctypes.get_last_error() == error_access_denied)  # type: ignore[attr-defined]
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1]
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
                raise StoreError(
                    f"database schema version {version} is newer than this program supports ({target})"
                )
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

_AGENT_COLUMNS = (
    "agent_id, template_id, created_at, updated_at, state, last_seq, message_count, "
    "config_json, runtime_json, metadata_json"
)
_EVENT_COLUMNS = "agent_id, seq, ts, channel, turn_id, type, json"
_TOOL_COLUMNS = (
    "agent_id, call_id, turn_id, step, name, input_json, state, result_json, error, "
    "started_at, duration_ms, updated_at"
)
_APPROVAL_COLUMNS = (
    "agent_id, approval_id, call_id, turn_id, status, request_json, created_at, decided_by, note, decided_at"
)
_TURN_COLUMNS = "agent_id, turn_id, message_index, status, created_at, step, reason, message_json"

_UPDATE_FIELDS: dict[str, tuple[str, bool]] = {
    "state": ("state", False),
    "updated_at": ("updated_at", False),
    "last_seq": ("last_seq", False),
    "message_count": ("message_count", False),
    "config": ("config_json", True),
    "runtime": ("runtime_json", True),
    "metadata": ("metadata_json", True),
}
"""update_agent key -> (column, JSON-encoded)."""


def _agent_params(row: AgentRow) -> tuple[Any, ...]:
    return (
        row.agent_id,
        row.template_id,
        row.created_at,
        row.updated_at,
        row.state,
        int(row.last_seq),
        int(row.message_count),
        _dumps(row.config),
        _dumps(row.runtime),
        _dumps(row.metadata),
    )


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


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string starting with `prefix`, if simple to form.

    Lets `list_agents` bound an index range scan instead of scanning to the end.
    """
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last <= 0xDFFF:
        return None
    return prefix[:-1] + chr(last + 1)


# ------------------------------------------------------------------ the store

_KIND_SAVE = "save"
_KIND_DELETE = "delete"
_KIND_BARRIER = "barrier"
_KIND_STOP = "stop"


@dataclass(slots=True)
class _Item:
    """One queued write: the closure runs on the writer thread inside a savepoint."""

    fn: Callable[[sqlite3.Connection], Any] | None
    fut: asyncio.Future[Any]
    kind: str


_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


class _Stats:
    """Counters read by `metrics()`; updated from the writer and reader threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.saves = 0
        self.loads = 0
        self.queries = 0
        self.deletes = 0
        self.lat_count = 0
        self.lat_sum = 0.0
        self.lat_max = 0.0
        self.lat_min = 0.0

    def latency(self, ms: float) -> None:
        """Record one latency sample; caller holds `lock`."""
        if self.lat_count == 0:
            self.lat_min = self.lat_max = ms
        else:
            self.lat_min = min(self.lat_min, ms)
            self.lat_max = max(self.lat_max, ms)
        self.lat_count += 1
        self.lat_sum += ms


class SQLiteStore(Store):
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
        self.path = os.path.abspath(path)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._stats = _Stats()
        self._batch_seq: dict[str, int] = {}
        self._batch_msgs: dict[str, int] = {}
        """Counter raises of the batch being written (writer thread only)."""
        self._opened = False
        self._closing = False
        self._close_fut: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Create/migrate the schema on the writer thread, then accept writes.

        Raises StoreError when the file's schema is newer than this code.
        Opening an open store does nothing.
        """
        if self._closing:
            raise StoreError("store is closed")
        if self._opened:
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._writer_main, args=(ready,), name="kode-store-writer", daemon=True
        )
        thread.start()
        try:
            await ready
        except BaseException:
            await asyncio.to_thread(thread.join)
            raise
        self._writer = thread
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kode-store-read")
        self._opened = True
        logger.debug("store opened at %s (schema version %d)", self.path, SCHEMA_VERSION)

    async def close(self) -> None:
        """Flush every queued write, stop the writer, close all connections.

        Idempotent, and concurrent callers all wait for the same shutdown.
        """
        if self._close_fut is not None:
            await asyncio.shield(self._close_fut)
            return
        loop = asyncio.get_running_loop()
        self._close_fut = loop.create_future()
        self._closing = True
        try:
            if self._writer is not None:
                stopped: asyncio.Future[None] = loop.create_future()
                self._queue.put(_Item(None, stopped, _KIND_STOP))
                await stopped
                await asyncio.to_thread(self._writer.join)
                self._writer = None
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
            self._opened = False
            logger.debug("store closed")
        finally:
            self._close_fut.set_result(None)

    # ---------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode: transactions are explicit, never implicit."""
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
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

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        """Writer thread: open, migrate, then commit queued batches until told to stop."""
        loop = ready.get_loop()
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn)
        except BaseException as exc:
            if not isinstance(exc, StoreError):
                exc = StoreError(f"cannot open store {self.path}: {exc}")
            self._post(loop, [(ready, None, exc)])
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            return
        self._post(loop, [(ready, None, None)])

        stop: _Item | None = None
        try:
            while stop is None:
                batch = [self._queue.get()]
                # Capped, so a burst of streamed events is committed and delivered in
                # steps instead of one long silence followed by everything at once.
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for i, item in enumerate(batch):
                    if item.kind == _KIND_STOP:
                        stop = item
                        late = batch[i + 1:]
                        batch = batch[:i]
                        for other in late:
                            self._post_one(other.fut, None, StoreError("store is closed"))
                        break
                if batch:
                    self._deliver(self._run_batch(conn, batch))
        except BaseException:  # pragma: no cover - a bug in this module
            logger.exception("store writer thread crashed")
            raise
        finally:
            try:
                conn.close()
            except sqlite3.Error:
                logger.warning("closing the write connection failed", exc_info=True)
            if stop is not None:
                self._post_one(stop.fut, None, None)

    def _run_batch(self, conn: sqlite3.Connection, items: list[_Item]) -> list[_Result]:
        """Run `items` in one transaction, a savepoint each; return per-item outcomes.

        A failing item is rolled back to its savepoint and fails alone. A failure
        of the transaction itself (BEGIN/COMMIT, disk full, ...) fails them all.
        """
        t0 = time.perf_counter()
        results: list[_Result] = []
        self._batch_seq = {}
        self._batch_msgs = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in items:
                assert item.fn is not None
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
                             [(v, k, v) for k, v in self._batch_seq.items()])
            conn.executemany("UPDATE agents SET message_count = ? WHERE agent_id = ? AND message_count < ?",
                             [(v, k, v) for k, v in self._batch_msgs.items()])
            conn.execute("COMMIT")
        except Exception as exc:
            logger.error("store write batch of %d items failed: %s", len(items), exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.warning("rollback failed", exc_info=True)
            return [(item.fut, None, StoreError(f"write failed: {exc}")) for item in items]
        ms = (time.perf_counter() - t0) * 1000.0
        with self._stats.lock:
            for item, (_, _, err) in zip(items, results):
                if err is not None:
                    continue
                if item.kind == _KIND_SAVE:
                    self._stats.saves += 1
                elif item.kind == _KIND_DELETE:
                    self._stats.deletes += 1
            if any(item.kind != _KIND_BARRIER for item in items):
                self._stats.latency(ms)
        return results

    @staticmethod
    def _raise_counter(counters: dict[str, int], agent_id: str, value: int) -> None:
        if value > counters.get(agent_id, 0):
            counters[agent_id] = value

    def _deliver(self, results: list[_Result]) -> None:
        """Hand results to each future's loop, one wake-up per loop per batch, in order."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for result in results:
            by_loop.setdefault(result[0].get_loop(), []).append(result)
        for loop, part in by_loop.items():
            self._post(loop, part)

    def _post_one(self, fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
        self._post(fut.get_loop(), [(fut, value, exc)])

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, results: list[_Result]) -> None:
        try:
            loop.call_soon_threadsafe(_resolve_all, results)
        except RuntimeError:
            logger.debug("event loop closed; dropped %d store results", len(results))

    def _enqueue(self, fn: Callable[[sqlite3.Connection], Any], kind: str = _KIND_SAVE) -> asyncio.Future[Any]:
        """Queue a write; must run on the event loop thread (it creates the future there)."""
        if not self._opened or self._closing:
            raise StoreError("store is closed" if self._closing else "store is not open")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put(_Item(fn, fut, kind))
        return fut

    # --------------------------------------------------------------- writes

    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        """Insert the agent row; the future fails with AgentExists when the id is taken."""
        params = _agent_params(row)
        agent_id = row.agent_id

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(agent_id) DO NOTHING",
                params,
            )
            if cur.rowcount == 0:
                raise AgentExists(agent_id)

        return self._enqueue(op)

    def update_agent(self, agent_id: str, **fields: Any) -> asyncio.Future[None]:
        """Update some agent columns; unknown keys raise ValueError right here.

        Updating an agent that does not exist (e.g. deleted meanwhile) is a
        no-op, so fire-and-forget updates racing a delete do not fail.
        """
        unknown = sorted(set(fields) - set(_UPDATE_FIELDS))
        if unknown:
            raise ValueError(f"update_agent: unknown fields {unknown}")
        sets: list[str] = []
        params: list[Any] = []
        for key, value in fields.items():
            column, encode = _UPDATE_FIELDS[key]
            sets.append(f"{column} = ?")
            params.append(_dumps(value) if encode else value)
        params.append(agent_id)
        sql = f"UPDATE agents SET {', '.join(sets)} WHERE agent_id = ?" if sets else None

        def op(conn: sqlite3.Connection) -> None:
            if sql is not None and conn.execute(sql, params).rowcount == 0:
                logger.debug("update_agent: no agent %s", agent_id)

        return self._enqueue(op)

    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        """Delete the agent and all its rows; resolves to whether the agent existed."""

        def op(conn: sqlite3.Connection) -> bool:
            existed = conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,)).rowcount > 0
            for table in ("events", "messages", "tool_calls", "tool_audit", "approvals", "turns", "todos", "leases"):
                conn.execute(f"DELETE FROM {table} WHERE agent_id = ?", (agent_id,))
            return existed

        return self._enqueue(op, _KIND_DELETE)

    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]:
        """Insert events (a duplicate seq fails the future with StoreError).

        Also raises `agents.last_seq` to the highest appended seq (never lowers
        it), in the same transaction, so the counter can never lag the events.
        """
        params = [(r.agent_id, r.seq, r.ts, r.channel, r.turn_id, r.type, r.json) for r in rows]
        highest: dict[str, int] = {}
        for r in rows:
            if r.seq > highest.get(r.agent_id, 0):
                highest[r.agent_id] = r.seq

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", params)
            for aid, seq in highest.items():
                self._raise_counter(self._batch_seq, aid, seq)

        return self._enqueue(op)

    def append_message(self, row: MessageRow) -> asyncio.Future[None]:
        """Insert a message (a duplicate index fails with StoreError).

        Also raises `agents.message_count` to index + 1 (never lowers it).
        """
        params = (row.agent_id, row.index, row.role, _dumps(row.content), row.turn_id, row.created_at)
        count = row.index + 1
        agent_id = row.agent_id

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO messages (agent_id, idx, role, content_json, turn_id, created_at) VALUES (?,?,?,?,?,?)",
                params,
            )
            self._raise_counter(self._batch_msgs, agent_id, count)

        return self._enqueue(op)

    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        """Upsert the call and append an audit row (ts = row.updated_at, or now when empty)."""
        params = (
            row.agent_id, row.call_id, row.turn_id, row.step, row.name, _dumps(row.input), row.state,
            None if row.result is None else _dumps(row.result), row.error, row.started_at,
            row.duration_ms, row.updated_at,
        )
        audit = (row.agent_id, row.call_id, row.updated_at or _utc_now_iso(), row.state, note)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO tool_calls ({_TOOL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(agent_id, call_id) DO UPDATE SET turn_id = excluded.turn_id, "
                "step = excluded.step, name = excluded.name, input_json = excluded.input_json, "
                "state = excluded.state, result_json = excluded.result_json, error = excluded.error, "
                "started_at = excluded.started_at, duration_ms = excluded.duration_ms, "
                "updated_at = excluded.updated_at",
                params,
            )
            conn.execute("INSERT INTO tool_audit (agent_id, call_id, ts, state, note) VALUES (?,?,?,?,?)", audit)

        return self._enqueue(op)

    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]:
        """Upsert by approval_id (creation order is kept for `load_approvals`)."""
        params = (
            row.agent_id, row.approval_id, row.call_id, row.turn_id, row.status, _dumps(row.request),
            row.created_at, row.decided_by, row.note, row.decided_at,
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(approval_id) DO UPDATE SET agent_id = excluded.agent_id, "
                "call_id = excluded.call_id, turn_id = excluded.turn_id, status = excluded.status, "
                "request_json = excluded.request_json, created_at = excluded.created_at, "
                "decided_by = excluded.decided_by, note = excluded.note, decided_at = excluded.decided_at",
                params,
            )

        return self._enqueue(op)

    def put_turn(self, row: TurnRow) -> asyncio.Future[None]:
        """Upsert by (agent_id, turn_id); an update keeps the turn's creation position."""
        params = (row.agent_id, row.turn_id, row.message_index, row.status, row.created_at, row.step, row.reason,
                  None if row.message is None else _dumps(row.message))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO turns ({_TURN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(agent_id, turn_id) DO UPDATE SET message_index = excluded.message_index, "
                "status = excluded.status, created_at = excluded.created_at, step = excluded.step, "
                "reason = excluded.reason, message_json = excluded.message_json",
                params,
            )

        return self._enqueue(op)

    def set_todos(self, agent_id: str, todos: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Replace the agent's todo list."""
        params = (agent_id, _dumps(todos))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO todos (agent_id, todos_json) VALUES (?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET todos_json = excluded.todos_json",
                params,
            )

        return self._enqueue(op)

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
            cur = conn.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(agent_id) DO NOTHING",
                params,
            )
            if cur.rowcount == 0:
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
            copied = []
            for seq, ts, channel, turn_id, type_, text in events:
                envelope = json.loads(text)
                if isinstance(envelope, dict):
                    envelope["agentId"] = new_id
                    text = _dumps(envelope)
                copied.append((new_id, seq, ts, channel, turn_id, type_, text))
            conn.executemany(f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", copied)
            last_seq = events[-1][0] if events else 0

            messages = conn.execute(
                "SELECT idx, role, content_json, turn_id, created_at FROM messages WHERE agent_id = ? ORDER BY idx",
                (source_id,),
            ).fetchall()
            if at_seq is not None:
                cut_ts = events[-1][1] if events else None
                kept = []
                for expected, message in enumerate(messages):
                    if cut_ts is None or message[0] != expected or message[4] > cut_ts:
                        break
                    kept.append(message)
                messages = kept
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

        return self._enqueue(op)

    def barrier(self) -> asyncio.Future[None]:
        """A no-op write: resolves once everything queued before it is committed."""
        return self._enqueue(lambda conn: None, _KIND_BARRIER)

    # --------------------------------------------------------------- leases

    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Take the lease, or fail with LeaseHeld(agent_id, pid, host) of the holder.

        Taken when free, expired, already ours (same token), or held by a dead
        pid on our host. The check and the upsert share the writer's
        `BEGIN IMMEDIATE` transaction, which holds SQLite's write lock, so two
        processes cannot both win.
        """
        pid, host, token = owner.pid, owner.host, owner.token

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            held = conn.execute(
                "SELECT pid, host, token, expires_at FROM leases WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if held is not None:
                h_pid, h_host, h_token, h_expires = held
                free = (
                    h_expires < now
                    or h_token == token
                    or (h_host == host and not pid_alive(int(h_pid)))
                )
                if not free:
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

    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        """Extend the leases among `agent_ids` that are ours (by token); others are left alone.

        A lease lost meanwhile (expired and taken over) is not re-created; a
        warning is logged.
        """
        ids = list(agent_ids)
        token = owner.token

        def op(conn: sqlite3.Connection) -> None:
            expires = time.time() + ttl_s
            renewed = 0
            for agent_id in ids:
                renewed += conn.execute(
                    "UPDATE leases SET expires_at = ? WHERE agent_id = ? AND token = ?",
                    (expires, agent_id, token),
                ).rowcount
            if renewed < len(ids):
                logger.warning("renew_leases: %d of %d leases are no longer ours", len(ids) - renewed, len(ids))

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
            if kind is not None:
                ms = (time.perf_counter() - t0) * 1000.0
                with self._stats.lock:
                    if kind == "load":
                        self._stats.loads += 1
                    else:
                        self._stats.queries += 1
                    self._stats.latency(ms)

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        def fn(conn: sqlite3.Connection) -> AgentRow | None:
            r = conn.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
            return None if r is None else _agent_from(r)

        result: AgentRow | None = await self._read(fn, "load")
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
            where.append("agent_id > ?")
            params.append(cursor)
        if prefix:
            where.append("agent_id >= ? AND substr(agent_id, 1, ?) = ?")
            params += [prefix, len(prefix), prefix]
            upper = _prefix_upper_bound(prefix)
            if upper is not None:
                where.append("agent_id < ?")
                params.append(upper)
        sql = f"SELECT {_AGENT_COLUMNS} FROM agents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY agent_id LIMIT ?"
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
            sql, params = f"SELECT {_TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? ORDER BY rowid", (agent_id,)
        else:
            sql = f"SELECT {_TOOL_COLUMNS} FROM tool_calls WHERE agent_id = ? AND turn_id = ? ORDER BY rowid"
            params = (agent_id, turn_id)

        def fn(conn: sqlite3.Connection) -> list[ToolCallRow]:
            return [_tool_from(r) for r in conn.execute(sql, params).fetchall()]

        result: list[ToolCallRow] = await self._read(fn, "load")
        return result

    async def load_approvals(self, agent_id: str, status: str | None = None) -> list[ApprovalRow]:
        """In creation order, optionally only those with `status`."""
        if status is None:
            sql, params = f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? ORDER BY rowid", (agent_id,)
        else:
            sql = f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE agent_id = ? AND status = ? ORDER BY rowid"
            params = (agent_id, status)

        def fn(conn: sqlite3.Connection) -> list[ApprovalRow]:
            return [_approval_from(r) for r in conn.execute(sql, params).fetchall()]

        result: list[ApprovalRow] = await self._read(fn, "load")
        return result

    async def load_turns(self, agent_id: str, statuses: list[str] | None = None) -> list[TurnRow]:
        """In creation order (first `put_turn` of each turn), optionally filtered by status."""
        if statuses is not None and not statuses:
            return []
        sql = f"SELECT {_TURN_COLUMNS} FROM turns WHERE agent_id = ?"
        params: list[Any] = [agent_id]
        if statuses is not None:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            params += statuses
        sql += " ORDER BY ord"

        def fn(conn: sqlite3.Connection) -> list[TurnRow]:
            return [TurnRow(*r[:7], message=None if r[7] is None else json.loads(r[7]))
                    for r in conn.execute(sql, params).fetchall()]

        result: list[TurnRow] = await self._read(fn, "load")
        return result

    async def get_todos(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's todos, [] when none were set."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            r = conn.execute("SELECT todos_json FROM todos WHERE agent_id = ?", (agent_id,)).fetchone()
            return [] if r is None else list(json.loads(r[0]))

        result: list[dict[str, Any]] = await self._read(fn, "load")
        return result

    # -------------------------------------------------------- observability

    async def health(self) -> dict[str, Any]:
        """`SELECT 1` latency on a reader connection and a write test in the db's directory.

        Never raises for a sick database: that is what it reports. Not counted
        in `metrics()`.
        """
        directory = os.path.dirname(self.path) or "."

        def probe() -> tuple[bool, float, bool]:
            connected = False
            latency_ms = 0.0
            try:
                conn = self._reader_conn()
                t0 = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                latency_ms = (time.perf_counter() - t0) * 1000.0
                connected = True
            except sqlite3.Error:
                logger.warning("store health: database probe failed", exc_info=True)
            writable = False
            try:
                fd, tmp = tempfile.mkstemp(prefix=".kode-health-", dir=directory)
                os.close(fd)
                os.remove(tmp)
                writable = True
            except OSError:
                logger.warning("store health: %s is not writable", directory, exc_info=True)
            return connected, latency_ms, writable

        if self._readers is None:
            connected, latency_ms, writable = False, 0.0, os.access(directory, os.W_OK)
        else:
            loop = asyncio.get_running_loop()
            connected, latency_ms, writable = await loop.run_in_executor(self._readers, probe)
        return {
            "healthy": connected and writable,
            "database": {"connected": connected, "latencyMs": latency_ms},
            "fileSystem": {"writable": writable},
            "checkedAt": _utc_now_iso(),
        }

    async def consistency(self, agent_id: str) -> dict[str, Any]:
        """Check one agent's rows against each other (one snapshot); `{consistent, issues}`.

        Reported: missing agent; event seqs not 1..N; last_seq != max(seq);
        message indices not 0..M-1; message_count != M; a tool_use without a
        tool_result in a later message whose turn has ended or whose call was
        lost (no tool-call record); a pending approval of a finished call.

        A tool_use of a turn that has not ended is not an inconsistency: its
        results are appended together when the step's last call ends, so a call
        waiting on an approval (also one re-issued after a crash), a running
        call, and a call already sealed or finished beside it all wait for that.
        """

        def fn(conn: sqlite3.Connection) -> list[str]:
            issues: list[str] = []
            agent = conn.execute(
                "SELECT last_seq, message_count FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if agent is None:
                return [f"agent {agent_id} not found"]
            last_seq, message_count = agent

            seqs = [r[0] for r in conn.execute("SELECT seq FROM events WHERE agent_id = ? ORDER BY seq", (agent_id,))]
            gaps = [(i + 1, s) for i, s in enumerate(seqs) if s != i + 1]
            if gaps:
                expected, found = gaps[0]
                issues.append(
                    f"event seqs are not 1..{len(seqs)}: expected {expected}, found {found}"
                    + (f" ({len(gaps)} misplaced)" if len(gaps) > 1 else "")
                )
            max_seq = seqs[-1] if seqs else 0
            if last_seq != max_seq:
                issues.append(f"agents.last_seq is {last_seq} but the highest event seq is {max_seq}")

            rows = conn.execute(
                "SELECT idx, role, content_json, turn_id FROM messages WHERE agent_id = ? ORDER BY idx", (agent_id,)
            ).fetchall()
            messages = [r[:3] for r in rows]
            turn_ids = [r[3] for r in rows]
            bad = [(i, m[0]) for i, m in enumerate(messages) if m[0] != i]
            if bad:
                expected, found = bad[0]
                issues.append(f"message indices are not 0..{len(messages) - 1}: expected {expected}, found {found}")
            if message_count != len(messages):
                issues.append(f"agents.message_count is {message_count} but {len(messages)} messages are stored")

            states = dict(
                conn.execute("SELECT call_id, state FROM tool_calls WHERE agent_id = ?", (agent_id,)).fetchall()
            )
            uses: list[tuple[str, int]] = []
            results: dict[str, int] = {}
            open_turns = {r[0] for r in conn.execute(
                "SELECT turn_id FROM turns WHERE agent_id = ? AND status IN ('running', 'queued')", (agent_id,))}
            for idx, role, content_json in messages:
                try:
                    content = json.loads(content_json)
                except ValueError:
                    issues.append(f"message {idx} content is not valid JSON")
                    continue
                if not isinstance(content, list):
                    continue
                for block in content:
                    if not isinstance(block, dict):
                        continue
                    kind = block.get("type")
                    if kind == "tool_use" and role == "assistant":
                        uses.append((str(block.get("id")), idx))
                    elif kind == "tool_result":
                        use_id = block.get("toolUseId", block.get("tool_use_id"))
                        if use_id is not None:
                            results[str(use_id)] = max(results.get(str(use_id), -1), idx)
            message_turn = {m[0]: t for m, t in zip(messages, turn_ids)}
            for use_id, idx in uses:
                if results.get(use_id, -1) > idx:
                    continue
                state = states.get(use_id)
                if state is not None and (state not in FINAL_TOOL_STATES or message_turn.get(idx) in open_turns):
                    continue  # still running or waiting, or its turn has not ended: results come with the step
                why = "its call was lost (no tool-call record)" if state is None else f"its call is {state}"
                issues.append(f"tool_use {use_id} in message {idx} has no tool_result ({why})")

            for approval_id, call_id, state in conn.execute(
                "SELECT a.approval_id, a.call_id, t.state FROM approvals a LEFT JOIN tool_calls t "
                "ON t.agent_id = a.agent_id AND t.call_id = a.call_id "
                "WHERE a.agent_id = ? AND a.status = 'pending' ORDER BY a.rowid",
                (agent_id,),
            ):
                if state in FINAL_TOOL_STATES:
                    issues.append(f"approval {approval_id} is pending but tool call {call_id} is {state}")
            return issues

        issues: list[str] = await self._read(fn, "query", snapshot=True)
        return {"consistent": not issues, "issues": issues}

    async def metrics(self) -> dict[str, Any]:
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
        s = self._stats
        with s.lock:
            operations = {"saves": s.saves, "loads": s.loads, "queries": s.queries, "deletes": s.deletes}
            performance = {
                "avgLatencyMs": s.lat_sum / s.lat_count if s.lat_count else 0.0,
                "maxLatencyMs": s.lat_max if s.lat_count else 0.0,
                "minLatencyMs": s.lat_min if s.lat_count else 0.0,
            }
        return {
            "operations": operations,
            "performance": performance,
            "storage": {"totalAgents": total_agents, "totalMessages": total_messages, "dbSizeBytes": size},
            "collectedAt": _utc_now_iso(),
        }


def _wrap_error(exc: Exception) -> Exception:
    """Store errors pass through; raw sqlite3 errors become StoreError (cause kept)."""
    if isinstance(exc, sqlite3.Error):
        wrapped = StoreError(f"write failed: {exc}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _resolve_all(results: list[_Result]) -> None:
    """Runs on the event loop: settle futures in order, skipping cancelled ones."""
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
