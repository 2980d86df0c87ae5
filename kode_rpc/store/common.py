"""What the three backends share besides the writer: life cycle, JSON coding, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from .base import Store, StoreError
from .writer import KIND_BARRIER, KIND_SAVE, GroupCommitWriter, StoreStats

if TYPE_CHECKING:
    from ..protocol.system import StoreHealth, StoreMetrics

logger = logging.getLogger(__name__)


# The tables' columns, shared by the SQL backends (SQLite and PostgreSQL keep one schema shape).
AGENT_COLUMNS = (
    "agent_id, template_id, created_at, updated_at, state, last_seq, message_count, "
    "config_json, runtime_json, metadata_json"
)
EVENT_COLUMNS = "agent_id, seq, ts, channel, turn_id, type, json"
MESSAGE_COLUMNS = "agent_id, idx, role, content_json, turn_id, created_at"
TOOL_COLUMNS = (
    "agent_id, call_id, turn_id, step, name, input_json, state, result_json, error, "
    "started_at, duration_ms, updated_at"
)
APPROVAL_COLUMNS = (
    "agent_id, approval_id, call_id, turn_id, status, request_json, created_at, decided_by, note, decided_at"
)
TURN_COLUMNS = "agent_id, turn_id, message_index, status, created_at, step, reason, message_json"
UPDATE_FIELDS: dict[str, tuple[str, bool]] = {  # keys: base.AgentFields
    "state": ("state", False),
    "updated_at": ("updated_at", False),
    "last_seq": ("last_seq", False),
    "message_count": ("message_count", False),
    "config": ("config_json", True),
    "runtime": ("runtime_json", True),
    "metadata": ("metadata_json", True),
}
"""update_agent key -> (column, JSON-encoded)."""


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (smaller rows, readable by hand)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string starting with `prefix`, if simple to form.

    Lets `list_agents` bound an index range scan instead of scanning to the end.
    """
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last <= 0xDFFF:
        return None
    return prefix[:-1] + chr(last + 1)


def health_model(connected: bool, latency_ms: float, writable: bool, error: str | None = None) -> StoreHealth:
    from ..protocol.system import StoreHealth

    from .. import secrets

    database: dict[str, Any] = {"connected": connected, "latencyMs": latency_ms}
    if error is not None:
        database["error"] = secrets.redact(error)  # a driver's message reaches store/health and GET /health
    return StoreHealth.model_validate({
        "healthy": connected and writable,
        "database": database,
        "fileSystem": {"writable": writable},
        "checkedAt": utc_now_iso(),
    })


def metrics_model(stats: StoreStats, total_agents: int, total_messages: int, size_bytes: int) -> StoreMetrics:
    from ..protocol.system import StoreMetrics

    operations, performance = stats.snapshot()
    return StoreMetrics.model_validate({
        "operations": operations,
        "performance": performance,
        "storage": {"totalAgents": total_agents, "totalMessages": total_messages, "dbSizeBytes": size_bytes},
        "collectedAt": utc_now_iso(),
    })


class WriterStore(Store):
    """A store whose writes go through one `GroupCommitWriter`.

    Life cycle: the constructor does no I/O; `open()` starts the writer (which
    connects, migrates); `close()` flushes and stops, idempotent and shared by
    concurrent callers. Write methods raise `StoreError` at once when the store
    is not open, and `RuntimeError` when called outside a running event loop.
    """

    def __init__(self) -> None:
        self._stats = StoreStats()
        self._writer: GroupCommitWriter[Any] | None = None
        self._opened = False
        self._closing = False
        self._close_fut: asyncio.Future[None] | None = None

    def _closed_error(self) -> StoreError:
        return StoreError("store is closed" if self._closing else "store is not open")

    def _check_open(self) -> None:
        if not self._opened or self._closing:
            raise self._closed_error()

    def _enqueue(self, fn: Callable[[Any], Any], kind: str = KIND_SAVE, agent_id: str | None = None,
                 key: Any = None, heavy: bool = False) -> asyncio.Future[Any]:
        """Queue a write; must run on the event loop thread (it creates the future there).
        `key`: the row a whole-row upsert writes (`WriteItem.key`); `heavy`: work that may
        take long, never run on the loop (`WriteItem.heavy`)."""
        return self._open_writer().submit(fn, kind, agent_id, key, heavy)

    def _append(self, kind: str, rows: list[Any], insert: Callable[[Any, list[Any]], Any],
                agent_id: str | None = None) -> asyncio.Future[Any]:
        """Queue `insert(conn, rows)`; joins a queued append of the same kind (`GroupCommitWriter.append`)."""
        return self._open_writer().append(kind, rows, insert, agent_id)

    def _open_writer(self) -> GroupCommitWriter[Any]:
        if not self._opened or self._closing or self._writer is None:
            raise self._closed_error()
        return self._writer

    def barrier(self) -> asyncio.Future[None]:
        """A no-op write: resolves once everything queued before it is committed."""
        return self._enqueue(lambda conn: None, KIND_BARRIER)

    async def close(self) -> None:
        """Flush every queued write, stop the writer, release what the backend holds.

        Idempotent, and concurrent callers all wait for the same shutdown.
        """
        if self._close_fut is not None:
            await asyncio.shield(self._close_fut)
            return
        self._close_fut = asyncio.get_running_loop().create_future()
        self._closing = True
        try:
            if self._writer is not None:
                await self._writer.stop()
                self._writer = None
            await self._close_backend()
            self._opened = False
            logger.debug("%s store closed", self.name)
        finally:
            self._close_fut.set_result(None)

    async def _close_backend(self) -> None:
        """Close readers, connections, locks (after the writer has stopped)."""
