"""The tool interface and registry.

A tool is a small class: a pydantic input model (its JSON Schema goes to the
model provider), a `readonly` flag the permission policy reads, and `run`. Tools
never import the runtime: everything they may touch arrives in a `ToolContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from ..sandbox.base import Sandbox

OutputStream = Literal["stdout", "stderr"]


class ToolInput(BaseModel):
    """Base of tool input models: snake_case field names exactly as the contract spells them."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use, off start-up


@dataclass
class ToolResult:
    """`{ok, data?, error?, errorType?, retryable?}`: a failing tool is a result, not a crash."""

    ok: bool
    data: Any = None
    error: str | None = None
    error_type: str | None = None
    retryable: bool = False

    @classmethod
    def fail(cls, error: str, error_type: str, retryable: bool = False, data: Any = None) -> "ToolResult":
        return cls(ok=False, data=data, error=error, error_type=error_type, retryable=retryable)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if self.data is not None:
            out["data"] = self.data
        if self.error is not None:
            out["error"] = self.error
        if self.error_type is not None:
            out["errorType"] = self.error_type
        if not self.ok:
            out["retryable"] = self.retryable
        return out


class ToolContext(Protocol):
    """What the runtime hands a running tool."""

    agent_id: str
    call_id: str
    sandbox: Sandbox
    shells: "ShellRegistryLike"

    def output(self, stream: OutputStream, text: str) -> None:
        """Stream a piece of output; the runtime bounds it and emits `tool:output`."""

    def file_changed(self, path: str, change: Literal["added", "modified", "deleted"]) -> None:
        """Report a file the tool changed (emits `file_changed`)."""

    def get_todos(self) -> list[dict[str, Any]]:
        """The agent's todos as wire dicts."""

    async def set_todos(self, todos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace the agent's todos (validated, stored, `todo_changed` emitted)."""


class ShellRegistryLike(Protocol):
    """Per-agent background shells (implemented in tools/bash.py)."""

    async def kill_all(self) -> None: ...


class Tool(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[ToolInput]]
    readonly: ClassVar[bool] = False
    """True when the tool changes nothing: `readonly` permission mode runs it without asking."""

    @abstractmethod
    async def run(self, ctx: ToolContext, args: Any) -> ToolResult:
        """Run the tool. Raise only for bugs; expected failures are `ToolResult.fail`."""

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        """What an approval prompt shows: command, file change with a diff, or a plain tool call."""
        return {"type": "tool_call"}

    def edited_paths(self, args: Any, sandbox: Sandbox) -> list[str]:
        """Absolute paths of the files this call edits (so a face can show whole-file
        diffs); none for tools that edit no file by path. Never raises."""
        return []

    def preview(self, args: dict[str, Any]) -> str:
        """One line for UIs (`ToolCall.inputPreview`)."""
        text = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return text if len(text) <= 200 else text[:197] + "..."

    def spec(self) -> dict[str, Any]:
        """Name, description and JSON Schema of the input, as providers need them.

        Built once per tool: schema generation costs more than a whole echo turn.
        """
        cached = self.__dict__.get("_spec")
        if cached is None:
            cached = self.__dict__["_spec"] = {
                "name": self.name,
                "description": self.description,
                "input_schema": self.input_model.model_json_schema(),
            }
        return cached


_REGISTRY: dict[str, Tool] = {}


def register(tool: Tool) -> Tool:
    _REGISTRY[tool.name] = tool
    return tool


def builtin_tools() -> dict[str, Tool]:
    """All built-in tools by name (importing the modules registers them)."""
    from . import bash, fs, todo  # noqa: F401  (registration side effect)

    return dict(_REGISTRY)
