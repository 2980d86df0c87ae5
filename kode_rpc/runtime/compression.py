"""Context compression of one agent (contract section 13).

`AgentCompression` is held by an `Agent` (`agent.compaction`):

- `before_model_call(turn)` runs before every model call of a turn: it estimates the
  prompt (the prompt tokens the provider reported for the previous call plus about one
  token per 4 characters of what was added since) and, above `compressAt * maxTokens`,
  compresses first.
- `compact(instructions)` compresses now (`agent/compact`); the service calls it once the
  agent is idle, holding `lock` so no queued turn starts meanwhile.
- `context(messages)` is the model context: the latest summary first, then every message
  neither compacted nor rewound.

Nothing is deleted and the store is not changed: a compression appends the summary as
an ordinary stored message (role `user`, one text block marked as a summary) and records
in the agent's runtime state (`compaction`, stored with the agent row like the rewound
ranges, so it survives restarts) which message is the summary and which messages it
replaced. A record whose summary message was rewound (or cut off by a fork) no longer
applies: the messages it replaced come back into the context.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..logs import redact
from ..protocol import events as ev
from ..providers.base import ModelRequest, ProviderError, TextDelta, UsageReport
from ..providers.models import context_window
from ..providers.pricing import cost_usd
from ..providers.registry import get_provider
from ..providers.retry import RetryPolicy, stream_with_retry
from .rewind import is_rewound

if TYPE_CHECKING:
    from .agent import Agent
    from .records import Turn

log = logging.getLogger(__name__)

DEFAULT_COMPRESS_AT = 0.8
SUMMARY_HEADER = "[Summary of the earlier conversation, written when the context was compressed]"
SUMMARY_SYSTEM = (
    "You are compressing the context of a coding agent's conversation. Write a concise but complete summary of "
    "the conversation you are given so that the agent can continue the work without it: the user's goals and "
    "requests, decisions made, files read or changed (with paths), commands run and their important results, "
    "errors met and how they were handled, and what remains to be done. Write only the summary."
)
BLOCK_LIMIT = 4000
"""Characters of one content block kept in the transcript sent to the summary call."""


def chars_of(message: dict[str, Any]) -> int:
    """Characters of a message as the model sees it (for the 4-characters-a-token estimate)."""
    total = 0
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            total += len(block.get("text") or "")
        elif kind == "thinking":
            total += len(block.get("thinking") or "")
        elif kind == "tool_use":
            total += len(block.get("name") or "") + len(json.dumps(block.get("input") or {}))
        elif kind == "tool_result":
            content = block.get("content")
            total += len(content if isinstance(content, str) else json.dumps(content))
        elif kind == "image":
            total += 6000  # ~1,500 tokens, what a typical image costs
        else:
            total += len(json.dumps(block))
    return total + 16  # role and framing


def tokens_of(message: dict[str, Any]) -> int:
    return (chars_of(message) + 3) // 4


def _ranges(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def records_of(runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """The compaction records of a runtime state: `{summary: index, compacted: [[start, end)]}`."""
    state = runtime.get("compaction") or {}
    out = []
    for r in state.get("records") or []:
        if isinstance(r, dict) and isinstance(r.get("summary"), int):
            out.append({"summary": r["summary"],
                        "compacted": [[int(s), int(e)] for s, e in r.get("compacted") or []]})
    return out


class Flags:
    """Which messages are summaries and which are compacted (for `agent/messages`)."""

    def __init__(self, records: list[dict[str, Any]], rewound: list[tuple[int, int]], count: int | None) -> None:
        self.summaries = {r["summary"] for r in records}
        self.active = [r for r in records
                       if not is_rewound(rewound, r["summary"]) and (count is None or r["summary"] < count)]
        self.compacted = [(s, e) for r in self.active for s, e in r["compacted"]]

    def is_compacted(self, index: int) -> bool:
        return any(s <= index < e for s, e in self.compacted)

    @property
    def summary(self) -> int | None:
        return self.active[-1]["summary"] if self.active else None


def flags_of(runtime: dict[str, Any], rewound: list[tuple[int, int]], count: int | None) -> Flags:
    """The flags of a stored agent (not in memory) with `count` messages."""
    return Flags([r for r in records_of(runtime) if count is None or r["summary"] < count], rewound, count)


class AgentCompression:
    def __init__(self, agent: Agent, runtime: dict[str, Any]) -> None:
        self.agent = agent
        count = len(agent.messages)  # a fork at an earlier seq has fewer messages than its records name
        self.records = [r for r in records_of(runtime) if r["summary"] < count]
        state = runtime.get("compaction") or {}
        self.basis: dict[str, Any] | None = state.get("basis") if isinstance(state.get("basis"), dict) else None
        """The last model call's reported prompt: `{promptTokens, messages (count when sent), rewound}`."""
        self.lock = asyncio.Lock()
        """Held by `agent/compact` while it compresses: no turn starts meanwhile."""

    # --- state ---------------------------------------------------------------------
    def runtime(self) -> dict[str, Any]:
        return {"records": self.records, "basis": self.basis}

    def flags(self) -> Flags:
        return Flags(self.records, self.agent.checkpoints.rewound, len(self.agent.messages))

    def context(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages the model sees: the latest summary, then all neither compacted nor rewound."""
        visible = self.agent.checkpoints.context(messages)
        if not self.records:
            return visible
        flags = self.flags()
        rest = [m for m in visible if m["index"] not in flags.summaries and not flags.is_compacted(m["index"])]
        if flags.summary is None:
            return rest
        return [messages[flags.summary], *rest]

    def limits(self) -> tuple[int, float, int]:
        """(maxTokens, compressAt, keepRecentTokens) of the agent's config."""
        cfg = self.agent.config.context
        model = self.agent.config.model
        max_tokens = (cfg.max_tokens if cfg and cfg.max_tokens else None) or context_window(model.model if model else None)
        compress_at = cfg.compress_at if cfg and cfg.compress_at is not None else DEFAULT_COMPRESS_AT
        keep = cfg.keep_recent_tokens if cfg and cfg.keep_recent_tokens is not None else max_tokens // 5
        return max_tokens, compress_at, keep

    def observe(self, sent_messages: int, usage: UsageReport | None) -> None:
        """After a model call: what the provider reported as its prompt is the next estimate's base."""
        if usage is None:
            return
        prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        self.basis = {"promptTokens": prompt, "messages": sent_messages, "rewound": len(self.agent.checkpoints.rewound)}

    def _static_tokens(self) -> int:
        agent = self.agent
        chars = len(agent._system_prompt()) + len(json.dumps([t.spec() for t in agent.tools.values()]))
        return (chars + 3) // 4

    def counted(self) -> int:
        """The next prompt counted at 4 characters a token (system prompt, tools, context)."""
        return self._static_tokens() + sum(tokens_of(m) for m in self.context(self.agent.messages))

    def estimate(self) -> int:
        """The estimated prompt of the next model call."""
        basis = self.basis
        if basis is not None and basis.get("rewound") == len(self.agent.checkpoints.rewound):
            since = int(basis.get("messages", 0))
            newer = 0
            for m in reversed(self.context(self.agent.messages)):  # in index order: only the tail is new
                if m["index"] < since:
                    break
                newer += tokens_of(m)
            return int(basis.get("promptTokens", 0)) + newer
        return self.counted()

    # --- compressing -----------------------------------------------------------------
    async def before_model_call(self, turn: Turn) -> None:
        max_tokens, compress_at, _ = self.limits()
        before = self.estimate()
        if before > compress_at * max_tokens:
            await self.compress(turn, None, before)

    async def compact(self, instructions: str | None) -> tuple[bool, float | None, int]:
        """`agent/compact` (the caller made sure no turn runs): (compressed, ratio, compactedMessages)."""
        async with self.lock:
            return await self.compress(None, instructions, self.estimate())

    def _split(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(older messages to summarise, recent ones kept as they are)."""
        _, _, keep = self.limits()
        context = self.context(self.agent.messages)
        flags = self.flags()
        boundary = len(context)
        used = 0
        while boundary > 0:
            cost = tokens_of(context[boundary - 1])
            if used + cost > keep:
                break
            used += cost
            boundary -= 1
        # The latest user message always stays.
        for pos in range(len(context) - 1, -1, -1):
            m = context[pos]
            if m["role"] == "user" and m["index"] not in flags.summaries:
                boundary = min(boundary, pos)
                break
        # A tool_use and its tool_result are never separated.
        while boundary > 0:
            kept_results = {b.get("toolUseId") for m in context[boundary:] for b in m["content"]
                            if b.get("type") == "tool_result"}
            older_uses = {b.get("id") for m in context[:boundary] for b in m["content"] if b.get("type") == "tool_use"}
            if not kept_results & older_uses:
                break
            boundary -= 1
        return context[:boundary], context[boundary:]

    async def compress(self, turn: Turn | None, instructions: str | None, before: int) -> tuple[bool, float | None, int]:
        agent = self.agent
        older, _recent = self._split()
        flags = self.flags()
        if not any(m["index"] not in flags.summaries for m in older):
            return False, None, 0  # nothing but a summary (or nothing) to summarise
        tid = turn.id if turn else None
        counted_before = self.counted()
        agent.emit(ev.ContextCompression(phase="start"), tid)
        done = False
        try:
            summary = await self._summarise(older, instructions, tid)
            text = f"{SUMMARY_HEADER}\n\n{summary.strip()}"
            if agent.todos:
                text += "\n\n[Todo list]\n" + "\n".join(
                    f"- [{t.get('status', 'pending')}] {t.get('id')}: {t.get('title', '')}" for t in agent.todos)
            index = len(agent.messages)
            agent._append_message("user", [{"type": "text", "text": text}], tid)
            self.records.append({"summary": index, "compacted": _ranges([m["index"] for m in older])})
            # The ratio is measured one way on both sides (4 characters a token); the estimate
            # until the next call reports its prompt is the one before, scaled by it.
            ratio = round(self.counted() / counted_before, 4) if counted_before > 0 else None
            self.basis = {"promptTokens": round(before * (ratio or 1)), "messages": len(agent.messages),
                          "rewound": len(agent.checkpoints.rewound)}
            agent.persist()  # queued right behind the message: the store writes them in order
            agent.emit(ev.ContextCompression(phase="end", summary=summary, ratio=ratio,
                                             compacted_messages=len(older)), tid)
            done = True
            return True, ratio, len(older)
        except ProviderError as exc:
            exc.message = redact(exc.message)
            agent.emit(ev.ErrorEvent(severity="warn", phase="model", retryable=exc.retryable,
                                     message=f"context compression failed: {exc.type}: {exc.message}"), tid)
            return False, None, 0
        finally:
            if not done:
                agent.emit(ev.ContextCompression(phase="end", compacted_messages=0), tid)

    async def _summarise(self, older: list[dict[str, Any]], instructions: str | None, tid: str | None) -> str:
        """One model call (the agent's provider and model) that summarises `older`."""
        agent = self.agent
        ask = "Summarise the conversation above."
        if agent.todos:
            ask += " The agent's todo list (kept as it is; mention progress on it):\n" + json.dumps(agent.todos)
        if instructions:
            ask += f"\nFocus the summary on: {instructions}"
        prompt = "<conversation>\n" + transcript(older) + "\n</conversation>\n\n" + ask
        config = agent.model_config()
        request = ModelRequest(system=SUMMARY_SYSTEM, messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                               tools=[], config=config, position=agent.model_calls)
        agent.model_calls += 1
        parts: list[str] = []
        usage: UsageReport | None = None

        def on_retry(attempt: int, delay_ms: int, err: ProviderError) -> None:
            agent.emit(ev.Retry(attempt=attempt, delay_ms=delay_ms,
                                error=ev.RetryErrorInfo(type=err.type, message=redact(err.message))), tid)

        async for delta in stream_with_retry(get_provider(config["provider"]), request,
                                             RetryPolicy.from_wire(config.get("retry")), on_retry):
            if isinstance(delta, TextDelta):
                parts.append(delta.text)
            elif isinstance(delta, UsageReport):
                usage = delta
        if usage is not None:
            cost = cost_usd(config.get("model"), usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                            usage.cache_write_tokens, agent.svc.settings.prices)
            agent.usage.input_tokens += usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
            agent.usage.output_tokens += usage.output_tokens
            agent.usage.cost_usd += cost
            agent.emit(ev.TokenUsage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                total_tokens=usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
                cost_usd=round(cost, 8)), tid)
        text = "".join(parts).strip()
        return text or "(the model returned an empty summary)"


def _clip(text: str) -> str:
    return text if len(text) <= BLOCK_LIMIT else text[:BLOCK_LIMIT] + f" [... {len(text) - BLOCK_LIMIT} characters cut]"


def transcript(messages: list[dict[str, Any]]) -> str:
    """The messages as plain text for the summary call (no tool blocks: the call has no tools)."""
    lines: list[str] = []
    for m in messages:
        for block in m["content"]:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"[{m['role']}] {_clip(block.get('text') or '')}")
            elif kind == "tool_use":
                lines.append(f"[assistant called {block.get('name')}] {_clip(json.dumps(block.get('input') or {}))}")
            elif kind == "tool_result":
                content = block.get("content")
                body = content if isinstance(content, str) else json.dumps(content)
                err = " (error)" if block.get("isError") else ""
                lines.append(f"[tool result{err}] {_clip(body)}")
            elif kind == "image":
                lines.append(f"[{m['role']}] [an image]")
    return "\n".join(lines)
