"""A fake model API server on 127.0.0.1 for provider tests.

It speaks plain HTTP/1.1 with `Connection: close` bodies, which is how SSE
streams look on the wire: each queued `FakeResponse` is sent as given, chunk by
chunk, so tests can script a normal stream, an error status with headers, a
stream that hangs, or one whose connection drops mid-way. It records every
request (headers and JSON body) and when the client went away.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


def sse(event: str | None, data: Any) -> bytes:
    """One SSE event: `event:` line (when given), one `data:` line, blank line."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


@dataclass
class FakeResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    """Seconds between chunks (on an absolute schedule: chunk i goes at start + (i+1) * delay)."""
    hang_after: int | None = None
    """Stop sending (but keep the connection open) after this many chunks."""
    drop_after: int | None = None
    """Close the connection abruptly after this many chunks."""


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeServer:
    def __init__(self) -> None:
        self.responses: deque[FakeResponse] = deque()
        self.requests: list[Recorded] = []
        self.first_byte_at: list[float] = []
        self.last_byte_at: list[float] = []
        self.closed_at: list[float] = []
        """When the server noticed the client had closed a streaming connection."""
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *responses: FakeResponse) -> None:
        self.responses.extend(responses)

    async def start(self) -> "FakeServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Recorded(method, path, headers, body))
            resp = self.responses.popleft() if self.responses else FakeResponse(
                500, {"content-type": "application/json"}, [b'{"error":{"type":"api_error","message":"no scripted response"}}'])
            status_line = f"HTTP/1.1 {resp.status} {'OK' if resp.status == 200 else 'Error'}\r\n"
            hdrs = "".join(f"{k}: {v}\r\n" for k, v in {**resp.headers, "connection": "close"}.items())
            writer.write((status_line + hdrs + "\r\n").encode())
            await writer.drain()
            for i, chunk in enumerate(resp.chunks):
                if resp.hang_after is not None and i >= resp.hang_after:
                    await self._wait_closed(reader)
                    return
                if resp.drop_after is not None and i >= resp.drop_after:
                    writer.transport.abort()
                    return
                if resp.delay:  # paced on an absolute schedule, so sleep overshoot does not add up
                    if i == 0:
                        start = time.monotonic()
                    await asyncio.sleep(max(0.0, start + (i + 1) * resp.delay - time.monotonic()))
                if i == 0:
                    self.first_byte_at.append(time.monotonic())
                writer.write(chunk)
                await writer.drain()
            self.last_byte_at.append(time.monotonic())
            if resp.hang_after is not None and resp.hang_after >= len(resp.chunks):
                await self._wait_closed(reader)
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_at.append(time.monotonic())
            return
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            pass

    async def _wait_closed(self, reader: asyncio.StreamReader) -> None:
        """Hold the connection open until the client closes it; record when."""
        try:
            while await reader.read(1024):
                pass
        except ConnectionError:
            pass
        self.closed_at.append(time.monotonic())
