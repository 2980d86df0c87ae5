"""The JSON-RPC connection: frames in, envelopes checked, dispatch, frames out.

Everything about a message before its handler runs is here: framing (both
kinds), parse errors, batches, size limits, `initialize`/`shutdown` gating,
params that are absent or `[]`, `$/cancelRequest`, replies to our own requests,
and serialization that keeps `"result": null` and uses byte lengths. Running the
handler (params validated through the method table, the result dumped through
its model) is `dispatch.Dispatcher`'s job.

Requests pipelined behind `initialize` wait until it has succeeded and then run
in arrival order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import select
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

from ..loop import IdleHook, idle_hooks
from ..protocol.errors import (
    INPUT_TOO_LARGE,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_INITIALIZED,
    OVERLOADED,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    RpcError,
)
from ..protocol.methods import REQUESTS
from .dispatch import Dispatcher, Handler, RawResult, loads
from .framing import (
    BadFrame,
    Body,
    ContentLengthParser,
    NdjsonParser,
    TooLarge,
    encode_content_length,
    encode_ndjson,
)

log = logging.getLogger(__name__)

MAX_DEPTH = 512
_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')

class Output:
    """Frames to stdout without ever blocking the loop on a slow client.

    A frame is written at once, on the loop thread, when nothing is waiting before
    it and the pipe has room for it (`poll` says writable, and a write of at most
    PIPE_BUF bytes then cannot block); otherwise it is queued for a writer thread,
    and later frames queue behind it until the thread has written them all, so
    order is kept. Handing every frame to the thread cost a wake-up and a GIL
    hand-off per frame (about 0.3 ms of a 100-chunk turn's 2.7 ms, measured).
    Where `select.poll` is missing (Windows) every frame goes through the thread.

    On the server's loop (`kode_rpc.loop`) frames sent during one loop iteration are
    written together, before the loop next waits or polls, in writes of at most
    PIPE_BUF bytes: the end of a turn delivers a dozen to two dozen events at once,
    and a `poll` plus a `write` per frame cost more than the frames. Once PIPE_BUF
    bytes are waiting they go out at once: a replay of thousands of events must reach
    the client while it is still being produced, not after. `close()` writes
    what is pending and drains the queue first.
    """

    DIRECT_MAX = 4096
    """PIPE_BUF on Linux: a write this small into a writable pipe never blocks."""

    def __init__(self, stream: BinaryIO, framing: str) -> None:
        self._stream = stream
        self._encode = encode_ndjson if framing == "ndjson" else encode_content_length
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog = 0
        """Frames handed to the thread and not yet written (guarded by `_lock`)."""
        self._fd: int | None = None
        self._poll: Any = None
        if hasattr(select, "poll"):
            try:
                self._fd = stream.fileno()
                self._poll = select.poll()
                self._poll.register(self._fd, select.POLLOUT)
            except (OSError, ValueError, AttributeError):  # not a real descriptor (a test's BytesIO)
                self._fd = self._poll = None
        self._thread = threading.Thread(target=self._run, name="stdout-writer", daemon=True)
        self._thread.start()
        self.broken = False
        self._tick: list[bytes] = []
        """Frames sent on the loop thread since the loop last polled (written by `_end_of_tick`)."""
        self._tick_size = 0
        self._hooks: list[IdleHook] | None = None
        self._loop_thread: int | None = None
        try:
            hooks = idle_hooks(asyncio.get_running_loop()) if self._fd is not None else None
        except RuntimeError:  # made outside a loop (tests): every frame is written at once
            hooks = None
        if hooks is not None:
            hooks.insert(0, self._end_of_tick)  # frames out before a store commit runs
            self._hooks, self._loop_thread = hooks, threading.get_ident()

    def send(self, body: bytes) -> None:
        data = self._encode(body)
        if self._hooks is not None and threading.get_ident() == self._loop_thread:
            if self._tick and self._tick_size + len(data) > self.DIRECT_MAX:
                self._end_of_tick(False)  # a full write's worth: out now, so a long burst (a replay) streams
            self._tick.append(data)
            self._tick_size += len(data)
            return
        self._send_data(data)

    def _end_of_tick(self, idle: bool) -> bool:
        """Idle hook: write the frames waiting, as one write (`send` keeps them to at most
        DIRECT_MAX bytes, or a single bigger frame)."""
        if self._tick:
            frames, self._tick, self._tick_size = self._tick, [], 0
            self._send_data(b"".join(frames))
        return False

    def _send_data(self, data: bytes) -> None:
        with self._lock:
            if self._backlog == 0 and self._fd is not None and len(data) <= self.DIRECT_MAX:
                data = self._write_now(data)
                if not data:
                    return
            self._backlog += 1
            self._queue.put(data)

    def _write_now(self, data: bytes) -> bytes:
        """Write what the pipe takes without blocking; return the rest (b"" when done)."""
        if self.broken:
            return b""
        if not self._poll.poll(0):
            return data
        try:
            written = os.write(self._fd, data)  # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return data
        except OSError:
            self._mark_broken()
            return b""
        return data[written:]

    def _mark_broken(self) -> None:
        if not self.broken:
            self.broken = True
            log.warning("stdout is closed; dropping output")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            chunks: list[bytes] = []
            stop = item is None
            if item is not None:
                chunks.append(item)
            while not stop:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    chunks.append(nxt)
            if chunks and not self.broken:
                try:
                    data = memoryview(b"".join(chunks))
                    while data:  # an unbuffered write may take only part (e.g. after a signal)
                        written = self._stream.write(data)
                        data = data[written or 0:]
                    self._stream.flush()
                except (BrokenPipeError, OSError, ValueError):
                    self._mark_broken()
            with self._lock:
                self._backlog -= len(chunks)
            if stop:
                return

    def close(self, timeout: float = 5.0) -> None:
        if self._hooks is not None:
            if self._end_of_tick in self._hooks:
                self._hooks.remove(self._end_of_tick)
            self._hooks = None
            self._end_of_tick(False)
        self._queue.put(None)
        self._thread.join(timeout)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. Text that UTF-8 cannot carry (a lone surrogate that came from
    outside, e.g. a provider) is escaped as `\\udXXX` instead of failing the message."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Connection:
    """Reads frames, validates envelopes, gates on the lifecycle, hands requests to the dispatcher."""

    def __init__(self, output: Output, framing: str) -> None:
        self.output = output
        self.dispatcher = Dispatcher(self._send_result, self.send_error, self._send_request, self._send_cancel)
        self._waiting: list[tuple[Any, str, dict[str, Any]]] = []
        self.parser = NdjsonParser() if framing == "ndjson" else ContentLengthParser()
        self.initialized = False
        self.initializing = False
        self.shutting_down = False
        self.shutdown_requested = False
        self.on_exit: Callable[[int], None] = lambda code: None
        self.on_eof: Callable[[], None] = lambda: None

    # --- registration ------------------------------------------------------
    def register(self, method: str, handler: Handler) -> None:
        self.dispatcher.register(method, handler)

    # --- sending -------------------------------------------------------------
    def send_error(self, msg_id: Any, err: RpcError) -> None:
        self.output.send(dumps({"jsonrpc": "2.0", "id": msg_id, "error": err.to_wire()}))

    def _send_result(self, msg_id: Any, result: Any) -> None:
        if isinstance(result, RawResult):
            head = dumps({"jsonrpc": "2.0", "id": msg_id})
            self.output.send(head[:-1] + b',"result":' + result.json_text.encode("utf-8") + b"}")
        else:
            self.output.send(dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}))

    def _send_request(self, msg_id: str, method: str, params: Any) -> None:
        self.output.send(dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}))

    def _send_cancel(self, msg_id: str) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    def send_raw(self, body: bytes) -> None:
        self.output.send(body)

    def notify(self, method: str, params: Any) -> None:
        self.output.send(dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    def request(self, method: str, params: Any) -> tuple[str, asyncio.Future[Any]]:
        """Send a server-to-client request; returns its id and the reply future."""
        return self.dispatcher.request(method, params)

    def cancel_outgoing(self, msg_id: str) -> None:
        self.dispatcher.cancel_outgoing(msg_id)

    # --- receiving -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for item in self.parser.feed(data):
            try:
                self._on_item(item)
            except Exception:  # one message must never cost the ones after it
                log.exception("failed to handle a message")

    def _on_item(self, item: Body | TooLarge | BadFrame) -> None:
        if isinstance(item, Body):
            self._on_body(item.data)
        elif isinstance(item, TooLarge):
            match = _ID_IN_HEAD.search(item.head)
            if match is None and b'"method"' in item.head:
                log.warning("dropped a notification of %d bytes (over 64 MiB)", item.size)
                return
            msg_id = json.loads(match.group(1)) if match else None
            self.send_error(msg_id, RpcError(INPUT_TOO_LARGE, f"message of {item.size} bytes is larger than 64 MiB",
                                             "too_large", size=item.size))
        elif isinstance(item, BadFrame):
            log.warning("bad frame: %s", item.detail)
            self.send_error(None, RpcError(PARSE_ERROR, f"malformed frame: {item.detail}", item.reason))

    def _on_body(self, body: bytes) -> None:
        try:
            msg = loads(body)
        except RecursionError:
            self.send_error(None, RpcError(INVALID_REQUEST, f"JSON nested deeper than {MAX_DEPTH} levels", "too_deep"))
            return
        except (ValueError, UnicodeDecodeError) as exc:
            self.send_error(None, RpcError(PARSE_ERROR, f"body is not JSON: {exc}", "parse_error"))
            return
        if isinstance(msg, list):
            self.send_error(None, RpcError(INVALID_REQUEST, "batches are not supported", "batch_not_supported"))
            return
        if not isinstance(msg, dict):
            self.send_error(None, RpcError(INVALID_REQUEST, "a message must be a JSON object", "invalid_request"))
            return
        if (body.count(b"[") + body.count(b"{")) > MAX_DEPTH and _depth(msg) > MAX_DEPTH:
            self.send_error(_valid_id(msg.get("id")), RpcError(INVALID_REQUEST, f"JSON nested deeper than {MAX_DEPTH} levels", "too_deep"))
            return
        has_id = "id" in msg
        msg_id = msg.get("id")
        if "method" not in msg:
            if has_id and ("result" in msg or "error" in msg) and _valid_id(msg_id) is not None:
                # Only replies to our own requests; anything else is logged and ignored.
                if self.dispatcher.owns(msg_id):
                    self.dispatcher.response(msg_id, msg.get("result"), msg.get("error"))
                else:
                    log.info("ignoring a response to unknown id %r", msg_id)
            else:
                self.send_error(_valid_id(msg_id), RpcError(INVALID_REQUEST, "not a request, notification or response", "invalid_request"))
            return
        method = msg["method"]
        if has_id and _valid_id(msg_id) is None:
            self.send_error(None, RpcError(INVALID_REQUEST, "id must be a string or an integer", "invalid_id"))
            return
        if not isinstance(method, str) or msg.get("jsonrpc") != "2.0":
            if has_id:
                why = "method must be a string" if not isinstance(method, str) else 'jsonrpc must be "2.0"'
                self.send_error(msg_id, RpcError(INVALID_REQUEST, why, "invalid_request"))
            return
        params = msg.get("params")
        if params is None or params == []:
            params = {}
        if not isinstance(params, dict):
            if has_id:
                self.send_error(msg_id, RpcError(INVALID_PARAMS, "params must be an object", "params_not_object",
                                                 errors=[{"field": "params", "message": "must be an object"}]))
            return
        if has_id:
            self._on_request(msg_id, method, params)
        else:
            self._on_notification(method, params)

    def _on_request(self, msg_id: Any, method: str, params: dict[str, Any]) -> None:
        if self.shutting_down:
            self.send_error(msg_id, RpcError(OVERLOADED, "the server is shutting down", "shutting_down", retryable=True))
            return
        if method not in REQUESTS:
            if not (self.initialized or self.initializing):
                self.send_error(msg_id, RpcError(NOT_INITIALIZED, "initialize must be the first request", "not_initialized"))
            else:
                self.send_error(msg_id, RpcError(METHOD_NOT_FOUND, f"unknown method: {method}", "method_not_found",
                                                 method=method))
            return
        if method == "shutdown":
            self.shutdown_requested = True  # an `exit` right behind it still counts as after shutdown
        if method == "initialize":
            if self.initialized or self.initializing:
                self.send_error(msg_id, RpcError(NOT_INITIALIZED, "already initialized", "already_initialized"))
                return
            self.initializing = True
            asyncio.ensure_future(self._initialize(msg_id, params))
        elif self.initializing:  # pipelined behind initialize: runs once it succeeded
            self._waiting.append((msg_id, method, params))
        elif not self.initialized:
            self.send_error(msg_id, RpcError(NOT_INITIALIZED, "initialize must be the first request", "not_initialized"))
        else:
            self.dispatcher.dispatch(msg_id, method, params)

    async def _initialize(self, msg_id: Any, params: dict[str, Any]) -> None:
        """Run `initialize`; requests that arrived meanwhile run after it, in order, or
        are refused if it failed (a failed `initialize` may be retried)."""
        ok = await self.dispatcher.dispatch(msg_id, "initialize", params)
        self.initializing = False
        self.initialized = ok
        waiting, self._waiting = self._waiting, []
        for other_id, method, other_params in waiting:
            if ok:
                self.dispatcher.dispatch(other_id, method, other_params)
            else:
                self.send_error(other_id, RpcError(NOT_INITIALIZED, "initialize must succeed first", "not_initialized"))

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "exit":
            self.on_exit(0 if self.shutting_down or self.shutdown_requested else 1)
        elif self.shutting_down:
            return
        elif method == "$/cancelRequest":
            target = params.get("id")
            if _valid_id(target) is None:
                return
            queued = next((w for w in self._waiting if w[0] == target and type(w[0]) is type(target)), None)
            if queued is not None:  # not started yet: answer it now
                self._waiting.remove(queued)
                self.send_error(target, RpcError(REQUEST_CANCELLED, f"request {target!r} was cancelled", "cancelled"))
                return
            self.dispatcher.cancel(target)
        else:
            log.debug("ignoring notification %s", method)

    def eof(self) -> None:
        self.on_eof()


def _valid_id(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return value


def _depth(obj: Any) -> int:
    depth = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        cur, d = stack.pop()
        depth = max(depth, d)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values() if isinstance(v, (dict, list)))
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur if isinstance(v, (dict, list)))
    return depth


def start_stdin_reader(loop: asyncio.AbstractEventLoop, conn: Connection, fd: int = 0) -> threading.Thread | None:
    """Feed stdin to `conn` on the loop. A pipe or terminal is watched by the loop itself
    (`add_reader`: no thread, no hand-off per request); a regular file, which epoll
    refuses, and Windows' anonymous pipes, which have no async API, are read on a thread."""
    if sys.platform != "win32":
        def readable() -> None:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                conn.eof()
                return
            conn.feed(data)

        try:
            loop.add_reader(fd, readable)
            return None
        except (OSError, ValueError):  # a regular file (EPERM), or not a descriptor
            pass

    def run() -> None:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                loop.call_soon_threadsafe(conn.eof)
                return
            loop.call_soon_threadsafe(conn.feed, data)

    thread = threading.Thread(target=run, name="stdin-reader", daemon=True)
    thread.start()
    return thread


def take_stdout() -> BinaryIO:
    """The protocol's own handle on fd 1; afterwards fd 1 and `sys.stdout` point at stderr,
    so a stray print or a child process can never write into the protocol stream."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=0)


def start_process(log_level: str, http: str | None) -> tuple[BinaryIO, tuple[str, int] | None]:
    """What each face (`serve`, `acp`) does first: take stdout for the protocol, read the
    settings, set up logging, and resolve where the HTTP endpoint listens (`--http`, else
    `[http] listen`). Ends the process with exit 1 when `[http] listen` is not [HOST:]PORT."""
    from ..config import http_listen, load_settings
    from ..logs import setup_logging

    proto_out = take_stdout()
    settings = load_settings()
    debug = settings.debug
    setup_logging("DEBUG" if debug.verbose else log_level, debug.redact_sensitive)
    try:
        return proto_out, http_listen(http, settings)
    except ValueError as exc:  # `--http` itself was checked by the command line
        log.error("--http / [http] listen: %s", exc)
        end_process(1)


def end_process(code: int, output: Output | None = None) -> NoReturn:
    """Flush what is left (frames, logs) and end the process with `code`. `os._exit`: the
    stdin reader thread may sit in a blocking read, and nothing may wait for it."""
    if output is not None:
        output.close()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
