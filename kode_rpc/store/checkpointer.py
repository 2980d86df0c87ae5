"""WAL checkpoints for the SQLite store, on their own thread and connection.

SQLite checkpoints a WAL database by itself when a commit leaves the WAL over 1,000
pages, inside that commit, on the committing connection: the store's writer
thread. A checkpoint copies pages into the database and fsyncs both files (with
`synchronous=NORMAL` it is the only fsync), so every few hundred turns one commit
took milliseconds and every write queued behind it waited: that was most of the
per-turn p95 (measured: 5.3 ms with automatic checkpoints, 2.8 ms without, same
run, in process). Here the writer's automatic checkpoints are pushed out to a
safety limit and a thread checkpoints (`PASSIVE`: it never blocks the writer or
readers) about every 2 s while writes happen, and never when idle.
Durability is unchanged: a committed transaction is in the WAL either way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

INTERVAL_S = 2.0
"""Checkpoint at most this often while writes happen (bounds the WAL to ~2 s of writes)."""
WRITER_AUTOCHECKPOINT_PAGES = 16_000
"""The writer connection's own automatic checkpoint, kept as a safety limit (~64 MB of
WAL) for when this thread cannot keep up, e.g. a reader holds an old snapshot."""


class Checkpointer:
    """`wrote()` after each commit (cheap: sets an event); `stop()` before closing."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kode-store-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        """Stop the thread (the last connection to close checkpoints what is left)."""
        self._stopping.set()
        self._dirty.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._dirty.wait()
                if self._stopping.wait(INTERVAL_S):  # let writes gather: one checkpoint per interval
                    return
                self._dirty.clear()
                if conn is None:
                    conn = self._connect()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # busy, disk trouble: the next interval tries again
                    logger.debug("WAL checkpoint failed: %s", exc)
        except Exception:  # never take the store down for a checkpoint
            logger.exception("WAL checkpoint thread stopped")
        finally:
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
