"""`kode-rpc serve`: wire stdin/stdout, the store, the pool and the session together.

Exit paths (`exit`, stdin EOF, the parent `processId` gone, SIGTERM/SIGINT) all
run the same graceful shutdown: stop taking requests, interrupt running turns,
persist agents, close the store, kill tool process trees, flush stdout, exit.

With `--http` (or `[http] listen`) the HTTP endpoint for process managers
(`server/http.py`) binds its port first, so a port in use ends the process with exit 1
before the store is opened, and starts answering once the server has started.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, NoReturn

from ..config import data_dir as resolve_data_dir
from ..loop import run as run_loop
from ..sandbox.process import kill_all
from ..runtime.host import open_runtime
from ..store.base import StoreError
from ..store.lease import pid_alive
from .handlers import Session
from .rpc import Connection, Output, end_process, start_process, start_stdin_reader

if TYPE_CHECKING:
    from .http import HttpEndpoint

log = logging.getLogger(__name__)


class App:
    def __init__(self, data_dir: str, framing: str, max_agents: int | None,
                 listen: tuple[str, int] | None = None) -> None:
        self.data_dir = data_dir
        self.framing = framing
        self.max_agents = max_agents
        self.listen = listen
        self.http: HttpEndpoint | None = None
        self.exit_code = 0
        self._stopping: asyncio.Task[None] | None = None
        self._shutdown_run: asyncio.Future[None] | None = None
        self._done = asyncio.Event()

    async def run(self, proto_out: object) -> int:
        if self.listen is not None:
            from .http import bind_http

            self.http = await bind_http(*self.listen)
            if self.http is None:
                return 1
        self.runtime = await open_runtime(self.data_dir, self.max_agents)
        self.store = self.runtime.store
        self.pool = self.runtime.pool
        self.output = Output(proto_out, self.framing)  # type: ignore[arg-type]
        self.conn = Connection(self.output, self.framing)
        self.session = Session(self.conn, self.runtime.service, self.runtime.metrics, self.data_dir, self.shutdown)
        self.conn.on_exit = self._on_exit
        self.conn.on_eof = lambda: self.stop(0)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop, 0)
            except (NotImplementedError, RuntimeError):  # Windows
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.stop, 0))
        watcher = asyncio.create_task(self._watch_parent())
        _tune_gc()
        start_stdin_reader(loop, self.conn)
        log.info("kode-rpc serving (%s framing), data dir %s", self.framing, self.data_dir)
        if self.http is not None:
            await self.http.start(self.runtime)
        await self._done.wait()
        watcher.cancel()
        for _ in range(3):  # let a finished `shutdown` request's response callback run
            await asyncio.sleep(0)
        return self.exit_code

    def _on_exit(self, code: int) -> None:
        self.stop(code)

    def stop(self, code: int) -> None:
        """Begin the graceful shutdown (once) and end the process after it."""
        self.exit_code = code
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def _stop(self) -> None:
        try:
            await self.shutdown()
        finally:
            self._done.set()

    async def shutdown(self) -> None:
        """The graceful shutdown of contract section 8. Runs once; every caller (the
        `shutdown` request, then `exit` right behind it) waits for that one run."""
        if self._shutdown_run is None:
            self._shutdown_run = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._shutdown_run)

    async def _shutdown_once(self) -> None:
        self.conn.shutting_down = True
        if self.http is not None:
            self.http.drain()
        try:
            await self.pool.shutdown()
        except Exception:
            log.exception("pool shutdown failed")
        if self.http is not None:
            await self.http.close()  # before the store it reads goes away
        kill_all()
        await self.store.close()

    async def _watch_parent(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            pid = self.session.process_id
            if pid is not None and not pid_alive(pid):
                log.warning("client process %s is gone; shutting down", pid)
                self.stop(0)
                return


def _tune_gc() -> None:
    """Fewer, cheaper collections: what start-up allocated (modules, models) is frozen out
    of the collector's view, and the youngest generation is collected every 20,000
    allocations instead of 700. A turn allocates thousands of short-lived dicts; with the
    defaults, full collections of the start-up heap landed inside turns (the p95 tail).
    No `gc.collect()` first: the collections run during the imports leave nothing to find
    (it found 0 objects here) and a full pass over the start-up heap cost ~8 ms of every
    start; what little garbage is left since the last automatic pass stays frozen."""
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def serve(data_dir: str | None, framing: str, log_level: str, max_agents: int | None = None,
          http: str | None = None) -> NoReturn:
    proto_out, listen = start_process(log_level, http)
    app = App(resolve_data_dir(data_dir), framing, max_agents, listen)
    try:
        code = run_loop(app.run(proto_out))
    except (StoreError, ValueError) as exc:  # a bad URL, a newer schema, a JSON folder in use: say so, exit 1
        log.error("cannot open the store: %s", exc)
        code = 1
    except Exception:
        log.exception("server failed")
        code = 1
    end_process(code, getattr(app, "output", None))
