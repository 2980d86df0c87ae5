"""kode events and stored messages as ACP `session/update`s.

`SessionStream` is one ACP session's view of its agent: it turns the agent's
events into updates and writes them in `seq` order from one task, so every update
of a turn is written before the prompt's response (`flushed(seq)`) and a
permission request never overtakes the `tool_call` it is about (`drained()`).
`replay_updates` rebuilds a stored conversation for `session/load`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from acp import (
    plan_entry,
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_plan,
    update_tool_call,
    update_user_message_text,
)
from acp.interfaces import Client
from acp.schema import Cost, ToolCallLocation, UsageUpdate

from ..protocol.agents import Message
from ..runtime.events import Envelope

log = logging.getLogger(__name__)

KINDS = {"fs_read": "read", "fs_glob": "search", "fs_grep": "search", "fs_write": "edit", "fs_edit": "edit",
         "fs_multi_edit": "edit", "bash_run": "execute", "bash_logs": "execute", "bash_kill": "execute",
         "todo_read": "think", "todo_write": "think"}
MAX_TEXT = 64 * 1024


def tool_kind(name: str) -> str:
    return KINDS.get(name, "other")


def call_paths(name: str, args: dict[str, Any], work_dir: str) -> list[str]:
    """Absolute paths a call is about (for `locations` and diffs)."""
    raw: list[Any] = []
    if name == "fs_multi_edit":
        raw = [e.get("path") for e in args.get("edits") or [] if isinstance(e, dict)]
    elif name == "fs_glob":
        raw = [args.get("cwd") or "."]
    elif name in ("fs_read", "fs_write", "fs_edit", "fs_grep"):
        raw = [args.get("path") or "."]
    out: list[str] = []
    for path in raw:
        if isinstance(path, str) and path:
            full = os.path.normpath(os.path.join(work_dir, path))
            if full not in out:
                out.append(full)
    return out


def result_text(result: Any) -> str:
    """What a tool result says, as text for the editor."""
    if not isinstance(result, dict):
        return "" if result is None else str(result)
    if not result.get("ok", False):
        return str(result.get("error") or "failed")
    data = result.get("data")
    if isinstance(data, dict):
        if "stdout" in data or "stderr" in data:
            text = (data.get("stdout") or "") + (data.get("stderr") or "")
        elif isinstance(data.get("content"), str):
            text = data["content"]
        else:
            text = json.dumps(data, ensure_ascii=False, indent=1)
    else:
        text = "" if data is None else str(data)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n[truncated]"


def title_of(call: dict[str, Any]) -> str:
    preview = call.get("inputPreview") or ""
    return f"{call['name']}: {preview}"[:200] if preview else call["name"]


def plan_of(todos: Iterable[dict[str, Any]]) -> Any:
    return update_plan(plan_entry(t.get("title", ""), status=t.get("status", "pending")) for t in todos)


class SessionStream:
    """Writes one session's updates, in order, from its agent's events."""

    def __init__(self, session_id: str, conn: Client, work_dir: str, context_window: int) -> None:
        self.session_id = session_id
        self.conn = conn
        self.work_dir = work_dir
        self.context_window = context_window
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue()
        self.written = 0
        self.done_reasons: dict[str, str] = {}
        self.cost = 0.0
        self.edits: dict[str, dict[str, tuple[str | None, str | None]]] = {}
        """Whole texts before and after each edit call, from the runtime's edit tap."""
        self._running: set[str] = set()
        self._progress = asyncio.Condition()
        self._task = asyncio.ensure_future(self._run())

    def push(self, env: Envelope) -> None:
        self.queue.put_nowait(env)

    async def close(self) -> None:
        self._task.cancel()

    async def flushed(self, seq: int) -> None:
        """Return once every event up to `seq` has been written as updates."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written >= seq or self._task.done())

    async def drained(self) -> None:
        """Return once everything pushed so far has been written."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.queue.empty() and not self._busy or self._task.done())

    _busy = False

    async def _run(self) -> None:
        while True:
            env = await self.queue.get()
            self._busy = True
            try:
                for update in self.translate(env):
                    await self.conn.session_update(session_id=self.session_id, update=update)
            except Exception:  # a broken update must not stop the session's stream
                log.exception("session/update for event %s of %s failed", env.seq, env.agent_id)
            finally:
                self._busy = False
                async with self._progress:
                    self.written = max(self.written, env.seq)
                    self._progress.notify_all()

    def translate(self, env: Envelope) -> list[Any]:
        event = env.event
        etype = event["type"]
        if etype == "text_chunk":
            return [update_agent_message_text(event["delta"])]
        if etype == "think_chunk":
            return [update_agent_thought_text(event["delta"])]
        if etype == "tool:start":
            call = event["call"]
            paths = call_paths(call["name"], call.get("input") or {}, self.work_dir)
            return [start_tool_call(call["id"], title_of(call), kind=tool_kind(call["name"]), status="pending",  # type: ignore[arg-type]
                                    locations=[ToolCallLocation(path=p) for p in paths], raw_input=call.get("input"))]
        if etype == "permission_decided" and event.get("decision") == "allow":
            return self._start_running(event["callId"])
        if etype == "tool:output":
            return self._start_running(event["callId"])
        if etype == "tool:end":
            return self._finish(event["call"])
        if etype == "todo_changed":
            return [plan_of(event["todos"])]
        if etype == "token_usage":
            self.cost += event.get("costUsd") or 0.0
            used = (event["inputTokens"] + event["outputTokens"] + event.get("cacheReadTokens", 0)
                    + event.get("cacheWriteTokens", 0))
            return [UsageUpdate(session_update="usage_update", used=used, size=self.context_window,
                                cost=Cost(amount=round(self.cost, 8), currency="USD"))]
        if etype == "done" and env.turn_id:
            self.done_reasons[env.turn_id] = event["reason"]
        return []

    def _start_running(self, call_id: str) -> list[Any]:
        if call_id in self._running:
            return []
        self._running.add(call_id)
        return [update_tool_call(call_id, status="in_progress")]

    def _finish(self, call: dict[str, Any]) -> list[Any]:
        out = self._start_running(call["id"]) if call.get("state") in ("COMPLETED", "FAILED") else []
        self._running.discard(call["id"])
        ok = call.get("state") == "COMPLETED"
        content: list[Any] = []
        text = result_text(call.get("result"))
        if text:
            content.append(tool_content(text_block(text)))
        for path, (before, after) in self.edits.pop(call["id"], {}).items():
            if ok and after is not None:
                content.append(tool_diff_content(path, after, before))
        out.append(update_tool_call(call["id"], status="completed" if ok else "failed", content=content,
                                    raw_output=call.get("result")))
        return out


def replay_updates(messages: list[Message], todos: list[dict[str, Any]], work_dir: str) -> list[Any]:
    """A stored conversation as the updates `session/load` sends: the user's and the
    agent's messages, each tool call in its final state, then the plan."""
    uses: dict[str, dict[str, Any]] = {}
    out: list[Any] = []
    for message in messages:
        for block in message.content:
            data = block.wire()
            kind = data["type"]
            if kind == "text" and message.role == "user":
                out.append(update_user_message_text(data["text"]))
            elif kind == "text" and message.role == "assistant":
                out.append(update_agent_message_text(data["text"]))
            elif kind == "thinking":
                out.append(update_agent_thought_text(data["thinking"]))
            elif kind == "tool_use":
                uses[data["id"]] = data
            elif kind == "tool_result" and data["toolUseId"] in uses:
                use = uses.pop(data["toolUseId"])
                paths = call_paths(use["name"], use.get("input") or {}, work_dir)
                text = result_text(data.get("content"))
                out.append(start_tool_call(
                    use["id"], title_of({"name": use["name"], "inputPreview": ""}), kind=tool_kind(use["name"]),  # type: ignore[arg-type]
                    status="failed" if data.get("isError") else "completed",
                    locations=[ToolCallLocation(path=p) for p in paths], raw_input=use.get("input"),
                    content=[tool_content(text_block(text))] if text else None))
    if todos:
        out.append(plan_of(todos))
    return out
