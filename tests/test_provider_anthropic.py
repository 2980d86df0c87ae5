"""The `anthropic` provider against a fake Messages API: wire format, errors, and end to end.

The SSE fixtures follow what the real API sends (full `message_start` payloads
with ids, model and usage; `ping`; cumulative `message_delta` usage), so a
mismatch with the real format shows up here rather than in production.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.providers.anthropic import AnthropicProvider, convert_messages
from kode_rpc.providers.base import (
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
)

from .conftest import Spawn
from .fakes import FakeResponse, FakeServer, sse

KEY = "sk-ant-test-unit-0123456789"
MODEL = "claude-sonnet-4-5-20250929"


# --- fixtures and recorded-style streams ---------------------------------------


@pytest.fixture(autouse=True)
def anthropic_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def message_start(msg_id: str = "msg_01XFDUDYJgAACzvnptvVoYEL", input_tokens: int = 25, cache_read: int = 0,
                  cache_write: int = 0) -> bytes:
    return sse("message_start", {"type": "message_start", "message": {
        "model": MODEL, "id": msg_id, "type": "message", "role": "assistant", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
                  "cache_read_input_tokens": cache_read,
                  "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 1, "service_tier": "standard"}}})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, d: dict[str, Any]) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def text_delta(index: int, text: str) -> bytes:
    return delta(index, {"type": "text_delta", "text": text})


def json_delta(index: int, partial: str) -> bytes:
    return delta(index, {"type": "input_json_delta", "partial_json": partial})


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(output_tokens: int, stop_reason: str = "end_turn", **usage: int) -> bytes:
    return sse("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                 "usage": {"output_tokens": output_tokens, **usage}})


PING = sse("ping", {"type": "ping"})
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def text_stream(*pieces: str, output_tokens: int = 12, **start: Any) -> FakeResponse:
    """A complete streamed text reply, as the API sends one."""
    return FakeResponse(chunks=[
        message_start(**start),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        *[text_delta(0, p) for p in pieces],
        block_stop(0),
        message_delta(output_tokens),
        MESSAGE_STOP,
    ])


def tool_stream(text: str, calls: list[tuple[str, str, list[str]]], msg_id: str = "msg_01Aq9w938a90dw8q",
                output_tokens: int = 89) -> FakeResponse:
    """A reply with a text block, then one tool_use block per call whose input arrives in fragments."""
    chunks = [message_start(msg_id=msg_id, input_tokens=472),
              block_start(0, {"type": "text", "text": ""}), text_delta(0, text), block_stop(0)]
    for i, (call_id, name, fragments) in enumerate(calls, start=1):
        chunks.append(block_start(i, {"type": "tool_use", "id": call_id, "name": name, "input": {}}))
        chunks.append(json_delta(i, ""))
        chunks.extend(json_delta(i, f) for f in fragments)
        chunks.append(block_stop(i))
    chunks += [message_delta(output_tokens, "tool_use"), MESSAGE_STOP]
    return FakeResponse(chunks=chunks)


def error_response(status: int, etype: str, message: str, **headers: str) -> FakeResponse:
    body = json.dumps({"type": "error", "error": {"type": etype, "message": message},
                       "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}).encode()
    return FakeResponse(status, {"content-type": "application/json", **headers}, [body])


def make_request(fake: FakeServer, messages: list[dict[str, Any]] | None = None, tools: list[dict[str, Any]] | None = None,
                 system: str = "You are terse.", **config: Any) -> ModelRequest:
    cfg: dict[str, Any] = {"provider": "anthropic", "model": MODEL, "baseUrl": fake.url, **config}
    msgs = messages if messages is not None else [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    return ModelRequest(system=system, messages=msgs, tools=tools or [], config=cfg)


async def collect(request: ModelRequest) -> list[StreamEvent]:
    return [ev async for ev in AnthropicProvider().stream(request)]


async def collect_until_error(request: ModelRequest) -> tuple[list[StreamEvent], ProviderError]:
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as err:
        async for ev in AnthropicProvider().stream(request):
            events.append(ev)
    return events, err.value


# --- the stream ------------------------------------------------------------------


async def test_plain_text_reply(fake: FakeServer) -> None:
    fake.add(text_stream("Hello", "! How can I", " help you today?", output_tokens=15))
    events = await collect(make_request(fake))
    assert events == [TextDelta("Hello"), TextDelta("! How can I"), TextDelta(" help you today?"),
                      UsageReport(input_tokens=25, output_tokens=15, cache_read_tokens=0, cache_write_tokens=0)]
    assert len(fake.requests) == 1
    assert fake.requests[0].method == "POST" and fake.requests[0].path == "/v1/messages"


async def test_two_tool_calls_with_fragmented_input(fake: FakeServer) -> None:
    fake.add(tool_stream("I'll plan, then read the file.", [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "todo_write",
         ['{"todos": [{"id": "1", ', '"title": "Read ', 'README", "sta', 'tus": "in_progress"}]}']),
        ("toolu_01A09q90qw90lq917835lq9", "fs_read", ['{"pa', 'th": "READ', 'ME.md"', ', "limit": 20}']),
    ]))
    events = await collect(make_request(fake))
    assert events[0] == TextDelta("I'll plan, then read the file.")
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == [
        ToolCallRequest("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "todo_write",
                        {"todos": [{"id": "1", "title": "Read README", "status": "in_progress"}]}),
        ToolCallRequest("toolu_01A09q90qw90lq917835lq9", "fs_read", {"path": "README.md", "limit": 20}),
    ]
    assert events[-1] == UsageReport(input_tokens=472, output_tokens=89)


async def test_tool_call_without_input_gets_empty_dict(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[
        message_start(), block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "todo_read", "input": {}}),
        json_delta(0, ""), block_stop(0), message_delta(7, "tool_use"), MESSAGE_STOP]))
    events = await collect(make_request(fake))
    assert events[0] == ToolCallRequest("toolu_1", "todo_read", {})


async def test_thinking_and_signature(fake: FakeServer) -> None:
    signature = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    fake.add(FakeResponse(chunks=[
        message_start(msg_id="msg_01ThinkingDemo", input_tokens=60),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "Let me solve this step by step:\n\n1. "}),
        delta(0, {"type": "thinking_delta", "thinking": "27 * 453 = 12231"}),
        delta(0, {"type": "signature_delta", "signature": signature}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        text_delta(1, "27 * 453 = 12,231"),
        block_stop(1),
        message_delta(120),
        MESSAGE_STOP,
    ]))
    events = await collect(make_request(fake, thinking={"budgetTokens": 2048}))
    assert events == [
        ThinkingDelta("Let me solve this step by step:\n\n1. "),
        ThinkingDelta("27 * 453 = 12231"),
        ThinkingDelta("", signature=signature),
        TextDelta("27 * 453 = 12,231"),
        UsageReport(input_tokens=60, output_tokens=120),
    ]


async def test_usage_with_cache_read_and_creation(fake: FakeServer) -> None:
    fake.add(text_stream("Cached.", output_tokens=42, input_tokens=5, cache_read=3000, cache_write=1200))
    events = await collect(make_request(fake))
    usage = [e for e in events if isinstance(e, UsageReport)]
    assert usage == [UsageReport(input_tokens=5, output_tokens=42, cache_read_tokens=3000, cache_write_tokens=1200)]


async def test_message_delta_usage_replaces_start_counts(fake: FakeServer) -> None:
    """The newer API repeats (final) input and cache counts in message_delta; they win."""
    fake.add(FakeResponse(chunks=[
        message_start(input_tokens=12), block_start(0, {"type": "text", "text": ""}), text_delta(0, "Hi"),
        block_stop(0),
        message_delta(30, input_tokens=12, cache_read_input_tokens=100, cache_creation_input_tokens=0),
        MESSAGE_STOP]))
    events = await collect(make_request(fake))
    assert events[-1] == UsageReport(input_tokens=12, output_tokens=30, cache_read_tokens=100)


async def test_unknown_events_and_deltas_are_ignored(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[
        message_start(),
        sse("future_event", {"type": "future_event", "payload": [1, 2]}),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "See the docs."),
        delta(0, {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "x"}}),
        block_stop(0),
        block_start(1, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
        json_delta(1, '{"query": "x"}'),
        block_stop(1),
        message_delta(9),
        MESSAGE_STOP,
    ]))
    events = await collect(make_request(fake))
    assert events == [TextDelta("See the docs."), UsageReport(input_tokens=25, output_tokens=9)]


# --- the request ---------------------------------------------------------------


CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "Plan and read README.md"},
                                 {"type": "image", "mediaType": "image/png", "data": "iVBORw0KGgo="}]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "unsigned (from another provider)"},
        {"type": "thinking", "thinking": "I need the file.", "signature": "sig-abc"},
        {"type": "text", "text": "Reading it."},
        {"type": "tool_use", "id": "toolu_A", "name": "todo_write", "input": {"todos": []}},
        {"type": "tool_use", "id": "toolu_B", "name": "fs_read", "input": {"path": "README.md"}},
    ]},
    {"role": "tool", "content": [
        {"type": "tool_result", "toolUseId": "toolu_A", "content": {"ok": True, "data": {"todos": []}}, "isError": False},
        {"type": "tool_result", "toolUseId": "toolu_B", "content": "plain text result", "isError": True},
    ]},
    {"role": "assistant", "content": []},
    {"role": "user", "content": [{"type": "text", "text": "and then?"}]},
    {"role": "system", "content": [{"type": "text", "text": "Reminder: be brief."}]},
]


async def test_request_headers_and_body(fake: FakeServer) -> None:
    fake.add(text_stream("ok"))
    tools = [{"name": "fs_read", "description": "Read a file.",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]
    await collect(make_request(fake, CONVERSATION, tools, temperature=0.3))
    rec = fake.requests[0]
    assert rec.headers["x-api-key"] == KEY
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["content-type"] == "application/json"
    body = rec.json
    assert body["model"] == MODEL and body["max_tokens"] == 4096 and body["stream"] is True
    assert body["temperature"] == 0.3 and "thinking" not in body
    assert body["system"] == [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    assert body["tools"] == tools
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"], "roles alternate after merging"
    assert msgs[0]["content"] == [
        {"type": "text", "text": "Plan and read README.md"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]
    assert msgs[1]["content"] == [
        {"type": "thinking", "thinking": "I need the file.", "signature": "sig-abc"},
        {"type": "text", "text": "Reading it."},
        {"type": "tool_use", "id": "toolu_A", "name": "todo_write", "input": {"todos": []}},
        {"type": "tool_use", "id": "toolu_B", "name": "fs_read", "input": {"path": "README.md"}},
    ]
    # the tool message, the user's follow-up and the system note merge into one user message,
    # tool results first; the empty assistant message in between is dropped
    results = msgs[2]["content"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "toolu_A",
                          "content": json.dumps({"ok": True, "data": {"todos": []}}), "is_error": False}
    assert results[1] == {"type": "tool_result", "tool_use_id": "toolu_B", "content": "plain text result",
                          "is_error": True}
    assert results[2] == {"type": "text", "text": "and then?"}
    assert results[3] == {"type": "text", "text": "Reminder: be brief.", "cache_control": {"type": "ephemeral"}}


async def test_thinking_config_and_base_url_forms(fake: FakeServer) -> None:
    fake.add(text_stream("a"), text_stream("b"))
    await collect(make_request(fake, thinking={"budgetTokens": 2048}, temperature=0.5, baseUrl=fake.url + "/"))
    await collect(make_request(fake, thinking={"budgetTokens": 2048}, maxTokens=8000, baseUrl=fake.url + "/v1"))
    first, second = (r.json for r in fake.requests)
    assert [r.path for r in fake.requests] == ["/v1/messages", "/v1/messages"]
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert first["max_tokens"] > 2048 and "temperature" not in first, "no temperature with thinking"
    assert second["max_tokens"] == 8000


async def test_config_errors_send_nothing(fake: FakeServer) -> None:
    _, err = await collect_until_error(make_request(fake, thinking={"budgetTokens": 4096}, maxTokens=4096))
    assert err.type == "invalid_request" and "budgetTokens" in err.message
    _, err = await collect_until_error(make_request(fake, model=None))
    assert err.type == "invalid_request" and not err.retryable
    assert fake.requests == []


async def test_missing_key_is_authentication(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "authentication" and not err.retryable and "ANTHROPIC_API_KEY" in err.message
    _, err = await collect_until_error(make_request(fake, apiKeyEnv="KODE_TEST_NO_SUCH_KEY"))
    assert "KODE_TEST_NO_SUCH_KEY" in err.message
    assert fake.requests == []


def test_assistant_only_blocks_are_dropped_from_user_turns() -> None:
    out = convert_messages([
        {"role": "user", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "y", "input": {}},
                                     {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "no signature"}]},
    ])
    assert out == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


# --- failures --------------------------------------------------------------------


@pytest.mark.parametrize(("etype", "expected", "retryable"), [
    ("overloaded_error", "service_unavailable", True),
    ("api_error", "service_unavailable", True),
    ("rate_limit_error", "rate_limit", True),
    ("authentication_error", "authentication", False),
    ("invalid_request_error", "invalid_request", False),
])
async def test_error_event_mid_stream(fake: FakeServer, etype: str, expected: str, retryable: bool) -> None:
    fake.add(FakeResponse(chunks=[
        message_start(), block_start(0, {"type": "text", "text": ""}), text_delta(0, "Partial"),
        sse("error", {"type": "error", "error": {"type": etype, "message": "Overloaded"}}),
    ]))
    events, err = await collect_until_error(make_request(fake))
    assert events == [TextDelta("Partial")]
    assert err.type == expected and err.retryable is retryable and etype in err.message


async def test_http_429_with_retry_after(fake: FakeServer) -> None:
    fake.add(error_response(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit",
                            **{"retry-after": "1"}))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "rate_limit" and err.retryable and err.retry_after == 1.0 and err.status == 429
    assert "rate limit" in err.message


async def test_http_529_overloaded(fake: FakeServer) -> None:
    fake.add(error_response(529, "overloaded_error", "Overloaded"))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "service_unavailable" and err.retryable and err.status == 529


async def test_http_401_is_not_retryable(fake: FakeServer) -> None:
    fake.add(error_response(401, "authentication_error", "invalid x-api-key"))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "authentication" and not err.retryable and "invalid x-api-key" in err.message


async def test_connection_dropped_mid_stream(fake: FakeServer) -> None:
    resp = text_stream("one ", "two ", "three")
    resp.drop_after = 4
    fake.add(resp)
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "connection" and err.retryable


async def test_stream_closed_without_message_stop(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[message_start(), block_start(0, {"type": "text", "text": ""}),
                                  text_delta(0, "cut")]))
    events, err = await collect_until_error(make_request(fake))
    assert events == [TextDelta("cut")]
    assert err.type == "connection" and "ended early" in err.message


async def test_hung_server_times_out(fake: FakeServer) -> None:
    resp = text_stream("slow")
    resp.hang_after = 3
    fake.add(resp)
    t0 = time.monotonic()
    _, err = await collect_until_error(make_request(fake, timeoutMs=300))
    assert err.type == "timeout" and err.retryable
    assert time.monotonic() - t0 < 3
    await asyncio.sleep(0.1)
    assert fake.closed_at, "the hung connection was closed"


async def test_garbage_data_is_invalid_response(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[message_start(), b"event: content_block_delta\ndata: {not json at all\n\n"]))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "invalid_response" and not err.retryable


async def test_invalid_tool_json_is_invalid_response(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[
        message_start(), block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "fs_read", "input": {}}),
        json_delta(0, '{"path": "a'), json_delta(0, "b, }"), block_stop(0), message_delta(5, "tool_use"),
        MESSAGE_STOP]))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "invalid_response" and "fs_read" in err.message


async def test_non_stream_200_is_invalid_response(fake: FakeServer) -> None:
    fake.add(FakeResponse(200, {"content-type": "application/json"}, [b'{"type": "message"}']))
    _, err = await collect_until_error(make_request(fake))
    assert err.type == "invalid_response"


async def test_cancel_closes_connection_at_once(fake: FakeServer) -> None:
    resp = text_stream("first", "second")
    resp.hang_after = 4  # message_start, block start, ping, "first" then silence
    fake.add(resp)
    got_first = asyncio.Event()

    async def consume() -> None:
        async for ev in AnthropicProvider().stream(make_request(fake)):
            if isinstance(ev, TextDelta):
                got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if fake.closed_at:
            break
        await asyncio.sleep(0.01)
    assert fake.closed_at and fake.closed_at[0] - t0 < 0.5


# --- end to end through a real server ----------------------------------------------


E2E_KEY = "sk-ant-test-e2e-9f8e7d6c5b4a"


def e2e_model(fake: FakeServer) -> dict[str, Any]:
    return {"provider": "anthropic", "model": "claude-sonnet-4-5", "baseUrl": fake.url, "apiKeyEnv": "MY_KEY",
            "retry": {"baseDelayMs": 10, "maxDelayMs": 50}}


async def test_e2e_streamed_text_reply(spawn: Spawn, server_env: dict[str, str], fake: FakeServer, work_dir: Path,
                                       tmp_path: Path) -> None:
    fake.add(error_response(529, "overloaded_error", "Overloaded", **{"retry-after": "0"}),
             text_stream("Hello", " from", " Claude."))
    c = await spawn(env=dict(server_env, MY_KEY=E2E_KEY))
    await c.request("agent/create", {"agentId": "an1", "model": e2e_model(fake), "sandbox": {"workDir": str(work_dir)}})
    res = await c.request("agent/complete", {"agentId": "an1", "text": "Say hello"})
    assert res["status"] == "ok" and res["text"] == "Hello from Claude."
    assert [e["event"]["delta"] for e in c.events_of("an1", "text_chunk")] in (
        ["Hello", " from", " Claude."], ["Hello from Claude."], ["Hello", " from Claude."], ["Hello from", " Claude."])
    retry = c.events_of("an1", "retry")
    assert len(retry) == 1 and retry[0]["event"]["error"]["type"] == "service_unavailable"
    assert len(fake.requests) == 2
    rec = fake.requests[1]
    assert rec.headers["x-api-key"] == E2E_KEY and rec.json["model"] == "claude-sonnet-4-5"
    assert rec.json["messages"][-1]["content"][0]["text"] == "Say hello"
    assert await c.close() == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert E2E_KEY.encode() not in path.read_bytes(), f"the key leaked into {path}"


async def test_e2e_two_tool_calls_and_usage(spawn: Spawn, server_env: dict[str, str], fake: FakeServer,
                                            work_dir: Path) -> None:
    (work_dir / "README.md").write_text("# Demo\nline two\n")
    todos = '{"todos": [{"id": "t1", "title": "Read the README", "status": "in_progress"}]}'
    fake.add(
        tool_stream("Planning, then reading.", [
            ("toolu_01TodoWrite0000000000001", "todo_write", [todos[:17], todos[17:40], todos[40:]]),
            ("toolu_01FsRead000000000000002", "fs_read", ['{"path": ', '"README.md"}']),
        ], output_tokens=95),
        text_stream("The README is a demo.", output_tokens=20, msg_id="msg_02", input_tokens=40,
                    cache_read=2000, cache_write=500),
    )
    c = await spawn(env=dict(server_env, MY_KEY=E2E_KEY))
    await c.request("agent/create", {"agentId": "an2", "model": e2e_model(fake), "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": "an2", "text": "What is in README.md?"})
    assert res["status"] == "ok" and res["text"].endswith("The README is a demo.")
    ends = {e["event"]["call"]["name"]: e["event"]["call"] for e in c.events_of("an2", "tool:end")}
    assert ends["todo_write"]["state"] == "COMPLETED" and ends["fs_read"]["state"] == "COMPLETED"
    assert c.events_of("an2", "todo_changed")[0]["event"]["todos"][0]["title"] == "Read the README"

    assert len(fake.requests) == 2
    second = fake.requests[1].json
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assistant = second["messages"][1]["content"]
    assert [b["type"] for b in assistant] == ["text", "tool_use", "tool_use"]
    assert assistant[1]["input"] == json.loads(todos)
    results = {b["tool_use_id"]: b for b in second["messages"][2]["content"] if b["type"] == "tool_result"}
    assert set(results) == {"toolu_01TodoWrite0000000000001", "toolu_01FsRead000000000000002"}
    assert "line two" in results["toolu_01FsRead000000000000002"]["content"]
    assert not any(r["is_error"] for r in results.values())
    assert {t["name"] for t in second["tools"]} >= {"todo_write", "fs_read"}

    usage = [e["event"] for e in c.events_of("an2", "token_usage")]
    assert len(usage) == 2
    assert usage[0]["inputTokens"] == 472 and usage[0]["outputTokens"] == 95
    last = usage[1]
    assert (last["inputTokens"], last["outputTokens"], last["cacheReadTokens"], last["cacheWriteTokens"]) == (40, 20, 2000, 500)
    assert last["totalTokens"] == 2560
    assert last["costUsd"] > 0
    expected = (40 * 3.0 + 20 * 15.0 + 2000 * 0.3 + 500 * 3.75) / 1_000_000
    assert last["costUsd"] == pytest.approx(expected, rel=1e-6)
    assert await c.close() == 0


async def test_redacted_thinking_is_kept_and_sent_back(fake: FakeServer) -> None:
    """Encrypted thinking must go back unchanged with the conversation (the API refuses otherwise)."""
    from kode_rpc.providers.base import RedactedThinking

    fake.add(FakeResponse(chunks=[
        message_start(input_tokens=20),
        block_start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}), block_stop(0),
        block_start(1, {"type": "text", "text": ""}), text_delta(1, "ok"), block_stop(1),
        message_delta(3, "end_turn"), MESSAGE_STOP]))
    events = await collect(make_request(fake, thinking={"budgetTokens": 2048}))
    assert RedactedThinking("EmwKAhgBEgy3va3pzix/LafPsn4a") in events
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                                          {"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "more"}]},
    ]
    fake.add(FakeResponse(chunks=[message_start(), block_start(0, {"type": "text", "text": ""}), text_delta(0, "x"),
                                  block_stop(0), message_delta(1, "end_turn"), MESSAGE_STOP]))
    await collect(make_request(fake, messages=history, thinking={"budgetTokens": 2048}))
    sent = fake.requests[-1].json["messages"][1]["content"]
    assert sent[0] == {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}


def test_images_in_a_tool_result_are_sent_as_image_blocks() -> None:
    """An MCP tool's image (in the result's `data`) reaches Claude as an image, not base64 text."""
    result = {"ok": True, "data": [{"type": "text", "text": "a chart"},
                                   {"type": "image", "mediaType": "image/png", "data": "iVBORw0KGgo="}]}
    out = convert_messages([
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "mcp__s__chart", "input": {}}]},
        {"role": "tool", "content": [{"type": "tool_result", "toolUseId": "t1", "content": result, "isError": False}]},
    ])
    content = out[1]["content"][0]["content"]
    assert content[0]["type"] == "text" and "iVBORw0KGgo=" not in content[0]["text"] and "[image 1: image/png]" in content[0]["text"]
    assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
