"""The `ToolContext` a running tool sees: output bounds, file and todo changes as events."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from .. import secrets
from ..protocol.events import FileChanged, ToolOutput

if TYPE_CHECKING:
    from .agent import Agent, CallRun, Turn

MAX_DELTA_BYTES = 64 * 1024
MAX_CALL_OUTPUT_BYTES = 1024 * 1024


class CallContext:
    """The `ToolContext` a running tool sees; bounds output as the contract says."""

    def __init__(self, agent: "Agent", turn: Turn, run: CallRun) -> None:
        self.agent_id = agent.id
        self.call_id = run.call.id
        self.sandbox = agent.sandbox
        self.shells = agent.shells
        self._agent = agent
        self._turn = turn
        self._sent = 0
        self._truncated = False
        self._held: dict[str, str] = {}

    def output(self, stream: Literal["stdout", "stderr"], text: str) -> None:
        """Send tool output as `tool:output` deltas, secrets redacted. While secrets are
        known, the last (longest secret - 1) characters of a stream are held back until
        more output or the call's end, so a secret split across two chunks is caught too."""
        if self._truncated or not text:
            return
        hold = secrets.longest() - 1
        if hold > 0:
            text = secrets.redact(self._held.pop(stream, "") + text)
            if len(text) <= hold:
                self._held[stream] = text
                return
            self._held[stream] = text[-hold:]
            text = text[:-hold]
        self._send(stream, text)

    def flush(self) -> None:
        """Send what `output` held back (the call ended)."""
        held, self._held = self._held, {}
        for stream, text in held.items():
            if text:
                self._send(stream, text)  # type: ignore[arg-type]

    def _send(self, stream: Literal["stdout", "stderr"], text: str) -> None:
        if self._truncated:
            return
        data = text.encode("utf-8", "replace")
        truncated = False
        if self._sent + len(data) > MAX_CALL_OUTPUT_BYTES:
            data = data[: MAX_CALL_OUTPUT_BYTES - self._sent]
            truncated = self._truncated = True
        self._sent += len(data)
        for i in range(0, max(len(data), 1), MAX_DELTA_BYTES):
            piece = data[i : i + MAX_DELTA_BYTES].decode("utf-8", "ignore")
            last = i + MAX_DELTA_BYTES >= len(data)
            self._agent.emit(ToolOutput(call_id=self.call_id, stream=stream, delta=piece, truncated=truncated and last),
                             self._turn.id)

    def file_changed(self, path: str, change: Literal["added", "modified", "deleted"]) -> None:
        if self._agent.files.active:
            return  # the workDir's watcher reports it (by: "agent"), once (contract 15)
        root = self.sandbox.work_dir
        if path.startswith(root + os.sep):  # relative to the workDir, as the watcher reports
            path = path[len(root) + 1:].replace(os.sep, "/")
        self._agent.emit(FileChanged(path=path, change=change), self._turn.id)

    def get_todos(self) -> list[dict[str, Any]]:
        return list(self._agent.todos)

    async def set_todos(self, todos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._agent.set_todos(todos, self._turn.id)
