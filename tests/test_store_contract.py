"""The store contract: one suite, run against SQLite, the JSON folder store and a real PostgreSQL.

Every backend must behave the same through the `Store` interface (contract section
11: "one store test suite runs against all three"). PostgreSQL runs in a throwaway
cluster (`tests/pg.py`); each test gets an empty database, folder or file.
Backend-specific behaviour (who may run an agent across processes, outages, the
newer-schema refusal) is tested here too, per backend, at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.store.base import (
    AgentDump,
    AgentExists,
    AgentRow,
    ApprovalRow,
    EventRow,
    LeaseHeld,
    LeaseOwner,
    MessageRow,
    SchemaTooNew,
    Store,
    StoreError,
    StoreLocked,
    StoreUnavailable,
    ToolCallRow,
    TurnRow,
)
from kode_rpc.store.url import default_store_url, make_store, mask_url, parse_store_url, resolve_store_url, url_password

from .pg import PASSWORD, PgServer, pg_server  # noqa: F401  (pg_server is a fixture)

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
BACKENDS = ["sqlite", "json", "postgres"]


# --------------------------------------------------------------------- helpers


def ts(n: int) -> str:
    """Deterministic ISO-8601 UTC timestamps that sort like n."""
    return f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"


def agent(agent_id: str, **kw: Any) -> AgentRow:
    base: dict[str, Any] = dict(agent_id=agent_id, template_id="tpl", created_at=ts(0), updated_at=ts(0),
                                state="READY", last_seq=0, message_count=0, config={"model": "echo", "name": "ünïcode"},
                                runtime={"step": 0}, metadata={"k": "v"})
    base.update(kw)
    return AgentRow(**base)


def ev(agent_id: str, seq: int, channel: str = "progress", type_: str = "text_chunk", at: int | None = None,
       turn_id: str | None = "t1") -> EventRow:
    when = ts(seq if at is None else at)
    envelope = {"agentId": agent_id, "seq": seq, "ts": when, "channel": channel, "turnId": turn_id,
                "event": {"type": type_, "step": 1, "delta": f"chunk {seq} é \u2028 \\u0000"}}
    return EventRow(agent_id, seq, when, channel, turn_id, type_,
                    json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))


def msg(agent_id: str, index: int, role: str = "user", content: list[dict[str, Any]] | None = None,
        at: int | None = None, turn_id: str | None = "t1") -> MessageRow:
    return MessageRow(agent_id, index, role, content or [{"type": "text", "text": f"m{index}"}], turn_id,
                      ts(index if at is None else at))


def tool(agent_id: str, call_id: str, state: str, turn_id: str = "t1", **kw: Any) -> ToolCallRow:
    return ToolCallRow(agent_id=agent_id, call_id=call_id, turn_id=turn_id, step=1, name="bash_run",
                       input={"cmd": "ls"}, state=state, updated_at=kw.pop("updated_at", ts(1)), **kw)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def run_child(code: str, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(code), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=str(REPO))
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


@dataclass
class Backend:
    kind: str
    url: str
    tmp: Path
    pg: PgServer | None = None

    def make(self, url: str | None = None, **kw: Any) -> Store:
        return make_store(url or self.url, data_dir=str(self.tmp), **kw)

    async def open(self, url: str | None = None, **kw: Any) -> Store:
        store = self.make(url, **kw)
        await store.open()
        return store

    def set_schema_version(self, version: int) -> None:
        """Make the store look written by a newer program (behind its back)."""
        if self.kind == "sqlite":
            import sqlite3

            conn = sqlite3.connect(parse_store_url(self.url).path)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.close()
        elif self.kind == "json":
            marker = Path(parse_store_url(self.url).path) / "kode-store.json"
            marker.write_text(json.dumps({"format": "kode-rpc json store", "schemaVersion": version}))
        else:
            assert self.pg is not None
            self.pg.psql(f"UPDATE kode_schema SET version = {version}", self.db)

    @property
    def db(self) -> str:
        return self.url.rsplit("/", 1)[1].split("?")[0]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind = request.param
    if kind == "sqlite":
        return Backend(kind, default_store_url(str(tmp_path / "data")), tmp_path)
    if kind == "json":
        return Backend(kind, f"json://{tmp_path / 'store'}", tmp_path)
    pg: PgServer = request.getfixturevalue("pg_server")
    return Backend(kind, pg.url(pg.create_database()), tmp_path, pg)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()


# ------------------------------------------------------------------- agents


async def test_create_get_update_delete(store: Store) -> None:
    await store.create_agent(agent("a1"))
    assert await store.get_agent("a1") == agent("a1")
    assert await store.get_agent("nope") is None

    await store.update_agent("a1", state="WORKING", updated_at=ts(5), config={"model": "x"},
                             runtime={"bp": "READY"}, metadata={})
    got = await store.get_agent("a1")
    assert got is not None
    assert (got.state, got.updated_at, got.config, got.runtime, got.metadata, got.created_at) == (
        "WORKING", ts(5), {"model": "x"}, {"bp": "READY"}, {}, ts(0))
    await store.update_agent("ghost", state="READY")  # a missing agent: harmless no-op

    store.append_events([ev("a1", 1), ev("a1", 2)])
    store.append_message(msg("a1", 0))
    store.put_tool_call(tool("a1", "c1", "EXECUTING"))
    store.set_todos("a1", [{"id": "1"}])
    store.put_turn(TurnRow("a1", "t1", 0, "running", ts(1)))
    store.put_approval(ApprovalRow("a1", "ap1", "c1", "t1", "pending", {}, ts(1)))
    store.acquire_lease("a1", LeaseOwner(os.getpid(), HOST, "tok"), 30)
    assert await store.delete_agent("a1") is True
    assert await store.delete_agent("a1") is False
    assert await store.get_agent("a1") is None
    assert await store.read_events("a1") == []
    assert await store.load_messages("a1") == ([], 0)
    assert await store.load_tool_calls("a1") == []
    assert await store.get_todos("a1") == []
    assert await store.load_turns("a1") == []
    assert await store.load_approvals("a1") == []
    assert await store.export_agent("a1") is None
    # The id is free again, and nothing of the old agent comes back with it.
    await store.create_agent(agent("a1", template_id="new"))
    assert (await store.export_agent("a1")) == AgentDump(agent("a1", template_id="new"), [], [], [], [], [], [], [])


async def test_agent_exists_and_unknown_update_field(store: Store) -> None:
    await store.create_agent(agent("a1"))
    with pytest.raises(AgentExists) as info:
        await store.create_agent(agent("a1", template_id="other"))
    assert info.value.agent_id == "a1"
    got = await store.get_agent("a1")
    assert got is not None and got.template_id == "tpl"
    with pytest.raises(ValueError):
        store.update_agent("a1", bogus=1)  # type: ignore[call-arg]


async def test_list_agents_pagination_prefix_and_code_point_order(store: Store) -> None:
    for agent_id in ["b-2", "a-1", "a-3", "a-2", "c", "a-", "B", "Z9", "zé", "z"]:
        store.create_agent(agent(agent_id))
    await store.barrier()
    rows, cursor = await store.list_agents(None, 4, None)
    assert [r.agent_id for r in rows] == ["B", "Z9", "a-", "a-1"] and cursor == "a-1"
    rows, cursor = await store.list_agents(None, 4, cursor)
    assert [r.agent_id for r in rows] == ["a-2", "a-3", "b-2", "c"] and cursor == "c"
    rows, cursor = await store.list_agents(None, 4, cursor)
    assert [r.agent_id for r in rows] == ["z", "zé"] and cursor is None
    rows, cursor = await store.list_agents("a-", 2, None)
    assert [r.agent_id for r in rows] == ["a-", "a-1"] and cursor == "a-1"
    rows, cursor = await store.list_agents("a-", 2, cursor)
    assert [r.agent_id for r in rows] == ["a-2", "a-3"] and cursor is None
    assert [r.agent_id for r in (await store.list_agents("b", 10, None))[0]] == ["b-2"]
    assert await store.list_agents(None, 0, None) == ([], None)


async def test_ids_differing_only_in_case_are_two_agents(store: Store) -> None:
    await store.create_agent(agent("Agent"))
    await store.create_agent(agent("agent", template_id="lower"))
    store.append_events([ev("Agent", 1)])
    await store.append_events([ev("agent", 1), ev("agent", 2)])
    assert [e.seq for e in await store.read_events("Agent")] == [1]
    assert [e.seq for e in await store.read_events("agent")] == [1, 2]
    got = await store.get_agent("agent")
    assert got is not None and got.template_id == "lower"


# ------------------------------------------------------------------- events


async def test_events_since_limit_channels_order(store: Store) -> None:
    await store.create_agent(agent("a1"))
    await store.create_agent(agent("a2"))
    channels = ["progress", "control", "monitor"]
    store.append_events([ev("a1", s, channels[s % 3]) for s in range(6, 11)])  # out of order across calls
    store.append_events([ev("a1", s, channels[s % 3]) for s in range(1, 6)])
    await store.append_events([ev("a2", 1)])

    everything = await store.read_events("a1")
    assert [e.seq for e in everything] == list(range(1, 11))
    assert everything[0] == ev("a1", 1, channels[1])  # the envelope text comes back byte for byte
    assert [e.seq for e in await store.read_events("a1", since=7)] == [8, 9, 10]
    assert [e.seq for e in await store.read_events("a1", since=2, limit=3)] == [3, 4, 5]
    assert [e.seq for e in await store.read_events("a1", channels=["control"])] == [1, 4, 7, 10]
    assert [e.seq for e in await store.read_events("a1", channels=["control", "monitor"], since=4)] == [5, 7, 8, 10]
    assert await store.read_events("a1", channels=[]) == []
    assert [e.agent_id for e in await store.read_events("a2")] == ["a2"]
    assert await store.read_event_json("a1", 8) == [(9, ev("a1", 9, channels[0]).json), (10, ev("a1", 10, channels[1]).json)]
    got = await store.get_agent("a1")
    assert got is not None and got.last_seq == 10


async def test_duplicate_seq_fails_that_write_only(store: Store) -> None:
    await store.create_agent(agent("a1"))
    await store.append_events([ev("a1", 1)])
    # Queued together, so they share one batch: only the duplicate fails.
    before = store.append_events([ev("a1", 2)])
    dup = store.append_events([ev("a1", 3), ev("a1", 1)])
    after = store.append_events([ev("a1", 4)])
    await before
    with pytest.raises(StoreError):
        await dup
    await after
    assert [e.seq for e in await store.read_events("a1")] == [1, 2, 4]
    got = await store.get_agent("a1")
    assert got is not None and got.last_seq == 4


async def test_ten_thousand_events_intact_and_fast(store: Store, backend: Backend) -> None:
    await store.create_agent(agent("big"))
    rows = [ev("big", s, ["progress", "control", "monitor"][s % 3]) for s in range(1, 10_001)]
    t0 = time.perf_counter()
    await asyncio.gather(*[store.append_events(rows[i:i + 100]) for i in range(0, len(rows), 100)])
    write_s = time.perf_counter() - t0
    assert await store.read_events("big") == rows
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        got = await store.read_events("big")
        best = min(best, time.perf_counter() - t0)
    assert len(got) == 10_000
    limit = 0.1 if backend.kind != "postgres" else 0.25
    assert best < limit, f"{backend.kind}: read_events of 10,000 rows took {best * 1000:.1f} ms"
    print(f"\n{backend.kind}: 10,000 events written in {write_s * 1000:.0f} ms, read in {best * 1000:.1f} ms")


# ----------------------------------------------------------------- messages


async def test_messages_before_limit_total(store: Store) -> None:
    await store.create_agent(agent("a1"))
    for i in range(10):
        store.append_message(msg("a1", i, "user" if i % 2 == 0 else "assistant"))
    await store.barrier()
    rows, total = await store.load_messages("a1")
    assert total == 10 and [m.index for m in rows] == list(range(10))
    assert rows[3] == msg("a1", 3, "assistant")
    rows, total = await store.load_messages("a1", limit=3)
    assert total == 10 and [m.index for m in rows] == [7, 8, 9]
    rows, total = await store.load_messages("a1", before=5)
    assert total == 10 and [m.index for m in rows] == [0, 1, 2, 3, 4]
    rows, total = await store.load_messages("a1", limit=2, before=5)
    assert total == 10 and [m.index for m in rows] == [3, 4]
    got = await store.get_agent("a1")
    assert got is not None and got.message_count == 10
    with pytest.raises(StoreError):
        await store.append_message(msg("a1", 3))


# -------------------------------------------------- tools, approvals, turns


async def test_tool_call_upsert_and_audit(store: Store) -> None:
    await store.create_agent(agent("a1"))
    store.put_tool_call(tool("a1", "c1", "PENDING", updated_at=ts(1)))
    store.put_tool_call(tool("a1", "c2", "PENDING", turn_id="t2", updated_at=ts(2)))
    store.put_tool_call(tool("a1", "c1", "EXECUTING", started_at=ts(3), updated_at=ts(3)), note="started")
    await store.put_tool_call(tool("a1", "c1", "COMPLETED", started_at=ts(3), updated_at=ts(4), duration_ms=12,
                                   result={"ok": True, "data": "fïle"}, error="nul \x00 byte"), note="done")
    calls = await store.load_tool_calls("a1")
    assert [c.call_id for c in calls] == ["c1", "c2"]
    c1 = calls[0]
    assert (c1.state, c1.result, c1.duration_ms, c1.started_at, c1.updated_at, c1.input) == (
        "COMPLETED", {"ok": True, "data": "fïle"}, 12, ts(3), ts(4), {"cmd": "ls"})
    assert calls[1].result is None and calls[1].error is None
    assert [c.call_id for c in await store.load_tool_calls("a1", turn_id="t2")] == ["c2"]
    dump = await store.export_agent("a1")
    assert dump is not None
    assert [(a.call_id, a.ts, a.state, a.note) for a in dump.tool_audit] == [
        ("c1", ts(1), "PENDING", None), ("c2", ts(2), "PENDING", None),
        ("c1", ts(3), "EXECUTING", "started"), ("c1", ts(4), "COMPLETED", "done")]


async def test_approvals_by_status(store: Store) -> None:
    await store.create_agent(agent("a1"))
    request = {"approvalId": "ap1", "call": {"id": "c1"}, "title": "run ls"}
    store.put_approval(ApprovalRow("a1", "ap1", "c1", "t1", "pending", request, ts(1)))
    store.put_approval(ApprovalRow("a1", "ap2", "c2", "t1", "pending", {}, ts(2)))
    store.put_approval(ApprovalRow("a1", "ap3", "c3", "t1", "pending", {}, ts(3)))
    store.put_approval(ApprovalRow("a1", "ap1", "c1", "t1", "allow", request, ts(1), "client", "ok", ts(4)))
    await store.barrier()
    assert [a.approval_id for a in await store.load_approvals("a1")] == ["ap1", "ap2", "ap3"]
    assert [a.approval_id for a in await store.load_approvals("a1", "pending")] == ["ap2", "ap3"]
    assert await store.load_approvals("a1", "allow") == [
        ApprovalRow("a1", "ap1", "c1", "t1", "allow", request, ts(1), "client", "ok", ts(4))]


async def test_turns_in_creation_order(store: Store) -> None:
    await store.create_agent(agent("a1"))
    await store.create_agent(agent("a2"))
    store.put_turn(TurnRow("a1", "tz", 0, "queued", ts(1), message={"role": "user", "content": [{"type": "text"}]}))
    store.put_turn(TurnRow("a2", "tb", 0, "queued", ts(1)))
    store.put_turn(TurnRow("a1", "ta", 2, "queued", ts(2)))
    store.put_turn(TurnRow("a1", "tm", 4, "queued", ts(3)))
    store.put_turn(TurnRow("a1", "tz", 0, "done", ts(1), step=3, reason="completed"))
    store.put_turn(TurnRow("a1", "ta", 2, "running", ts(2), step=1))
    await store.barrier()
    turns = await store.load_turns("a1")
    assert [t.turn_id for t in turns] == ["tz", "ta", "tm"]
    assert turns[0] == TurnRow("a1", "tz", 0, "done", ts(1), 3, "completed")
    assert [t.turn_id for t in await store.load_turns("a1", ["queued", "running"])] == ["ta", "tm"]
    assert await store.load_turns("a1", []) == []


async def test_todos(store: Store) -> None:
    await store.create_agent(agent("a1"))
    assert await store.get_todos("a1") == []
    store.set_todos("a1", [{"id": "1", "content": "x", "status": "pending"}])
    await store.set_todos("a1", [{"id": "2", "content": "y", "status": "completed"}])
    assert await store.get_todos("a1") == [{"id": "2", "content": "y", "status": "completed"}]


async def test_writes_snapshot_their_arguments(store: Store) -> None:
    row = agent("a1")
    store.create_agent(row)
    todos = [{"id": "1"}]
    store.set_todos("a1", todos)
    content = [{"type": "text", "text": "before"}]
    store.append_message(MessageRow("a1", 0, "user", content, None, ts(0)))
    row.config["model"] = "changed"
    todos.append({"id": "2"})
    content[0]["text"] = "after"
    await store.barrier()
    got = await store.get_agent("a1")
    assert got is not None and got.config["model"] == "echo"
    assert await store.get_todos("a1") == [{"id": "1"}]
    assert (await store.load_messages("a1"))[0][0].content == [{"type": "text", "text": "before"}]


# ------------------------------------------------------------ snapshot, dump


async def test_load_agent_snapshot(store: Store) -> None:
    assert await store.load_agent_snapshot("missing") is None
    await store.create_agent(agent("a1"))
    store.append_events([ev("a1", s) for s in range(1, 31)])
    for i in range(3):
        store.append_message(msg("a1", i))
    store.set_todos("a1", [{"id": "1"}])
    store.put_turn(TurnRow("a1", "done1", 0, "done", ts(1), reason="completed"))
    store.put_turn(TurnRow("a1", "run1", 1, "running", ts(2), step=2))
    store.put_turn(TurnRow("a1", "q1", 2, "queued", ts(3), message={"role": "user", "content": []}))
    store.put_tool_call(tool("a1", "old", "COMPLETED", turn_id="done1"))
    store.put_tool_call(tool("a1", "c1", "APPROVAL_REQUIRED", turn_id="run1"))
    store.put_tool_call(tool("a1", "c2", "EXECUTING", turn_id="run1"))
    store.put_approval(ApprovalRow("a1", "ap0", "old", "done1", "allow", {}, ts(1)))
    store.put_approval(ApprovalRow("a1", "ap1", "c1", "run1", "pending", {"approvalId": "ap1"}, ts(2)))
    await store.update_agent("a1", state="PAUSED")
    snap = await store.load_agent_snapshot("a1")
    assert snap is not None
    assert (snap.row.state, snap.row.last_seq, snap.row.message_count) == ("PAUSED", 30, 3)
    assert [m.index for m in snap.messages] == [0, 1, 2] and snap.messages[1] == msg("a1", 1)
    assert snap.todos == [{"id": "1"}]
    assert [(t.turn_id, t.status) for t in snap.turns] == [("run1", "running"), ("q1", "queued")]
    assert snap.turns[1].message == {"role": "user", "content": []}
    assert [c.call_id for c in snap.tool_calls] == ["c1", "c2"] and [c.call_id for c in snap.calls_of("run1")] == [
        "c1", "c2"]
    assert [a.approval_id for a in snap.pending_approvals] == ["ap1"]
    assert [e.seq for e in snap.recent_events] == list(range(11, 31))
    assert snap.recent_events[-1] == ev("a1", 30)


async def test_export_import_round_trip_keeps_seqs(backend: Backend, store: Store, tmp_path: Path) -> None:
    await store.create_agent(agent("a1", runtime={"usage": {"inputTokens": 7, "outputTokens": 3}}))
    store.append_events([ev("a1", s) for s in range(1, 6)])
    store.append_message(msg("a1", 0))
    store.put_tool_call(tool("a1", "c1", "PENDING", updated_at=ts(1)))
    store.put_tool_call(tool("a1", "c1", "COMPLETED", updated_at=ts(2), result={"x": 1}), note="done")
    store.put_approval(ApprovalRow("a1", "ap1", "c1", "t1", "allow", {"r": 1}, ts(1), "client"))
    store.put_turn(TurnRow("a1", "t1", 0, "done", ts(1), 1, "completed"))
    await store.set_todos("a1", [{"id": "1"}])
    dump = await store.export_agent("a1")
    assert dump is not None and [e.seq for e in dump.events] == [1, 2, 3, 4, 5]
    assert dump.row.runtime["usage"] == {"inputTokens": 7, "outputTokens": 3}
    # Into a second store of every kind: the same dump comes back out.
    for kind, url in [("sqlite", default_store_url(str(tmp_path / "other"))), ("json", f"json://{tmp_path / 'o'}")]:
        other = await backend.open(url)
        try:
            await other.import_agent(dump)
            assert await other.export_agent("a1") == dump, kind
            with pytest.raises(AgentExists):
                await other.import_agent(dump)
            assert (await other.check_consistency("a1")).consistent
        finally:
            await other.close()


# --------------------------------------------------------------------- fork


async def _fork_source(store: Store) -> None:
    await store.create_agent(agent("src"))
    # Event s at ts(10 * s); message i created at ts(10 * i + 5): message i precedes event i + 1.
    store.append_events([ev("src", s, at=10 * s) for s in range(1, 7)])
    for i in range(5):
        store.append_message(msg("src", i, "user" if i % 2 == 0 else "assistant", at=10 * i + 5))
    store.set_todos("src", [{"id": "1"}])
    store.put_tool_call(tool("src", "c1", "COMPLETED"))
    store.put_turn(TurnRow("src", "t1", 0, "done", ts(1)))
    store.put_approval(ApprovalRow("src", "ap1", "c1", "t1", "allow", {}, ts(1)))
    await store.barrier()


async def test_fork_all(store: Store) -> None:
    await _fork_source(store)
    await store.fork_agent("src", agent("copy", last_seq=99, message_count=99), None)
    copy = await store.get_agent("copy")
    assert copy is not None and (copy.last_seq, copy.message_count) == (6, 5)
    events = await store.read_events("copy")
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    for e, original in zip(events, await store.read_events("src")):
        assert e.agent_id == "copy"
        assert json.loads(e.json) == {**json.loads(original.json), "agentId": "copy"}
        assert (e.seq, e.ts, e.channel, e.turn_id, e.type) == (
            original.seq, original.ts, original.channel, original.turn_id, original.type)
    messages, total = await store.load_messages("copy")
    assert total == 5 and all(m.agent_id == "copy" for m in messages)
    assert await store.get_todos("copy") == [{"id": "1"}]
    assert await store.load_tool_calls("copy") == []
    assert await store.load_turns("copy") == []
    assert await store.load_approvals("copy") == []
    assert (await store.check_consistency("copy")).consistent


async def test_fork_at_seq_and_failures(store: Store) -> None:
    await _fork_source(store)
    await store.fork_agent("src", agent("half"), 3)
    half = await store.get_agent("half")
    assert half is not None and (half.last_seq, half.message_count) == (3, 3)
    assert [e.seq for e in await store.read_events("half")] == [1, 2, 3]
    messages, total = await store.load_messages("half")
    assert total == 3 and [m.index for m in messages] == [0, 1, 2]
    assert (await store.check_consistency("half")).consistent
    await store.fork_agent("src", agent("none"), 0)
    none = await store.get_agent("none")
    assert none is not None and (none.last_seq, none.message_count) == (0, 0)
    src = await store.get_agent("src")
    assert src is not None and (src.last_seq, src.message_count) == (6, 5)

    await store.create_agent(agent("taken"))
    with pytest.raises(AgentExists):
        await store.fork_agent("src", agent("taken"), None)
    assert await store.read_events("taken") == []
    with pytest.raises(StoreError):
        await store.fork_agent("missing", agent("new"), None)
    assert await store.get_agent("new") is None


# --------------------------------------------------------- write queue rules


async def test_a_failing_item_does_not_roll_back_its_batch(store: Store) -> None:
    await store.create_agent(agent("a1"))
    first = store.barrier()
    dup = store.create_agent(agent("a1"))
    append = store.append_events([ev("a1", 1)])
    other = store.create_agent(agent("a2"))
    fork_missing = store.fork_agent("nope", agent("a3"), None)
    message = store.append_message(msg("a2", 0))
    await first
    with pytest.raises(AgentExists):
        await dup
    await append
    await other
    with pytest.raises(StoreError):
        await fork_missing
    await message
    assert [e.seq for e in await store.read_events("a1")] == [1]
    assert await store.get_agent("a2") is not None and await store.get_agent("a3") is None
    got = await store.get_agent("a2")
    assert got is not None and got.message_count == 1


async def test_writes_commit_in_call_order_and_cancel_is_harmless(store: Store) -> None:
    store.create_agent(agent("a1"))
    store.update_agent("a1", state="S1")
    cancelled = store.update_agent("a1", state="S2")
    cancelled.cancel()
    store.update_agent("a1", state="S3")
    await store.update_agent("a1", state="S4")
    got = await store.get_agent("a1")
    assert got is not None and got.state == "S4"


async def test_close_flushes_is_idempotent_and_reopens(backend: Backend) -> None:
    s = await backend.open()
    s.create_agent(agent("a1"))
    s.append_events([ev("a1", n) for n in range(1, 51)])
    await asyncio.gather(s.close(), s.close())
    await s.close()
    with pytest.raises(StoreError):
        s.barrier()
    with pytest.raises(StoreError):
        await s.get_agent("a1")
    s2 = await backend.open()
    try:
        assert len(await s2.read_events("a1")) == 50
        got = await s2.get_agent("a1")
        assert got is not None and got.last_seq == 50
    finally:
        await s2.close()


async def test_write_before_open_raises(backend: Backend) -> None:
    s = backend.make()
    with pytest.raises(StoreError):
        s.create_agent(agent("a1"))
    await s.close()


# -------------------------------------------------------------------- leases


async def test_leases_within_one_process(store: Store) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    me = LeaseOwner(os.getpid(), HOST, "my-token")
    try:
        holder = LeaseOwner(sleeper.pid, HOST, "holder-token")
        await store.acquire_lease("a1", holder, 30)
        with pytest.raises(LeaseHeld) as info:
            await store.acquire_lease("a1", me, 30)
        assert (info.value.agent_id, info.value.pid, info.value.host) == ("a1", sleeper.pid, HOST)
        await store.acquire_lease("a1", holder, 30)  # the same token takes it again
        await store.release_lease("a1", me)  # someone else's release leaves it in place
        with pytest.raises(LeaseHeld):
            await store.acquire_lease("a1", me, 30)
    finally:
        sleeper.kill()
        sleeper.wait()
    await store.acquire_lease("a1", me, 30)  # its holder is dead on this host: taken at once
    assert await store.renew_leases(["a1", "a2"], me, 30) == ["a2"]
    await store.release_lease("a1", me)
    other = LeaseOwner(os.getpid(), HOST, "other")
    await store.acquire_lease("a1", other, 30)
    assert await store.renew_leases(["a1"], me, 30) == ["a1"]


LEASE_CHILD = """
import asyncio, os, socket, sys
from kode_rpc.store.base import LeaseHeld, LeaseOwner
from kode_rpc.store.url import make_store

async def main():
    store = make_store(sys.argv[1])
    await store.open()
    try:
        await store.acquire_lease(sys.argv[2], LeaseOwner(os.getpid(), socket.gethostname(), "child"), 30)
        print("ACQUIRED", flush=True)
        if sys.argv[3] == "hold":
            await store.create_agent(__import__("kode_rpc.store.base").store.base.AgentRow(
                "held-marker", "tpl", "t", "t", "READY", 0, 0, {}))
            print("HOLDING", flush=True)
            await asyncio.sleep(60)
    except LeaseHeld as exc:
        print(f"HELD {exc.pid} {exc.host}", flush=True)
    finally:
        await store.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_only_one_process_runs_an_agent(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two real processes on one store: the second is refused naming the first; the first's
    death (SIGKILL) frees the agent at once."""
    if kind == "sqlite":
        url = default_store_url(str(tmp_path / "data"))
    else:
        pg: PgServer = request.getfixturevalue("pg_server")
        url = pg.url(pg.create_database())
    store = make_store(url)
    await store.open()
    me = LeaseOwner(os.getpid(), HOST, "parent")
    try:
        await store.acquire_lease("shared", me, 30)
        code, out, err = await run_child(LEASE_CHILD, url, "shared", "once")
        assert code == 0, err
        assert out.split() == ["HELD", str(os.getpid()), HOST]
        await store.release_lease("shared", me)
        code, out, err = await run_child(LEASE_CHILD, url, "shared", "once")
        assert code == 0 and out.strip() == "ACQUIRED", err
        await store.acquire_lease("shared", me, 30)  # the child exited: free again
        await store.release_lease("shared", me)

        # A child that holds the agent, then is killed: taken over at once, no TTL wait.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", textwrap.dedent(LEASE_CHILD), url, "shared", "hold",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=str(REPO))
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ACQUIRED"
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"HOLDING"
        with pytest.raises(LeaseHeld) as info:
            await store.acquire_lease("shared", me, 30)
        assert (info.value.pid, info.value.host) == (proc.pid, HOST)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        t0 = time.perf_counter()
        deadline = t0 + 5
        while True:  # PostgreSQL notices the closed connection within moments
            try:
                await store.acquire_lease("shared", me, 30)
                break
            except LeaseHeld:
                assert time.perf_counter() < deadline, "the killed holder's lock was not freed"
                await asyncio.sleep(0.05)
        print(f"\n{kind}: agent taken over {1000 * (time.perf_counter() - t0):.0f} ms after SIGKILL of its holder")
    finally:
        await store.close()


async def test_postgres_locks_are_per_connection_not_per_store_instance(pg_server: PgServer) -> None:  # noqa: F811
    url = pg_server.url(pg_server.create_database())
    a, b = make_store(url), make_store(url)
    await a.open()
    await b.open()
    try:
        owner_a, owner_b = LeaseOwner(111, "host-a", "ta"), LeaseOwner(222, "host-b", "tb")
        await a.acquire_lease("x", owner_a, 30)
        with pytest.raises(LeaseHeld) as info:
            await b.acquire_lease("x", owner_b, 30)
        assert (info.value.pid, info.value.host) == (111, "host-a")  # -32012's data.owner
        await a.close()  # its lock connection closes: free at once
        await b.acquire_lease("x", owner_b, 30)
    finally:
        await a.close()
        await b.close()


JSON_CHILD = """
import asyncio, sys
from kode_rpc.store.base import StoreLocked
from kode_rpc.store.url import make_store

async def main():
    store = make_store(sys.argv[1])
    try:
        await store.open()
    except StoreLocked as exc:
        print(f"LOCKED {exc.pid} {exc.host}", flush=True)
        return
    print("OPENED", flush=True)
    if sys.argv[2] == "hold":
        await asyncio.sleep(60)
    await store.close()

asyncio.run(main())
"""


async def test_json_store_is_one_process_per_folder(tmp_path: Path) -> None:
    url = f"json://{tmp_path / 'store'}"
    store = make_store(url)
    await store.open()
    try:
        code, out, err = await run_child(JSON_CHILD, url, "once")
        assert out.split() == ["LOCKED", str(os.getpid()), HOST], err
        with pytest.raises(StoreLocked, match=f"process {os.getpid()}"):
            await make_store(url).open()
    finally:
        await store.close()
    code, out, err = await run_child(JSON_CHILD, url, "once")
    assert out.strip() == "OPENED", err
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", textwrap.dedent(JSON_CHILD), url, "hold",
                                                stdout=asyncio.subprocess.PIPE, env=child_env(), cwd=str(REPO))
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"OPENED"
    with pytest.raises(StoreLocked) as info:
        await make_store(url).open()
    assert info.value.pid == proc.pid
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    again = make_store(url)
    await again.open()  # the lock went with the killed process
    await again.close()


# ----------------------------------------------------------------- schema


async def test_newer_schema_is_refused(backend: Backend) -> None:
    s = await backend.open()
    await s.create_agent(agent("a1"))
    await s.close()
    backend.set_schema_version(999)
    s = backend.make()
    with pytest.raises(SchemaTooNew, match="newer"):
        await s.open()
    await s.close()
    assert s.schema_version in (0, 1)


async def test_schema_version_recorded(store: Store) -> None:
    assert store.schema_version >= 1


# ------------------------------------------------------------ observability


async def test_health_is_typed_and_has_the_wire_shape(store: Store) -> None:
    h = await store.check_health()
    assert h.healthy and h.database.connected and h.file_system.writable and h.checked_at.endswith("Z")
    wire = await store.health()
    assert set(wire) == {"healthy", "database", "fileSystem", "checkedAt"}
    assert wire["database"]["connected"] is True and isinstance(wire["database"]["latencyMs"], float)


async def test_consistency_rules(store: Store) -> None:
    result = await store.check_consistency("missing")
    assert (result.consistent, result.issues) == (False, ["agent missing not found"])
    await store.create_agent(agent("a1"))
    store.append_events([ev("a1", s) for s in range(1, 5)])
    store.append_message(msg("a1", 0, "user"))
    store.append_message(msg("a1", 1, "assistant", [{"type": "text", "text": "hi"},
                                                    {"type": "tool_use", "id": "c1", "name": "x", "input": {}}]))
    store.append_message(msg("a1", 2, "user", [{"type": "tool_result", "toolUseId": "c1", "content": "ok"}]))
    store.append_message(msg("a1", 3, "assistant", [{"type": "tool_use", "id": "c2", "name": "x", "input": {}},
                                                    {"type": "tool_use", "id": "c3", "name": "x", "input": {}}],
                             turn_id="t2"))
    store.put_tool_call(tool("a1", "c1", "COMPLETED"))
    store.put_tool_call(tool("a1", "c2", "EXECUTING", turn_id="t2"))
    store.put_tool_call(tool("a1", "c3", "SEALED", turn_id="t2"))  # final, but its turn has not ended
    store.put_turn(TurnRow("a1", "t2", 3, "running", ts(3)))
    await store.barrier()
    assert await store.consistency("a1") == {"consistent": True, "issues": []}

    # The turn ends with c2 finished and no results in the history, a stale approval.
    store.put_tool_call(tool("a1", "c2", "COMPLETED", turn_id="t2"))
    store.put_turn(TurnRow("a1", "t2", 3, "done", ts(3)))
    await store.put_approval(ApprovalRow("a1", "ap1", "c1", "t1", "pending", {}, ts(1)))
    issues = "\n".join((await store.check_consistency("a1")).issues)
    assert "tool_use c2 in message 3 has no tool_result (its call is COMPLETED)" in issues
    assert "tool_use c3" in issues and "approval ap1 is pending but tool call c1 is COMPLETED" in issues
    assert "tool_use c1" not in issues and "seqs" not in issues


async def test_consistency_finds_gaps_in_imported_rows(store: Store) -> None:
    rows = [ev("a1", 1), ev("a1", 3), ev("a1", 4)]
    lost = msg("a1", 2, "assistant", [{"type": "tool_use", "id": "gone", "name": "x", "input": {}}])
    await store.import_agent(AgentDump(agent("a1", last_seq=9, message_count=7), rows, [msg("a1", 0), lost],
                                       [], [], [], [], []))
    issues = "\n".join((await store.check_consistency("a1")).issues)
    assert "event seqs are not 1..3: expected 2, found 3 (2 misplaced)" in issues
    assert "agents.last_seq is 9 but the highest event seq is 4" in issues
    assert "message indices are not 0..1: expected 1, found 2" in issues
    assert "agents.message_count is 7 but 2 messages are stored" in issues
    assert "tool_use gone in message 2 has no tool_result (its call was lost (no tool-call record))" in issues


async def test_metrics_shape_and_counts(store: Store) -> None:
    m = await store.collect_metrics()
    assert m.operations.model_dump() == {"saves": 0, "loads": 0, "queries": 0, "deletes": 0}
    await store.create_agent(agent("a1"))
    await store.create_agent(agent("a2"))
    await store.append_message(msg("a1", 0))
    await store.barrier()
    await store.get_agent("a1")
    await store.load_messages("a1")
    await store.read_events("a1")
    await store.delete_agent("a2")
    wire = await store.metrics()
    assert set(wire) == {"operations", "performance", "storage", "collectedAt"}
    assert wire["operations"] == {"saves": 3, "loads": 2, "queries": 1, "deletes": 1}
    perf = wire["performance"]
    assert 0.0 < perf["minLatencyMs"] <= perf["avgLatencyMs"] <= perf["maxLatencyMs"]
    assert wire["storage"]["totalAgents"] == 1 and wire["storage"]["totalMessages"] == 1
    assert wire["storage"]["dbSizeBytes"] > 0


# --------------------------------------------------------------- durability


CRASH_CHILD = """
import asyncio, json, os, signal, sys
from kode_rpc.store.base import AgentRow, EventRow
from kode_rpc.store.url import make_store

async def main():
    store = make_store(sys.argv[1])
    await store.open()
    await store.create_agent(AgentRow("crash", "tpl", "t0", "t0", "READY", 0, 0, {}))
    rows = [EventRow("crash", s, "t", "progress", None, "x", json.dumps({"seq": s})) for s in range(1, 101)]
    await store.append_events(rows)
    store.append_events([EventRow("crash", 101, "t", "progress", None, "x", "{}")])  # not awaited
    sys.stdout.write("WRITTEN\\n")
    sys.stdout.flush()
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
async def test_awaited_writes_survive_abrupt_exit(backend: Backend, how: str) -> None:
    code, out, err = await run_child(CRASH_CHILD, backend.url, how)
    assert out.strip() == "WRITTEN", err
    s = await backend.open()
    try:
        events = await s.read_events("crash")
        assert [e.seq for e in events][:100] == list(range(1, 101))
        assert json.loads(events[99].json) == {"seq": 100}
        got = await s.get_agent("crash")
        assert got is not None and got.last_seq >= 100
    finally:
        await s.close()


async def test_json_store_is_readable_by_hand_and_survives_a_torn_line(tmp_path: Path) -> None:
    url = f"json://{tmp_path / 'store'}"
    s = make_store(url)
    await s.open()
    await s.create_agent(agent("Hand"))
    await s.append_events([ev("Hand", 1), ev("Hand", 2)])
    await s.append_message(msg("Hand", 0))
    await s.close()
    folders = list((tmp_path / "store" / "agents").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("Hand~")
    # JSON Lines: one JSON document per "\n" (a U+2028 inside a string is not a line break).
    lines = (folders[0] / "events.jsonl").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3
    first = json.loads(lines[0])  # every line is plain JSON, the envelope as an object
    assert first["seq"] == 1 and first["envelope"] == json.loads(ev("Hand", 1).json)
    assert json.loads((folders[0] / "agent.jsonl").read_text().splitlines()[0])["op"] == "create"
    with open(folders[0] / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"seq":3,"ts":"x","chan')  # a crash mid-line
    s = make_store(url)
    await s.open()
    try:
        assert [e.seq for e in await s.read_events("Hand")] == [1, 2]
        await s.append_events([ev("Hand", 3)])
        assert [e.seq for e in await s.read_events("Hand")] == [1, 2, 3]
    finally:
        await s.close()
    s = make_store(url)
    await s.open()
    try:
        assert (await s.read_events("Hand"))[-1] == ev("Hand", 3)
    finally:
        await s.close()


# ------------------------------------------------------------- PostgreSQL


async def test_postgres_outage_is_survived(pg_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Database stopped: reads and writes fail with StoreUnavailable, health says why; started
    again: the same store works without help, and its advisory locks are held again."""
    caplog.set_level(logging.DEBUG)
    url = pg_server.url(pg_server.create_database(), connectTimeoutMs="1000")
    store = make_store(url)
    await store.open()
    me = LeaseOwner(os.getpid(), HOST, "me")
    try:
        await store.create_agent(agent("a1"))
        await store.acquire_lease("a1", me, 30)
        await store.append_events([ev("a1", 1)])
        pg_server.stop()
        try:
            t0 = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.get_agent("a1")
            with pytest.raises(StoreUnavailable):
                await store.append_events([ev("a1", 2)])
            elapsed = time.perf_counter() - t0
            health = await store.check_health()
            assert health.healthy is False and health.database.connected is False
            assert "retryable" not in str(health)
            wire = await store.health()
            assert wire["database"]["connected"] is False
        finally:
            pg_server.start()
        assert elapsed < 10, f"failing took {elapsed:.1f} s"
        # Back: no reopen, no help.
        await store.append_events([ev("a1", 2)])
        assert [e.seq for e in await store.read_events("a1")] == [1, 2]
        assert (await store.check_health()).healthy
        assert await store.renew_leases(["a1"], me, 30) == []
        other = make_store(url)
        await other.open()
        try:
            with pytest.raises(LeaseHeld):  # the lock was taken again by the first store
                await other.acquire_lease("a1", LeaseOwner(1, "elsewhere", "x"), 30)
        finally:
            await other.close()
    finally:
        await store.close()
    assert PASSWORD not in caplog.text


async def test_postgres_agent_taken_during_an_outage_leaves(pg_server: PgServer) -> None:  # noqa: F811
    """Our lock connection is cut; another server takes the agent meanwhile: we learn it at the
    next renewal and never write that agent's rows again."""
    db = pg_server.create_database()
    url = pg_server.url(db)
    store, rival = make_store(url), make_store(url)
    await store.open()
    await rival.open()
    me, them = LeaseOwner(os.getpid(), HOST, "me"), LeaseOwner(4242, "rival-host", "them")
    try:
        await store.create_agent(agent("a1"))
        await store.create_agent(agent("a2"))
        await store.acquire_lease("a1", me, 30)
        await store.acquire_lease("a2", me, 30)
        pg_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       f"WHERE datname = '{db}' AND application_name = 'kode-rpc locks' "
                       "AND pid <> pg_backend_pid()", db)
        await asyncio.sleep(0.2)
        await rival.acquire_lease("a1", them, 30)  # our lock on a1 went with the connection
        assert await store.renew_leases(["a1", "a2"], me, 30) == ["a1"]
        with pytest.raises(LeaseHeld) as info:
            await store.append_events([ev("a1", 1)])
        assert (info.value.pid, info.value.host) == (4242, "rival-host")
        await store.append_events([ev("a2", 1)])  # a2 is still ours (re-taken)
        with pytest.raises(LeaseHeld):
            await rival.acquire_lease("a2", them, 30)
        assert await store.read_events("a1") == []
    finally:
        await store.close()
        await rival.close()


async def test_postgres_connections_killed_between_batches_are_replaced(pg_server: PgServer) -> None:  # noqa: F811
    db = pg_server.create_database()
    store = make_store(pg_server.url(db))
    await store.open()
    try:
        await store.create_agent(agent("a1"))
        await store.append_events([ev("a1", 1)])
        await store.get_agent("a1")
        pg_server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                       "AND pid <> pg_backend_pid()", db)
        await asyncio.sleep(0.1)
        await store.append_events([ev("a1", 2)])  # the writer retries on a fresh connection
        assert [e.seq for e in await store.read_events("a1")] == [1, 2]  # so does a read
    finally:
        await store.close()


async def test_postgres_unreachable_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://kode:{PASSWORD}@127.0.0.1:{port}/none?connectTimeoutMs=500"
    store = make_store(url)
    assert PASSWORD not in store.display_url and "***" in store.display_url
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert PASSWORD not in str(info.value)
    await store.close()
    offline = make_store(url, offline_ok=True)
    await offline.open()  # a server keeps running and connects later
    try:
        health = await offline.check_health()
        assert health.healthy is False
        with pytest.raises(StoreUnavailable):
            await offline.get_agent("a1")
        with pytest.raises(StoreUnavailable):
            await offline.create_agent(agent("a1"))
    finally:
        await offline.close()
    assert PASSWORD not in caplog.text


class DelayProxy:
    """A TCP proxy that holds every chunk for `delay` seconds each way: a database `2 * delay` away."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(forward())
        try:
            while True:
                data = await src.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_postgres_round_trips_over_a_slow_network(pg_server: PgServer) -> None:  # noqa: F811
    """With the database 50 ms away: loading an agent is one round trip (not one per table), a
    write batch two (the pipeline, then COMMIT)."""
    rtt = 0.05
    db = pg_server.create_database()
    direct = make_store(pg_server.url(db))
    await direct.open()
    await direct.create_agent(agent("a1"))
    await direct.append_events([ev("a1", s) for s in range(1, 40)])
    for i in range(5):
        direct.append_message(msg("a1", i))
    direct.set_todos("a1", [{"id": "1"}])
    direct.put_turn(TurnRow("a1", "t1", 0, "running", ts(1)))
    await direct.put_tool_call(tool("a1", "c1", "EXECUTING"))
    await direct.close()
    proxy = DelayProxy(pg_server.port, rtt / 2)
    port = await proxy.start()
    store = make_store(pg_server.url(db).replace(f":{pg_server.port}/", f":{port}/"))
    try:
        await store.open()
        await store.get_agent("a1")  # the pooled connection is open and warm
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            snap = await store.load_agent_snapshot("a1")
            timings.append(time.perf_counter() - t0)
        assert snap is not None and len(snap.messages) == 5 and len(snap.tool_calls) == 1
        t0 = time.perf_counter()
        await store.get_agent("a1")
        await store.load_messages("a1")
        await store.get_todos("a1")
        await store.load_turns("a1", ["queued", "running"])
        await store.read_events("a1", 19)
        await store.load_tool_calls("a1", "t1")
        await store.load_approvals("a1", "pending")
        one_by_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        await store.append_events([ev("a1", s) for s in range(40, 140)])
        write = time.perf_counter() - t0
        print(f"\npostgres at {rtt * 1000:.0f} ms RTT: load_agent_snapshot {min(timings) * 1000:.0f} ms, "
              f"the same as 7 reads {one_by_one * 1000:.0f} ms, a batch of 100 events {write * 1000:.0f} ms")
        assert min(timings) < 1.8 * rtt, timings
        assert write < 2.8 * rtt, write
    finally:
        await store.close()
        await proxy.stop()


# --------------------------------------------------------------------- URLs


def test_store_urls_parse_and_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_store_url("sqlite:///abs/kode.db").path == os.path.normpath("/abs/kode.db")
    assert parse_store_url("json:///abs/dir").type == "json"
    for bad in ("sqlite://rel/kode.db", "mysql://x", "kode.db", "json://"):
        with pytest.raises(ValueError):
            parse_store_url(bad)
    url = "postgresql://app:s3cr%40t-pw@db.example:5432/kode?sslmode=verify-full&poolMax=5&connectTimeoutMs=700"
    parsed = parse_store_url(url)
    assert parsed.type == "postgres" and parsed.options == {"poolMax": "5", "connectTimeoutMs": "700"}
    assert "poolMax" not in parsed.conninfo and "sslmode=verify-full" in parsed.conninfo
    assert mask_url(url) == ("postgresql://app:***@db.example:5432/kode?sslmode=verify-full&poolMax=5"
                             "&connectTimeoutMs=700")
    assert url_password(url) == "s3cr@t-pw"
    assert mask_url("postgres://u@h/db?password=hunter22&x=1") == "postgres://u@h/db?password=***&x=1"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db" and url_password("postgresql://u@h/db") is None
    with pytest.raises(ValueError, match="\\*\\*\\*"):
        parse_store_url("mysql://u:topsecret@h/db")
    store = make_store(url)
    assert store.name == "postgres" and "s3cr" not in store.display_url  # built, not opened: no I/O
    # --store, then KODE_STORE, then [store] url, then the default.
    monkeypatch.delenv("KODE_STORE", raising=False)
    d = str(tmp_path)
    assert resolve_store_url(None, d, {}) == default_store_url(d) == "sqlite://" + os.path.join(d, "kode.db")
    assert resolve_store_url(None, d, {"url": "json:///x"}) == "json:///x"
    monkeypatch.setenv("KODE_STORE", "json:///env")
    assert resolve_store_url(None, d, {"url": "json:///x"}) == "json:///env"
    assert resolve_store_url("json:///flag", d, {"url": "json:///x"}) == "json:///flag"
    with pytest.raises(ValueError, match="poolMax"):
        make_store("postgresql://h/db?poolMax=zero")


def test_no_driver_loaded_for_sqlite_or_json(tmp_path: Path) -> None:
    """psycopg loads only for a PostgreSQL store: not with the server's modules, not for the others."""
    code = (
        "import asyncio, sys\n"
        "import kode_rpc.server.app, kode_rpc.doctor, kode_rpc.store.copy\n"
        "from kode_rpc.store.url import make_store\n"
        "async def main():\n"
        f"    for url in ['sqlite://{tmp_path}/k.db', 'json://{tmp_path}/j']:\n"
        "        s = make_store(url); await s.open(); await s.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
        "make_store('postgresql://h/db')\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=str(REPO),
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
