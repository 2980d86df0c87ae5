"""`openai`: any OpenAI-compatible chat-completions endpoint, streamed.

One provider serves OpenAI itself and the local servers that copy its wire format
(Ollama, LM Studio, vLLM, llama.cpp server): `baseUrl` includes `/v1`, a key is
needed only for api.openai.com, and everything the servers disagree on is
tolerated here rather than configured:

- thinking arrives as `delta.reasoning_content` (DeepSeek, vLLM, llama.cpp) or
  `delta.reasoning` (Ollama, newer vLLM);
- tool calls arrive as fragments keyed by `index` (OpenAI: id and name first,
  arguments in pieces), or whole in one chunk (Ollama), or without `index`
  (then the position in the chunk's list is the key), and Ollama reuses index 0
  for every call of a parallel batch, told apart only by a new `id`;
- usage comes in a final chunk with empty `choices` (`stream_options.include_usage`),
  cached prompt tokens in `prompt_tokens_details.cached_tokens` (OpenAI, vLLM)
  or `prompt_cache_hit_tokens` (DeepSeek); servers that send none get zeros;
- an error after the 200 comes as a `data: {"error": {...}}` object (OpenAI,
  vLLM); llama.cpp instead writes a non-standard `error:` line that SSE parsers
  drop, so a stream that reaches `[DONE]` without a single chunk is an error too.

The provider makes ONE attempt: the runtime retries (`providers/retry.py`) on the
`ProviderError` types that are retryable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import (
    ModelRequest,
    Provider,
    ProviderError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
    split_images,
)
from .http import api_key, error_for_status, parse_json, sse_post

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class OpenAIProvider(Provider):
    """Chat completions with `stream: true`; see the module docstring for the dialects handled."""

    name = "openai"

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        config = request.config
        base_url = (config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
        url = f"{base_url}/chat/completions"
        key = api_key(config, DEFAULT_KEY_ENV, required=_is_openai_cloud(base_url))
        body = build_body(request)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        parser = StreamParser(position=request.position)
        # Iterating inside the `async with` means a cancelled consumer leaves the
        # block at once and the connection is closed with it.
        async with sse_post(url, headers, body, config) as source, aclosing(source.aiter_sse()) as events:
            async for sse in events:
                for event in parser.feed(sse.event, sse.data):
                    yield event
                if parser.done:
                    break
        for event in parser.finish():
            yield event


def _is_openai_cloud(base_url: str) -> bool:
    """Only OpenAI's own API must have a key; local servers run without one."""
    host = urlsplit(base_url).hostname or ""
    return host == "api.openai.com"


# --------------------------------------------------------------------------- request


def build_body(request: ModelRequest) -> dict[str, Any]:
    """The chat-completions request body for one model call."""
    config = request.config
    model = config.get("model")
    if not model:
        raise ProviderError("invalid_request", "the openai provider needs model.model (e.g. \"gpt-4o\" or \"qwen2.5\")")
    body: dict[str, Any] = {
        "model": model,
        "messages": convert_messages(request.system, request.messages),
        "stream": True,
        # Without this the stream carries no token counts at all.
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool.get("description") or "",
                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
    if config.get("maxTokens") is not None:
        # OpenAI's reasoning models refuse `max_tokens`; everyone else (and every local
        # server) knows only `max_tokens`.
        key = "max_completion_tokens" if _is_openai_reasoning_model(config) else "max_tokens"
        body[key] = config["maxTokens"]
    if config.get("temperature") is not None:
        body["temperature"] = config["temperature"]
    return body


def _is_openai_reasoning_model(config: dict[str, Any]) -> bool:
    model = str(config.get("model") or "")
    base = str(config.get("baseUrl") or DEFAULT_BASE_URL)
    return "api.openai.com" in base and model.startswith(("o1", "o3", "o4", "gpt-5"))


def convert_messages(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our wire `Message`s (camelCase content blocks) as chat-completions messages.

    Tool results become one `role: "tool"` message per result, wherever they were
    stored, because chat completions has no tool-result content part.
    """
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for message in messages:
        role = message.get("role")
        blocks = _blocks(message.get("content"))
        images: list[dict[str, Any]] = []
        for block in blocks:
            if block.get("type") == "tool_result":
                content, found = split_images(block.get("content"))
                images.extend(found)
                out.append({"role": "tool", "tool_call_id": block.get("toolUseId", ""),
                            "content": _result_text(content)})
        if images:  # chat completions has no image in a tool message: they follow as the user's
            user_images = _user_message([{"type": "text", "text": "Images the tools returned:"}, *images])
            if user_images is not None:
                out.append(user_images)
        rest = [b for b in blocks if b.get("type") != "tool_result"]
        if role == "assistant":
            out.append(_assistant_message(rest))
        elif role == "system":
            text = _joined_text(rest)
            if text:
                out.append({"role": "system", "content": text})
        elif role == "user":
            user = _user_message(rest)
            if user is not None:
                out.append(user)
        # role "tool" carries only tool_result blocks, handled above
    return out


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _joined_text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text") or "" for b in blocks if b.get("type") == "text" and b.get("text"))


def _user_message(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Plain string content when there is no image: older local servers accept only that."""
    images = [b for b in blocks if b.get("type") == "image"]
    if not images:
        text = _joined_text(blocks)
        return {"role": "user", "content": text} if text or blocks else None
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if block.get("type") == "text" and block.get("text"):
            parts.append({"type": "text", "text": block["text"]})
        elif block.get("type") == "image":
            media = block.get("mediaType") or "image/png"
            parts.append({"type": "image_url", "image_url": {"url": f"data:{media};base64,{block.get('data', '')}"}})
    return {"role": "user", "content": parts}


def _assistant_message(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Thinking is dropped: chat completions takes no reasoning back (DeepSeek rejects it)."""
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant"}
    if calls:
        message["content"] = text or None
        message["tool_calls"] = calls
    else:
        # Ollama refuses a null content unless tool calls are present.
        message["content"] = text
    return message


def _result_text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content)


# --------------------------------------------------------------------------- response


@dataclass
class _Call:
    """A tool call being assembled from its fragments."""

    key: int
    """The server's `index` (or the fragment's position when it sent none)."""
    seq: int
    """Order of first appearance, to break ties among calls on a reused index."""
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamParser:
    """Turns chat-completion chunks into `StreamEvent`s; text and thinking at once, the rest at the end."""

    def __init__(self, position: int = 0) -> None:
        self.position = position
        self.done = False
        """`[DONE]` seen: stop reading."""
        self.finish_reason: str | None = None
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self._calls: list[_Call] = []
        self._active: dict[int, _Call] = {}
        """The server's index -> the call its next fragments extend."""

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        """One SSE event; returns what can go out now (text and thinking deltas)."""
        if data.strip() == "[DONE]":
            if self.chunks == 0:
                # llama.cpp reports a failed request on an `error:` line (dropped by
                # every SSE parser) followed by [DONE]: nothing at all came back.
                raise ProviderError("invalid_response", "the server ended the stream without a reply")
            self.done = True
            return []
        if not data.strip():
            return []
        chunk = parse_json(data, "stream chunk")
        if not isinstance(chunk, dict):
            raise ProviderError("invalid_response", f"stream chunk is not an object: {data[:200]!r}")
        if chunk.get("error") or event == "error":
            raise stream_error(chunk)
        self.chunks += 1
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        out: list[StreamEvent] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is never requested; ignore any other choice
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                out.extend(self._delta(delta))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _delta(self, delta: dict[str, Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        thinking = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thinking, str) and thinking:
            out.append(ThinkingDelta(thinking))
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(TextDelta(content))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            out.append(TextDelta(refusal))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, fragment in enumerate(tool_calls):
                if isinstance(fragment, dict):
                    self._fragment(position, fragment)
        return out

    def _fragment(self, position: int, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        key = index if isinstance(index, int) else position
        call_id = fragment.get("id") or ""
        call = self._active.get(key)
        if call is None or (call_id and call.id and call_id != call.id):
            call = _Call(key=key, seq=len(self._calls))
            self._calls.append(call)
            self._active[key] = call
        if call_id and not call.id:
            call.id = call_id
        function = fragment.get("function") or {}
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):  # a few servers send the object itself
            call.arguments.append(json.dumps(arguments))

    def finish(self) -> list[StreamEvent]:
        """The tool calls (in index order) and the one usage report, once the stream ended."""
        if not self.done and self.finish_reason is None:
            raise ProviderError("connection", "stream ended early")
        out: list[StreamEvent] = []
        for n, call in enumerate(sorted(self._calls, key=lambda c: (c.key, c.seq))):
            if not call.name:
                raise ProviderError("invalid_response", f"tool call {n} has no function name")
            out.append(ToolCallRequest(id=call.id or f"call_{self.position}_{n}", name=call.name,
                                       input=self._arguments(call)))
        out.append(usage_report(self.usage))
        return out

    def _arguments(self, call: _Call) -> dict[str, Any]:
        text = "".join(call.arguments).strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            hint = " (the reply hit max_tokens)" if self.finish_reason == "length" else ""
            raise ProviderError("invalid_response",
                                f"arguments of tool call {call.name!r} are not JSON{hint}: {text[:200]!r}") from None
        if not isinstance(value, dict):
            raise ProviderError("invalid_response",
                                f"arguments of tool call {call.name!r} are not an object: {text[:200]!r}")
        return value


def usage_report(usage: dict[str, Any] | None) -> UsageReport:
    """Our `inputTokens` exclude cache reads, which OpenAI counts inside `prompt_tokens`."""
    if not usage:
        return UsageReport()
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if not cached:
        cached = _int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
    cached = min(cached, prompt)
    return UsageReport(input_tokens=prompt - cached, output_tokens=_int(usage.get("completion_tokens")),
                       cache_read_tokens=cached)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


_SERVER_WORDS = ("server_error", "api_error", "internal", "overloaded", "unavailable", "timeout", "gateway")


def stream_error(chunk: dict[str, Any]) -> ProviderError:
    """An `{"error": ...}` object inside a 200 stream, mapped as its HTTP status would be.

    The status is the numeric `code` when the server put one there (vLLM), else it
    is guessed from `type`/`code` (OpenAI sends `server_error`, `rate_limit_exceeded`,
    `insufficient_quota`); `error_for_status` then does the one mapping we have.
    """
    err = chunk.get("error")
    if not isinstance(err, dict):
        err = {"message": str(err or chunk.get("message") or "error in stream")}
    code = err.get("code")
    words = f"{err.get('type') or ''} {code or ''}".lower()
    if isinstance(code, int) and 400 <= code <= 599:
        status = code
    elif "rate_limit" in words or "too_many" in words:
        status = 429
    elif "auth" in words or "api_key" in words or "permission" in words:
        status = 401
    elif any(word in words for word in _SERVER_WORDS):
        status = 500
    else:
        status = 400
    mapped = error_for_status(status, json.dumps({"error": err}).encode(), httpx.Headers())
    message = str(err.get("message") or err.get("type") or "error in stream")
    return ProviderError(mapped.type, f"error in stream: {message}", mapped.retryable,
                         status=code if isinstance(code, int) else None)
