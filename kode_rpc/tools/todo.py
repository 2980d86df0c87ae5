"""Todo tools: the agent's own plan, read and replaced as a whole list.

Both tools are `readonly`: `todo_write` changes only the agent's plan (stored and
announced with `todo_changed` by the runtime), never the user's files or system,
so the `readonly` permission mode should not stop an agent from keeping its plan.
"""

from __future__ import annotations

import logging

from pydantic import Field

from ..protocol.agents import Todo
from .base import Tool, ToolContext, ToolInput, ToolResult, register

log = logging.getLogger(__name__)


class TodoReadInput(ToolInput):
    pass


class TodoWriteInput(ToolInput):
    todos: list[Todo] = Field(
        description="The complete new todo list (replaces the old one): [{id, title, status, notes?}]."
    )


class TodoReadTool(Tool):
    """Return the agent's current todo list."""

    name = "todo_read"
    description = "Read your current todo list."
    input_model = TodoReadInput
    readonly = True

    async def run(self, ctx: ToolContext, args: TodoReadInput) -> ToolResult:
        return ToolResult(ok=True, data={"todos": ctx.get_todos()})


class TodoWriteTool(Tool):
    """Replace the agent's todo list.

    Marked readonly on purpose: it edits only the agent's own plan, which no
    permission mode needs to guard.
    """

    name = "todo_write"
    description = (
        "Replace your todo list with the given items. status is one of pending, in_progress, "
        "completed. Send the whole list every time; ids must be unique."
    )
    input_model = TodoWriteInput
    readonly = True

    async def run(self, ctx: ToolContext, args: TodoWriteInput) -> ToolResult:
        seen: set[str] = set()
        for todo in args.todos:
            if todo.id in seen:
                return ToolResult.fail(f"duplicate todo id: {todo.id!r}; ids must be unique", "invalid_input")
            seen.add(todo.id)
        stored = await ctx.set_todos([todo.wire() for todo in args.todos])
        return ToolResult(ok=True, data={"todos": stored})


register(TodoReadTool())
register(TodoWriteTool())
