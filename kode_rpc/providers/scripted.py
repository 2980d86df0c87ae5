"""`scripted`: plays `model.script`, one step per model call, for tests, demos and clients.

The cursor is `ModelRequest.position` (stored by the runtime, so it carries across
turns and restarts); past the end of the script every call is an empty reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import (
    ModelRequest,
    Provider,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
    estimate_tokens,
    split_words,
)


class ScriptedProvider(Provider):
    name = "scripted"

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        script = request.config.get("script") or []
        if request.position >= len(script):
            yield UsageReport(input_tokens=1, output_tokens=0)
            return
        step = script[request.position]
        if step.get("delayMs"):
            await asyncio.sleep(step["delayMs"] / 1000)
        if step.get("thinking"):
            for piece in split_words(step["thinking"]):
                yield ThinkingDelta(piece)
                await asyncio.sleep(0)
        chunks = step.get("chunks")
        text = "".join(chunks) if chunks is not None else (step.get("text") or "")
        for piece in chunks if chunks is not None else split_words(text):
            if piece:
                yield TextDelta(piece)
                await asyncio.sleep(0)  # let each chunk go out as its own event
        for i, call in enumerate(step.get("toolCalls") or []):
            yield ToolCallRequest(
                id=f"call_{request.position}_{i}_{call['name']}", name=call["name"], input=call.get("input") or {}
            )
        usage = step.get("usage")
        if usage:
            yield UsageReport(input_tokens=usage["inputTokens"], output_tokens=usage["outputTokens"])
        else:
            yield UsageReport(input_tokens=1, output_tokens=estimate_tokens(text))
