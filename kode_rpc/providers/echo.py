"""`echo`: replies with exactly the user's last text, word by word. Needs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import ModelRequest, Provider, StreamEvent, TextDelta, UsageReport, estimate_tokens, split_words


def last_user_text(request: ModelRequest) -> str:
    if not request.messages or request.messages[-1].get("role") != "user":
        return ""
    return "".join(b.get("text", "") for b in request.messages[-1]["content"] if b.get("type") == "text")


class EchoProvider(Provider):
    name = "echo"

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        text = last_user_text(request)
        for piece in split_words(text):
            yield TextDelta(piece)
            await asyncio.sleep(0)  # let each word go out as its own event
        prompt = sum(len(str(m.get("content"))) for m in request.messages)
        yield UsageReport(input_tokens=max(1, prompt // 4), output_tokens=estimate_tokens(text))
