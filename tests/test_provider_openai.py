"""The `openai` provider against a fake OpenAI-compatible server, then end to end.

Fixtures are shaped like recorded streams: full `chat.completion.chunk` objects
(id, object, created, model, system_fingerprint, choices, usage: null), the
usage chunk with empty `choices` that `stream_options.include_usage` adds, and
`data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.providers.base import (
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallRequest,
    UsageReport,
)
from kode_rpc.providers.openai import OpenAIProvider, convert_messages

from .conftest import Spawn
from .fakes import FakeResponse, FakeServer, sse

CHAT_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
MODEL = "gpt-4o-mini-2024-07-18"
KEY_ENV = "KODE_TEST_OPENAI_KEY"
DONE = b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, model: str = MODEL) -> bytes:
    """One streamed chunk as OpenAI sends it with `include_usage` on (`usage: null`)."""
    return sse(None, {
        "id": CHAT_ID, "object": "chat.completion.chunk", "created": 1741569952, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    })


def usage_chunk(prompt: int, completion: int, cached: int = 0, model: str = MODEL) -> bytes:
    """The extra last chunk of `stream_options: {include_usage: true}`: empty choices, the totals."""
    return sse(None, {
        "id": CHAT_ID, "object": "chat.completion.chunk", "created": 1741569952, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_06737a9306", "choices": [],
        "usage": {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
    })


def text_stream(*pieces: str, prompt: int = 19, completion: int = 10, cached: int = 0) -> list[bytes]:
    first = [chunk({"role": "assistant", "content": "", "refusal": None})]
    body = [chunk({"content": p}) for p in pieces]
    return first + body + [chunk({}, "stop"), usage_chunk(prompt, completion, cached), DONE]


def tool_call_stream() -> list[bytes]:
    """Two parallel calls whose argument fragments interleave by `index`."""
    def frag(index: int, arguments: str) -> bytes:
        return chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})

    return [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}], "refusal": None}),
        frag(0, '{"lo'),
        chunk({"tool_calls": [{"index": 1, "id": "call_ABCDEF1234567890abcdefgh", "type": "function",
                               "function": {"name": "get_time", "arguments": ""}}]}),
        frag(1, '{"tz": "Eu'),
        frag(0, 'cation": "Par'),
        frag(1, 'rope/Paris"}'),
        frag(0, 'is, France"}'),
        chunk({}, "tool_calls"),
        usage_chunk(82, 45),
        DONE,
    ]


def request(messages: list[dict[str, Any]] | None = None, tools: list[dict[str, Any]] | None = None,
            **config: Any) -> ModelRequest:
    return ModelRequest(
        system="You are terse.",
        messages=messages if messages is not None else [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        tools=tools or [],
        config={"provider": "openai", "model": "gpt-4o-mini", **config},
    )


async def collect(req: ModelRequest) -> list[StreamEvent]:
    return [ev async for ev in OpenAIProvider().stream(req)]


async def fails(req: ModelRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(req)
    return info.value


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


def local(fake: FakeServer, **config: Any) -> dict[str, Any]:
    return {"baseUrl": fake.url + "/v1", **config}


def json_error(status: int, error: dict[str, Any], **headers: str) -> FakeResponse:
    return FakeResponse(status, {"content-type": "application/json", **headers}, [json.dumps({"error": error}).encode()])


# --------------------------------------------------------------------------- streaming


async def test_plain_text_streams_deltas_then_one_usage(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello", "!", " How", " can", " I", " help?")))
    events = await collect(request(**local(fake)))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert texts == ["Hello", "!", " How", " can", " I", " help?"]
    assert events[-1] == UsageReport(input_tokens=19, output_tokens=10)
    assert sum(isinstance(e, UsageReport) for e in events) == 1
    assert fake.requests[0].path == "/v1/chat/completions"


async def test_two_tool_calls_with_interleaved_fragments(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=tool_call_stream()))
    events = await collect(request(**local(fake)))
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == [
        ToolCallRequest("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}),
        ToolCallRequest("call_ABCDEF1234567890abcdefgh", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == UsageReport(input_tokens=82, output_tokens=45)


async def test_whole_calls_without_index_or_id_and_reused_index(fake: FakeServer) -> None:
    """llama.cpp-style calls with no `index`/`id`, then Ollama reusing index 0 with new ids."""
    no_index = [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": "{\"x\": 1}"}},
            {"type": "function", "function": {"name": "b", "arguments": ""}}]}, model="qwen2.5"),
        chunk({}, "tool_calls", model="qwen2.5"), DONE,
    ]
    reused = [
        chunk({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_aaa", "index": 0, "type": "function", "function": {"name": "a", "arguments": "{}"}}]}),
        chunk({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_bbb", "index": 0, "type": "function", "function": {"name": "b", "arguments": "{\"y\":2}"}}]}),
        chunk({"role": "assistant", "content": ""}, "tool_calls"), DONE,
    ]
    fake.add(FakeResponse(chunks=no_index), FakeResponse(chunks=reused))
    req = request(**local(fake))
    req.position = 4
    first = [e for e in await collect(req) if isinstance(e, ToolCallRequest)]
    assert first == [ToolCallRequest("call_4_0", "a", {"x": 1}), ToolCallRequest("call_4_1", "b", {})]
    second = [e for e in await collect(req) if isinstance(e, ToolCallRequest)]
    assert second == [ToolCallRequest("call_aaa", "a", {}), ToolCallRequest("call_bbb", "b", {"y": 2})]


async def test_reasoning_content_and_reasoning_become_thinking(fake: FakeServer) -> None:
    deepseek = [
        chunk({"role": "assistant", "content": None, "reasoning_content": ""}, model="deepseek-reasoner"),
        chunk({"content": None, "reasoning_content": "9.11 < 9.8"}, model="deepseek-reasoner"),
        chunk({"content": None, "reasoning_content": ", so"}, model="deepseek-reasoner"),
        chunk({"content": "9.8", "reasoning_content": None}, model="deepseek-reasoner"),
        chunk({"content": ""}, "stop", model="deepseek-reasoner"), DONE,
    ]
    ollama = [chunk({"role": "assistant", "content": "", "reasoning": "hmm"}, model="qwen3"),
              chunk({"role": "assistant", "content": "ok"}, model="qwen3"),
              chunk({"role": "assistant", "content": ""}, "stop", model="qwen3"), DONE]
    fake.add(FakeResponse(chunks=deepseek), FakeResponse(chunks=ollama))
    events = await collect(request(**local(fake)))
    assert [type(e).__name__ for e in events] == ["ThinkingDelta", "ThinkingDelta", "TextDelta", "UsageReport"]
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "9.11 < 9.8, so"
    assert events[-1] == UsageReport(), "no usage chunk: zeros, nothing estimated"
    events = await collect(request(**local(fake)))
    assert events[:2] == [ThinkingDelta("hmm"), TextDelta("ok")]


async def test_usage_chunk_with_cached_tokens(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hi", prompt=2006, completion=300, cached=1920)))
    events = await collect(request(**local(fake)))
    assert events[-1] == UsageReport(input_tokens=86, output_tokens=300, cache_read_tokens=1920)


# --------------------------------------------------------------------------- request


async def test_request_body_and_bearer_header(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    fake.add(FakeResponse(chunks=text_stream("ok")), FakeResponse(chunks=text_stream("ok")))
    tools = [{"name": "fs_read", "description": "Read a file.",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Read a.txt"},
                                     {"type": "image", "mediaType": "image/png", "data": "iVBORw0KGgo="}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "secret"},
                                          {"type": "text", "text": "Reading."},
                                          {"type": "tool_use", "id": "call_1", "name": "fs_read", "input": {"path": "a.txt"}}]},
        {"role": "tool", "content": [{"type": "tool_result", "toolUseId": "call_1",
                                      "content": {"ok": True, "data": {"text": "hi"}}, "isError": False}]},
    ]
    await collect(request(messages, tools, apiKeyEnv=KEY_ENV, maxTokens=512, temperature=0.2, **local(fake)))
    sent = fake.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    body = sent.json
    assert body["model"] == "gpt-4o-mini" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 512 and body["temperature"] == 0.2
    assert body["tools"] == [{"type": "function", "function": {
        "name": "fs_read", "description": "Read a file.", "parameters": tools[0]["input_schema"]}}]
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Read a.txt"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "Reading.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "fs_read", "arguments": "{\"path\": \"a.txt\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\": true, \"data\": {\"text\": \"hi\"}}"},
    ]
    # no key (a local server): no Authorization header, and no tools/max_tokens sent
    monkeypatch.delenv(KEY_ENV)
    await collect(request(apiKeyEnv=KEY_ENV, **local(fake)))
    assert "authorization" not in fake.requests[1].headers
    assert "tools" not in fake.requests[1].json and "max_tokens" not in fake.requests[1].json


def test_message_conversion_edge_cases() -> None:
    out = convert_messages("", [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "x", "input": {}}]},
        {"role": "tool", "content": [{"type": "tool_result", "toolUseId": "c1", "content": "plain", "isError": True}]},
        {"role": "assistant", "content": []},
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
    ])
    assert out == [
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "plain"},
        {"role": "assistant", "content": ""},
        {"role": "system", "content": "be brief"},
    ]


async def test_missing_model_and_missing_cloud_key() -> None:
    err = await fails(ModelRequest("", [], [], {"provider": "openai", "baseUrl": "http://127.0.0.1:9/v1"}))
    assert err.type == "invalid_request" and not err.retryable
    err = await fails(request())  # api.openai.com without OPENAI_API_KEY: refused before any connection
    assert err.type == "authentication" and "OPENAI_API_KEY" in err.message


# --------------------------------------------------------------------------- errors


async def test_429_with_retry_after_ms(fake: FakeServer) -> None:
    fake.add(json_error(429, {"message": "Rate limit reached for gpt-4o-mini on tokens per min (TPM).",
                              "type": "tokens", "param": None, "code": "rate_limit_exceeded"},
                        **{"retry-after-ms": "1500", "x-ratelimit-remaining-tokens": "0"}))
    err = await fails(request(**local(fake)))
    assert err.type == "rate_limit" and err.retryable and err.retry_after == 1.5 and err.status == 429


async def test_429_insufficient_quota_is_not_retried(fake: FakeServer) -> None:
    fake.add(json_error(429, {"message": "You exceeded your current quota, please check your plan and billing details.",
                              "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}))
    err = await fails(request(**local(fake)))
    assert err.type == "quota_exceeded" and not err.retryable and "quota" in err.message


async def test_503_and_401(fake: FakeServer) -> None:
    fake.add(json_error(503, {"message": "The engine is currently overloaded, please try again later.",
                              "type": "server_error", "param": None, "code": None}),
             json_error(401, {"message": "Incorrect API key provided: sk-test***123.",
                              "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}))
    err = await fails(request(**local(fake)))
    assert err.type == "service_unavailable" and err.retryable
    err = await fails(request(**local(fake)))
    assert err.type == "authentication" and not err.retryable


async def test_error_objects_inside_the_stream(fake: FakeServer) -> None:
    openai_style = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Par"}),
                    sse(None, {"error": {"message": "The server had an error while processing your request.",
                                         "type": "server_error", "param": None, "code": None}})]
    vllm_style = [sse(None, {"error": {"message": "TimeoutError", "type": "GatewayTimeout", "code": 504}}), DONE]
    rate = [sse(None, {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}), DONE]
    bad = [sse(None, {"error": {"message": "context too long", "type": "invalid_request_error",
                                "code": "context_length_exceeded"}}), DONE]
    llamacpp = [b'error: {"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}\n\n', DONE]
    fake.add(*(FakeResponse(chunks=c) for c in (openai_style, vllm_style, rate, bad, llamacpp)))
    expected = ["service_unavailable", "service_unavailable", "rate_limit", "invalid_request", "invalid_response"]
    for want in expected:
        err = await fails(request(**local(fake)))
        assert err.type == want, (want, err.type, err.message)


async def test_connection_dropped_mid_stream(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello", " there"), drop_after=2))
    err = await fails(request(**local(fake)))
    assert err.type == "connection" and err.retryable


async def test_stream_closed_cleanly_without_done_or_finish_reason(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello", " there")[:3]))
    err = await fails(request(**local(fake)))
    assert err.type == "connection" and err.message == "stream ended early"


async def test_hung_server_times_out(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello"), hang_after=2))
    t0 = time.monotonic()
    err = await fails(request(timeoutMs=300, **local(fake)))
    assert err.type == "timeout" and err.retryable
    assert time.monotonic() - t0 < 2


async def test_garbage_is_invalid_response(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=[chunk({"role": "assistant", "content": ""}), b"data: {\"id\": \"chatcmpl-\n\n"]),
             FakeResponse(200, {"content-type": "text/html"}, [b"<html>nginx</html>"]),
             FakeResponse(chunks=[chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "x", "arguments": "{oops"}}]}),
                                  chunk({}, "tool_calls"), DONE]))
    for _ in range(3):
        err = await fails(request(**local(fake)))
        assert err.type == "invalid_response" and not err.retryable


async def test_cancel_closes_the_connection_at_once(fake: FakeServer) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello", " world"), hang_after=2))
    got: list[StreamEvent] = []

    async def consume() -> None:
        async for ev in OpenAIProvider().stream(request(**local(fake))):
            got.append(ev)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while not fake.closed_at and time.monotonic() - t0 < 2:
        await asyncio.sleep(0.01)
    assert fake.closed_at and fake.closed_at[0] - t0 < 0.5


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def local_env(server_env: dict[str, str]) -> dict[str, str]:
    """A server with no OpenAI key, like one pointed at a local Ollama."""
    return {k: v for k, v in server_env.items() if k != "OPENAI_API_KEY"}


def ollama_model(fake: FakeServer) -> dict[str, Any]:
    return {"provider": "openai", "model": "qwen2.5", "baseUrl": fake.url + "/v1"}


async def test_e2e_streamed_text_and_token_usage(spawn: Spawn, fake: FakeServer, local_env: dict[str, str]) -> None:
    fake.add(FakeResponse(chunks=text_stream("Hello", " from", " qwen.", prompt=30, completion=4), delay=0.01))
    c = await spawn(env=local_env)
    await c.request("agent/create", {"agentId": "o1", "model": ollama_model(fake)})
    res = await c.request("agent/complete", {"agentId": "o1", "text": "hi"})
    assert res["status"] == "ok" and res["text"] == "Hello from qwen."
    deltas = [e["event"]["delta"] for e in c.events_of("o1", "text_chunk")]
    assert len(deltas) >= 2 and "".join(deltas) == "Hello from qwen."
    usage = c.events_of("o1", "token_usage")[0]["event"]
    assert usage["inputTokens"] == 30 and usage["outputTokens"] == 4 and usage["totalTokens"] == 34
    sent = fake.requests[0]
    assert "authorization" not in sent.headers
    assert sent.json["messages"][-1] == {"role": "user", "content": "hi"}
    assert sent.json["messages"][0]["role"] == "system"


async def test_e2e_tool_calls_run_and_results_go_back(spawn: Spawn, fake: FakeServer, local_env: dict[str, str],
                                                       work_dir: Path) -> None:
    (work_dir / "notes.txt").write_text("line one\nline two\n")
    todos = json.dumps({"todos": [{"id": "1", "title": "read notes", "status": "in_progress"}]})
    read = json.dumps({"path": "notes.txt"})

    def frag(index: int, arguments: str) -> bytes:
        return chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}, model="qwen2.5")

    step1 = [
        chunk({"role": "assistant", "content": "Planning."}, model="qwen2.5"),
        chunk({"tool_calls": [{"index": 0, "id": "call_todo01", "type": "function",
                               "function": {"name": "todo_write", "arguments": ""}}]}, model="qwen2.5"),
        chunk({"tool_calls": [{"index": 1, "id": "call_read01", "type": "function",
                               "function": {"name": "fs_read", "arguments": read[:9]}}]}, model="qwen2.5"),
        frag(0, todos[:20]), frag(1, read[9:]), frag(0, todos[20:]),
        chunk({}, "tool_calls", model="qwen2.5"), usage_chunk(120, 40, model="qwen2.5"), DONE,
    ]
    fake.add(FakeResponse(chunks=step1),
             FakeResponse(chunks=text_stream("The", " notes", " have", " two", " lines.", prompt=200, completion=6)))
    c = await spawn(env=local_env)
    await c.request("agent/create", {"agentId": "o2", "model": ollama_model(fake), "permission": {"mode": "auto"},
                                     "sandbox": {"workDir": str(work_dir)}})
    res = await c.request("agent/complete", {"agentId": "o2", "text": "what is in notes.txt?"})
    assert res["status"] == "ok" and res["text"].endswith("The notes have two lines.")
    ends = {e["event"]["call"]["name"]: e["event"]["call"] for e in c.events_of("o2", "tool:end")}
    assert ends["todo_write"]["state"] == "COMPLETED" and ends["fs_read"]["state"] == "COMPLETED"
    assert ends["todo_write"]["id"] == "call_todo01" and ends["fs_read"]["input"] == {"path": "notes.txt"}
    todos_now = (await c.request("agent/todos", {"agentId": "o2"}))["todos"]
    assert [t["title"] for t in todos_now] == ["read notes"]
    second = fake.requests[1].json["messages"]
    assistant = next(m for m in second if m["role"] == "assistant")
    assert [tc["id"] for tc in assistant["tool_calls"]] == ["call_todo01", "call_read01"]
    assert json.loads(assistant["tool_calls"][1]["function"]["arguments"]) == {"path": "notes.txt"}
    tool_msgs = [m for m in second if m["role"] == "tool"]
    assert sorted(m["tool_call_id"] for m in tool_msgs) == ["call_read01", "call_todo01"]
    read_result = next(m for m in tool_msgs if m["tool_call_id"] == "call_read01")
    assert "line two" in read_result["content"]
    assert second.index(assistant) < second.index(tool_msgs[0])
    usage = [e["event"] for e in c.events_of("o2", "token_usage")]
    assert [(u["inputTokens"], u["outputTokens"]) for u in usage] == [(120, 40), (200, 6)]
    assert os.path.exists(work_dir / "notes.txt")


def test_reasoning_models_on_openai_get_max_completion_tokens() -> None:
    from kode_rpc.providers.openai import build_body

    def body(model: str, base: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {"provider": "openai", "model": model, "maxTokens": 500}
        if base:
            config["baseUrl"] = base
        return build_body(ModelRequest(system="s", messages=[], tools=[], config=config))

    assert body("o3-mini", None)["max_completion_tokens"] == 500 and "max_tokens" not in body("o3-mini", None)
    assert body("gpt-4o", None)["max_tokens"] == 500
    assert body("o3-mini", "http://localhost:11434/v1")["max_tokens"] == 500


def test_images_in_a_tool_result_follow_as_a_user_message() -> None:
    from kode_rpc.providers.openai import convert_messages

    result = {"ok": True, "data": [{"type": "image", "mediaType": "image/jpeg", "data": "/9j/4AAQ"}]}
    out = convert_messages("", [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "mcp__s__photo", "input": {}}]},
        {"role": "tool", "content": [{"type": "tool_result", "toolUseId": "t1", "content": result, "isError": False}]},
    ])
    tool = next(m for m in out if m["role"] == "tool")
    assert "/9j/4AAQ" not in tool["content"] and "[image 1: image/jpeg]" in tool["content"]
    user = out[out.index(tool) + 1]
    assert user["role"] == "user"
    assert {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}} in user["content"]
