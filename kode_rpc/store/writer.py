"""The group-commit writer every backend shares, and the store's operation counters.

Write methods are plain methods called on the event loop thread: they snapshot
their arguments, `submit` a closure and return an `asyncio.Future` at once. The
writer collects what is queued (at most `max_batch` items) and hands the batch to
the backend's `run_batch(conn, items)`, which commits it as one transaction
(SQLite: `BEGIN IMMEDIATE`, no savepoints unless an item fails; PostgreSQL: a
transaction + a savepoint per item; JSON: one append per file) and returns one
outcome per item. Order of commits is call order.

Two ways to run batches:

* **thread**: one dedicated thread drains the queue; outcomes are delivered to
  each future's loop, one wake-up per loop per batch. PostgreSQL (a network round
  trip per commit) and JSON always; SQLite on a loop without idle hooks.
* **inline** (a backend that gives `run_inline`, on a loop from `kode_rpc.loop`):
  batches run on the event loop thread when it is about to wait for I/O, or once
  the oldest queued write is `MAX_HOLD_S` old while the loop stays busy. No thread
  hand-off and no GIL contention (see `kode_rpc/loop.py` for the measurement).
  `run_inline` must not wait: when it would (SQLite: the database is locked by
  another process) it raises `WouldBlock` before changing anything, and that batch
  runs with `run_batch` on a worker thread while the loop goes on; later writes
  wait for it, so order holds.

`conn` is whatever the backend's `connect()` returned (a sqlite3 connection, a
psycopg pool, the store itself); `connect()` and `disconnect()` run off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from ..loop import idle_hooks

__all__ = ["GroupCommitWriter", "WriteItem", "Result", "StoreStats", "BatchCounters", "WouldBlock", "Joined",
           "split_joined",
           "KIND_SAVE", "KIND_DELETE", "KIND_BARRIER", "KIND_STOP"]

logger = logging.getLogger(__name__)

KIND_SAVE = "save"
KIND_DELETE = "delete"
KIND_BARRIER = "barrier"
KIND_STOP = "stop"

C = TypeVar("C")


@dataclass(slots=True)
class WriteItem:
    """One queued write: the closure runs inside the batch's transaction."""

    fn: Callable[[Any], Any] | None
    fut: asyncio.Future[Any]
    kind: str
    agent_id: str | None = None
    """The agent the write belongs to, when one (a backend may refuse writes of agents it lost)."""
    key: Any = None
    """A whole-row upsert's row key: later writes of the key in the same batch are folded
    into the first (see `collapse`)."""
    calls: int = 1
    """How many write calls this item stands for (joined appends, dropped upserts)."""
    heavy: bool = False
    """Work that may take long (deleting, forking or importing a whole agent): in inline
    mode its batch runs on the writer's worker thread, never on the loop."""


Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


class StoreStats:
    """Counters read by `collect_metrics()`; updated from the writer and reader threads."""

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

    def read(self, kind: str | None, ms: float) -> None:
        """Count one read (`load` or `query`; None: not counted)."""
        if kind is None:
            return
        with self.lock:
            if kind == "load":
                self.loads += 1
            else:
                self.queries += 1
            self.latency(ms)

    def batch(self, items: list[WriteItem], results: list[Result], ms: float) -> None:
        """Count a committed batch: saves and deletes that succeeded, one latency sample."""
        with self.lock:
            for item, (_, _, err) in zip(items, results):
                if err is not None:
                    continue
                if item.kind == KIND_SAVE:
                    self.saves += item.calls
                elif item.kind == KIND_DELETE:
                    self.deletes += item.calls
            if any(item.kind != KIND_BARRIER for item in items):
                self.latency(ms)

    def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        """`(operations, performance)` as the wire's `store/metrics` names them."""
        with self.lock:
            operations = {"saves": self.saves, "loads": self.loads, "queries": self.queries, "deletes": self.deletes}
            performance = {
                "avgLatencyMs": self.lat_sum / self.lat_count if self.lat_count else 0.0,
                "maxLatencyMs": self.lat_max if self.lat_count else 0.0,
                "minLatencyMs": self.lat_min if self.lat_count else 0.0,
            }
        return operations, performance


class BatchCounters:
    """Per-batch raises of `agents.last_seq` / `agents.message_count` (writer thread only).

    Raised once per agent per batch: an UPDATE per streamed event would rewrite the
    whole agents row (config JSON included) far too often.
    """

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.msgs: dict[str, int] = {}

    def clear(self) -> None:
        self.seq = {}
        self.msgs = {}

    @staticmethod
    def raise_(counters: dict[str, int], agent_id: str, value: int) -> None:
        if value > counters.get(agent_id, 0):
            counters[agent_id] = value


def resolve_all(results: list[Result]) -> None:
    """Runs on the event loop: settle futures in order, skipping cancelled ones."""
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def post(loop: asyncio.AbstractEventLoop, results: list[Result]) -> None:
    try:
        loop.call_soon_threadsafe(resolve_all, results)
    except RuntimeError:
        logger.debug("event loop closed; dropped %d store results", len(results))


def post_one(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    post(fut.get_loop(), [(fut, value, exc)])


def collapse(batch: list[WriteItem]) -> tuple[list[WriteItem], list[tuple[asyncio.Future[Any], WriteItem]]]:
    """(the items to run, (future, item) of each upsert folded into an earlier one of its key).
    The first write of a key runs where it was queued (an insert keeps its position, e.g.
    a turn's creation order) with the last one's values; a folded write's future gets its
    outcome: all of them are in one transaction."""
    if all(item.key is None for item in batch):
        return batch, []
    first: dict[Any, WriteItem] = {}
    run: list[WriteItem] = []
    dropped: list[tuple[asyncio.Future[Any], WriteItem]] = []
    for item in batch:
        head = first.get(item.key) if item.key is not None else None
        if head is None:
            if item.key is not None:
                first[item.key] = item
            run.append(item)
        else:
            head.fn = item.fn
            head.calls += item.calls
            dropped.append((item.fut, head))
    return run, dropped


def with_dropped(results: list[Result], dropped: list[tuple[asyncio.Future[Any], WriteItem]]) -> list[Result]:
    """`results` plus an outcome for each dropped upsert: that of the write that replaced it."""
    if not dropped:
        return results
    outcome = {id(fut): (value, exc) for fut, value, exc in results}
    return results + [(fut, *outcome[id(keeper.fut)]) for fut, keeper in dropped]


def deliver(results: list[Result]) -> None:
    """Hand results to each future's loop, one wake-up per loop per batch, in order; the
    results of the loop this runs on (inline mode) are settled at once."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # the writer thread
        current = None
    by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
    for result in results:
        by_loop.setdefault(result[0].get_loop(), []).append(result)
    for loop, part in by_loop.items():
        if loop is current:
            resolve_all(part)
        else:
            post(loop, part)


class Joined:
    """Stands for the future of appends joined into one item (`GroupCommitWriter.append`):
    hands the item's outcome to each call's own future. Settled on the loop like a future
    (`resolve_all`). A backend that retries a failed batch item by item runs the calls
    of a joined item one by one in its place (`split_joined`), so only a failing call fails."""

    def __init__(self, kind: str, insert: Callable[[Any, list[Any]], Any]) -> None:
        self.kind = kind
        self.insert = insert
        self.parts: list[tuple[list[Any], asyncio.Future[Any]]] = []

    def run(self, conn: Any) -> Any:
        """The item's write: every call's rows in one insert."""
        return self.insert(conn, [row for rows, _ in self.parts for row in rows])

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.parts[0][1].get_loop()

    def done(self) -> bool:
        return all(fut.done() for _, fut in self.parts)

    def set_result(self, value: Any) -> None:
        for _, fut in self.parts:
            if not fut.done():
                fut.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        for _, fut in self.parts:
            if not fut.done():
                fut.set_exception(exc)


def split_joined(items: list[WriteItem]) -> list[WriteItem]:
    """`items` with each joined append replaced by one item per call, in its place."""
    if not any(isinstance(item.fut, Joined) for item in items):
        return items
    out: list[WriteItem] = []
    for item in items:
        joined = item.fut
        if not isinstance(joined, Joined):
            out.append(item)
            continue
        insert = joined.insert
        out.extend(WriteItem((lambda conn, rows=rows: insert(conn, rows)), fut, item.kind, item.agent_id)
                   for rows, fut in joined.parts)
    return out


class WouldBlock(Exception):
    """Raised by a backend's `run_inline` when the batch cannot run without waiting."""


MAX_HOLD_S = 0.002
"""Inline mode: the longest a write waits for the loop to go idle before it is committed
anyway (a loop that never idles still commits about every 2 ms)."""


class GroupCommitWriter(Generic[C]):
    """One queue, batches of up to `max_batch` items, run on a thread or inline (module doc).

    `connect()` runs first, off the loop (open, migrate); an exception there fails
    `start()`. `run_batch(conn, items)` must return one `Result` per item, in order,
    and never raise; `run_inline(conn, items)` likewise, or raise `WouldBlock`.
    `disconnect(conn)` runs when the writer stops. `closed_error()` builds the
    exception for writes that arrive after the stop.
    """

    def __init__(self, name: str, connect: Callable[[], C], run_batch: Callable[[C, list[WriteItem]], list[Result]],
                 disconnect: Callable[[C], None], closed_error: Callable[[], BaseException],
                 max_batch: int = 256, run_inline: Callable[[C, list[WriteItem]], list[Result]] | None = None) -> None:
        self.name = name
        self._connect = connect
        self._run_batch = run_batch
        self._run_inline = run_inline
        self._disconnect = disconnect
        self._closed_error = closed_error
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[WriteItem] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # inline mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks: list[Any] | None = None
        self._conn: C | None = None
        self._pending: list[WriteItem] = []
        self._oldest = 0.0
        self._off_loop: asyncio.Future[list[Result]] | None = None
        """The batch handed to the worker thread (`WouldBlock`, heavy work), while it runs."""
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None or self._loop is not None

    @property
    def inline(self) -> bool:
        """Whether batches run on the event loop (inline mode) rather than a thread."""
        return self._loop is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hooks = idle_hooks(loop) if self._run_inline is not None else None
        if hooks is not None:
            self._conn = await asyncio.to_thread(self._connect)
            self._loop, self._hooks = loop, hooks
            hooks.append(self._on_select)
            return
        ready: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(target=self._main, args=(ready,), name=self.name, daemon=True)
        thread.start()
        try:
            await ready
        except BaseException:
            await asyncio.to_thread(thread.join)
            raise
        self._thread = thread

    async def stop(self) -> None:
        """Commit everything queued, then stop (writes after this fail)."""
        if self._loop is not None:
            await self._stop_inline()
            return
        if self._thread is None:
            return
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(WriteItem(None, stopped, KIND_STOP))
        await stopped
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.join)

    def submit(self, fn: Callable[[Any], Any], kind: str = KIND_SAVE, agent_id: str | None = None,
               key: Any = None, heavy: bool = False) -> asyncio.Future[Any]:
        """Queue a write; must run on the event loop thread (it creates the future there).
        `key`: the row a whole-row upsert writes (`WriteItem.key`); `heavy`: keep it off the loop."""
        return self._queue_item(WriteItem(fn, asyncio.get_running_loop().create_future(), kind, agent_id, key,
                                          heavy=heavy))

    def append(self, append_kind: str, rows: list[Any], insert: Callable[[Any, list[Any]], Any],
               agent_id: str | None = None) -> asyncio.Future[Any]:
        """Queue `insert(conn, rows)`. In inline mode, rows appended right after a queued
        append of the same kind join it (one statement for both, each call keeping its own
        future), so the dozen events a turn emits between other writes cost a few inserts.
        Should the joined insert fail, the backend's item-by-item retry inserts each call's
        rows in their place (`split_joined`), so only the failing call fails."""
        if self._loop is None:  # thread mode: the queue cannot be looked into
            return self.submit(lambda conn: insert(conn, rows), KIND_SAVE, agent_id)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        last = self._pending[-1] if self._pending else None
        if last is not None and isinstance(last.fut, Joined) and last.fut.kind == append_kind:
            last.fut.parts.append((rows, fut))
            last.calls += 1
            if last.agent_id != agent_id:
                last.agent_id = None
            return fut
        joined = Joined(append_kind, insert)
        joined.parts.append((rows, fut))
        self._queue_item(WriteItem(joined.run, joined, KIND_SAVE, agent_id))  # type: ignore[arg-type]
        return fut

    def _queue_item(self, item: WriteItem) -> asyncio.Future[Any]:
        fut = item.fut
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._queue.put(item)
        elif loop is not self._loop:
            raise RuntimeError(f"{self.name}: a write from another event loop than the store's")
        else:
            if not self._pending:
                self._oldest = loop.time()
            self._pending.append(item)
        return fut

    # --- inline mode -----------------------------------------------------------------
    def _on_select(self, idle: bool) -> bool:
        """The loop's idle hook: commit what is queued when the loop is about to wait,
        or when the oldest write has waited `MAX_HOLD_S` / a full batch is queued."""
        if not self._pending or self._off_loop is not None:
            return False
        assert self._loop is not None
        if not idle and len(self._pending) < self.max_batch and self._loop.time() - self._oldest < MAX_HOLD_S:
            return False
        self._run_pending()
        return True

    def _run_pending(self) -> None:
        """Run one batch of the queued writes on the loop; on `WouldBlock`, or when it holds
        heavy work, on the writer's worker thread instead (later writes wait for it)."""
        assert self._loop is not None and self._run_inline is not None
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        if self._pending:
            self._oldest = self._loop.time()
        items, dropped = collapse(batch)
        if not any(item.heavy for item in items):
            try:
                deliver(with_dropped(self._run_inline(self._conn, items), dropped))  # type: ignore[arg-type]
                return
            except WouldBlock:
                pass
            except Exception as exc:  # pragma: no cover - a bug in a backend
                logger.exception("store batch failed")
                deliver(with_dropped([(item.fut, None, exc) for item in items], dropped))
                return
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
            self._off_loop = self._loop.run_in_executor(self._executor, self._run_batch, self._conn, items)
        except Exception as exc:  # the executor is gone (interpreter shutting down)
            deliver(with_dropped([(item.fut, None, exc) for item in items], dropped))
            return
        self._off_loop.add_done_callback(lambda fut: self._ran_off_loop(items, dropped, fut))

    def _ran_off_loop(self, items: list[WriteItem], dropped: list[tuple[asyncio.Future[Any], WriteItem]],
                      fut: asyncio.Future[list[Result]]) -> None:
        self._off_loop = None
        if not fut.cancelled() and fut.exception() is None:
            deliver(with_dropped(fut.result(), dropped))
            return
        exc = (fut.exception() if not fut.cancelled() else None) or self._closed_error()
        deliver(with_dropped([(item.fut, None, exc) for item in items], dropped))

    async def _stop_inline(self) -> None:
        assert self._loop is not None and self._hooks is not None
        while self._pending or self._off_loop is not None:
            if self._off_loop is not None:
                await asyncio.wait([self._off_loop])
                await asyncio.sleep(0)  # let its done callback deliver the batch
                continue
            self._run_pending()
        self._hooks.remove(self._on_select)
        conn, self._conn = self._conn, None
        self._loop = self._hooks = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        await asyncio.to_thread(self._disconnect, conn)  # type: ignore[arg-type]

    # --- thread mode -----------------------------------------------------------------
    def _main(self, ready: asyncio.Future[None]) -> None:
        loop = ready.get_loop()
        try:
            conn = self._connect()
        except BaseException as exc:
            post(loop, [(ready, None, exc)])
            return
        post(loop, [(ready, None, None)])

        stop: WriteItem | None = None
        try:
            while stop is None:
                batch = [self._queue.get()]
                # Capped, so a burst of streamed events is committed and delivered in
                # steps instead of one long silence followed by everything at once.
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for i, item in enumerate(batch):
                    if item.kind == KIND_STOP:
                        stop = item
                        late = batch[i + 1:]
                        batch = batch[:i]
                        for other in late:
                            post_one(other.fut, None, self._closed_error())
                        break
                if batch:
                    items, dropped = collapse(batch)
                    deliver(with_dropped(self._run_batch(conn, items), dropped))
        except BaseException:  # pragma: no cover - a bug in a backend
            logger.exception("store writer thread crashed")
            raise
        finally:
            try:
                self._disconnect(conn)
            except Exception:
                logger.warning("closing the writer's connection failed", exc_info=True)
            if stop is not None:
                post_one(stop.fut, None, None)
