"""`approval/request` (server to client) and the agent status that lists pending ones."""

from typing import Annotated, Literal, Union

from pydantic import Field

from .agents import AgentInfo, Breakpoint, Todo, Usage
from .base import WireModel
from .events import McpServerStatus, ToolCall


class CommandSubject(WireModel):
    type: Literal["command"] = "command"
    command: str
    cwd: str


class FileChangeSubject(WireModel):
    type: Literal["file_change"] = "file_change"
    path: str
    diff: str


class ToolCallSubject(WireModel):
    type: Literal["tool_call"] = "tool_call"


Subject = Annotated[
    Union[CommandSubject, FileChangeSubject, ToolCallSubject], Field(discriminator="type")
]


class ApprovalRequest(WireModel):
    """Params of the server-to-client request `approval/request`."""

    agent_id: str
    approval_id: str
    turn_id: str
    call: ToolCall
    title: str
    subject: Subject
    options: list[Literal["allow", "deny"]] = Field(default_factory=lambda: ["allow", "deny"])
    expires_at: str | None = None


class ApprovalResponse(WireModel):
    """Result of `approval/request`; anything that does not validate means deny."""

    decision: Literal["allow", "deny"]
    note: str | None = None
    remember: bool = False


class McpServerState(WireModel):
    """One MCP server of an agent as `agent/status` reports it (contract section 12)."""

    server: str
    status: McpServerStatus
    tools: list[str] = Field(default_factory=list)
    error: str | None = None


class CheckpointsStatus(WireModel):
    """Whether the agent's turns are checkpointed (contract section 14), and why not."""

    enabled: bool
    reason: str | None = None


class AgentStatus(AgentInfo):
    breakpoint: Breakpoint
    active: bool
    idle_ms: int
    pending_approvals: list[ApprovalRequest]
    usage: Usage
    todos: list[Todo]
    checkpoints: CheckpointsStatus = Field(default_factory=lambda: CheckpointsStatus(enabled=False))
    mcp: list[McpServerState] = Field(default_factory=list)
