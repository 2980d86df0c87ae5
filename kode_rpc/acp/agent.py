"""The ACP face: ACP's agent methods over `runtime/service.py`.

One ACP session is one kode agent (the session id is the agent id), so a session
made here shows in `agent/list`, and `session/load` works on an agent made with
`agent/create`. Each method converts ACP params to a service call and back; the
runtime's failures become ACP errors in `_errors`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from acp import PROTOCOL_VERSION, RequestError
from acp.interfaces import Client
from acp.schema import (
    AgentCapabilities,
    AllowedOutcome,
    CloseSessionResponse,
    CurrentModeUpdate,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    McpCapabilities,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptResponse,
    ResumeSessionResponse,
    SessionCapabilities,
    SessionCloseCapabilities,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionInfo,
    SessionListCapabilities,
    SessionMode,
    SessionModeState,
    SessionResumeCapabilities,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
    ToolCallUpdate,
)
from pydantic import ValidationError

from .. import __version__
from ..protocol.agents import AgentConfig
from ..protocol.approvals import ApprovalResponse
from ..providers.models import context_window, offered
from ..runtime import errors as e
from ..runtime.events import Envelope
from ..runtime.host import Runtime
from .convert import content_of, mcp_servers_of
from .updates import SessionStream, replay_updates, title_of, tool_kind

log = logging.getLogger(__name__)
T = TypeVar("T")

MODES = (("auto", "Auto", "Every tool runs without asking (the sandbox still applies)."),
         ("approval", "Approval", "Every tool call asks first."),
         ("readonly", "Read only", "Tools that change nothing run; everything else asks first."))
STOP_REASONS = {"completed": "end_turn", "interrupted": "cancelled", "budget_exceeded": "max_tokens",
                "max_steps": "max_turn_requests"}
OPTIONS = [PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
           PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
           PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
           PermissionOption(option_id="reject_always", name="Always reject", kind="reject_always")]
PAGE = 50


def _errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """The runtime's failures as ACP errors (an unknown session is -32002)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except e.NotFound as exc:
            raise RequestError(-32002, exc.message, {"reason": exc.reason, **exc.data}) from None
        except e.InvalidInput as exc:
            raise RequestError(-32602, exc.message, {"reason": exc.reason, **exc.data}) from None
        except e.AgentLocked as exc:
            raise RequestError(-32012, exc.message, {"reason": exc.reason, **exc.data}) from None
        except e.RuntimeFault as exc:
            raise RequestError(-32001, exc.message, {"reason": exc.reason, **exc.data}) from None
        except ValidationError as exc:
            errors = [{"field": ".".join(str(p) for p in x["loc"]), "message": x["msg"]} for x in exc.errors()]
            raise RequestError(-32602, "invalid params", {"reason": "invalid_params", "errors": errors}) from None

    return wrapper


def _editor_servers(mcp_servers: list[Any] | None) -> dict[str, Any] | None:
    """ACP's `mcpServers` of a load or resume as the agent's map, checked before anything
    is loaded (a bad entry answers -32602 and changes nothing)."""
    servers = mcp_servers_of(mcp_servers or [])
    if not servers:
        return None
    AgentConfig.model_validate({"mcpServers": servers})
    return servers


class KodeAcpAgent:
    """ACP's `Agent` interface (the SDK calls these methods) over the runtime service."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.service = runtime.service
        self.conn: Client | None = None
        self.streams: dict[str, SessionStream] = {}
        self.watcher = self.service.watcher(self._deliver, self._ask)
        runtime.pool.svc.edit_taps.append(self._edited)

    def on_connect(self, conn: Client) -> None:
        self.conn = conn

    # --- events and approvals ---------------------------------------------------------
    def _deliver(self, env: Envelope) -> None:
        stream = self.streams.get(env.agent_id)
        if stream is not None:
            stream.push(env)

    def _edited(self, agent_id: str, call_id: str, texts: dict[str, tuple[str | None, str | None]]) -> None:
        """Whole-file texts of an edit, kept until the call's `tool:end` becomes its update."""
        stream = self.streams.get(agent_id)
        if stream is not None:
            stream.edits[call_id] = texts

    def _ask(self, request: dict[str, Any]) -> tuple[Callable[[], None], Awaitable[ApprovalResponse]]:
        session_id, call = request["agentId"], request["call"]

        async def question() -> Any:
            stream = self.streams.get(session_id)
            if stream is not None:
                await stream.drained()  # the tool_call update goes out first
            assert self.conn is not None
            return await self.conn.request_permission(
                session_id=session_id, options=OPTIONS,
                tool_call=ToolCallUpdate(tool_call_id=call["id"], title=title_of(call), kind=tool_kind(call["name"]),  # type: ignore[arg-type]
                                         status="pending", raw_input=call.get("input")))

        task = asyncio.ensure_future(question())

        async def answer() -> ApprovalResponse:
            outcome = (await task).outcome
            if not isinstance(outcome, AllowedOutcome):
                return ApprovalResponse(decision="deny", note="the permission request was cancelled")
            option = outcome.option_id
            return ApprovalResponse(decision="allow" if option.startswith("allow") else "deny",
                                    remember=option == "allow_always",
                                    note="rejected always" if option == "reject_always" else None)

        return task.cancel, answer()

    # --- sessions ---------------------------------------------------------------------------
    def _modes(self, mode: str) -> SessionModeState:
        return SessionModeState(current_mode_id=mode, available_modes=[
            SessionMode(id=i, name=n, description=d) for i, n, d in MODES])

    def _config_options(self, config: AgentConfig) -> list[SessionConfigOptionSelect]:
        settings = self.runtime.settings
        current = (config.model.provider, config.model.model or config.model.provider) if config.model else ("echo", "echo")
        models = offered(settings.providers, settings.default_model)
        if current not in models:
            models.append(current)
        return [SessionConfigOptionSelect(
            id="model", name="Model", category="model", type="select", current_value="/".join(current),
            options=[SessionConfigSelectOption(value=f"{p}/{m}", name=m if p != "echo" else "echo (repeats you)")
                     for p, m in models])]

    async def _attach(self, session_id: str, replay: bool, mcp_servers: dict[str, Any] | None = None) -> AgentConfig:
        """Activate the agent for this connection (recovering it after a crash), replaying
        its conversation first when asked; live updates follow. `mcp_servers`: the
        editor's, added to the session's or replacing one of the same name (the ones it
        leaves out stay: see `Agent.add_mcp_servers`)."""
        config = await self.service.config(session_id)
        assert self.conn is not None
        work_dir = (config.sandbox.work_dir if config.sandbox else None) or os.getcwd()
        if replay:
            history = await self.service.messages(session_id)
            for update in replay_updates(history.messages, await self.service.todos(session_id), work_dir):
                await self.conn.session_update(session_id=session_id, update=update)
        if session_id not in self.streams:
            model = config.model.model if config.model else None
            self.streams[session_id] = SessionStream(session_id, self.conn, work_dir, context_window(model))
        resumed = await self.service.resume(session_id, None, "crash", self.watcher, lambda rows: None, mcp_servers)
        asyncio.get_running_loop().call_soon(resumed.start)  # re-issued approvals after the response
        return config

    @_errors
    async def initialize(self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None,
                         **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_info=Implementation(name="kode-rpc", version=__version__),
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(image=True, embedded_context=True),
                mcp_capabilities=McpCapabilities(http=True, sse=True),
                session_capabilities=SessionCapabilities(list=SessionListCapabilities(),
                                                         resume=SessionResumeCapabilities(),
                                                         close=SessionCloseCapabilities())))

    @_errors
    async def new_session(self, cwd: str, additional_directories: list[str] | None = None,
                          mcp_servers: list[Any] | None = None, **kwargs: Any) -> NewSessionResponse:
        meta = kwargs.get("kode") or {}
        if not isinstance(meta, dict):
            raise e.InvalidInput("_meta.kode must be an object", "_meta.kode", "must be an object")
        params: dict[str, Any] = {"sandbox": {"workDir": cwd, **({"allowPaths": additional_directories}
                                                                   if additional_directories else {})}}
        for key in ("model", "permission", "templateId", "systemPrompt", "tools", "budget"):
            if key in meta:
                params[key] = meta[key]
        servers = mcp_servers_of(mcp_servers or [])
        if servers:
            params["mcpServers"] = servers
        cfg = AgentConfig.model_validate(params)
        info = await self.service.create(cfg, self.watcher)
        config = await self._attach(info.agent_id, replay=False)
        mode = config.permission.mode if config.permission else "readonly"
        return NewSessionResponse(session_id=info.agent_id, modes=self._modes(mode),
                                  config_options=self._config_options(config))

    @_errors
    async def load_session(self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None,
                           additional_directories: list[str] | None = None, **kwargs: Any) -> LoadSessionResponse:
        config = await self._attach(session_id, replay=True, mcp_servers=_editor_servers(mcp_servers))
        mode = config.permission.mode if config.permission else "readonly"
        return LoadSessionResponse(modes=self._modes(mode), config_options=self._config_options(config))

    @_errors
    async def resume_session(self, session_id: str, cwd: str, additional_directories: list[str] | None = None,
                             mcp_servers: list[Any] | None = None, **kwargs: Any) -> ResumeSessionResponse:
        config = await self._attach(session_id, replay=False, mcp_servers=_editor_servers(mcp_servers))
        mode = config.permission.mode if config.permission else "readonly"
        return ResumeSessionResponse(modes=self._modes(mode), config_options=self._config_options(config))

    @_errors
    async def close_session(self, session_id: str, **kwargs: Any) -> CloseSessionResponse:
        stream = self.streams.pop(session_id, None)
        if stream is not None:
            await stream.drained()
            await stream.close()
        self.watcher.forget(session_id)
        await self.service.release(session_id)
        return CloseSessionResponse()

    @_errors
    async def list_sessions(self, cwd: str | None = None, cursor: str | None = None, **kwargs: Any) -> ListSessionsResponse:
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise e.InvalidInput(f"unknown cursor {cursor!r}", "cursor", "not a cursor this server gave") from None
        infos = await self.service.recent(cwd)
        page = infos[start:start + PAGE]
        sessions = []
        for info in page:
            first = await self.service.first_user_text(info.agent_id)
            title = first.strip().splitlines()[0][:80] if first and first.strip() else None
            sessions.append(SessionInfo(session_id=info.agent_id, cwd=info.work_dir or "", title=title,
                                        updated_at=info.updated_at))
        more = start + PAGE < len(infos)
        return ListSessionsResponse(sessions=sessions, next_cursor=str(start + PAGE) if more else None)

    @_errors
    async def set_session_mode(self, session_id: str, mode_id: str, **kwargs: Any) -> SetSessionModeResponse:
        if mode_id not in {m[0] for m in MODES}:
            raise e.InvalidInput(f"unknown mode {mode_id!r}", "modeId", "one of auto, approval, readonly")
        await self.service.reconfigure(session_id, self.watcher, mode=mode_id)
        assert self.conn is not None
        stream = self.streams.get(session_id)
        if stream is not None:
            await stream.drained()
        await self.conn.session_update(session_id=session_id, update=CurrentModeUpdate(
            session_update="current_mode_update", current_mode_id=mode_id))
        return SetSessionModeResponse()

    @_errors
    async def set_config_option(self, config_id: str, session_id: str, value: str | bool,
                                **kwargs: Any) -> SetSessionConfigOptionResponse:
        if config_id != "model":
            raise e.InvalidInput(f"unknown config option {config_id!r}", "configId", "only model")
        config = await self.service.config(session_id)
        choices = {o.value for o in self._config_options(config)[0].options}
        if not isinstance(value, str) or value not in choices:
            raise e.InvalidInput(f"unknown model {value!r}", "value", "one of the option's values")
        provider, _, model = value.partition("/")
        current = config.model.wire() if config.model else {}
        new = {**current, "provider": provider, "model": model} if current.get("provider") == provider \
            else {"provider": provider, "model": model}
        await self.service.reconfigure(session_id, self.watcher, model=new)
        stream = self.streams.get(session_id)
        if stream is not None:
            stream.context_window = context_window(model)
        return SetSessionConfigOptionResponse(config_options=self._config_options(await self.service.config(session_id)))

    # --- turns ------------------------------------------------------------------------------
    @_errors
    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        if session_id not in self.streams:
            await self._attach(session_id, replay=False)
        stream = self.streams[session_id]
        sent = await self.service.send(session_id, content_of(prompt), "user", self.watcher)
        result = await self.service.wait(sent, stop_on_pause=False)
        await stream.flushed(result.last_seq)  # every update of the turn before the response
        if result.status == "error":
            err = result.error
            raise RequestError(-32020, f"{err.type}: {err.message}" if err else "the turn failed",
                               {"reason": "provider_error", **(err.wire() if err else {})})
        reason = stream.done_reasons.pop(result.turn_id, "completed")
        return PromptResponse(stop_reason=STOP_REASONS.get(reason, "end_turn"))  # type: ignore[arg-type]

    @_errors
    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        await self.service.interrupt(session_id, "cancelled by the client")

    async def authenticate(self, method_id: str, **kwargs: Any) -> None:
        raise RequestError.method_not_found("authenticate")

    async def fork_session(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found("session/fork")

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RequestError.method_not_found("_" + method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        log.debug("ignoring ACP extension notification %s", method)

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            await stream.close()
        self.streams.clear()
