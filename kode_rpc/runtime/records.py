"""What an agent keeps in memory about its work: turns, tool calls, pending approvals."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..protocol.events import FINAL_TOOL_STATES, ToolCall
from ..providers.base import ProviderError, ToolCallRequest, UsageReport
from ..store.base import Store, TurnRow
from ..tools.base import Tool
from .events import EventLog


@dataclass
class Services:
    """What an agent needs from the process around it."""

    store: Store
    events: EventLog
    tools: dict[str, Tool]
    settings: Settings = field(default_factory=lambda: Settings({"provider": "echo"}, "builtin"))
    tool_concurrency: int = 4
    edit_taps: list[EditTap] = field(default_factory=list)
    """Told of every file an edit tool changed, with whole texts before and after (in
    process only, never stored: the ACP face shows them as diffs). Empty: no cost."""
    checkpoint_dir: str | None = None
    """Where agents' checkpoints live (`<dir>/<agentId>`); None: no checkpoints."""


EditTap = Callable[[str, str, dict[str, tuple[str | None, str | None]]], None]
"""(agent id, call id, {absolute path: (text before or None, text after or None)})."""


@dataclass
class PendingApproval:
    approval_id: str
    call_id: str
    tool: str
    request: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]


@dataclass
class CallRun:
    """One tool call of a step, with its live record."""

    call: ToolCall
    step: int
    approval: PendingApproval | None = None
    executed: bool = False
    started: float | None = None
    """monotonic() when the tool started running."""

    def stop_clock(self) -> None:
        if self.started is not None and self.call.duration_ms is None:
            self.call.duration_ms = int((time.monotonic() - self.started) * 1000)

    @property
    def final(self) -> bool:
        return self.call.state in FINAL_TOOL_STATES

    def result_block(self) -> dict[str, Any]:
        result = self.call.result if self.call.result is not None else {"ok": False, "error": self.call.error}
        return {
            "type": "tool_result",
            "toolUseId": self.call.id,
            "content": result,
            "isError": self.call.state != "COMPLETED",
        }


@dataclass
class Turn:
    row: TurnRow
    done: asyncio.Future[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    texts: list[str] = field(default_factory=list)
    error: ProviderError | None = None
    finishing: bool = False
    detach: bool = False
    """Set at shutdown for a turn that only waits on approvals: it stops in memory and
    stays pending in the store, exactly as after a crash, so the approvals survive."""
    resume_calls: list[CallRun] | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    recovered: bool = False
    """Rebuilt by crash recovery: a checkpoint of this turn was taken (if at all) by the
    process that died, and is found in the stored metadata (`AgentCheckpoints`)."""

    @property
    def id(self) -> str:
        return self.row.turn_id


class StepOutput:
    """What one model call produced so far (kept when the stream is interrupted)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCallRequest] = []
        self.usage: UsageReport | None = None
        self.signature: str | None = None
        self.redacted: list[str] = []
