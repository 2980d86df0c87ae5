"""Agent configuration, info, messages and the params/results of `agent/*` (contract section 3)."""

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator

from .base import WireModel

AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN)]
MAX_INT = 2**63 - 1
"""Largest integer SQLite stores; larger cursors and limits are invalid params, not crashes."""
ProviderName = Literal["anthropic", "openai", "scripted", "echo"]
AgentState = Literal["READY", "WORKING", "PAUSED"]
Breakpoint = Literal[
    "READY",
    "PRE_MODEL",
    "STREAMING_MODEL",
    "TOOL_PENDING",
    "AWAITING_APPROVAL",
    "PRE_TOOL",
    "TOOL_EXECUTING",
    "POST_TOOL",
]


PATH_MAX = 4096
NAME_MAX = 255


def os_path(value: str, what: str) -> str:
    """An absolute path the OS can take (checked here, so a bad one is -32602 naming the
    field rather than an OSError from deep inside the sandbox or the store)."""
    import os.path

    if not os.path.isabs(value):
        raise ValueError(f"{what} must be an absolute path")
    encoded = os.fsencode(value)  # NUL and lone surrogates were refused before validation
    if len(encoded) >= PATH_MAX:
        raise ValueError(f"{what} is longer than {PATH_MAX} bytes")
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ValueError(f"{what} has a component longer than {NAME_MAX} bytes")
    return value


class ScriptToolCall(WireModel):
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ScriptUsage(WireModel):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class ScriptStep(WireModel):
    """One model call of the `scripted` provider."""

    text: str | None = None
    thinking: str | None = None
    tool_calls: list[ScriptToolCall] | None = None
    usage: ScriptUsage | None = None
    delay_ms: int | None = Field(default=None, ge=0)
    chunks: list[str] | None = None


class RetryConfig(WireModel):
    """Retry policy of provider calls (kode-rpc extension; defaults from the config file)."""

    max_retries: int = Field(default=3, ge=0, le=20)
    base_delay_ms: int = Field(default=1000, ge=0)
    max_delay_ms: int = Field(default=60000, ge=0)
    jitter_factor: float = Field(default=0.2, ge=0, le=1)


class ThinkingConfig(WireModel):
    """Extended thinking (Anthropic `thinking.budget_tokens`; kode-rpc extension)."""

    budget_tokens: int = Field(ge=1024)


class ModelConfig(WireModel):
    provider: ProviderName
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    script: list[ScriptStep] | None = None
    thinking: ThinkingConfig | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    """Longest wait for the next byte of a response (kode-rpc extension; default 600000)."""
    retry: RetryConfig | None = None


class PermissionConfig(WireModel):
    mode: Literal["auto", "approval", "readonly"] = "approval"
    allow_tools: list[str] | None = None
    deny_tools: list[str] | None = None
    require_approval_tools: list[str] | None = None
    approval_timeout_ms: int | None = Field(default=None, gt=0)


class SandboxConfig(WireModel):
    work_dir: str
    allow_paths: list[str] | None = None
    enforce_boundary: bool = True

    @field_validator("work_dir")
    @classmethod
    def _work_dir_absolute(cls, value: str) -> str:
        return os_path(value, "workDir")

    @field_validator("allow_paths")
    @classmethod
    def _allow_paths_absolute(cls, value: list[str] | None) -> list[str] | None:
        return [os_path(path, "allowPaths entries") for path in value] if value is not None else None


class BudgetConfig(WireModel):
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)


class ContextConfig(WireModel):
    """Context compression (contract 13)."""

    max_tokens: int | None = Field(default=None, gt=0)
    """The prompt size the model takes (default: the model's context window; 128,000 if unknown)."""
    compress_at: float | None = Field(default=None, gt=0, le=1)
    """Compress before a model call whose estimated prompt is above `compressAt * maxTokens` (default 0.8)."""
    keep_recent_tokens: int | None = Field(default=None, ge=0)
    """The recent messages kept as they are (default: a fifth of `maxTokens`)."""


MCP_SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
McpServerName = Annotated[str, Field(pattern=MCP_SERVER_NAME_PATTERN)]


class McpStdioServer(WireModel):
    """An MCP server kode-rpc starts as a child process and speaks to on its stdin/stdout.
    Values in `env` may be `${VAR}` references (resolved when connecting, never stored)."""

    type: Literal["stdio"] | None = None
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    """Working directory (default: the agent's workDir); relative to the workDir when relative."""
    timeout_ms: int | None = Field(default=None, gt=0)
    """Longest wait for one tool call (kode-rpc extension; default 60000)."""
    startup_timeout_ms: int | None = Field(default=None, gt=0)
    """Longest wait for the server to start and list its tools (kode-rpc extension; default 30000)."""


class McpRemoteServer(WireModel):
    """An MCP server reached over streamable HTTP (`http`, the default with a `url`) or SSE.
    Values in `headers` may be `${VAR}` references (resolved when connecting, never stored)."""

    type: Literal["http", "sse"] = "http"
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    """Longest wait for one tool call (kode-rpc extension; default 60000)."""
    startup_timeout_ms: int | None = Field(default=None, gt=0)
    """Longest wait for the server to answer and list its tools (kode-rpc extension; default 30000)."""


McpServerConfig = Union[McpStdioServer, McpRemoteServer]


class AgentConfig(WireModel):
    """Params of `agent/create`; fields override the template's."""

    agent_id: AgentId | None = None
    template_id: str = "default"
    model: ModelConfig | None = None
    system_prompt: str | None = None
    tools: list[str] | Literal["*"] | None = None
    permission: PermissionConfig | None = None
    sandbox: SandboxConfig | None = None
    budget: BudgetConfig | None = None
    metadata: dict[str, Any] | None = None
    mcp_servers: dict[McpServerName, McpServerConfig | None] | None = None
    """MCP servers (the `.mcp.json` shape; contract section 12), over the config file's
    `[mcp_servers.*]`: an entry of the same name wins, `null` turns a global one off."""
    checkpoints: bool = True
    """Snapshot the workDir before a turn changes files, so it can be rewound (contract 14)."""
    context: ContextConfig | None = None
    """When and how the conversation is compressed (contract 13)."""


class ModelRef(WireModel):
    provider: str
    model: str | None = None


class AgentInfo(WireModel):
    agent_id: str
    template_id: str
    created_at: str
    updated_at: str
    state: AgentState
    last_seq: int
    message_count: int
    model: ModelRef
    work_dir: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class TextBlock(WireModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(WireModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str | None = None
    """Anthropic's signature, sent back with the block in later requests."""


class RedactedThinkingBlock(WireModel):
    """Thinking the provider encrypted (Anthropic `redacted_thinking`); kept only to be sent
    back unchanged, as the API requires with tool use (kode-rpc extension)."""

    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class ToolUseBlock(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(WireModel):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: Any = None
    is_error: bool = False


class ImageBlock(WireModel):
    type: Literal["image"] = "image"
    media_type: str
    data: str


ContentBlock = Annotated[
    Union[TextBlock, ThinkingBlock, RedactedThinkingBlock, ToolUseBlock, ToolResultBlock, ImageBlock],
    Field(discriminator="type"),
]


class Message(WireModel):
    index: int
    role: Literal["user", "assistant", "tool", "system"]
    content: list[ContentBlock]
    turn_id: str | None = None
    created_at: str
    kind: Literal["summary"] | None = None
    """`summary`: the message is a context compression's summary (contract 13)."""
    compacted: bool | None = None
    """True when a context compression summarised the message away (contract 13)."""
    rewound: bool | None = None
    """True when an `agent/rewind` took the message out of the model's context (contract 14)."""


class Todo(WireModel):
    id: str = Field(min_length=1)
    title: str
    status: Literal["pending", "in_progress", "completed"] = "pending"
    notes: str | None = None


class AgentRef(WireModel):
    agent_id: AgentId


class ResumeParams(AgentRef):
    since: int | None = Field(default=None, ge=0, le=MAX_INT)
    strategy: Literal["crash", "manual"] = "crash"


class ResumeResult(AgentInfo):
    replayed: int


class SendParams(AgentRef):
    text: str | None = None
    content: list[ContentBlock] | None = None
    kind: Literal["user", "reminder"] = "user"


class SendResult(WireModel):
    message_id: str
    turn_id: str
    queued: bool


class TurnError(WireModel):
    """Why a turn ended with `done {reason: "error"}` (`type` from the -32020 vocabulary)."""

    type: str
    message: str
    retryable: bool = False


class CompleteResult(WireModel):
    status: Literal["ok", "paused", "interrupted", "error"]
    text: str
    turn_id: str
    last_seq: int
    permission_ids: list[str]
    error: TurnError | None = None
    """Present when `status` is `error`: a failed turn is a result, not a JSON-RPC error."""


class InterruptParams(AgentRef):
    note: str | None = None


class InterruptResult(WireModel):
    interrupted: bool


class DecideParams(AgentRef):
    approval_id: str = Field(min_length=1)
    decision: Literal["allow", "deny"]
    note: str | None = None
    remember: bool = False
    """With `allow`: always allow this tool for the agent (kode-rpc extension, as in `approval/request`)."""


class DecideResult(WireModel):
    accepted: bool


class Usage(WireModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class ListParams(WireModel):
    prefix: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = None


class ListResult(WireModel):
    agents: list[AgentInfo]
    next_cursor: str | None = None


class MessagesParams(AgentRef):
    limit: int | None = Field(default=None, ge=1, le=MAX_INT)
    before: int | None = Field(default=None, ge=0, le=MAX_INT)


class MessagesResult(WireModel):
    messages: list[Message]
    total: int


class EventsParams(AgentRef):
    since: int = Field(default=0, ge=0, le=MAX_INT)
    limit: int | None = Field(default=None, ge=1, le=MAX_INT)
    channels: list[Literal["progress", "control", "monitor"]] | None = None


class ForkParams(AgentRef):
    new_agent_id: AgentId | None = None
    at_seq: int | None = Field(default=None, ge=0, le=MAX_INT)


class TodosParams(AgentRef):
    todos: list[Todo] | None = None


class TodosResult(WireModel):
    todos: list[Todo]


class DeleteResult(WireModel):
    deleted: bool


class Checkpoint(WireModel):
    """A snapshot of the workDir taken before a turn's first call that may change files."""

    checkpoint_id: str
    turn_id: str
    message_index: int
    """The index of the turn's user message."""
    seq: int
    """The seq of its `checkpoint` event."""
    created_at: str
    files: int
    """Files that turn changed (0 until the turn has ended)."""
    diff_seq: int | None = None
    """The seq of the turn's `turn_diff` event (absent until the turn has ended, when it
    changed no file, and for checkpoints taken before kode-rpc recorded it): a client
    rebuilding a transcript reads that one event (`agent/events` with `since: diffSeq - 1`)."""


class CheckpointsResult(WireModel):
    checkpoints: list[Checkpoint]
    """Oldest first."""


class RewindParams(AgentRef):
    checkpoint_id: str = Field(min_length=1)
    restore: Literal["code", "conversation", "both"] = "both"
    dry_run: bool = False
    force: bool = False


class RewindFile(WireModel):
    path: str
    """Relative to workDir, `/`-separated."""
    change: Literal["added", "modified", "deleted"]
    """What the rewind does (did) to the file."""


class RewindResult(WireModel):
    restored: bool
    files: list[RewindFile]
    conflicts: list[str]
    """Files changed outside the agent since its last turn ended; with any and no
    `force`, nothing is restored."""


class CompactParams(AgentRef):
    instructions: str | None = None
    """What the summary should focus on."""


class CompactResult(WireModel):
    compressed: bool
    """False when there was nothing to summarise (or the summary call failed)."""
    ratio: float | None = None
    """Estimated prompt after / before."""
    compacted_messages: int
