"""Tool-call records and the `agent/event` notification (contract section 4)."""

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from .base import WireModel
from .agents import Breakpoint, Todo

ToolCallState = Literal[
    "PENDING",
    "APPROVAL_REQUIRED",
    "APPROVED",
    "EXECUTING",
    "COMPLETED",
    "FAILED",
    "DENIED",
    "SEALED",
]
FINAL_TOOL_STATES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "DENIED", "SEALED"})
Channel = Literal["progress", "control", "monitor"]
DoneReason = Literal["completed", "interrupted", "error", "budget_exceeded", "max_steps"]


class ToolCall(WireModel):
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    input_preview: str = ""
    state: ToolCallState = "PENDING"
    result: Any = None
    error: str | None = None
    started_at: str | None = None
    duration_ms: int | None = None


class TextChunkStart(WireModel):
    type: Literal["text_chunk_start"] = "text_chunk_start"
    step: int


class TextChunk(WireModel):
    type: Literal["text_chunk"] = "text_chunk"
    step: int
    delta: str


class Chunk:
    """A streamed `text_chunk` / `think_chunk` event, built without pydantic: the one hot
    event (one per token). `wire()` equals `TextChunk(...).wire()` / `ThinkChunk(...).wire()`
    (tests/test_golden.py checks it), so it cannot drift from the models."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def wire(self) -> dict[str, Any]:
        return self._data


def chunk(kind: Literal["text", "think"], step: int, delta: str) -> Chunk:
    return Chunk({"type": f"{kind}_chunk", "step": step, "delta": delta})


class TextChunkEnd(WireModel):
    type: Literal["text_chunk_end"] = "text_chunk_end"
    step: int
    text: str


class ThinkChunkStart(WireModel):
    type: Literal["think_chunk_start"] = "think_chunk_start"
    step: int


class ThinkChunk(WireModel):
    type: Literal["think_chunk"] = "think_chunk"
    step: int
    delta: str


class ThinkChunkEnd(WireModel):
    type: Literal["think_chunk_end"] = "think_chunk_end"
    step: int
    text: str


class ToolStart(WireModel):
    type: Literal["tool:start"] = "tool:start"
    call: ToolCall


class ToolOutput(WireModel):
    type: Literal["tool:output"] = "tool:output"
    call_id: str
    stream: Literal["stdout", "stderr"]
    delta: str
    truncated: bool = False


class ToolEnd(WireModel):
    type: Literal["tool:end"] = "tool:end"
    call: ToolCall


class ToolError(WireModel):
    type: Literal["tool:error"] = "tool:error"
    call: ToolCall
    error: str


class Done(WireModel):
    type: Literal["done"] = "done"
    step: int
    reason: DoneReason


class PermissionRequired(WireModel):
    type: Literal["permission_required"] = "permission_required"
    approval_id: str
    call: ToolCall


class PermissionDecided(WireModel):
    type: Literal["permission_decided"] = "permission_decided"
    approval_id: str | None
    call_id: str
    decision: Literal["allow", "deny"]
    decided_by: Literal["client", "policy", "timeout", "interrupt"]
    note: str | None = None


class StateChanged(WireModel):
    type: Literal["state_changed"] = "state_changed"
    state: Literal["READY", "WORKING", "PAUSED"]


class BreakpointChanged(WireModel):
    type: Literal["breakpoint_changed"] = "breakpoint_changed"
    previous: Breakpoint
    current: Breakpoint


class StepComplete(WireModel):
    type: Literal["step_complete"] = "step_complete"
    step: int
    duration_ms: int


class TokenUsage(WireModel):
    type: Literal["token_usage"] = "token_usage"
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int
    cost_usd: float | None = None


class ToolExecuted(WireModel):
    type: Literal["tool_executed"] = "tool_executed"
    call: ToolCall


class RetryErrorInfo(WireModel):
    type: str
    message: str


class Retry(WireModel):
    type: Literal["retry"] = "retry"
    attempt: int
    delay_ms: int
    error: RetryErrorInfo


class ErrorEvent(WireModel):
    type: Literal["error"] = "error"
    severity: Literal["info", "warn", "error"]
    phase: Literal["model", "tool", "system", "lifecycle"]
    message: str
    retryable: bool = False


class TodoChanged(WireModel):
    type: Literal["todo_changed"] = "todo_changed"
    todos: list[Todo]


class FileChanged(WireModel):
    type: Literal["file_changed"] = "file_changed"
    path: str
    change: Literal["added", "modified", "deleted"]
    by: Literal["agent", "external"] = "agent"


class ContextCompression(WireModel):
    type: Literal["context_compression"] = "context_compression"
    phase: Literal["start", "end"]
    summary: str | None = None
    ratio: float | None = None
    compacted_messages: int | None = None
    """Messages summarised away (`end` only; 0 when nothing was compressed)."""


class AgentResumed(WireModel):
    type: Literal["agent_resumed"] = "agent_resumed"
    strategy: Literal["crash", "manual"]
    sealed: list[str]


McpServerStatus = Literal["connecting", "ready", "failed", "closed"]


class McpStatus(WireModel):
    """An MCP server of the agent changed state (contract section 12): `tools` are the
    offered names `mcp__<server>__<tool>` (present when ready); `error` says why it failed."""

    type: Literal["mcp_status"] = "mcp_status"
    server: str
    status: McpServerStatus
    tools: list[str] | None = None
    error: str | None = None


class CheckpointTaken(WireModel):
    """The workDir was snapshotted before the turn's first call that may change files."""

    type: Literal["checkpoint"] = "checkpoint"
    checkpoint_id: str
    turn_id: str
    message_index: int


class DiffFile(WireModel):
    path: str
    change: Literal["added", "modified", "deleted"]
    additions: int
    deletions: int


class TurnDiff(WireModel):
    """What a turn changed in the workDir (sent at its end when it changed files)."""

    type: Literal["turn_diff"] = "turn_diff"
    turn_id: str
    checkpoint_id: str
    files: list[DiffFile]
    diff: str
    """Unified diff, cut at 1 MiB (on a line end) with `truncated: true`."""
    truncated: bool = False


class Rewound(WireModel):
    type: Literal["rewound"] = "rewound"
    checkpoint_id: str
    restore: Literal["code", "conversation", "both"]
    message_index: int


Event = Annotated[
    Union[
        TextChunkStart,
        TextChunk,
        TextChunkEnd,
        ThinkChunkStart,
        ThinkChunk,
        ThinkChunkEnd,
        ToolStart,
        ToolOutput,
        ToolEnd,
        ToolError,
        Done,
        PermissionRequired,
        PermissionDecided,
        StateChanged,
        BreakpointChanged,
        StepComplete,
        TokenUsage,
        ToolExecuted,
        Retry,
        ErrorEvent,
        TodoChanged,
        FileChanged,
        ContextCompression,
        AgentResumed,
        CheckpointTaken,
        TurnDiff,
        Rewound,
        McpStatus,
    ],
    Field(discriminator="type"),
]

CHANNEL_OF: dict[str, Channel] = {
    "text_chunk_start": "progress",
    "text_chunk": "progress",
    "text_chunk_end": "progress",
    "think_chunk_start": "progress",
    "think_chunk": "progress",
    "think_chunk_end": "progress",
    "tool:start": "progress",
    "tool:output": "progress",
    "tool:end": "progress",
    "tool:error": "progress",
    "done": "progress",
    "permission_required": "control",
    "permission_decided": "control",
}
"""Channel of each event type; every type not listed is `monitor`."""


def channel_of(event_type: str) -> Channel:
    return CHANNEL_OF.get(event_type, "monitor")


class EventEnvelope(WireModel):
    """Params of the `agent/event` notification."""

    agent_id: str
    seq: int
    ts: str
    channel: Channel
    turn_id: str | None = None
    replay: bool | None = None
    event: Event


class EventsResult(WireModel):
    events: list[EventEnvelope]
    last_seq: int
