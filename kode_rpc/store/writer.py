"""The group-commit writer every backend shares, and the store's operation counters.

Write methods are plain methods called on the event loop thread: they snapshot
their arguments, `submit` a closure and return an `asyncio.Future` at once. One
dedicated thread drains whatever is queued (at most `max_batch` items) and hands
the batch to the backend's `run_batch(conn, items)`, which commits it as one
transaction (SQLite: `BEGIN IMMEDIATE` + a savepoint per item; PostgreSQL: a
transaction + a savepoint per item; JSON: one append per file) and returns one
outcome per item. Outcomes are delivered to each future's loop in order, one
wake-up per loop per batch. Order of commits is call order.

`conn` is whatever the backend's `connect()` returned on the writer thread (a
sqlite3 connection, a psycopg pool, the store itself).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

__all__ = ["GroupCommitWriter", "WriteItem", "Result", "StoreStats", "BatchCounters",
           "KIND_SAVE", "KIND_DELETE", "KIND_BARRIER", "KIND_STOP"]

logger = logging.getLogger(__name__)

KIND_SAVE = "save"
KIND_DELETE = "delete"
KIND_BARRIER = "barrier"
KIND_STOP = "stop"

C = TypeVar("C")


@dataclass(slots=True)
class WriteItem:
    """One queued write: the closure runs on the writer thread inside the batch."""

    fn: Callable[[Any], Any] | None
    fut: asyncio.Future[Any]
    kind: str
    agent_id: str | None = None
    """The agent the write belongs to, when one (a backend may refuse writes of agents it lost)."""


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
                    self.saves += 1
                elif item.kind == KIND_DELETE:
                    self.deletes += 1
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


def deliver(results: list[Result]) -> None:
    """Hand results to each future's loop, one wake-up per loop per batch, in order."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
    for result in results:
        by_loop.setdefault(result[0].get_loop(), []).append(result)
    for loop, part in by_loop.items():
        post(loop, part)


class GroupCommitWriter(Generic[C]):
    """One writer thread, one queue, batches of up to `max_batch` items.

    `connect()` runs first on the writer thread (open, migrate); an exception
    there fails `start()`. `run_batch(conn, items)` must return one `Result`
    per item, in order, and never raise. `disconnect(conn)` runs when the
    writer stops. `closed_error()` builds the exception for writes that arrive
    after the stop.
    """

    def __init__(self, name: str, connect: Callable[[], C], run_batch: Callable[[C, list[WriteItem]], list[Result]],
                 disconnect: Callable[[C], None], closed_error: Callable[[], BaseException],
                 max_batch: int = 256) -> None:
        self.name = name
        self._connect = connect
        self._run_batch = run_batch
        self._disconnect = disconnect
        self._closed_error = closed_error
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[WriteItem] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
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
        """Commit everything queued, then stop the thread (writes after this fail)."""
        if self._thread is None:
            return
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(WriteItem(None, stopped, KIND_STOP))
        await stopped
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.join)

    def submit(self, fn: Callable[[Any], Any], kind: str = KIND_SAVE, agent_id: str | None = None) -> asyncio.Future[Any]:
        """Queue a write; must run on the event loop thread (it creates the future there)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.put(WriteItem(fn, fut, kind, agent_id))
        return fut

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
                    deliver(self._run_batch(conn, batch))
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
