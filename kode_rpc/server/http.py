"""`--http [HOST:]PORT`: read-only HTTP/1.1 for process managers (contract section 11).

`GET /health` is `store/health` (200 when healthy, else 503, the same JSON either way),
`GET /ready` is 200 or 503 with an empty body (ready: the server has started, is not
shutting down, and its store is reachable), `GET /metrics` is the `metrics/prometheus` text
with prometheus_client's content type. `HEAD` is `GET` without the body; any other method
on those paths is 405 with `Allow: GET, HEAD`, any other path 404. It never runs agent
operations: it calls the same store and metrics methods the RPC handlers call.

A small asyncio server of our own in the runtime's event loop, not aiohttp or an ASGI
stack: three fixed GET routes do not justify a framework's import time and dependency
weight, and the server must not load any of it unless `--http` is given. Because it
listens on a socket, it is bounded against hostile input: the request line and headers
together are capped at 8 KiB (over: 431), the whole head must arrive within 10 s (else
408), anything that is not an HTTP/1.x request is 400, every response closes the
connection, and at most 64 connections are served at once. A failing request is logged
and answered (500), never raised into the loop; nothing is ever written to stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import __version__
from ..store.base import StoreUnavailable

if TYPE_CHECKING:
    from ..runtime.host import Runtime

log = logging.getLogger(__name__)

MAX_HEAD = 8 * 1024
"""Request line plus headers, in bytes."""
READ_TIMEOUT = 10.0
"""Seconds for the whole request head to arrive (a slow-loris client is cut off after this)."""
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
LINGER = 2.0
LINGER_BYTES = 64 * 1024
"""After answering, at most this long / this much of the client's further input is read and dropped."""
ALLOW = "GET, HEAD"
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/[\x21-\x7e]*) HTTP/1\.[01]$")
_HEADER = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*$")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class BadRequest(Exception):
    """The bytes received are not a request we answer; `status` says which error response."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Response:
    """One answer; every answer closes its connection, so none needs chunking or keep-alive."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
                 extra: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra or {}

    def encode(self, head_only: bool) -> bytes:
        """The response bytes; `Content-Length` is the GET body's length for a HEAD too."""
        lines = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
                 "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                 f"Server: kode-rpc/{__version__}",
                 *([f"Content-Type: {self.content_type}"] if self.body else []),
                 f"Content-Length: {len(self.body)}",
                 "Cache-Control: no-store",
                 "Connection: close",
                 *(f"{k}: {v}" for k, v in self.extra.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else self.body)


def _text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode("utf-8"))


class HttpEndpoint:
    """The listening sockets and the three routes over one runtime.

    `bind` takes the port before the store is opened (a port in use ends the process at
    once, before it touches the store); connections wait in the backlog until `start`
    hands over the runtime. `drain` makes `/ready` answer 503 while the server shuts down;
    `close` stops listening and ends open connections."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._runtime: Runtime | None = None
        self._draining = False
        self._connections: set[asyncio.Task[None]] = set()
        self._routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/health": self._health, "/ready": self._ready, "/metrics": self._metrics}

    @classmethod
    async def bind(cls, host: str, port: int) -> HttpEndpoint:
        """Listen on host:port (port 0: a free one). Raises OSError (in use, no such address)."""
        endpoint = cls()
        endpoint._server = await asyncio.start_server(endpoint._connection, host, port, limit=MAX_HEAD,
                                                      start_serving=False)
        return endpoint

    @property
    def server(self) -> asyncio.Server:
        assert self._server is not None, "bind() first"
        return self._server

    @property
    def addresses(self) -> list[str]:
        """`http://host:port` of every listening socket (a name like `localhost` may give two)."""
        out = []
        for sock in self.server.sockets:
            host, port = sock.getsockname()[:2]
            out.append(f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}")
        return out

    async def start(self, runtime: Runtime) -> None:
        """Begin answering, over this runtime (the server has started)."""
        self._runtime = runtime
        await self.server.start_serving()
        for address in self.addresses:  # with port 0 this line is where the port is told
            log.info("http: listening on %s (GET /health, /ready, /metrics)", address)

    def drain(self) -> None:
        """From now on `/ready` is 503: the process is shutting down."""
        self._draining = True

    async def close(self) -> None:
        self._draining = True
        self.server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self.server.wait_closed()

    # --- one connection: one request, one response, close -------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        full = len(self._connections) >= MAX_CONNECTIONS
        self._connections.add(task)
        try:
            if full:
                response, head_only = _text(503, "too many connections"), False
            else:
                response, head_only = await self._answer(reader)
            if response is not None:
                await self._send(writer, response, head_only)
                await _linger(reader, writer)
        except asyncio.CancelledError:
            pass  # close(): the server is going away
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        """(the response, whether it is to a HEAD); None when the client left mid-request."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                method, path = await _read_head(reader)
        except BadRequest as exc:
            return _text(exc.status, _REASONS[exc.status]), False
        except TimeoutError:
            return _text(408, "the request took too long"), False
        except (EOFError, ConnectionError):
            return None, False
        return await self._respond(method, path), method == "HEAD"

    async def _respond(self, method: str, path: str) -> Response:
        route = self._routes.get(path)
        if route is None:
            return _text(404, "not found")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", extra={"Allow": ALLOW})
        try:
            return await route()
        except StoreUnavailable as exc:
            return _text(503, f"store unavailable: {exc}")
        except Exception:  # a bug must not end the server: say so, log it
            log.exception("http: GET %s failed", path)
            return _text(500, "internal error")

    async def _send(self, writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        try:
            writer.write(response.encode(head_only))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # nobody is reading the answer

    # --- the routes ----------------------------------------------------------------------
    async def _health(self) -> Response:
        assert self._runtime is not None
        health = await self._runtime.store.check_health()  # what `store/health` returns
        body = json.dumps(health.wire(), separators=(",", ":")).encode("utf-8")
        return Response(200 if health.healthy else 503, body, "application/json")

    async def _ready(self) -> Response:
        assert self._runtime is not None
        if self._draining:
            return Response(503)
        health = await self._runtime.store.check_health()
        return Response(200 if health.database.connected else 503)

    async def _metrics(self) -> Response:
        rt = self._runtime
        assert rt is not None
        scraped = await rt.metrics.scrape(rt.store, rt.pool)  # what `metrics/prometheus` returns
        return Response(200, scraped.body, scraped.content_type)


async def bind_http(host: str, port: int) -> HttpEndpoint | None:
    """The endpoint bound to host:port, or None after saying on stderr why it cannot be (the
    face then exits 1: a process manager must not get a server without its health check)."""
    try:
        return await HttpEndpoint.bind(host, port)
    except OSError as exc:  # asyncio rewords the error: say the system's words for its errno
        why = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
        log.error("--http: cannot listen on %s:%d: %s", host, port, why or exc)
        return None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After the response: end our side, then read and drop what the client still sends until
    it closes (bounded: LINGER seconds, LINGER_BYTES). Closing a socket with unread input
    makes the kernel send a reset, which can destroy the response before the client reads
    it (an early 503, a 431 to a request still arriving)."""
    dropped = 0
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER):
            while dropped < LINGER_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                dropped += len(chunk)
    except (TimeoutError, ConnectionError, OSError):
        pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path without the query) of the request whose head `reader` delivers.

    Raises BadRequest (400 malformed, 431 over MAX_HEAD), EOFError when the client closed
    before the end of the head. The body, if any, is never read: the answer does not need it
    and the connection closes after it."""
    total = 0
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # one line over the reader's limit (MAX_HEAD)
            raise BadRequest(431) from None
        total += len(line)
        if total > MAX_HEAD:
            raise BadRequest(431)
        if not line.endswith(b"\n"):
            raise EOFError
        line = line.rstrip(b"\r\n")
        if not line:
            if lines:
                break
            continue  # empty lines before the request line are allowed (RFC 9112 2.2)
        lines.append(line)
    match = _REQUEST_LINE.match(lines[0])
    if match is None or not all(_HEADER.match(h) for h in lines[1:]):
        raise BadRequest(400)
    return match.group(1).decode("ascii"), match.group(2).split(b"?", 1)[0].decode("ascii")
