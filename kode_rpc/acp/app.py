"""`kode-rpc acp`: the ACP face on stdin/stdout (newline-delimited JSON-RPC).

Same runtime, store and data dir as `kode-rpc serve`; the official SDK
(`agent-client-protocol`) reads and writes the frames. stdout carries frames only
(the SDK gets the protocol's own handle on fd 1; fd 1 itself points at stderr).
stdin EOF, SIGTERM and SIGINT end the process through one graceful shutdown
(turns interrupted, pending approvals kept, tool process trees killed), exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import BinaryIO

from ..config import data_dir as resolve_data_dir
from ..config import load_settings
from ..logs import setup_logging
from ..runtime.host import open_runtime
from ..sandbox.process import kill_all
from ..server.rpc import take_stdout

log = logging.getLogger(__name__)

STDIO_LIMIT = 64 * 1024 * 1024
"""Longest line read (the SDK's default is 64 KiB; prompts with embedded files are bigger)."""


async def _streams(proto_out: BinaryIO) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The SDK's stdio streams, its writer on our protocol handle rather than fd 1."""
    from acp.stdio import stdio_streams

    saved = sys.stdout
    sys.stdout = proto_out  # type: ignore[assignment]  # read once, for its file descriptor
    try:
        return await stdio_streams(limit=STDIO_LIMIT)
    finally:
        sys.stdout = saved


async def _main(data_dir: str, proto_out: BinaryIO) -> int:
    import acp

    from .agent import KodeAcpAgent

    runtime = await open_runtime(data_dir)
    agent = KodeAcpAgent(runtime)
    reader, writer = await _streams(proto_out)
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(acp.run_agent(agent, input_stream=writer, output_stream=reader,
                                                  use_unstable_protocol=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, serving.cancel)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(serving.cancel))
    log.info("kode-rpc acp serving, data dir %s", data_dir)
    try:
        await serving
    except asyncio.CancelledError:
        log.info("signal received; shutting down")
    except Exception:
        log.exception("the ACP connection failed")
    try:
        await runtime.close()
    except Exception:
        log.exception("runtime shutdown failed")
    await agent.close()
    kill_all()
    await runtime.close_store()
    return 0


def serve_acp(data_dir: str | None, log_level: str) -> int:
    proto_out = take_stdout()
    debug = load_settings().debug
    setup_logging("DEBUG" if debug.verbose else log_level, debug.redact_sensitive)
    try:
        code = asyncio.run(_main(resolve_data_dir(data_dir), proto_out))
    except Exception:
        log.exception("kode-rpc acp failed")
        code = 1
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
