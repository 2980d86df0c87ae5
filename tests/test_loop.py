"""The server's event loop (`kode_rpc.loop`) and the store writer's inline mode on it.

The async tests here run on that loop (conftest's loop factory); the thread-mode
checks build plain asyncio loops themselves.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from kode_rpc.loop import idle_hooks, new_loop
from kode_rpc.store.base import StoreError
from kode_rpc.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ the loop


async def test_hooks_are_told_busy_and_idle() -> None:
    hooks = idle_hooks(asyncio.get_running_loop())
    assert hooks is not None
    seen: list[bool] = []

    def hook(idle: bool) -> bool:
        seen.append(idle)
        return False

    hooks.append(hook)
    try:
        await asyncio.sleep(0)  # a ready callback: the loop polls without waiting
        assert seen and seen[-1] is False
        await asyncio.sleep(0.01)  # nothing to run: the loop is about to wait
        assert True in seen
    finally:
        hooks.remove(hook)


def test_work_done_by_a_hook_runs_without_waiting_for_io() -> None:
    """A hook that settles a future on idle makes the select return at once: with no
    I/O and no timer the loop would otherwise wait forever (the test's timeout fails it)."""
    loop = new_loop()
    try:
        fut: asyncio.Future[str] = loop.create_future()
        calls: list[bool] = []

        def hook(idle: bool) -> bool:
            calls.append(idle)
            if idle and not fut.done():
                fut.set_result("settled")
                return True
            return False

        hooks = idle_hooks(loop)
        assert hooks is not None
        hooks.append(hook)
        assert loop.run_until_complete(fut) == "settled"
        assert calls[0] is True
    finally:
        loop.close()


async def test_a_failing_hook_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    hooks = idle_hooks(asyncio.get_running_loop())
    assert hooks is not None

    def broken(idle: bool) -> bool:
        raise RuntimeError("hook bug")

    hooks.append(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="kode_rpc.loop"):
            await asyncio.sleep(0.01)
            await asyncio.sleep(0)
    finally:
        hooks.remove(broken)
    assert "idle hook failed" in caplog.text


def test_other_loops_have_no_hooks() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert idle_hooks(loop) is None
    finally:
        loop.close()


# ------------------------------------------------------- the writer on the loop


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kode.db"


def batch_sizes(store: SQLiteStore) -> list[int]:
    """The number of items of each batch the store runs from now on."""
    runs: list[int] = []
    run_batch = store._run_batch

    def counting(conn: sqlite3.Connection, items: list, wait: bool = True) -> list:
        runs.append(len(items))
        return run_batch(conn, items, wait=wait)

    store._run_batch = counting  # type: ignore[method-assign]
    return runs


def committing_thread(store: SQLiteStore) -> asyncio.Future[int]:
    """A write that reports the thread it was committed on."""
    assert store._writer is not None
    return store._writer.submit(lambda conn: threading.get_ident())


async def test_sqlite_commits_on_the_loop_thread(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        assert store._writer is not None and store._writer.inline
        assert await committing_thread(store) == threading.get_ident()
    finally:
        await store.close()


def test_on_a_plain_asyncio_loop_sqlite_commits_on_its_writer_thread(db_path: Path) -> None:
    async def main() -> int:
        store = SQLiteStore(str(db_path))
        await store.open()
        try:
            assert store._writer is not None and not store._writer.inline
            return await committing_thread(store)
        finally:
            await store.close()

    assert asyncio.run(main()) != threading.get_ident()


async def test_writes_commit_while_the_loop_never_goes_idle(db_path: Path) -> None:
    """A busy loop (a task yielding forever) still commits: the oldest write waits at
    most MAX_HOLD_S for idleness. Without that bound this test never ends."""
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        write = store.update_agent("nobody", state="READY")  # an UPDATE of no row: a valid write
        while not write.done():
            await asyncio.sleep(0)
        await write
    finally:
        await store.close()


async def test_a_locked_database_never_blocks_the_loop(db_path: Path) -> None:
    """Another process holds SQLite's write lock: the batch goes to a thread that waits
    for it while the loop keeps running; later writes wait behind it, in order."""
    store = SQLiteStore(str(db_path))
    await store.open()
    from .test_store import agent
    try:
        await store.create_agent(agent("a1"))
        blocker = sqlite3.connect(str(db_path), isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            first = committing_thread(store)
            loop = asyncio.get_running_loop()
            gaps = []
            for _ in range(20):  # the loop runs timers while the write waits for the lock
                before = loop.time()
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - before)
            assert not first.done()
            # Blocked in SQLite's busy handler, one sleep would last the busy timeout (10 s).
            assert max(gaps) < 2.0, f"the loop stalled {max(gaps):.1f} s on the lock"
            later = [store.update_agent("a1", state=f"S{i}") for i in range(3)]
            await asyncio.sleep(0.05)
            assert not any(f.done() for f in later)
            blocker.execute("COMMIT")
        finally:
            blocker.close()
        assert await first != threading.get_ident()  # ran on a worker thread
        await asyncio.gather(*later)
        got = await store.get_agent("a1")
        assert got is not None and got.state == "S2"
        # The lock is gone: back on the loop, and waiting no longer for other connections' locks.
        assert await committing_thread(store) == threading.get_ident()
    finally:
        await store.close()


async def test_close_commits_what_is_queued_even_behind_a_lock(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    await store.open()
    from .test_store import agent, ev
    blocker = sqlite3.connect(str(db_path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    created = store.create_agent(agent("a1"))
    await asyncio.sleep(0.02)  # the batch is now waiting on a thread
    appended = store.append_events([ev("a1", n) for n in range(1, 11)])
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    blocker.execute("COMMIT")
    blocker.close()
    await closing
    await created
    await appended
    again = SQLiteStore(str(db_path))
    await again.open()
    try:
        assert [e.seq for e in await again.read_events("a1")] == list(range(1, 11))
    finally:
        await again.close()


async def test_a_ticks_writes_are_joined_and_folded_without_changing_what_is_stored(db_path: Path) -> None:
    """Consecutive event appends queued in one loop iteration become one insert and the
    upserts of one turn one write, yet every call gets its own future, the metrics count
    every call, events keep their order and turns their creation order."""
    from kode_rpc.store.base import TurnRow

    from .test_store import agent, ev
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        await store.create_agent(agent("a1"))
        runs = batch_sizes(store)
        before = (await store.metrics())["operations"]["saves"]
        turn_a = TurnRow("a1", "turn_a", 0, "queued", "2026-01-01T00:00:00Z", message={"role": "user", "content": []})
        futures = [store.append_events([ev("a1", 1)]), store.append_events([ev("a1", 2), ev("a1", 3)]),
                   store.put_turn(turn_a),
                   store.put_turn(TurnRow("a1", "turn_b", 1, "queued", "2026-01-01T00:00:01Z")),
                   store.append_events([ev("a1", 4)])]
        turn_a.status, turn_a.step = "done", 2
        futures += [store.put_turn(turn_a), store.append_events([ev("a1", 5)])]
        assert len({id(f) for f in futures}) == len(futures)
        await asyncio.gather(*futures)
        assert runs == [5]  # events 1-3, turn a (with its last values), turn b, event 4, event 5
        assert [e.seq for e in await store.read_events("a1")] == [1, 2, 3, 4, 5]
        turns = await store.load_turns("a1")
        assert [(t.turn_id, t.status, t.step) for t in turns] == [("turn_a", "done", 2), ("turn_b", "queued", 0)]
        assert (await store.metrics())["operations"]["saves"] - before == 7
        got = await store.get_agent("a1")
        assert got is not None and got.last_seq == 5
    finally:
        await store.close()


async def test_heavy_writes_run_on_the_writers_thread(db_path: Path) -> None:
    """Deleting, forking or importing a whole agent may take long: never on the loop."""
    from .test_store import agent, ev
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        assert store._writer is not None
        await store.create_agent(agent("a1"))
        await store.append_events([ev("a1", n) for n in range(1, 101)])
        threads: list[int] = []
        heavy = store._writer.submit(lambda conn: threads.append(threading.get_ident()), heavy=True)
        with_it = committing_thread(store)  # queued in the same iteration: the same batch, after it
        await heavy
        assert threads and threads[0] != threading.get_ident()
        assert await with_it == threads[0]
        assert await committing_thread(store) == threading.get_ident()  # later writes: back on the loop
        assert await store.delete_agent("a1")
        assert await store.get_agent("a1") is None
    finally:
        await store.close()


async def test_a_failing_call_of_a_joined_append_fails_alone_in_its_place(db_path: Path) -> None:
    """Appends joined into one insert are retried call by call where they stood, in the
    same transaction as the writes around them: the order of writes holds."""
    from .test_store import agent, ev
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        await store.create_agent(agent("a1"))
        await store.append_events([ev("a1", 1)])
        runs = batch_sizes(store)
        good = store.append_events([ev("a1", 2)])
        dup = store.append_events([ev("a1", 1)])
        after = store.append_events([ev("a1", 3)])
        state = store.update_agent("a1", state="S1")
        results = await asyncio.gather(good, dup, after, state, return_exceptions=True)
        assert runs == [2]  # one batch: the joined append and the update
        assert results[0] is None and results[2] is None and results[3] is None
        assert isinstance(results[1], StoreError)
        assert [e.seq for e in await store.read_events("a1")] == [1, 2, 3]
        got = await store.get_agent("a1")
        assert got is not None and got.state == "S1" and got.last_seq == 3
    finally:
        await store.close()
