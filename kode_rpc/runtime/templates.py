"""Built-in agent templates: the defaults an `agent/create` overrides field by field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Template:
    id: str
    version: str
    description: str
    system_prompt: str
    tools: list[str] | str = "*"
    permission: dict[str, Any] = field(default_factory=lambda: {"mode": "readonly"})
    max_steps: int = 50


_CODER_PROMPT = (
    "You are a careful coding agent working inside {workDir}. Use the tools to read, "
    "search, edit files and run commands there. Keep changes minimal and explain them."
)

TEMPLATES: dict[str, Template] = {
    t.id: t
    for t in [
        Template(
            id="default",
            version="1",
            description="All built-in tools; read-only tools run freely, anything that changes files or runs commands asks first.",
            system_prompt=_CODER_PROMPT,
        ),
        Template(
            id="auto",
            version="1",
            description="All built-in tools without asking (the sandbox boundary still applies).",
            system_prompt=_CODER_PROMPT,
            permission={"mode": "auto"},
        ),
        Template(
            id="reader",
            version="1",
            description="Read and search only: fs_read, fs_glob, fs_grep, todo_read, todo_write.",
            system_prompt="You answer questions about the files in {workDir}; you cannot change anything.",
            tools=["fs_read", "fs_glob", "fs_grep", "todo_read", "todo_write"],
            permission={"mode": "readonly"},
        ),
    ]
}
