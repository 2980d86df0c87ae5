"""MCP servers as tools (contract section 12): one `McpHub` per agent.

The hub connects to the agent's servers (the config file's `[mcp_servers.*]` under
the agent's own `mcpServers`) in the background when the agent is loaded, offers
each server tool as an `McpTool` named `mcp__<server>__<tool>` in the agent's tool
table, and reports every change as an `mcp_status` event. A server that fails to
start or dies takes its tools with it; the turn goes on, and a model that still
calls one is told the server is gone.

Stdio servers are children of the agent: started by us (not the SDK's
`stdio_client`) so they get the environment of `sandbox/env.py: child_env`, their
own process group, the process-tree kill of `sandbox/process.py`, and, on Linux,
`PR_SET_PDEATHSIG` so even a SIGKILL of kode-rpc takes them down (without it they
still see EOF on stdin, which MCP servers exit on). `${VAR}` references in `env`
and `headers` are resolved from kode-rpc's environment when connecting; the
values are registered as secrets (redacted wherever they might surface) and are
never stored, logged or sent.

The `mcp` SDK is imported on first connect, in a thread (it costs ~0.4 s), never
at server start. Nothing here imports the runtime: the hub is given the agent's
tool table, an event callback and the environment rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any

from pydantic import RootModel

from .. import secrets
from ..protocol.events import McpStatus
from ..sandbox import process
from ..sandbox.env import child_env
from .base import Tool, ToolContext, ToolResult

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_MS = 60_000
DEFAULT_STARTUP_TIMEOUT_MS = 30_000
STOP_GRACE_S = 0.5
"""After closing a stdio server's stdin, how long it may take to exit before its tree is killed."""
STDERR_TAIL = 2000
"""Characters of a stdio server's stderr kept for the `failed` error message."""
MAX_LINE = 1 << 26
"""Longest JSON-RPC line read from a stdio server (an image result is one line)."""
TOOL_NAME_MAX = 64
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- configuration ------------------------------------------------------------
def merge_servers(global_servers: Mapping[str, Any] | None, agent_servers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The servers an agent uses: the config file's, then the agent's own over them
    (same name wins; `None` turns a global one off). Values are wire dicts."""
    merged: dict[str, Any] = dict(global_servers or {})
    for name, cfg in (agent_servers or {}).items():
        if cfg is None:
            merged.pop(name, None)
        else:
            merged[name] = cfg
    return merged


def resolve_vars(values: Mapping[str, str] | None, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """`${VAR}` (and `${VAR:-default}`) references in `values` resolved from `environ`;
    also the names of unset variables without a default."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        value = environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                missing.append(m.group(1))
                return ""
            return m.group(2)
        return value

    out = {k: _VAR.sub(sub, v) if isinstance(v, str) else str(v) for k, v in (values or {}).items()}
    return out, missing


def _register(raw: Mapping[str, str] | None, resolved: Mapping[str, str]) -> None:
    """Remember as secrets the values that came from `${VAR}` references, and those of
    secret-looking names (a literal token an editor passed, an `Authorization` header),
    so they are redacted wherever a server might echo them."""
    for name, value in (raw or {}).items():
        if _VAR.search(value) or secrets.is_secret_name(name) or name.lower() in ("authorization", "cookie"):
            secrets.register(resolved.get(name))
            scheme, _, token = (resolved.get(name) or "").partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                secrets.register(token)


def tool_name(server: str, tool: str) -> str:
    """`mcp__<server>__<tool>` with characters providers refuse replaced, at most 64 long."""
    name = f"mcp__{server}__{_UNSAFE.sub('_', tool)}"
    if len(name) > TOOL_NAME_MAX:
        digest = hashlib.sha1(tool.encode()).hexdigest()[:8]
        name = name[: TOOL_NAME_MAX - 9] + "_" + digest
    return name


# --- the tool -------------------------------------------------------------------
class McpArgs(RootModel[dict[str, Any]]):
    """A call's arguments as the model gave them; the server checks them against its schema."""


class McpTool(Tool):
    """One tool of one MCP server, as the agent offers it to the model."""

    input_model = McpArgs

    def __init__(self, hub: "McpHub", server: str, remote: Any) -> None:
        self.hub = hub
        self.server = server
        self.remote_name: str = remote.name
        self.name = tool_name(server, remote.name)  # type: ignore[misc]
        annotations = getattr(remote, "annotations", None)
        self.readonly = bool(annotations is not None and annotations.readOnlyHint)  # type: ignore[misc]
        """`readOnlyHint: true`: `readonly` mode runs it without asking; checkpoints skip it."""
        title = getattr(annotations, "title", None) or getattr(remote, "title", None)
        self.description = (remote.description or title or f"{remote.name} (MCP server {server})")  # type: ignore[misc]
        schema = dict(remote.inputSchema or {})
        schema.setdefault("type", "object")
        self._spec = {"name": self.name, "description": self.description, "input_schema": schema}

    def spec(self) -> dict[str, Any]:
        return self._spec

    async def run(self, ctx: ToolContext, args: Any) -> ToolResult:
        return await self.hub.call(self, args.root if isinstance(args, McpArgs) else dict(args or {}))


# --- one server ---------------------------------------------------------------------
class _Server:
    def __init__(self, name: str, raw: Any) -> None:
        self.name = name
        self.raw = raw
        self.status = "closed"
        self.tools: list[McpTool] = []
        self.error: str | None = None
        self.session: Any = None
        self.task: asyncio.Task[None] | None = None
        self.settled = asyncio.Event()
        """Set once the server is no longer connecting (ready, failed or closed)."""
        self.dead = asyncio.Event()
        """Set when the connection is gone (the process exited, the stream ended)."""
        self.stopping = False
        self.pid: int | None = None
        self.returncode: int | None = None
        self.stderr: list[str] = []
        self.timeout_s = DEFAULT_CALL_TIMEOUT_MS / 1000
        self.call_ids: _CallIds | None = None


class _CallIds:
    """The SDK session's write stream, noting the JSON-RPC id of each `tools/call` sent.

    The SDK's `call_tool` does not say which id it used, and a call given up on (its
    timeout, an interrupt) must be cancelled by that id (`notifications/cancelled`), or
    the server goes on running the tool. The SDK writes a request from the task that
    called `call_tool`, so the id is filed under that task."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.by_task: dict[asyncio.Future[Any], Any] = {}

    async def send(self, message: Any) -> None:
        root = getattr(getattr(message, "message", None), "root", None)
        if getattr(root, "method", None) == "tools/call":
            task = asyncio.current_task()
            if task is not None:
                self.by_task[task] = root.id
        await self._stream.send(message)

    async def __aenter__(self) -> _CallIds:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._stream.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class McpHub:
    """The MCP servers of one agent: connections, tools in the agent's table, statuses."""

    def __init__(self, agent_id: str, servers: Mapping[str, Any], tools: dict[str, Tool],
                 emit: Callable[[McpStatus], None], *, work_dir: str, env_remove: list[str],
                 env_allow: list[str]) -> None:
        self.agent_id = agent_id
        self.servers = {name: _Server(name, cfg) for name, cfg in servers.items()}
        self._tools = tools
        self._emit = emit
        self.work_dir = work_dir
        self.env_remove = env_remove
        self.env_allow = env_allow
        self.closed = False
        self._notes: set[asyncio.Task[Any]] = set()
        """Cancellations being sent (fire and forget: an interrupt does not wait for them)."""

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Connect every server that is not connected or connecting (in the background)."""
        if self.closed:
            return
        for server in self.servers.values():
            if server.task is None or server.task.done():
                server.settled.clear()
                server.dead.clear()
                server.stopping = False
                server.task = asyncio.create_task(self._run(server), name=f"mcp-{self.agent_id}-{server.name}")

    def retry(self) -> None:
        """Reconnect servers that failed or were closed (after `agent/resume`)."""
        self.start()

    async def ready(self) -> None:
        """Wait until no server is still connecting (each is bounded by its startup timeout)."""
        waits = [s.settled.wait() for s in self.servers.values() if s.task is not None and not s.settled.is_set()]
        if waits:
            await asyncio.gather(*waits)

    async def close(self) -> None:
        """Stop every server (the agent hibernates, is deleted, or kode-rpc stops)."""
        self.closed = True
        tasks = []
        for server in self.servers.values():
            if server.task is not None and not server.task.done():
                server.stopping = True
                server.task.cancel()
                tasks.append(server.task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def update(self, servers: Mapping[str, Any]) -> None:
        """Take a new set of servers (merged, as `hub_for` merges them): a new one connects,
        one whose config changed reconnects (its calls in flight fail), the others are left
        alone. Names not in `servers` stay: callers only ever add or replace."""
        changed = [name for name, cfg in servers.items()
                   if name not in self.servers or self.servers[name].raw != cfg]
        stopping = []
        for name in changed:
            old = self.servers.get(name)
            if old is not None and old.task is not None and not old.task.done():
                old.stopping = True
                old.task.cancel()
                stopping.append(old.task)
        if stopping:
            await asyncio.wait(stopping, timeout=5)
        for name in changed:
            self.servers[name] = _Server(name, servers[name])
        self.start()

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for s in self.servers.values():
            item: dict[str, Any] = {"server": s.name, "status": s.status, "tools": [t.name for t in s.tools]}
            if s.error:
                item["error"] = s.error
            out.append(item)
        return out

    def gone(self, name: str) -> str | None:
        """What to tell the model that called a tool of a server that is not (or no longer) up."""
        for server in self.servers.values():
            if name.startswith(f"mcp__{server.name}__"):
                if server.dead.is_set() and server.status in ("connecting", "ready"):  # being put away
                    return f"the MCP server {server.name!r} has stopped: its tools are not available now"
                if server.status == "ready":
                    return f"the MCP server {server.name!r} has no tool {name!r}"
                why = f" ({server.error})" if server.error else ""
                return (f"the MCP server {server.name!r} is {server.status}{why}: its tools are not "
                        f"available now")
        return None

    def _set(self, server: _Server, status: str, error: str | None = None) -> None:
        server.status = status
        server.error = secrets.redact(error) if error else None
        if status != "connecting":
            server.settled.set()
        event = McpStatus(server=server.name, status=status,  # type: ignore[arg-type]
                          tools=[t.name for t in server.tools] if status == "ready" else None,
                          error=server.error)
        if status == "failed":
            log.warning("agent %s: MCP server %s failed: %s", self.agent_id, server.name, server.error)
        try:
            self._emit(event)
        except Exception:  # the agent is being put away: nothing to tell
            log.debug("mcp_status of %s not emitted", server.name, exc_info=True)

    def _offer(self, server: _Server, tools: list[McpTool]) -> None:
        server.tools = tools
        for tool in tools:
            self._tools[tool.name] = tool

    def _withdraw(self, server: _Server) -> None:
        for tool in server.tools:
            if self._tools.get(tool.name) is tool:
                del self._tools[tool.name]
        server.tools = []
        server.session = None

    # --- one server's life ---------------------------------------------------------
    async def _run(self, server: _Server) -> None:
        self._set(server, "connecting")
        try:
            await self._connect_and_serve(server)
        except asyncio.CancelledError:
            self._withdraw(server)
            self._set(server, "closed")
            return  # the task ends here: close() cancelled it
        except BaseException as exc:  # noqa: BLE001 - a server's failure never reaches the agent
            self._withdraw(server)
            self._set(server, "failed", _describe(exc, server))
            return
        self._withdraw(server)
        if server.stopping:
            self._set(server, "closed")
        else:
            self._set(server, "failed", _exit_text(server))

    async def _connect_and_serve(self, server: _Server) -> None:
        from ..protocol.agents import McpStdioServer

        cfg = _validate(server.raw)
        server.timeout_s = (cfg.timeout_ms or DEFAULT_CALL_TIMEOUT_MS) / 1000
        startup_s = (cfg.startup_timeout_ms or DEFAULT_STARTUP_TIMEOUT_MS) / 1000
        sdk = await asyncio.to_thread(_import_sdk)  # ~0.4 s of imports, off the event loop
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(startup_s):
                    if isinstance(cfg, McpStdioServer):
                        read, write = await stack.enter_async_context(self._stdio(server, cfg, sdk))
                    else:
                        read, write = await stack.enter_async_context(self._remote(server, cfg, sdk))
                    server.call_ids = _CallIds(write)
                    session = await stack.enter_async_context(sdk.ClientSession(
                        read, server.call_ids, client_info=sdk.types.Implementation(name="kode-rpc",
                                                                                    version=_version())))
                    await session.initialize()
                    listed = []
                    cursor = None
                    while True:
                        page = await session.list_tools(params=sdk.types.PaginatedRequestParams(cursor=cursor)
                                                        if cursor else None)
                        listed.extend(page.tools)
                        cursor = page.nextCursor
                        if not cursor:
                            break
            except TimeoutError:
                raise _Failure(f"did not start within {startup_s:g} s") from None
            tools = []
            seen: set[str] = set()
            for remote in listed:
                tool = McpTool(self, server.name, remote)
                if tool.name in seen:
                    log.warning("MCP server %s offers two tools named %s; the second is ignored", server.name, tool.name)
                    continue
                seen.add(tool.name)
                tools.append(tool)
            server.session = session
            self._offer(server, tools)
            self._set(server, "ready")
            await server.dead.wait()
            self._withdraw(server)  # at once: the status follows once the process is put away

    # --- transports --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _stdio(self, server: _Server, cfg: Any, sdk: Any) -> AsyncIterator[tuple[Any, Any]]:
        extra, missing = resolve_vars(cfg.env, os.environ)
        if missing:
            raise _Failure(f"env names unset variable{'s' if len(missing) > 1 else ''} {', '.join(sorted(set(missing)))}")
        _register(cfg.env, extra)
        env = child_env(remove=self.env_remove, allow=self.env_allow, extra=extra)
        cwd = os.path.join(self.work_dir, cfg.cwd) if cfg.cwd else self.work_dir
        kwargs: dict[str, Any] = {}
        if process.IS_WINDOWS:
            import subprocess

            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
            pdeath = _pdeathsig()
            if pdeath is not None:
                kwargs["preexec_fn"] = pdeath
        try:
            proc = await asyncio.create_subprocess_exec(
                cfg.command, *cfg.args, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=MAX_LINE, **kwargs)
        except OSError as exc:
            raise _Failure(f"cannot start {cfg.command!r}: {exc.strerror or exc}") from None
        server.pid = proc.pid
        server.stderr = []
        process.LIVE.add(proc)  # killed with every other tool process tree at shutdown
        log.debug("agent %s: MCP server %s started, pid %s", self.agent_id, server.name, proc.pid)
        read_send, read_recv = sdk.anyio.create_memory_object_stream(0)
        write_send, write_recv = sdk.anyio.create_memory_object_stream(0)

        async def reader() -> None:
            assert proc.stdout is not None
            try:
                async with read_send:
                    while True:
                        try:
                            line = await proc.stdout.readline()
                        except (ValueError, asyncio.LimitOverrunError) as exc:
                            log.warning("MCP server %s: %s", server.name, exc)
                            break
                        if not line:
                            break
                        if not line.strip():
                            continue
                        try:
                            message = sdk.types.JSONRPCMessage.model_validate_json(line)
                        except Exception as exc:  # noqa: BLE001 - a bad line is reported, not fatal
                            await read_send.send(exc)
                            continue
                        await read_send.send(sdk.SessionMessage(message))
            except Exception:  # noqa: BLE001 - the session is closing
                log.debug("MCP server %s reader ended", server.name, exc_info=True)
            finally:
                server.dead.set()

        async def writer() -> None:
            assert proc.stdin is not None
            try:
                async with write_recv:
                    async for session_message in write_recv:
                        data = session_message.message.model_dump_json(by_alias=True, exclude_none=True)
                        proc.stdin.write(data.encode("utf-8") + b"\n")
                        await proc.stdin.drain()
            except (OSError, RuntimeError, sdk.anyio.ClosedResourceError, sdk.anyio.BrokenResourceError):
                server.dead.set()

        async def errors() -> None:
            assert proc.stderr is not None
            size = 0
            while True:
                chunk = await proc.stderr.read(4096)
                if not chunk:
                    return
                text = chunk.decode("utf-8", "replace")
                log.debug("MCP server %s stderr: %s", server.name, text.rstrip())
                server.stderr.append(text)
                size += len(text)
                while size > STDERR_TAIL and len(server.stderr) > 1:
                    size -= len(server.stderr.pop(0))

        async def exited() -> None:
            await process.wait_exit(proc, 0.05)
            server.dead.set()

        tasks = [asyncio.create_task(f()) for f in (reader, writer, errors, exited)]
        try:
            yield read_recv, write_send
        finally:
            await _stop_process(proc)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            process.LIVE.discard(proc)
            server.returncode = proc.returncode
            log.debug("agent %s: MCP server %s stopped (exit %s)", self.agent_id, server.name, proc.returncode)

    @contextlib.asynccontextmanager
    async def _remote(self, server: _Server, cfg: Any, sdk: Any) -> AsyncIterator[tuple[Any, Any]]:
        headers, missing = resolve_vars(cfg.headers, os.environ)
        if missing:
            raise _Failure(f"headers name unset variable{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(sorted(set(missing)))}")
        _register(cfg.headers, headers)
        async with contextlib.AsyncExitStack() as stack:
            if cfg.type == "sse":
                read, write = await stack.enter_async_context(sdk.sse_client(cfg.url, headers=headers or None))
            else:
                http = await stack.enter_async_context(sdk.create_mcp_http_client(headers=headers or None))
                streams = await stack.enter_async_context(sdk.streamable_http_client(cfg.url, http_client=http))
                read, write = streams[0], streams[1]
            yield read, write

    # --- calls ----------------------------------------------------------------------------
    async def call(self, tool: McpTool, args: dict[str, Any]) -> ToolResult:
        server = self.servers.get(tool.server)
        session = server.session if server is not None else None
        if server is None or session is None or server.status != "ready" or server.dead.is_set():
            return ToolResult.fail(self.gone(tool.name) or f"unknown tool: {tool.name}", "unavailable", retryable=True)
        call = asyncio.ensure_future(session.call_tool(tool.remote_name, args,
                                                       read_timeout_seconds=timedelta(seconds=server.timeout_s + 5)))
        dead = asyncio.ensure_future(server.dead.wait())
        reason = "interrupted"
        try:
            done, _ = await asyncio.wait({call, dead}, timeout=server.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            reason = "timeout"
        finally:
            dead.cancel()
            request_id = server.call_ids.by_task.pop(call, None) if server.call_ids is not None else None
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
                self._cancel_remote(server, request_id, f"kode-rpc: {reason}")
        if call not in done:
            if dead in done:
                return ToolResult.fail(f"the MCP server {server.name!r} stopped during the call", "unavailable",
                                       retryable=True)
            return ToolResult.fail(f"the MCP server {server.name!r} did not answer within {server.timeout_s:g} s",
                                   "timeout", retryable=True)
        try:
            result = call.result()
        except Exception as exc:  # noqa: BLE001 - a protocol error or a lost connection
            if server.dead.is_set():
                return ToolResult.fail(f"the MCP server {server.name!r} stopped during the call", "unavailable",
                                       retryable=True)
            kind = type(exc).__name__
            if kind in ("ConnectError", "ConnectTimeout", "RemoteProtocolError", "ReadError"):
                server.dead.set()  # a remote server that went away: its tools go too
            return ToolResult.fail(f"MCP error from {server.name!r}: {exc}", "tool_error")
        return _result(result)

    def _cancel_remote(self, server: _Server, request_id: Any, reason: str) -> None:
        """Tell the server to stop a call we gave up on (MCP `notifications/cancelled`)."""
        session = server.session
        if request_id is None or session is None or server.dead.is_set():
            return
        types = _import_sdk().types
        note = types.ClientNotification(types.CancelledNotification(
            params=types.CancelledNotificationParams(requestId=request_id, reason=reason)))
        task = asyncio.ensure_future(asyncio.wait_for(session.send_notification(note), 5))
        self._notes.add(task)
        task.add_done_callback(self._sent_cancel)

    def _sent_cancel(self, task: asyncio.Task[Any]) -> None:
        self._notes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("MCP cancellation not sent: %s", task.exception())


class _Failure(Exception):
    """A server could not be used; the message is its `failed` status's `error`."""


def _validate(raw: Any) -> Any:
    from pydantic import TypeAdapter, ValidationError

    from ..protocol.agents import McpServerConfig

    try:
        return TypeAdapter(McpServerConfig).validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "config"
        raise _Failure(f"invalid server config ({where}: {first['msg']})") from None


def _result(result: Any) -> ToolResult:
    """An MCP `CallToolResult` as a tool result: text joined; images as image blocks."""
    texts: list[str] = []
    blocks: list[dict[str, Any]] = []
    for item in result.content or []:
        kind = getattr(item, "type", None)
        if kind == "text":
            texts.append(item.text)
            blocks.append({"type": "text", "text": item.text})
        elif kind == "image":
            blocks.append({"type": "image", "mediaType": item.mimeType, "data": item.data})
        elif kind == "resource":
            res = item.resource
            text = getattr(res, "text", None)
            if text is not None:
                texts.append(text)
                blocks.append({"type": "text", "text": text})
            elif str(getattr(res, "mimeType", "") or "").startswith("image/"):
                blocks.append({"type": "image", "mediaType": res.mimeType, "data": res.blob})
            else:
                note = f"(binary resource {res.uri}, {getattr(res, 'mimeType', None) or 'unknown type'}, not shown)"
                texts.append(note)
                blocks.append({"type": "text", "text": note})
        elif kind == "resource_link":
            link = f"[{item.name}]({item.uri})"
            texts.append(link)
            blocks.append({"type": "text", "text": link})
        elif kind == "audio":
            note = "(an audio clip was returned; it is not shown)"
            texts.append(note)
            blocks.append({"type": "text", "text": note})
    has_image = any(b["type"] == "image" for b in blocks)
    data: Any = blocks if has_image else "\n".join(texts)
    if not texts and not has_image and result.structuredContent is not None:
        data = result.structuredContent
    if result.isError:
        return ToolResult.fail("\n".join(texts) or "the MCP tool reported an error", "tool_error",
                               data=blocks if has_image else None)
    return ToolResult(ok=True, data=data)


def _describe(exc: BaseException, server: _Server) -> str:
    """One line for a `failed` status (an exception group says what is inside it)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, _Failure):
        return str(exc)
    text = str(exc) or type(exc).__name__
    if server.dead.is_set() and server.pid is not None:
        return _exit_text(server)
    return f"{type(exc).__name__}: {text}"[:500]


def _exit_text(server: _Server) -> str:
    code = server.returncode
    tail = "".join(server.stderr).strip()
    what = "the server exited" if code is None else f"the server exited with code {code}"
    if server.pid is None:
        what = "the connection ended"
    return f"{what}: {tail[-500:]}" if tail else what


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """MCP's stdio shutdown: close stdin, give it a moment, then kill the whole tree."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        with contextlib.suppress(Exception):
            proc.stdin.close()
    if proc.returncode is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait_exit(proc, 0.02), STOP_GRACE_S)
    if proc.returncode is None:
        process.kill_tree(proc.pid)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait_exit(proc, 0.02), 2)
    else:
        process.kill_leftovers(proc.pid)  # whatever it started in its group


_PDEATHSIG: Any = None


def _pdeathsig() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook asking the kernel to SIGKILL the child when we die.
    `prctl` is looked up here, in the parent, so the child only makes one C call."""
    global _PDEATHSIG
    if not sys.platform.startswith("linux"):
        return None
    if _PDEATHSIG is None:
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _PDEATHSIG = False
            return None

        def hook() -> None:
            prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL

        _PDEATHSIG = hook
    return _PDEATHSIG or None


class _Sdk:
    """The parts of the `mcp` SDK we use, imported together on first connect."""

    def __init__(self) -> None:
        import anyio
        import mcp.types as types
        from mcp.client.session import ClientSession
        from mcp.client.sse import sse_client
        from mcp.shared._httpx_utils import create_mcp_http_client
        from mcp.shared.message import SessionMessage

        try:
            from mcp.client.streamable_http import streamable_http_client
        except ImportError:  # mcp < 1.24 had only the (now deprecated) headers form
            from mcp.client.streamable_http import streamablehttp_client

            @contextlib.asynccontextmanager
            async def streamable_http_client(url: str, *, http_client: Any) -> AsyncIterator[Any]:
                async with streamablehttp_client(url, headers=dict(http_client.headers)) as streams:
                    yield streams

        self.anyio = anyio
        self.types = types
        self.ClientSession = ClientSession
        self.sse_client = sse_client
        self.streamable_http_client = streamable_http_client
        self.create_mcp_http_client = create_mcp_http_client
        self.SessionMessage = SessionMessage


_SDK: _Sdk | None = None


def _import_sdk() -> _Sdk:
    global _SDK
    if _SDK is None:
        _SDK = _Sdk()
    return _SDK


def _version() -> str:
    from .. import __version__

    return __version__


def hub_for(agent_id: str, global_servers: Mapping[str, Any] | None, agent_servers: Mapping[str, Any] | None,
            tools: dict[str, Tool], emit: Callable[[McpStatus], None], *, work_dir: str, env_remove: list[str],
            env_allow: list[str]) -> McpHub | None:
    """The agent's hub, or None when it has no MCP servers (the common case costs nothing)."""
    servers = merge_servers(global_servers, agent_servers)
    if not servers:
        return None
    return McpHub(agent_id, servers, tools, emit, work_dir=work_dir, env_remove=env_remove, env_allow=env_allow)

