"""Provider behaviour seen from a client: retries, failures, cancellation, secrets, cost budgets.

A real server subprocess talks to a fake Anthropic Messages API on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest


from .conftest import Spawn
from .fakes import FakeResponse, FakeServer, sse

KEY = "sk-ant-api03-test-KEY-do-not-leak-0123456789abcdef"


async def failed_turn(reply: Any) -> dict[str, Any]:
    """A turn that fails on the provider is a result (`status: "error"`), never a JSON-RPC error."""
    result = await reply
    assert result["status"] == "error", result
    return result["error"]


def anthropic_text(text: str, *, input_tokens: int = 12, output_tokens: int = 5, cache_read: int = 0,
                   cache_write: int = 0, pieces: int = 3) -> list[bytes]:
    """A recorded-style Messages stream: message_start, one text block in `pieces` deltas, message_delta, stop."""
    size = max(1, len(text) // pieces)
    parts = [text[i:i + size] for i in range(0, len(text), size)]
    return [
        sse("message_start", {"type": "message_start", "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5-20250929", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
                      "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
        *[sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
          for p in parts],
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": output_tokens}}),
        sse("message_stop", {"type": "message_stop"}),
    ]


def error_response(status: int, err_type: str, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    body = ('{"type":"error","error":{"type":"%s","message":"%s"}}' % (err_type, message)).encode()
    return FakeResponse(status, {"content-type": "application/json", **(headers or {})}, [body])


@pytest.fixture
def env(server_env: dict[str, str]) -> dict[str, str]:
    return dict(server_env, TEST_ANTHROPIC_KEY=KEY)


def model(fake: FakeServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "model": "claude-sonnet-4-5", "baseUrl": fake.url, "apiKeyEnv": "TEST_ANTHROPIC_KEY",
            **extra}


async def test_rate_limit_is_retried_after_retry_after(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(error_response(429, "rate_limit_error", "slow down", {"retry-after": "1"}),
             FakeResponse(chunks=anthropic_text("Hello after the wait")))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "rl", "model": model(fake)})
    t0 = time.monotonic()
    res = await c.request("agent/complete", {"agentId": "rl", "text": "hi"})
    assert res["status"] == "ok" and res["text"] == "Hello after the wait"
    assert time.monotonic() - t0 >= 0.95
    retries = [e["event"] for e in c.events_of("rl", "retry")]
    assert retries == [{"type": "retry", "attempt": 1, "delayMs": 1000, "error": {"type": "rate_limit", "message": "slow down"}}]
    assert len(c.events_of("rl", "text_chunk_end")) == 1 and len(fake.requests) == 2
    assert fake.requests[0].headers["x-api-key"] == KEY and fake.requests[0].headers["anthropic-version"]


async def test_service_unavailable_gives_up_after_max_retries(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(*[error_response(503, "api_error", "upstream down") for _ in range(4)])
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "su", "model": model(fake, retry={"maxRetries": 3, "baseDelayMs": 10})})
    err = await failed_turn(c.request("agent/complete", {"agentId": "su", "text": "hi"}))
    assert err["type"] == "service_unavailable"
    assert err["retryable"] is True
    assert [e["event"]["attempt"] for e in c.events_of("su", "retry")] == [1, 2, 3]
    error = c.events_of("su", "error")[0]["event"]
    assert error["phase"] == "model" and error["severity"] == "error"
    assert c.events_of("su", "done")[0]["event"]["reason"] == "error"
    assert len(fake.requests) == 4
    # the agent stays usable
    fake.add(FakeResponse(chunks=anthropic_text("back")))
    assert (await c.request("agent/complete", {"agentId": "su", "text": "again"}))["text"] == "back"


async def test_authentication_error_is_not_retried(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(error_response(401, "authentication_error", "invalid x-api-key"))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "au", "model": model(fake)})
    err = await failed_turn(c.request("agent/complete", {"agentId": "au", "text": "hi"}))
    assert err["type"] == "authentication" and err["retryable"] is False
    assert not c.events_of("au", "retry") and len(fake.requests) == 1


async def test_stream_broken_after_text_is_an_error_not_a_duplicate(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    chunks = anthropic_text("one two three four five six", pieces=6)
    fake.add(FakeResponse(chunks=chunks, drop_after=5), FakeResponse(chunks=anthropic_text("should not be used")))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "br", "model": model(fake, retry={"baseDelayMs": 10})})
    err = await failed_turn(c.request("agent/complete", {"agentId": "br", "text": "hi"}))
    assert err["type"] == "connection"
    text = "".join(e["event"]["delta"] for e in c.events_of("br", "text_chunk"))
    assert text and "one two three four five six".startswith(text)
    assert len(fake.requests) == 1 and not c.events_of("br", "retry")
    assert c.events_of("br", "done")[0]["event"]["reason"] == "error"


async def test_hung_server_hits_timeout(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=anthropic_text("never finishes"), hang_after=2))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "hu", "model": model(fake, timeoutMs=300, retry={"maxRetries": 0})})
    t0 = time.monotonic()
    err = await failed_turn(c.request("agent/complete", {"agentId": "hu", "text": "hi"}))
    assert err["type"] == "timeout" and time.monotonic() - t0 < 5


async def test_garbage_stream_is_an_error_not_a_crash(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=[b"event: message_start\ndata: {not json at all\n\n"]))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "ga", "model": model(fake, retry={"maxRetries": 0})})
    err = await failed_turn(c.request("agent/complete", {"agentId": "ga", "text": "hi"}))
    assert err["type"] == "invalid_response"
    assert (await c.request("pool/stats"))["active"] == 1


async def test_interrupt_closes_the_http_stream_at_once(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=anthropic_text("a long answer that never ends", pieces=6), hang_after=4))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "in", "model": model(fake)})
    await c.request("agent/send", {"agentId": "in", "text": "hi"})
    await c.wait_event("in", "text_chunk")
    t0 = time.monotonic()
    await c.request("agent/interrupt", {"agentId": "in"})
    await c.wait_for(lambda: fake.closed_at, timeout=5)
    assert fake.closed_at[0] - t0 < 0.1, fake.closed_at[0] - t0
    assert (await c.wait_event("in", "done"))["event"]["reason"] == "interrupted"


async def test_cost_usage_and_budget(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=anthropic_text("pricey", input_tokens=100_000, output_tokens=20_000,
                                                cache_read=50_000, cache_write=10_000)))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "co", "model": model(fake), "budget": {"maxCostUsd": 0.1}})
    res = await c.request("agent/complete", {"agentId": "co", "text": "hi"})
    usage = c.events_of("co", "token_usage")[0]["event"]
    assert (usage["inputTokens"], usage["outputTokens"], usage["cacheReadTokens"], usage["cacheWriteTokens"]) == \
        (100_000, 20_000, 50_000, 10_000)
    expected = (100_000 * 3 + 20_000 * 15 + 50_000 * 0.3 + 10_000 * 3.75) / 1e6
    assert usage["costUsd"] == pytest.approx(expected)
    assert res["status"] == "interrupted" and c.events_of("co", "done")[0]["event"]["reason"] == "budget_exceeded"
    status = await c.request("agent/status", {"agentId": "co"})
    assert status["usage"]["costUsd"] == pytest.approx(expected)
    assert status["usage"]["inputTokens"] == 160_000 and status["usage"]["outputTokens"] == 20_000


async def test_key_never_reaches_store_events_or_logs(spawn: Spawn, fake: FakeServer, env: dict[str, str],
                                                     data_dir: Path, tmp_path: Path) -> None:
    fake.add(error_response(401, "authentication_error", f"invalid x-api-key {KEY}"),
             FakeResponse(chunks=anthropic_text("fine")))
    c = await spawn("--log-level", "DEBUG", env=env)
    await c.request("agent/create", {"agentId": "ke", "model": model(fake)})
    err = await failed_turn(c.request("agent/complete", {"agentId": "ke", "text": "hi"}))
    assert KEY not in str(err)
    await c.request("agent/complete", {"agentId": "ke", "text": "again"})
    assert await c.close() == 0
    assert fake.requests[0].headers["x-api-key"] == KEY, "the key was really used"
    assert KEY not in str(c.messages)
    for path in [*data_dir.rglob("*"), *(tmp_path / "logs").rglob("*"), *tmp_path.glob("server-*.stderr")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    conn = sqlite3.connect(data_dir / "kode.db")
    dump = "\n".join(conn.iterdump())
    assert KEY not in dump and "[REDACTED]" in dump


async def test_missing_key_is_an_authentication_error(spawn: Spawn, fake: FakeServer, server_env: dict[str, str]) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "nk", "model": model(fake, apiKeyEnv="NO_SUCH_KEY_VAR")})
    err = await failed_turn(c.request("agent/complete", {"agentId": "nk", "text": "hi"}))
    assert err["type"] == "authentication" and "NO_SUCH_KEY_VAR" in err["message"]
    assert not fake.requests


async def test_events_are_stream_ordered_under_slow_sse(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=anthropic_text("a b c d e f g h", pieces=8), delay=0.01))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "or", "model": model(fake)})
    await c.request("agent/complete", {"agentId": "or", "text": "hi"})
    deltas = [e["event"]["delta"] for e in c.events_of("or", "text_chunk")]
    assert "".join(deltas) == "a b c d e f g h" and len(deltas) >= 4
    await asyncio.sleep(0)


async def test_redacted_thinking_is_stored_with_the_reply(spawn: Spawn, fake: FakeServer, env: dict[str, str]) -> None:
    chunks = anthropic_text("visible answer")
    redacted = [sse("content_block_start", {"type": "content_block_start", "index": 5,
                                            "content_block": {"type": "redacted_thinking", "data": "ENCRYPTED=="}}),
                sse("content_block_stop", {"type": "content_block_stop", "index": 5})]
    fake.add(FakeResponse(chunks=chunks[:1] + redacted + chunks[1:]))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "rt", "model": model(fake, thinking={"budgetTokens": 2048})})
    assert (await c.request("agent/complete", {"agentId": "rt", "text": "hi"}))["text"] == "visible answer"
    msgs = (await c.request("agent/messages", {"agentId": "rt"}))["messages"]
    assert {"type": "redacted_thinking", "data": "ENCRYPTED=="} in msgs[1]["content"]
    assert "ENCRYPTED" not in str(c.events), "never shown as an event"
