"""`kode-rpc acp`: the ACP face on stdin/stdout (newline-delimited JSON-RPC).

Same runtime, store and data dir as `kode-rpc serve`; the official SDK
(`agent-client-protocol`) dispatches the messages and supplies the schema types,
while framing and stdio are the server's own (`transport.py`): lines up to 64 MiB,
stdout carrying frames only (fd 1 itself points at stderr).
stdin EOF, SIGTERM and SIGINT end the process through one graceful shutdown
(turns interrupted, pending approvals kept, tool process trees killed), exit 0.
`--http` / `[http] listen` serve the same read-only HTTP endpoint as `kode-rpc serve`
(`server/http.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import BinaryIO, NoReturn

from ..config import data_dir as resolve_data_dir
from ..loop import run as run_loop
from ..runtime.host import open_runtime
from ..sandbox.process import kill_all
from ..server.rpc import end_process, start_process

log = logging.getLogger(__name__)

async def _main(data_dir: str, proto_out: BinaryIO, listen: tuple[str, int] | None = None) -> int:
    from acp import AgentSideConnection

    from .agent import KodeAcpAgent
    from .transport import StdioTransport

    http = None
    if listen is not None:  # bound before the store opens: a port in use is exit 1 at once
        from ..server.http import bind_http

        http = await bind_http(*listen)
        if http is None:
            return 1
    runtime = await open_runtime(data_dir)
    agent = KodeAcpAgent(runtime)
    stopped = False

    async def stop_work() -> None:
        """Interrupt running turns (their prompts answer `cancelled`), keep pending approvals."""
        nonlocal stopped
        if not stopped:
            stopped = True
            if http is not None:
                http.drain()
            try:
                await runtime.close()
            except Exception:
                log.exception("runtime shutdown failed")

    transport = StdioTransport(proto_out, stop_work)
    conn = AgentSideConnection(agent, transport, listening=False, use_unstable_protocol=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, transport.eof)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(transport.eof))
    transport.start()
    log.info("kode-rpc acp serving, data dir %s", data_dir)
    if http is not None:
        await http.start(runtime)
    try:
        await conn.listen()
    except Exception:
        log.exception("the ACP connection failed")
    await stop_work()
    await agent.close()
    if http is not None:
        await http.close()  # before the store it reads goes away
    kill_all()
    await runtime.close_store()
    await transport.close()
    return 0


def serve_acp(data_dir: str | None, log_level: str, http: str | None = None) -> NoReturn:
    proto_out, listen = start_process(log_level, http)
    try:
        code = run_loop(_main(resolve_data_dir(data_dir), proto_out, listen))
    except Exception:
        log.exception("kode-rpc acp failed")
        code = 1
    end_process(code)
