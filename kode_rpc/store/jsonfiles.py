"""JSON-lines implementation of the `Store` interface: a folder you can read and diff by hand.

    <dir>/kode-store.json          {"format": "kode-rpc json store", "schemaVersion": 1}
    <dir>/kode-store.lock          {"pid": ..., "host": ...} of the process that has the store open
    <dir>/agents/<agent id>/
        agent.jsonl                the agent row ({"op": "create", ...}), then {"op": "update", ...} per change
        events.jsonl               one event per line: seq, ts, channel, turnId, type, and the envelope as sent
        messages.jsonl             one message per line
        tool_calls.jsonl           every state change of every call (the last line of a call id wins)
        approvals.jsonl            every change of every approval (the last line of an id wins)
        turns.jsonl                every change of every turn (the last line of an id wins)
        todos.jsonl                the whole list per change (the last line wins)

Every file is append-only: one line per change, written as it happens (the
shared group-commit writer appends a batch's lines to each file with one
`write`), so a crash leaves a prefix; a torn last line is cut off when the agent
is next read. An id with capital letters gets a `~<hash>` suffix on its folder,
so case-insensitive file systems cannot merge two agents.

`agent.jsonl` is not appended per event: an agent's `last_seq` and `message_count`
are its recorded values raised to what `events.jsonl` and `messages.jsonl` hold (the
other stores raise them in the same transaction; the result is the same).

One process per folder: `kode-store.lock` is locked (flock / msvcrt) while the
store is open and names its owner; a second process is refused with
StoreLocked. The lock goes with the process, so after a crash the next server
opens the folder at once. Leases are therefore kept in memory only, with the
same rule as SQLite (`lease.py`).

The process that owns the folder keeps agents it has read in memory (at most
`cache_agents` of them), so reads do not re-parse files; reads hand out copies of
the JSON parts, so a caller's changes never reach the cache.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

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
    StoreLocked,
    ToolAuditRow,
    ToolCallRow,
    TurnRow,
    check_agent_fields,
)
from .common import WriterStore, dumps, health_model, metrics_model, utc_now_iso
from .consistency import ConsistencyView
from .lease import lease_is_free
from .writer import KIND_DELETE, GroupCommitWriter, Result, WriteItem

if TYPE_CHECKING:
    from typing import Unpack

    from ..protocol.system import StoreHealth, StoreMetrics
    from .base import AgentFields

__all__ = ["JsonStore", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "kode-rpc json store"
MAX_BATCH = 256
_ENVELOPE = ',"envelope":'
_FILES = ("agent.jsonl", "events.jsonl", "messages.jsonl", "tool_calls.jsonl", "approvals.jsonl", "turns.jsonl",
          "todos.jsonl")
_AGENT_KEYS = {"state": "state", "updated_at": "updatedAt", "last_seq": "lastSeq", "message_count": "messageCount",
               "config": "config", "runtime": "runtime", "metadata": "metadata"}


def folder_name(agent_id: str) -> str:
    """The agent's folder: the id itself, plus `~<hash>` when it has capitals (case-insensitive file systems)."""
    if agent_id.lower() == agent_id:
        return agent_id
    return f"{agent_id}~{hashlib.sha256(agent_id.encode()).hexdigest()[:8]}"


def _check_id(agent_id: str) -> None:
    if (not agent_id or len(agent_id) > 200 or agent_id[0] == "." or "~" in agent_id
            or any(c in agent_id for c in '/\\:*?"<>|\x00') or not agent_id.isprintable()):
        raise StoreError(f"agent id {agent_id!r} cannot name a folder of the JSON store")


# ------------------------------------------------------------------ line coding


def _event_line(r: EventRow) -> str:
    head = dumps({"seq": r.seq, "ts": r.ts, "channel": r.channel, "turnId": r.turn_id, "type": r.type})
    if "\n" in r.json or "\r" in r.json:
        return head[:-1] + ',"envelopeText":' + dumps(r.json) + "}"
    return head[:-1] + _ENVELOPE + r.json + "}"


def _event_from(agent_id: str, line: str) -> EventRow:
    cut = line.find(_ENVELOPE)
    if cut == -1:
        data = json.loads(line)
        text = data["envelopeText"]
    else:
        data = json.loads(line[:cut] + "}")
        text = line[cut + len(_ENVELOPE):-1]
    return EventRow(agent_id, int(data["seq"]), data["ts"], data["channel"], data.get("turnId"), data["type"], text)


def _agent_line(op: str, row: AgentRow) -> str:
    return dumps({"op": op, "agentId": row.agent_id, "templateId": row.template_id, "createdAt": row.created_at,
                  "updatedAt": row.updated_at, "state": row.state, "lastSeq": row.last_seq,
                  "messageCount": row.message_count, "config": row.config, "runtime": row.runtime,
                  "metadata": row.metadata})


def _message_line(r: MessageRow) -> str:
    return dumps({"index": r.index, "role": r.role, "turnId": r.turn_id, "createdAt": r.created_at,
                  "content": r.content})


def _tool_line(r: ToolCallRow, ts: str, note: str | None) -> str:
    return dumps({"callId": r.call_id, "turnId": r.turn_id, "step": r.step, "name": r.name, "input": r.input,
                  "state": r.state, "result": r.result, "error": r.error, "startedAt": r.started_at,
                  "durationMs": r.duration_ms, "updatedAt": r.updated_at, "ts": ts, "note": note})


def _approval_line(r: ApprovalRow) -> str:
    return dumps({"approvalId": r.approval_id, "callId": r.call_id, "turnId": r.turn_id, "status": r.status,
                  "request": r.request, "createdAt": r.created_at, "decidedBy": r.decided_by, "note": r.note,
                  "decidedAt": r.decided_at})


def _turn_line(r: TurnRow) -> str:
    return dumps({"turnId": r.turn_id, "messageIndex": r.message_index, "status": r.status,
                  "createdAt": r.created_at, "step": r.step, "reason": r.reason, "message": r.message})


def _fresh(value: Any) -> Any:
    """A JSON value the caller may change without touching the cache (or the cache the caller's)."""
    return json.loads(dumps(value)) if isinstance(value, (dict, list)) else value


def _fresh_message(m: MessageRow) -> MessageRow:
    return MessageRow(m.agent_id, m.index, m.role, _fresh(m.content), m.turn_id, m.created_at)


def _fresh_approval(a: ApprovalRow) -> ApprovalRow:
    return ApprovalRow(a.agent_id, a.approval_id, a.call_id, a.turn_id, a.status, _fresh(a.request), a.created_at,
                       a.decided_by, a.note, a.decided_at)


def _fresh_turn(t: TurnRow) -> TurnRow:
    return TurnRow(t.agent_id, t.turn_id, t.message_index, t.status, t.created_at, t.step, t.reason,
                   _fresh(t.message))


def _copy_row(row: AgentRow) -> AgentRow:
    return AgentRow(row.agent_id, row.template_id, row.created_at, row.updated_at, row.state, row.last_seq,
                    row.message_count, json.loads(dumps(row.config)), json.loads(dumps(row.runtime)),
                    json.loads(dumps(row.metadata)))


# ------------------------------------------------------------------ agent state


@dataclass
class _Agent:
    """One agent as read from its folder (the owner process's cache)."""

    row: AgentRow
    recorded_seq: int
    recorded_msgs: int
    events: dict[int, EventRow] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    """Sorted keys of `events`."""
    messages: dict[int, MessageRow] = field(default_factory=dict)
    tool_calls: dict[str, ToolCallRow] = field(default_factory=dict)
    audit: list[ToolAuditRow] = field(default_factory=list)
    approvals: dict[str, ApprovalRow] = field(default_factory=dict)
    turns: dict[str, TurnRow] = field(default_factory=dict)
    todos: list[dict[str, Any]] = field(default_factory=list)

    def add_event(self, r: EventRow) -> None:
        self.events[r.seq] = r
        if not self.seqs or r.seq > self.seqs[-1]:
            self.seqs.append(r.seq)
        else:
            bisect.insort(self.seqs, r.seq)

    def current_row(self) -> AgentRow:
        """The row with `last_seq` / `message_count` raised to what is stored (never lowered)."""
        row = _copy_row(self.row)
        row.last_seq = max(self.recorded_seq, self.seqs[-1] if self.seqs else 0)
        row.message_count = max(self.recorded_msgs, max(self.messages) + 1 if self.messages else 0)
        return row


def _read_lines(path: str, repair: bool) -> list[str]:
    """A file's complete lines; a torn last line (a crash mid-write) is cut off (and, with `repair`, truncated)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - keep)
        data = data[:keep]
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(keep)
    return [line for line in data.decode("utf-8", errors="replace").split("\n") if line]


def _load_agent(folder: str, repair: bool) -> _Agent | None:
    lines = _read_lines(os.path.join(folder, "agent.jsonl"), repair)
    if not lines:
        return None
    first = json.loads(lines[0])
    row = AgentRow(first["agentId"], first["templateId"], first["createdAt"], first["updatedAt"], first["state"],
                   int(first.get("lastSeq", 0)), int(first.get("messageCount", 0)), first.get("config") or {},
                   first.get("runtime") or {}, first.get("metadata") or {})
    agent = _Agent(row, row.last_seq, row.message_count)
    for line in lines[1:]:
        _apply_update(agent, json.loads(line))
    agent_id = row.agent_id

    def each(name: str, fn: Callable[[str], None]) -> None:
        for number, line in enumerate(_read_lines(os.path.join(folder, name), repair), 1):
            try:
                fn(line)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("%s line %d of %s is unreadable (%s); skipped", name, number, folder, exc)

    each("events.jsonl", lambda line: agent.add_event(_event_from(agent_id, line)))

    def message(line: str) -> None:
        d = json.loads(line)
        agent.messages[int(d["index"])] = MessageRow(agent_id, int(d["index"]), d["role"], d["content"],
                                                     d.get("turnId"), d["createdAt"])

    def tool(line: str) -> None:
        d = json.loads(line)
        agent.tool_calls[d["callId"]] = ToolCallRow(
            agent_id, d["callId"], d["turnId"], int(d["step"]), d["name"], d["input"], d["state"], d.get("result"),
            d.get("error"), d.get("startedAt"), d.get("durationMs"), d.get("updatedAt") or "")
        agent.audit.append(ToolAuditRow(agent_id, d["callId"], d.get("ts") or d.get("updatedAt") or "", d["state"],
                                        d.get("note")))

    def approval(line: str) -> None:
        d = json.loads(line)
        agent.approvals[d["approvalId"]] = ApprovalRow(
            agent_id, d["approvalId"], d["callId"], d["turnId"], d["status"], d["request"], d["createdAt"],
            d.get("decidedBy"), d.get("note"), d.get("decidedAt"))

    def turn(line: str) -> None:
        d = json.loads(line)
        agent.turns[d["turnId"]] = TurnRow(agent_id, d["turnId"], int(d["messageIndex"]), d["status"],
                                           d["createdAt"], int(d.get("step", 0)), d.get("reason"), d.get("message"))

    def todos(line: str) -> None:
        agent.todos = list(json.loads(line)["todos"])

    each("messages.jsonl", message)
    each("tool_calls.jsonl", tool)
    each("approvals.jsonl", approval)
    each("turns.jsonl", turn)
    each("todos.jsonl", todos)
    return agent


def _apply_update(agent: _Agent, d: dict[str, Any]) -> None:
    row = agent.row
    if "state" in d:
        row.state = d["state"]
    if "updatedAt" in d:
        row.updated_at = d["updatedAt"]
    if "config" in d:
        row.config = d["config"]
    if "runtime" in d:
        row.runtime = d["runtime"]
    if "metadata" in d:
        row.metadata = d["metadata"]
    if "lastSeq" in d:
        agent.recorded_seq = int(d["lastSeq"])
    if "messageCount" in d:
        agent.recorded_msgs = int(d["messageCount"])


class _Tx:
    """One write item's changes: staged, then applied to memory and the batch's file buffers
    only when the item succeeded (so a failing item changes nothing)."""

    def __init__(self, store: JsonStore) -> None:
        self.store = store
        self.lines: list[tuple[str, bytes]] = []
        self.changes: list[Callable[[], None]] = []

    def append(self, agent_id: str, name: str, line: str) -> None:
        try:
            data = line.encode("utf-8") + b"\n"
        except UnicodeEncodeError as exc:  # a lone surrogate: no file (and no other store) can hold it
            raise StoreError(f"write failed: {exc}") from None
        self.lines.append((os.path.join(self.store._folder(agent_id), name), data))

    def then(self, fn: Callable[[], None]) -> None:
        self.changes.append(fn)


# ------------------------------------------------------------------ the store


class JsonStore(WriterStore):
    """The store in a folder of JSON-lines files; see the module docstring."""

    name = "json"

    def __init__(self, path: str, cache_agents: int = 128) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.display_url = "json://" + self.path
        self.cache_agents = max(1, cache_agents)
        self._agents_dir = os.path.join(self.path, "agents")
        self._lock = threading.RLock()
        self._ids: set[str] = set()
        """Every agent id in the folder (read at open)."""
        self._cache: OrderedDict[str, _Agent] = OrderedDict()
        self._buffers: dict[str, list[bytes]] = {}
        """Lines of the batch being written, per file (writer thread, under `_lock`)."""
        self._leases: dict[str, tuple[int, str, str, float]] = {}
        self._lock_fd: int | None = None
        self._readers: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Lock the folder (StoreLocked when another process has it), check its format, index it."""
        if self._closing:
            raise StoreError("store is closed")
        if self._opened:
            return
        await asyncio.to_thread(self._open_folder)
        writer: GroupCommitWriter[JsonStore] = GroupCommitWriter(
            "kode-store-writer", lambda: self, lambda conn, items: self._run_batch(conn, items), lambda conn: None,
            self._closed_error, MAX_BATCH)
        try:
            await writer.start()
        except BaseException:
            self._unlock_folder()
            raise
        self._writer = writer
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kode-store-read")
        self._opened = True
        self.schema_version = SCHEMA_VERSION

    def _open_folder(self) -> None:
        try:
            os.makedirs(self._agents_dir, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the JSON store {self.path}: {exc}") from None
        self._lock_folder()
        try:
            marker = os.path.join(self.path, "kode-store.json")
            if os.path.exists(marker):
                with open(marker, encoding="utf-8") as fh:
                    info = json.load(fh)
                version = int(info.get("schemaVersion", 0))
                if version > SCHEMA_VERSION:
                    raise SchemaTooNew(version, SCHEMA_VERSION, "json store")
            else:
                tmp = marker + ".tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(json.dumps({"format": FORMAT, "schemaVersion": SCHEMA_VERSION}) + "\n")
                os.replace(tmp, marker)
            for name in os.listdir(self._agents_dir):
                if name.startswith("."):
                    continue
                agent_id = name.split("~", 1)[0]
                if folder_name(agent_id) != name:
                    continue
                agent_file = os.path.join(self._agents_dir, name, "agent.jsonl")
                if os.path.exists(agent_file) and os.path.getsize(agent_file) > 0:
                    self._ids.add(agent_id)
            shutil.rmtree(os.path.join(self.path, ".trash"), ignore_errors=True)
        except BaseException:
            self._unlock_folder()
            raise

    def _lock_folder(self) -> None:
        path = os.path.join(self.path, "kode-store.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if sys.platform == "win32":
                import msvcrt

                os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the owner text, which stays readable
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid, host = 0, "unknown"
            try:
                with open(path, encoding="utf-8") as fh:
                    owner = json.loads(fh.read() or "{}")
                pid, host = int(owner.get("pid", 0)), str(owner.get("host", "unknown"))
            except (OSError, ValueError):
                pass
            raise StoreLocked(self.path, pid, host) from None
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now_iso()})
                      + "\n").encode())
        self._lock_fd = fd

    def _unlock_folder(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if sys.platform != "win32":
                import fcntl

                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(fd)

    async def _close_backend(self) -> None:
        if self._readers is not None:
            readers, self._readers = self._readers, None
            await asyncio.to_thread(readers.shutdown, True)
        self._unlock_folder()
        with self._lock:
            self._cache.clear()

    # ----------------------------------------------------------- agent cache

    def _folder(self, agent_id: str) -> str:
        return os.path.join(self._agents_dir, folder_name(agent_id))

    def _get(self, agent_id: str) -> _Agent | None:
        """The agent's state (read from its folder on first use); caller holds `_lock`."""
        agent = self._cache.get(agent_id)
        if agent is not None:
            self._cache.move_to_end(agent_id)
            return agent
        if agent_id not in self._ids:
            return None
        agent = _load_agent(self._folder(agent_id), repair=True)
        if agent is None:
            self._ids.discard(agent_id)
            return None
        self._remember(agent_id, agent)
        return agent

    def _remember(self, agent_id: str, agent: _Agent) -> None:
        self._cache[agent_id] = agent
        self._cache.move_to_end(agent_id)
        while len(self._cache) > self.cache_agents:
            self._cache.popitem(last=False)  # everything of it is on disk; read again when needed

    # --------------------------------------------------------------- writer

    def _run_batch(self, _conn: JsonStore, items: list[WriteItem]) -> list[Result]:
        """Each item staged and applied in order, then one append per touched file."""
        t0 = time.perf_counter()
        results: list[Result] = []
        with self._lock:
            self._buffers = {}
            for item in items:
                assert item.fn is not None
                tx = _Tx(self)
                try:
                    value = item.fn(tx)
                except Exception as exc:
                    results.append((item.fut, None, exc if isinstance(exc, StoreError) else StoreError(
                        f"write failed: {exc}")))
                    continue
                try:
                    for change in tx.changes:
                        change()
                except OSError as exc:
                    logger.error("store write failed: %s", exc)
                    self._cache.clear()  # a change half made: read the files again
                    results.append((item.fut, None, StoreError(f"write failed: {exc}")))
                    continue
                for path, line in tx.lines:
                    self._buffers.setdefault(path, []).append(line)
                results.append((item.fut, value, None))
            try:
                # agent.jsonl first: a folder is an agent only once its first line is there.
                for path in sorted(self._buffers, key=lambda p: not p.endswith("agent.jsonl")):
                    data = b"".join(self._buffers[path])
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                    finally:
                        os.close(fd)
            except OSError as exc:
                logger.error("store write batch of %d items failed: %s", len(items), exc)
                self._cache.clear()  # memory ran ahead of the files: read them again
                self._buffers = {}
                return [(item.fut, None, StoreError(f"write failed: {exc}")) for item in items]
            self._buffers = {}
        self._stats.batch(items, results, (time.perf_counter() - t0) * 1000.0)
        return results

    def _drop_buffers(self, agent_id: str) -> None:
        prefix = self._folder(agent_id) + os.sep
        self._buffers = {p: v for p, v in self._buffers.items() if not p.startswith(prefix)}

    def _need(self, agent_id: str) -> _Agent:
        agent = self._get(agent_id)
        if agent is None:
            raise StoreError(f"no such agent: {agent_id}")
        return agent

    def _new_agent(self, tx: _Tx, row: AgentRow) -> _Agent:
        """Stage the creation of `row`'s folder; AgentExists when the id is taken."""
        _check_id(row.agent_id)
        if self._get(row.agent_id) is not None:
            raise AgentExists(row.agent_id)
        folder = self._folder(row.agent_id)
        agent = _Agent(_copy_row(row), row.last_seq, row.message_count)

        def create() -> None:
            self._drop_buffers(row.agent_id)
            if os.path.isdir(folder):  # a leftover of a crash before its first line
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
            self._ids.add(row.agent_id)
            self._remember(row.agent_id, agent)

        tx.then(create)
        tx.append(row.agent_id, "agent.jsonl", _agent_line("create", row))
        return agent

    # --------------------------------------------------------------- writes

    def create_agent(self, row: AgentRow) -> asyncio.Future[None]:
        row = _copy_row(row)
        return self._enqueue(lambda tx: self._new_agent(tx, row) and None, agent_id=row.agent_id)

    def update_agent(self, agent_id: str, **fields: Unpack[AgentFields]) -> asyncio.Future[None]:
        """Append an update line; unknown keys raise ValueError here; a missing agent is a no-op."""
        check_agent_fields(dict(fields))
        change = {_AGENT_KEYS[k]: json.loads(dumps(v)) for k, v in fields.items()}

        def op(tx: _Tx) -> None:
            agent = self._get(agent_id)
            if agent is None or not change:
                return
            tx.append(agent_id, "agent.jsonl", dumps({"op": "update", **change}))
            tx.then(lambda: _apply_update(agent, change))

        return self._enqueue(op, agent_id=agent_id)

    def delete_agent(self, agent_id: str) -> asyncio.Future[bool]:
        def op(tx: _Tx) -> bool:
            existed = self._get(agent_id) is not None

            def remove() -> None:
                self._drop_buffers(agent_id)
                self._ids.discard(agent_id)
                self._cache.pop(agent_id, None)
                self._leases.pop(agent_id, None)
                folder = self._folder(agent_id)
                if os.path.isdir(folder):
                    trash = os.path.join(self.path, ".trash")
                    os.makedirs(trash, exist_ok=True)
                    target = os.path.join(trash, f"{folder_name(agent_id)}.{uuid.uuid4().hex[:8]}")
                    os.replace(folder, target)  # gone at once; the copy is removed below
                    shutil.rmtree(target, ignore_errors=True)

            tx.then(remove)
            return existed

        return self._enqueue(op, KIND_DELETE, agent_id)

    def append_events(self, rows: list[EventRow]) -> asyncio.Future[None]:
        rows = list(rows)
        lines = [_event_line(r) for r in rows]

        def op(tx: _Tx) -> None:
            seen: set[tuple[str, int]] = set()
            for r in rows:
                agent = self._need(r.agent_id)
                if r.seq in agent.events or (r.agent_id, r.seq) in seen:
                    raise StoreError(f"write failed: event {r.seq} of {r.agent_id} exists")
                seen.add((r.agent_id, r.seq))
            for r, line in zip(rows, lines):
                tx.append(r.agent_id, "events.jsonl", line)

            def apply() -> None:
                for r in rows:
                    self._need(r.agent_id).add_event(r)

            tx.then(apply)

        return self._enqueue(op, agent_id=rows[0].agent_id if rows else None)

    def append_message(self, row: MessageRow) -> asyncio.Future[None]:
        row = MessageRow(row.agent_id, row.index, row.role, json.loads(dumps(row.content)), row.turn_id,
                         row.created_at)
        line = _message_line(row)

        def op(tx: _Tx) -> None:
            agent = self._need(row.agent_id)
            if row.index in agent.messages:
                raise StoreError(f"write failed: message {row.index} of {row.agent_id} exists")
            tx.append(row.agent_id, "messages.jsonl", line)
            tx.then(lambda: agent.messages.__setitem__(row.index, row))

        return self._enqueue(op, agent_id=row.agent_id)

    def put_tool_call(self, row: ToolCallRow, note: str | None = None) -> asyncio.Future[None]:
        row = json_copy_tool(row)
        ts = row.updated_at or utc_now_iso()
        line = _tool_line(row, ts, note)

        def op(tx: _Tx) -> None:
            agent = self._need(row.agent_id)
            tx.append(row.agent_id, "tool_calls.jsonl", line)

            def apply() -> None:
                agent.tool_calls[row.call_id] = row
                agent.audit.append(ToolAuditRow(row.agent_id, row.call_id, ts, row.state, note))

            tx.then(apply)

        return self._enqueue(op, agent_id=row.agent_id)

    def put_approval(self, row: ApprovalRow) -> asyncio.Future[None]:
        row = ApprovalRow(row.agent_id, row.approval_id, row.call_id, row.turn_id, row.status,
                          json.loads(dumps(row.request)), row.created_at, row.decided_by, row.note, row.decided_at)
        line = _approval_line(row)

        def op(tx: _Tx) -> None:
            agent = self._need(row.agent_id)
            tx.append(row.agent_id, "approvals.jsonl", line)
            tx.then(lambda: agent.approvals.__setitem__(row.approval_id, row))

        return self._enqueue(op, agent_id=row.agent_id)

    def put_turn(self, row: TurnRow) -> asyncio.Future[None]:
        row = TurnRow(row.agent_id, row.turn_id, row.message_index, row.status, row.created_at, row.step, row.reason,
                      None if row.message is None else json.loads(dumps(row.message)))
        line = _turn_line(row)

        def op(tx: _Tx) -> None:
            agent = self._need(row.agent_id)
            tx.append(row.agent_id, "turns.jsonl", line)
            tx.then(lambda: agent.turns.__setitem__(row.turn_id, row))

        return self._enqueue(op, agent_id=row.agent_id)

    def set_todos(self, agent_id: str, todos: list[dict[str, Any]]) -> asyncio.Future[None]:
        copy = list(json.loads(dumps(todos)))
        line = dumps({"todos": copy})

        def op(tx: _Tx) -> None:
            agent = self._need(agent_id)
            tx.append(agent_id, "todos.jsonl", line)
            tx.then(lambda: setattr(agent, "todos", copy))

        return self._enqueue(op, agent_id=agent_id)

    def fork_agent(self, source_id: str, row: AgentRow, at_seq: int | None) -> asyncio.Future[None]:
        """As `SQLiteStore.fork_agent` (same rules, same result)."""
        from .sqlite import fork_envelope, fork_messages

        row = _copy_row(row)
        new_id = row.agent_id

        def op(tx: _Tx) -> None:
            source = self._get(source_id)
            if source is None:
                raise StoreError(f"no such agent: {source_id}")
            seqs = [s for s in source.seqs if at_seq is None or s <= at_seq]
            events = [source.events[s] for s in seqs]
            messages = [source.messages[i] for i in sorted(source.messages)]
            if at_seq is not None:
                messages = fork_messages(messages, events[-1].ts if events else None, lambda m: m.index,
                                         lambda m: m.created_at)
            row.last_seq = events[-1].seq if events else 0
            row.message_count = len(messages)
            agent = self._new_agent(tx, row)
            copied = [EventRow(new_id, e.seq, e.ts, e.channel, e.turn_id, e.type, fork_envelope(e.json, new_id))
                      for e in events]
            msgs = [MessageRow(new_id, m.index, m.role, m.content, m.turn_id, m.created_at) for m in messages]
            for e in copied:
                tx.append(new_id, "events.jsonl", _event_line(e))
                agent.add_event(e)
            for m in msgs:
                tx.append(new_id, "messages.jsonl", _message_line(m))
                agent.messages[m.index] = m
            if source.todos:
                agent.todos = list(json.loads(dumps(source.todos)))
                tx.append(new_id, "todos.jsonl", dumps({"todos": agent.todos}))

        return self._enqueue(op, agent_id=new_id)

    def import_agent(self, dump: AgentDump) -> asyncio.Future[None]:
        agent_id = dump.row.agent_id
        row = _copy_row(dump.row)

        def op(tx: _Tx) -> None:
            agent = self._new_agent(tx, row)
            for e in dump.events:
                tx.append(agent_id, "events.jsonl", _event_line(e))
                agent.add_event(e)
            for m in dump.messages:
                tx.append(agent_id, "messages.jsonl", _message_line(m))
                agent.messages[m.index] = _fresh_message(m)
            audit_by_call: dict[str, list[ToolAuditRow]] = {}
            for a in dump.tool_audit:
                audit_by_call.setdefault(a.call_id, []).append(a)
            for c in dump.tool_calls:
                history = audit_by_call.pop(c.call_id, [])
                for a in history[:-1]:  # earlier states: the call as it is now, with the old state/ts/note
                    past = json_copy_tool(c)
                    past.state = a.state
                    tx.append(agent_id, "tool_calls.jsonl", _tool_line(past, a.ts, a.note))
                last = history[-1] if history else None
                tx.append(agent_id, "tool_calls.jsonl",
                          _tool_line(c, last.ts if last else (c.updated_at or utc_now_iso()), last.note if last else None))
                agent.tool_calls[c.call_id] = json_copy_tool(c)
                agent.audit.extend(history or [ToolAuditRow(agent_id, c.call_id, c.updated_at, c.state, None)])
            for a in dump.approvals:
                tx.append(agent_id, "approvals.jsonl", _approval_line(a))
                agent.approvals[a.approval_id] = _fresh_approval(a)
            for t in dump.turns:
                tx.append(agent_id, "turns.jsonl", _turn_line(t))
                agent.turns[t.turn_id] = _fresh_turn(t)
            if dump.todos:
                agent.todos = _fresh(dump.todos)
                tx.append(agent_id, "todos.jsonl", dumps({"todos": agent.todos}))

        return self._enqueue(op, agent_id=agent_id)

    # --------------------------------------------------------------- leases

    def _lease_op(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Leases live in memory (the folder lock makes this the only process); ordered with writes."""
        return self._enqueue(lambda tx: fn())

    def acquire_lease(self, agent_id: str, owner: LeaseOwner, ttl_s: float) -> asyncio.Future[None]:
        def fn() -> None:
            now = time.time()
            held = self._leases.get(agent_id)
            if held is not None and not lease_is_free(*held, owner.pid, owner.host, owner.token, now):
                raise LeaseHeld(agent_id, held[0], held[1])
            self._leases[agent_id] = (owner.pid, owner.host, owner.token, now + ttl_s)

        return self._lease_op(fn)

    def renew_leases(self, agent_ids: list[str], owner: LeaseOwner, ttl_s: float) -> asyncio.Future[list[str]]:
        ids = list(agent_ids)

        def fn() -> list[str]:
            expires = time.time() + ttl_s
            lost = []
            for agent_id in ids:
                held = self._leases.get(agent_id)
                if held is None or held[2] != owner.token:
                    lost.append(agent_id)
                else:
                    self._leases[agent_id] = (held[0], held[1], held[2], expires)
            return lost

        return self._lease_op(fn)

    def release_lease(self, agent_id: str, owner: LeaseOwner) -> asyncio.Future[None]:
        def fn() -> None:
            held = self._leases.get(agent_id)
            if held is not None and held[2] == owner.token:
                del self._leases[agent_id]

        return self._lease_op(fn)

    # ---------------------------------------------------------------- reads

    async def _read(self, fn: Callable[[], Any], kind: str | None) -> Any:
        if not self._opened or self._readers is None:
            raise self._closed_error()
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn, kind)

    def _run_read(self, fn: Callable[[], Any], kind: str | None) -> Any:
        t0 = time.perf_counter()
        try:
            with self._lock:
                return fn()
        except (OSError, ValueError) as exc:
            raise StoreError(f"read failed: {exc}") from exc
        finally:
            self._stats.read(kind, (time.perf_counter() - t0) * 1000.0)

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        def fn() -> AgentRow | None:
            agent = self._get(agent_id)
            return None if agent is None else agent.current_row()

        result: AgentRow | None = await self._read(fn, "load")
        return result

    async def load_agent_snapshot(self, agent_id: str) -> AgentSnapshot | None:
        def fn() -> AgentSnapshot | None:
            agent = self._get(agent_id)
            if agent is None:
                return None
            row = agent.current_row()
            turns = [t for t in agent.turns.values() if t.status in ("queued", "running")]
            open_ids = {t.turn_id for t in turns}
            since = max(0, row.last_seq - RECENT_EVENTS)
            return AgentSnapshot(
                row=row,
                messages=[_fresh_message(agent.messages[i]) for i in sorted(agent.messages)],
                todos=_fresh(agent.todos),
                turns=[_fresh_turn(t) for t in turns],
                tool_calls=[json_copy_tool(c) for c in agent.tool_calls.values() if c.turn_id in open_ids],
                pending_approvals=[_fresh_approval(a) for a in agent.approvals.values() if a.status == "pending"],
                recent_events=[agent.events[s] for s in agent.seqs[bisect.bisect_right(agent.seqs, since):]],
            )

        result: AgentSnapshot | None = await self._read(fn, "load")
        return result

    async def export_agent(self, agent_id: str) -> AgentDump | None:
        def fn() -> AgentDump | None:
            agent = self._get(agent_id)
            if agent is None:
                return None
            return AgentDump(
                row=agent.current_row(),
                events=[agent.events[s] for s in agent.seqs],
                messages=[_fresh_message(agent.messages[i]) for i in sorted(agent.messages)],
                tool_calls=[json_copy_tool(c) for c in agent.tool_calls.values()],
                tool_audit=[ToolAuditRow(a.agent_id, a.call_id, a.ts, a.state, a.note) for a in agent.audit],
                approvals=[_fresh_approval(a) for a in agent.approvals.values()],
                turns=[_fresh_turn(t) for t in agent.turns.values()],
                todos=_fresh(agent.todos),
            )

        result: AgentDump | None = await self._read(fn, "load")
        return result

    async def list_agents(self, prefix: str | None, limit: int, cursor: str | None
                          ) -> tuple[list[AgentRow], str | None]:
        if limit <= 0:
            return [], None

        def fn() -> tuple[list[AgentRow], str | None]:
            ids = sorted(i for i in self._ids if (cursor is None or i > cursor) and (not prefix or i.startswith(prefix)))
            rows: list[AgentRow] = []
            for agent_id in ids:
                agent = self._get(agent_id)
                if agent is None:
                    continue
                if len(rows) == limit:
                    return rows, rows[-1].agent_id
                rows.append(agent.current_row())
            return rows, None

        result: tuple[list[AgentRow], str | None] = await self._read(fn, "query")
        return result

    async def load_messages(self, agent_id: str, limit: int | None = None, before: int | None = None
                            ) -> tuple[list[MessageRow], int]:
        def fn() -> tuple[list[MessageRow], int]:
            agent = self._get(agent_id)
            if agent is None:
                return [], 0
            indices = sorted(i for i in agent.messages if before is None or i < before)
            if limit is not None:
                indices = indices[len(indices) - limit:] if limit > 0 else []
            return [_fresh_message(agent.messages[i]) for i in indices], len(agent.messages)

        result: tuple[list[MessageRow], int] = await self._read(fn, "load")
        return result

    async def read_events(self, agent_id: str, since: int = 0, limit: int | None = None,
                          channels: list[str] | None = None) -> list[EventRow]:
        if channels is not None and not channels:
            return []
        wanted = None if channels is None else set(channels)

        def fn() -> list[EventRow]:
            agent = self._get(agent_id)
            if agent is None:
                return []
            out: list[EventRow] = []
            for seq in agent.seqs[bisect.bisect_right(agent.seqs, since):]:
                event = agent.events[seq]
                if wanted is not None and event.channel not in wanted:
                    continue
                if limit is not None and len(out) >= limit:
                    break
                out.append(event)
            return out

        result: list[EventRow] = await self._read(fn, "query")
        return result

    async def read_event_json(self, agent_id: str, since: int = 0) -> list[tuple[int, str]]:
        def fn() -> list[tuple[int, str]]:
            agent = self._get(agent_id)
            if agent is None:
                return []
            return [(s, agent.events[s].json) for s in agent.seqs[bisect.bisect_right(agent.seqs, since):]]

        result: list[tuple[int, str]] = await self._read(fn, "query")
        return result

    async def load_tool_calls(self, agent_id: str, turn_id: str | None = None) -> list[ToolCallRow]:
        def fn() -> list[ToolCallRow]:
            agent = self._get(agent_id)
            if agent is None:
                return []
            return [json_copy_tool(c) for c in agent.tool_calls.values() if turn_id is None or c.turn_id == turn_id]

        result: list[ToolCallRow] = await self._read(fn, "load")
        return result

    async def load_approvals(self, agent_id: str, status: str | None = None) -> list[ApprovalRow]:
        def fn() -> list[ApprovalRow]:
            agent = self._get(agent_id)
            if agent is None:
                return []
            return [_fresh_approval(a) for a in agent.approvals.values() if status is None or a.status == status]

        result: list[ApprovalRow] = await self._read(fn, "load")
        return result

    async def load_turns(self, agent_id: str, statuses: list[str] | None = None) -> list[TurnRow]:
        if statuses is not None and not statuses:
            return []

        def fn() -> list[TurnRow]:
            agent = self._get(agent_id)
            if agent is None:
                return []
            return [_fresh_turn(t) for t in agent.turns.values() if statuses is None or t.status in statuses]

        result: list[TurnRow] = await self._read(fn, "load")
        return result

    async def get_todos(self, agent_id: str) -> list[dict[str, Any]]:
        def fn() -> list[dict[str, Any]]:
            agent = self._get(agent_id)
            return [] if agent is None else list(_fresh(agent.todos))

        result: list[dict[str, Any]] = await self._read(fn, "load")
        return result

    # -------------------------------------------------------- observability

    async def check_health(self) -> StoreHealth:
        """The folder lock held (connected) and a write test in the folder (writable)."""

        def probe() -> tuple[bool, float, bool, str | None]:
            t0 = time.perf_counter()
            connected = self._lock_fd is not None and os.path.isdir(self._agents_dir)
            latency = (time.perf_counter() - t0) * 1000.0
            writable = False
            try:
                probe_path = os.path.join(self.path, f".kode-health-{uuid.uuid4().hex[:8]}")
                with open(probe_path, "w") as fh:
                    fh.write("x")
                os.remove(probe_path)
                writable = True
            except OSError:
                logger.warning("store health: %s is not writable", self.path, exc_info=True)
            return connected, latency, writable, None if connected else "store is not open"

        connected, latency, writable, error = await asyncio.to_thread(probe)
        return health_model(connected, latency, writable, error)

    async def consistency_view(self, agent_id: str) -> ConsistencyView | None:
        def fn() -> ConsistencyView | None:
            agent = self._get(agent_id)
            if agent is None:
                return None
            return ConsistencyView(
                last_seq=max(agent.recorded_seq, agent.seqs[-1] if agent.seqs else 0),
                message_count=max(agent.recorded_msgs, max(agent.messages) + 1 if agent.messages else 0),
                seqs=list(agent.seqs),
                messages=[(i, m.role, m.content, m.turn_id) for i, m in sorted(agent.messages.items())],
                tool_states={c.call_id: c.state for c in agent.tool_calls.values()},
                open_turns={t.turn_id for t in agent.turns.values() if t.status in ("queued", "running")},
                pending_approvals=[(a.approval_id, a.call_id) for a in agent.approvals.values()
                                   if a.status == "pending"],
            )

        result: ConsistencyView | None = await self._read(fn, "query")
        return result

    async def collect_metrics(self) -> StoreMetrics:
        def fn() -> tuple[int, int, int]:
            messages = 0
            for agent_id in self._ids:
                cached = self._cache.get(agent_id)
                if cached is not None:
                    messages += len(cached.messages)
                else:
                    messages += len(_read_lines(os.path.join(self._folder(agent_id), "messages.jsonl"), False))
            size = 0
            for root, _dirs, files in os.walk(self.path):
                for name in files:
                    try:
                        size += os.path.getsize(os.path.join(root, name))
                    except OSError:
                        pass
            return len(self._ids), messages, size

        agents, messages, size = await self._read(fn, None)
        return metrics_model(self._stats, agents, messages, size)


def json_copy_tool(row: ToolCallRow) -> ToolCallRow:
    """A tool call row whose JSON parts the caller can no longer change."""
    return ToolCallRow(row.agent_id, row.call_id, row.turn_id, row.step, row.name, json.loads(dumps(row.input)),
                       row.state, None if row.result is None else json.loads(dumps(row.result)), row.error,
                       row.started_at, row.duration_ms, row.updated_at)
