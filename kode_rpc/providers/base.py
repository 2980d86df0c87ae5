"""The provider interface: one streamed model call.

The runtime owns the conversation, the script position and retries' events;
a provider turns a `ModelRequest` into a stream of `StreamEvent`s and raises
`ProviderError` (with a contract error type) when the call fails. Cancelling the
consuming task must stop the stream at once: providers do no work outside the
iteration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class ModelRequest:
    system: str
    messages: list[dict[str, Any]]
    """Wire `Message` dicts (`role`, `content` blocks) in order."""
    tools: list[dict[str, Any]]
    """`{name, description, input_schema}` of each enabled tool."""
    config: dict[str, Any]
    """The agent's `ModelConfig` as wire JSON."""
    position: int = 0
    """How many model calls this agent made before this one (the `scripted` cursor)."""


@dataclass
class TextDelta:
    text: str


@dataclass
class ThinkingDelta:
    text: str
    signature: str | None = None
    """Anthropic's signature of a thinking block (sent back with it in later requests)."""


@dataclass
class RedactedThinking:
    """An encrypted thinking block: not shown, stored to be sent back with the conversation."""

    data: str


@dataclass
class ToolCallRequest:
    id: str
    name: str
    input: dict[str, Any] = field(default_factory=dict)


@dataclass
class UsageReport:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


StreamEvent = Union[TextDelta, ThinkingDelta, RedactedThinking, ToolCallRequest, UsageReport]


RETRYABLE_TYPES = frozenset({"rate_limit", "timeout", "service_unavailable", "connection"})


class ProviderError(Exception):
    """A failed model call; `type` is the `-32020` vocabulary.

    `rate_limit` (429), `timeout`, `service_unavailable` (5xx, Anthropic's 529) and
    `connection` are retried; `authentication`, `quota_exceeded`, `invalid_request`
    and `invalid_response` (garbage from the server) are not. `retry_after` (seconds)
    comes from the server's `retry-after-ms` / `retry-after` headers.
    """

    def __init__(self, type_: str, message: str, retryable: bool | None = None, *,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.retryable = type_ in RETRYABLE_TYPES if retryable is None else retryable
        self.status = status
        self.retry_after = retry_after


class Provider(ABC):
    name: str

    @abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream one model call. Usage, when known, comes as one `UsageReport`."""


def split_images(content: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A tool result without its image blocks, and the images (`{type: "image", mediaType,
    data}`), which providers send as images rather than as base64 text. Images sit in the
    result itself when it is a list of blocks, or in its `data` (MCP tools' results)."""
    def is_image(block: Any) -> bool:
        return isinstance(block, dict) and block.get("type") == "image" and isinstance(block.get("data"), str)

    def strip(blocks: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
        images = [b for b in blocks if is_image(b)]
        kept = [b if not is_image(b) else {"type": "text", "text": f"[image {images.index(b) + 1}: {b.get('mediaType')}]"}
                for b in blocks]
        return kept, images

    if isinstance(content, list):
        return strip(content)
    if isinstance(content, dict) and isinstance(content.get("data"), list):
        data, images = strip(content["data"])
        return {**content, "data": data}, images
    return content, []


def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters a token) for offline providers that have no tokenizer."""
    return max(1, (len(text) + 3) // 4) if text else 0


def split_words(text: str) -> list[str]:
    """Split into words each carrying the whitespace after it; the pieces join back to `text`."""
    pieces: list[str] = []
    start = 0
    i = 0
    n = len(text)
    # leading whitespace sticks to the first word
    while i < n and text[i].isspace():
        i += 1
    while i < n:
        while i < n and not text[i].isspace():
            i += 1
        while i < n and text[i].isspace():
            i += 1
        pieces.append(text[start:i])
        start = i
    if start < n:
        pieces.append(text[start:])
    return pieces
