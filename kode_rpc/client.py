"""A small asyncio client that spawns `kode-rpc serve` and speaks protocol v1 over its pipes.

Used by `kode-rpc chat`, the end-to-end tests and the benchmarks, so all three
drive the server exactly as an editor does: a real child process, real pipes,
Content-Length (or ndjson) framing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

ApprovalHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
READ_CHUNK = 1 << 18
"""Most bytes taken from the server's stdout per read."""
MAX_HEADER = 1 << 26
"""A Content-Length header block longer than this (no blank line yet) ends reading."""


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data or {}


def server_command(*args: str, exe: str | None = None) -> list[str]:
    """How to start the server: `exe` (e.g. a frozen binary), else `KODE_RPC_SERVER`, else this interpreter."""
    exe = exe or os.environ.get("KODE_RPC_SERVER")
    if exe:
        return [exe, "serve", *args]
    if getattr(sys, "frozen", False):  # a PyInstaller binary: sys.executable is kode-rpc itself
        return [sys.executable, "serve", *args]
    return [sys.executable, "-m", "kode_rpc", "serve", *args]


class RpcClient:
    def __init__(self, proc: asyncio.subprocess.Process, framing: str = "content-length") -> None:
        self.proc = proc
        self.framing = framing
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        """Every message received, in order (tests check ordering across kinds)."""
        self._changed = asyncio.Condition()
        self.on_approval: ApprovalHandler | None = None
        self.server_requests: list[dict[str, Any]] = []
        self.stray: bytes = b""
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def spawn(cls, *args: str, env: dict[str, str] | None = None, framing: str = "content-length",
                    stderr: Any = None, cwd: str | None = None, new_session: bool = False,
                    server: str | None = None) -> "RpcClient":
        """Start a server. `new_session` puts it in its own session/process group, so a
        terminal's Ctrl-C reaches only the client (which then sends `agent/interrupt`)."""
        cmd = server_command(*args, *(["--framing", "ndjson"] if framing == "ndjson" else []), exe=server)
        extra: dict[str, Any] = {}
        if new_session:
            if sys.platform == "win32":
                import subprocess

                extra["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                extra["start_new_session"] = True
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr if stderr is not None else asyncio.subprocess.DEVNULL,
            env=env, cwd=cwd, limit=1 << 26, **extra,
        )
        return cls(proc, framing)

    # --- sending ------------------------------------------------------------
    def write_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def write(self, obj: Any) -> None:
        body = json.dumps(obj).encode("utf-8")
        if self.framing == "ndjson":
            self.write_raw(body + b"\n")
        else:
            self.write_raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def request(self, method: str, params: Any = None, *, timeout: float = 30.0, msg_id: Any = None) -> Any:
        if self._reader.done():
            raise ConnectionError("server closed its stdout")
        msg_id = next(self._ids) if msg_id is None else msg_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.write(msg)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg_id, None)

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.write(msg)

    async def initialize(self, **params: Any) -> Any:
        return await self.request("initialize", {"protocolVersion": 1, "clientInfo": {"name": "kode-rpc-client"}, **params})

    # --- receiving ----------------------------------------------------------
    async def _read_loop(self) -> None:
        """Read what the pipe has (up to READ_CHUNK), handle every whole message in it, then
        wake the waiters once. A resume replays thousands of events: one read and one
        wake-up per chunk instead of two reads and a lock per message (2026-12-07: the
        client's share of a 5,500-event replay went from ~38 to ~33 ms here; `json.loads`
        alone is ~18 ms of it). Waiters see the state after the whole chunk, as they could
        before (a buffered message was read without yielding to them)."""
        stdout = self.proc.stdout
        assert stdout is not None
        buf = b""
        try:
            while True:
                chunk = await stdout.read(READ_CHUNK)
                if not chunk:
                    break
                bodies, buf = self._split(buf + chunk if buf else chunk)
                for body in bodies:
                    try:
                        msg = self._decode(body)
                    except ValueError:
                        self.stray += body
                        continue
                    await self._dispatch(msg)
                async with self._changed:
                    self._changed.notify_all()
                if len(buf) > MAX_HEADER and self.framing != "ndjson" and b"\r\n\r\n" not in buf:
                    self.stray += b"<header too long>"
                    break
        except ConnectionError:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("server closed its stdout"))
            async with self._changed:
                self._changed.notify_all()

    def _split(self, buf: bytes) -> tuple[list[bytes], bytes]:
        """The whole message bodies at the start of `buf`, and what is left (a partial one).
        A Content-Length header block without that header goes to `stray`."""
        bodies: list[bytes] = []
        pos = 0
        if self.framing == "ndjson":
            while (end := buf.find(b"\n", pos)) >= 0:
                line = buf[pos:end + 1]
                pos = end + 1
                if line.strip():
                    bodies.append(line)
            return bodies, buf[pos:]
        while (end := buf.find(b"\r\n\r\n", pos)) >= 0:
            header = buf[pos:end + 4]
            length = None
            for h in header.split(b"\r\n"):
                if h[:15].lower() == b"content-length:" and h[15:].strip().isdigit():
                    length = int(h[15:])
            if length is None:
                self.stray += header
                pos = end + 4
                continue
            if len(buf) < end + 4 + length:
                break
            bodies.append(buf[end + 4:end + 4 + length])
            pos = end + 4 + length
        return bodies, buf[pos:]

    def _decode(self, body: bytes) -> Any:
        """One message body as JSON (a hook for clients that check more)."""
        return json.loads(body)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        if "method" in msg and "id" in msg:
            self.server_requests.append(msg)
            asyncio.create_task(self._answer(msg))
        elif "method" in msg:
            if msg["method"] == "agent/event":
                self.events.append(msg["params"])
            else:
                self.notifications.append(msg)
        else:
            fut = self._pending.get(msg.get("id"))
            if fut is not None and not fut.done():
                if "error" in msg:
                    err = msg["error"]
                    fut.set_exception(RpcError(err["code"], err["message"], err.get("data")))
                else:
                    fut.set_result(msg.get("result"))

    async def _answer(self, msg: dict[str, Any]) -> None:
        """Answer every server request: a request nobody handles gets an error (the server
        treats an error reply to `approval/request` as deny), never silence."""
        try:
            if msg["method"] != "approval/request" or self.on_approval is None:
                self.write({"jsonrpc": "2.0", "id": msg["id"],
                            "error": {"code": -32601, "message": f"client does not handle {msg['method']}"}})
                return
            try:
                result = await self.on_approval(msg["params"])
                self.write({"jsonrpc": "2.0", "id": msg["id"], "result": result})
            except Exception as exc:
                self.write({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32603, "message": str(exc)}})
        except (ConnectionError, RuntimeError):
            pass  # the server is gone

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until `predicate()` is truthy (checked after every message); returns its value."""

        async def waiter() -> Any:
            async with self._changed:
                while True:
                    value = predicate()
                    if value:
                        return value
                    if self._reader.done():
                        raise ConnectionError("server closed its stdout")
                    await self._changed.wait()

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_event(self, agent_id: str, etype: str, timeout: float = 20.0, after: int = 0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for env in self.events:
                if env["agentId"] == agent_id and env["event"]["type"] == etype and env["seq"] > after:
                    return env
            return None

        return await self.wait_for(find, timeout)

    def events_of(self, agent_id: str, etype: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["agentId"] == agent_id and (etype is None or e["event"]["type"] == etype)]

    # --- ending ------------------------------------------------------------
    async def close(self, timeout: float = 10.0) -> int:
        """`shutdown` + `exit`, then wait for the process; returns its exit code."""
        if self.proc.returncode is None:
            try:
                await self.request("shutdown", timeout=timeout)
                self.notify("exit")
            except (RpcError, ConnectionError, asyncio.TimeoutError):
                pass
        return await self.wait_exit(timeout)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await asyncio.wait([self._reader], timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
