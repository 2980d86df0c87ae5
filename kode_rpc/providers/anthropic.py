"""`anthropic`: the Anthropic Messages API (`POST /v1/messages`, `stream: true`).

One call is one HTTP request; the runtime retries (providers/retry.py), so every
failure here becomes a single `ProviderError` with a contract type. The request
is built from our wire messages (camelCase blocks, roles user/assistant/tool/
system) into Anthropic's shape, which differs in three ways that matter:

- tool results travel in a *user* message (`tool_result` blocks, `tool_use_id`),
  and roles must alternate, so consecutive same-role messages are merged;
- a thinking block can be sent back only with the signature the API gave it;
- the system prompt is a top-level field, marked `cache_control` so the stable
  prefix (tools, system) is cached between the many calls of an agent loop.

The response is an SSE stream: `message_start` (input and cache usage),
`content_block_start/delta/stop` per block (text, thinking, tool_use whose JSON
input arrives in `input_json_delta` pieces), `message_delta` (cumulative output
tokens), `message_stop`; `ping` keeps the connection alive and `error` can arrive
inside a 200 stream. Unknown events and delta types are ignored so a newer API
does not break older servers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .base import (
    ModelRequest,
    Provider,
    ProviderError,
    RedactedThinking,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
    split_images,
)
from .http import api_key, parse_json, sse_post

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
"""Output cap when the config names none (the API requires `max_tokens`)."""
EPHEMERAL = {"type": "ephemeral"}

STREAM_ERROR_TYPES: dict[str, str] = {
    "overloaded_error": "service_unavailable",
    "api_error": "service_unavailable",
    "rate_limit_error": "rate_limit",
    "timeout_error": "timeout",
    "authentication_error": "authentication",
    "permission_error": "authentication",
    "billing_error": "quota_exceeded",
    "invalid_request_error": "invalid_request",
    "not_found_error": "invalid_request",
    "request_too_large": "invalid_request",
}
"""Anthropic `error.type` of an `event: error` -> our `-32020` type (others: invalid_request)."""


# --- request -----------------------------------------------------------------


def messages_url(config: dict[str, Any]) -> str:
    """`{baseUrl}/v1/messages`; a baseUrl written with `/v1` (an easy slip) is not doubled."""
    base = str(config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1/messages"


def _tool_result_text(content: Any) -> str:
    """Our tool result is any JSON value; Anthropic takes a string, so non-strings go as JSON text."""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def convert_block(role: str, block: dict[str, Any]) -> dict[str, Any] | None:
    """One wire block as an Anthropic block for a message of `role`, or None to drop it.

    Blocks the API would reject are dropped rather than failing the call: empty
    text, unsigned thinking (the API accepts thinking only with its signature),
    and blocks that cannot appear in that role.
    """
    kind = block.get("type")
    if kind == "text":
        text = block.get("text") or ""
        return {"type": "text", "text": text} if text else None
    if kind == "image":
        if role == "assistant":
            return None
        return {"type": "image", "source": {"type": "base64", "media_type": block.get("mediaType"),
                                             "data": block.get("data")}}
    if kind == "thinking":
        if role != "assistant" or not block.get("signature"):
            return None
        return {"type": "thinking", "thinking": block.get("thinking") or "", "signature": block["signature"]}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data")} if role == "assistant" and block.get("data") else None
    if kind == "tool_use":
        if role != "assistant":
            return None
        return {"type": "tool_use", "id": block.get("id"), "name": block.get("name"),
                "input": block.get("input") or {}}
    if kind == "tool_result":
        if role == "assistant":
            return None
        rest, images = split_images(block.get("content"))
        content: Any = _tool_result_text(rest)
        if images:  # a tool_result's content may be a list of text and image blocks
            content = [{"type": "text", "text": content}] + [
                {"type": "image", "source": {"type": "base64", "media_type": i.get("mediaType") or "image/png",
                                             "data": i["data"]}} for i in images]
        return {"type": "tool_result", "tool_use_id": block.get("toolUseId"),
                "content": content, "is_error": bool(block.get("isError"))}
    return None


def convert_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our conversation as Anthropic `messages`: roles mapped, empty ones dropped, same roles merged.

    `tool` messages become user messages of `tool_result` blocks and `system`
    messages user text; the API requires user/assistant alternation, so runs of
    one role are merged into one message. In a merged user message the
    `tool_result` blocks go first, as the API requires them right after the
    assistant's `tool_use`.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = "assistant" if message.get("role") == "assistant" else "user"
        blocks = [b for b in (convert_block(role, blk) for blk in message.get("content") or []) if b is not None]
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for message in out:
        if message["role"] == "user":
            content = message["content"]
            message["content"] = ([b for b in content if b["type"] == "tool_result"]
                                  + [b for b in content if b["type"] != "tool_result"])
    return out


def build_body(request: ModelRequest) -> dict[str, Any]:
    """The JSON body of the call; raises ProviderError("invalid_request") for an unusable config."""
    config = request.config
    model = config.get("model")
    if not model:
        raise ProviderError("invalid_request", "the anthropic provider needs model.model (e.g. claude-sonnet-4-5)")
    thinking = config.get("thinking") or {}
    budget = thinking.get("budgetTokens")
    max_tokens = config.get("maxTokens")
    if budget:
        # thinking tokens count against max_tokens, which must exceed the budget
        if max_tokens is None:
            max_tokens = budget + DEFAULT_MAX_TOKENS
        elif max_tokens <= budget:
            raise ProviderError("invalid_request",
                                f"maxTokens ({max_tokens}) must be greater than thinking.budgetTokens ({budget})")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
        "messages": convert_messages(request.messages),
        "stream": True,
    }
    if request.system:
        body["system"] = [{"type": "text", "text": request.system, "cache_control": dict(EPHEMERAL)}]
    if request.tools:
        body["tools"] = [{"name": t["name"], "description": t.get("description") or "",
                          "input_schema": t.get("input_schema") or {"type": "object"}} for t in request.tools]
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    elif config.get("temperature") is not None:  # the API refuses temperature with thinking
        body["temperature"] = config["temperature"]
    _mark_conversation_cache(body["messages"])
    return body


def _mark_conversation_cache(messages: list[dict[str, Any]]) -> None:
    """Put a cache breakpoint on the last block of the last user message.

    An agent loop resends the whole conversation each step; with the breakpoint
    at its end the next step reads all of it from the cache (the system
    breakpoint alone would cache only tools and system). Thinking blocks cannot
    carry `cache_control`, and the last message is a user one in every call the
    runtime makes.
    """
    if messages and messages[-1]["role"] == "user":
        last = messages[-1]["content"][-1]
        if last["type"] in ("text", "image", "tool_result"):
            last["cache_control"] = dict(EPHEMERAL)


# --- response ----------------------------------------------------------------


@dataclass
class _ToolBlock:
    id: str
    name: str
    start_input: dict[str, Any]
    parts: list[str] = field(default_factory=list)

    def request(self) -> ToolCallRequest:
        """The call with its input parsed from the streamed JSON pieces."""
        raw = "".join(self.parts)
        if not raw.strip():
            return ToolCallRequest(self.id, self.name, dict(self.start_input))
        try:
            value = json.loads(raw)
        except ValueError:
            raise ProviderError("invalid_response", f"tool {self.name!r} input is not JSON: {raw[:200]!r}") from None
        if not isinstance(value, dict):
            raise ProviderError("invalid_response", f"tool {self.name!r} input is not a JSON object: {raw[:200]!r}")
        return ToolCallRequest(self.id, self.name, value)


class _StreamState:
    """What one streamed response has said so far: open tool blocks and usage."""

    def __init__(self) -> None:
        self.tools: dict[int, _ToolBlock] = {}
        self.usage = UsageReport()
        self.stopped = False

    def take_usage(self, usage: Any) -> None:
        """Keep the counts `usage` carries; later reports (cumulative) replace earlier ones."""
        if not isinstance(usage, dict):
            return
        if usage.get("input_tokens") is not None:
            self.usage.input_tokens = int(usage["input_tokens"])
        if usage.get("output_tokens") is not None:
            self.usage.output_tokens = int(usage["output_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self.usage.cache_read_tokens = int(usage["cache_read_input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self.usage.cache_write_tokens = int(usage["cache_creation_input_tokens"])

    def handle(self, kind: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        """The stream events one SSE payload of type `kind` yields (raises ProviderError on `error`)."""
        if kind == "message_start":
            message = data.get("message") or {}
            self.take_usage(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "content_block_start":
            return self._block_start(data)
        elif kind == "content_block_delta":
            return self._block_delta(data)
        elif kind == "content_block_stop":
            block = self.tools.pop(data.get("index", -1), None)
            if block is not None:
                return [block.request()]
        elif kind == "message_delta":
            self.take_usage(data.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
            return [self.usage]
        elif kind == "error":
            raise stream_error(data)
        return []  # ping and event types newer than this code

    def _block_start(self, data: dict[str, Any]) -> list[StreamEvent]:
        block = data.get("content_block") or {}
        btype = block.get("type")
        if btype == "tool_use":
            start_input = block.get("input")
            self.tools[data.get("index", -1)] = _ToolBlock(
                str(block.get("id") or ""), str(block.get("name") or ""),
                start_input if isinstance(start_input, dict) else {})
        elif btype == "text" and block.get("text"):
            return [TextDelta(block["text"])]
        elif btype == "thinking" and block.get("thinking"):
            return [ThinkingDelta(block["thinking"], signature=block.get("signature") or None)]
        elif btype == "redacted_thinking" and block.get("data"):
            return [RedactedThinking(str(block["data"]))]
        return []

    def _block_delta(self, data: dict[str, Any]) -> list[StreamEvent]:
        delta = data.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta":
            return [TextDelta(delta.get("text") or "")] if delta.get("text") else []
        if dtype == "thinking_delta":
            return [ThinkingDelta(delta.get("thinking") or "")] if delta.get("thinking") else []
        if dtype == "signature_delta":
            return [ThinkingDelta("", signature=delta.get("signature") or "")] if delta.get("signature") else []
        if dtype == "input_json_delta":
            block = self.tools.get(data.get("index", -1))
            if block is not None:
                block.parts.append(delta.get("partial_json") or "")
        return []


def stream_error(data: dict[str, Any]) -> ProviderError:
    """An `event: error` inside a 200 stream as our error (overloaded is retryable like a 529)."""
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    etype = str(err.get("type") or "unknown_error")
    message = str(err.get("message") or etype)
    return ProviderError(STREAM_ERROR_TYPES.get(etype, "invalid_request"), f"{etype}: {message}")


class AnthropicProvider(Provider):
    name = "anthropic"

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """One streamed Messages call; events are yielded as they arrive.

        Iterating inside `sse_post` means that cancelling the consumer (an
        interrupt) closes the HTTP connection at once, and httpx errors raised
        while reading are mapped to `timeout` / `connection` there.
        """
        body = build_body(request)
        key = api_key(request.config, "ANTHROPIC_API_KEY", required=True)
        assert key is not None
        headers = {
            "x-api-key": key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        state = _StreamState()
        async with sse_post(messages_url(request.config), headers, body, request.config) as source:
            async for sse in source.aiter_sse():
                if not sse.data.strip():
                    continue  # an event without data carries nothing
                data = parse_json(sse.data, f"event {sse.event or 'message'!r}")
                if not isinstance(data, dict):
                    raise ProviderError("invalid_response", f"event data is not a JSON object: {sse.data[:200]!r}")
                # the payload's own `type` names the event; the `event:` line is the fallback
                for event in state.handle(data.get("type") or sse.event, data):
                    yield event
                if state.stopped:
                    return  # message_stop is the last event; do not wait for the server to close
        raise ProviderError("connection", "stream ended early (no message_stop)")
