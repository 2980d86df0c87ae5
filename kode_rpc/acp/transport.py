"""The ACP face's stdio: the server's own framing and writer, in front of the SDK.

The SDK (`agent-client-protocol` 0.12) takes a message-level transport (an object
with `send`, `receive`, `close`). This one reads stdin on a thread with the same
ndjson parser as `kode-rpc serve --framing ndjson` and writes through the same
stdout writer thread, and answers, before the SDK sees them, the messages the
SDK would mishandle (found by trying it here): a line that is not JSON (no reply
in the SDK), a JSON value that is not an object (`null` ends the SDK's loop,
a number crashes it), a line over 64 MiB. It also keeps `_meta` from overriding
real parameters (the SDK passes `_meta` keys as keyword arguments: `_meta:
{"cwd": "/etc"}` would replace `cwd`), and at stdin EOF lets requests in flight
answer before the SDK is told the stream ended.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from ..protocol.errors import INPUT_TOO_LARGE, INVALID_REQUEST, PARSE_ERROR, RpcError
from ..server.dispatch import loads
from ..server.framing import BadFrame, Body, NdjsonParser, TooLarge
from ..server.rpc import Output, dumps, start_stdin_reader

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEPT_META = frozenset({"kode"})
"""`_meta` keys passed on: kode's own; namespaced keys (`zed.dev/...`) cannot be parameter names."""
EOF_GRACE_S = 1.5
"""At stdin EOF, how long requests in flight (a prompt being cancelled) may take to answer."""


class StdioTransport:
    """`send` / `receive` / `close` for the SDK's `AgentSideConnection`."""

    def __init__(self, proto_out: BinaryIO, on_eof: Callable[[], Awaitable[None]]) -> None:
        self._output = Output(proto_out, "ndjson")
        self._parser = NdjsonParser()
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._on_eof = on_eof
        self._in_flight: set[Any] = set()
        self._answered = asyncio.Event()

    def start(self) -> None:
        start_stdin_reader(asyncio.get_running_loop(), self)  # calls feed() and eof() on the loop

    # --- reading ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for item in self._parser.feed(data):
            try:
                self._accept(item)
            except Exception:  # one message must never cost the ones after it
                log.exception("failed to read an ACP message")

    def eof(self) -> None:
        asyncio.ensure_future(self._end())

    async def _end(self) -> None:
        """Stdin is closed: stop the work (prompts answer `cancelled`), give their answers
        a moment to go out, then tell the SDK the stream ended."""
        try:
            await self._on_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + EOF_GRACE_S
            while self._in_flight and loop.time() < deadline:
                self._answered.clear()
                try:
                    await asyncio.wait_for(self._answered.wait(), deadline - loop.time())
                except TimeoutError:
                    break
        finally:
            self._inbox.put_nowait(None)

    def _accept(self, item: Body | TooLarge | BadFrame) -> None:
        if isinstance(item, TooLarge):
            self._error(None, RpcError(INPUT_TOO_LARGE, f"message of {item.size} bytes is larger than 64 MiB", "too_large"))
            return
        if isinstance(item, BadFrame):
            self._error(None, RpcError(PARSE_ERROR, f"malformed frame: {item.detail}", item.reason))
            return
        try:
            msg = loads(item.data)
        except (ValueError, RecursionError) as exc:
            self._error(None, RpcError(PARSE_ERROR, f"line is not JSON: {exc}", "parse_error"))
            return
        if not isinstance(msg, dict):
            reason = "batch_not_supported" if isinstance(msg, list) else "invalid_request"
            self._error(None, RpcError(INVALID_REQUEST, "a message must be a JSON object", reason))
            return
        method = msg.get("method")
        if isinstance(method, str):
            if method.startswith("$/"):
                log.debug("ignoring %s", method)
                return
            params = msg.get("params")
            if isinstance(params, dict) and isinstance(params.get("_meta"), dict):
                params["_meta"] = {k: v for k, v in params["_meta"].items()
                                   if k in KEPT_META or not _IDENTIFIER.match(k)}
            if "id" in msg:
                self._in_flight.add(_key(msg["id"]))
        self._inbox.put_nowait(msg)

    def _error(self, msg_id: Any, err: RpcError) -> None:
        log.warning("refused an ACP message: %s", err.message)
        self._output.send(dumps({"jsonrpc": "2.0", "id": msg_id, "error": err.to_wire()}))

    async def receive(self) -> dict[str, Any] | None:
        return await self._inbox.get()

    # --- writing ------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        if "method" not in message and "id" in message:
            self._in_flight.discard(_key(message["id"]))
            self._answered.set()
        self._output.send(dumps(message))

    async def close(self) -> None:
        self._output.close()


def _key(msg_id: Any) -> tuple[type, Any]:
    return (type(msg_id), msg_id)

