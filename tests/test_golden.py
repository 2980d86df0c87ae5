"""Golden JSON fixtures: one per method result and one per event type (tests/golden/).

A deterministic session against a real server produces every result and most
event types; each is validated by its protocol model and compared, with volatile
values (timestamps, generated ids, durations, temp paths) normalized, to its
committed fixture. An event type that no offline session can produce (`retry`
needs a failing provider, `tool:error` a tool that raises) is pinned from its model
with sample values instead.

A changed shape fails here; when the change is intended, regenerate with
`KODE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.protocol import events as ev
from kode_rpc.protocol.methods import METHODS

from .conftest import Spawn, scripted
from .helpers import never_answer

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KODE_UPDATE_GOLDEN") == "1"
TIMES = {"ts", "createdAt", "updatedAt", "checkedAt", "collectedAt", "startedAt", "expiresAt"}
NUMBERS = {"durationMs", "idleMs", "latencyMs", "avgLatencyMs", "maxLatencyMs", "minLatencyMs", "dbSizeBytes",
           "saves", "loads", "queries", "deletes", "seq", "lastSeq", "diffSeq", "replayed", "ratio"}
"""Volatile numbers; seq counts vary with how fast text deltas merge (the contract allows it)."""
IDS = re.compile(r"\b(turn|apr|msg)_[0-9A-Za-z]+")
EVENT_TYPES = [m.model_fields["type"].default for m in ev.Event.__args__[0].__args__]  # type: ignore[attr-defined]
SAMPLES: dict[str, ev.WireModel] = {
    "retry": ev.Retry(attempt=1, delay_ms=1000, error=ev.RetryErrorInfo(type="rate_limit", message="slow down")),
    "tool:error": ev.ToolError(call=ev.ToolCall(id="call_0_0_x", name="x", input_preview="x", state="EXECUTING"),
                               error="RuntimeError: boom"),
    "mcp_status": ev.McpStatus(server="github", status="ready", tools=["mcp__github__search_issues"]),
}


def normalize(value: Any, paths: dict[str, str], key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: normalize(v, paths, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, paths, key) for v in value]
    if key in TIMES and isinstance(value, str):
        return "<time>"
    if key in NUMBERS and isinstance(value, (int, float)):
        return "<number>"
    if key == "text" and isinstance(value, str) and value.startswith("# HELP"):
        return "<prometheus text>"
    if key in ("version", "pid") or (key == "host" and isinstance(value, str)):
        return f"<{key}>"
    if key == "type" and value == "turn_diff":
        return value  # an event type, not a turn id
    if isinstance(value, str):
        for path, name in paths.items():
            value = value.replace(path, name)
        return IDS.sub(lambda m: f"<{m.group(1)} id>", value)
    return value


def check(kind: str, name: str, value: Any) -> None:
    path = GOLDEN / kind / (name.replace("/", "_").replace(":", "_") + ".json")
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no golden fixture {path}: run with KODE_UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text()) == value, f"{kind} {name} differs from {path}"


async def test_every_result_and_event_matches_its_golden_fixture(
    spawn: Spawn, work_dir: Path, data_dir: Path, server_env: dict[str, str]
) -> None:
    paths = {str(work_dir): "<workDir>", str(data_dir): "<dataDir>"}
    results: dict[str, Any] = {}
    c = await spawn(init=False)

    async def call(method: str, params: dict[str, Any] | None = None) -> Any:
        result = await c.request(method, params or {})
        results.setdefault(method, result)
        return result

    async def approve(params: dict[str, Any]) -> dict[str, Any]:
        if params["agentId"] == "g2":
            return await never_answer(params)
        return {"decision": "allow"}

    c.on_approval = approve
    await call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "golden"}})
    script = scripted(
        {"thinking": "let me think", "text": "hello world",
         "toolCalls": [{"name": "fs_write", "input": {"path": "a.txt", "content": "A\n"}}],
         "usage": {"inputTokens": 10, "outputTokens": 5}},
        {"toolCalls": [{"name": "todo_write", "input": {"todos": [{"id": "1", "title": "check a.txt"}]}}]},
        {"text": "done", "usage": {"inputTokens": 20, "outputTokens": 2}},
    )
    await call("agent/create", {"agentId": "g1", "model": script, "sandbox": {"workDir": str(work_dir)},
                                "permission": {"mode": "approval", "allowTools": ["fs_write", "todo_write"],
                                               "requireApprovalTools": ["fs_write"]}})
    await call("agent/complete", {"agentId": "g1", "text": "write a.txt"})
    await c.wait_event("g1", "file_changed")  # the watcher's, before a rewind takes a.txt away again
    await call("agent/send", {"agentId": "g1", "text": "again"})
    await c.wait_for(lambda: len(c.events_of("g1", "done")) == 2)
    await call("agent/status", {"agentId": "g1"})
    await call("agent/messages", {"agentId": "g1", "limit": 2})
    await call("agent/events", {"agentId": "g1", "limit": 2})
    await call("agent/todos", {"agentId": "g1"})
    await call("agent/fork", {"agentId": "g1", "newAgentId": "g1-fork"})
    await call("agent/list", {"prefix": "g1"})
    await call("agent/interrupt", {"agentId": "g1"})
    await call("agent/checkpoints", {"agentId": "g1"})
    await call("agent/rewind", {"agentId": "g1", "checkpointId": "cp_1"})
    # An approval answered with agent/decide, a policy denial, and a failed provider.
    await c.request("agent/create", {"agentId": "g2", "sandbox": {"workDir": str(work_dir)}, "model": scripted(
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": "echo hi"}},
                       {"name": "fs_edit", "input": {"path": "a.txt", "old_string": "A", "new_string": "B"}}]}),
        "permission": {"mode": "approval", "denyTools": ["fs_edit"]}})
    await c.request("agent/send", {"agentId": "g2", "text": "run"})
    required = await c.wait_event("g2", "permission_required")
    await call("agent/decide", {"agentId": "g2", "approvalId": required["event"]["approvalId"], "decision": "allow"})
    await c.wait_event("g2", "done")
    await c.request("agent/create", {"agentId": "g3", "model": {
        "provider": "openai", "baseUrl": "https://api.openai.com/v1", "apiKeyEnv": "KODE_GOLDEN_NO_SUCH_KEY"}})
    await c.request("agent/complete", {"agentId": "g3", "text": "fail"})
    await call("agent/resume", {"agentId": "g1", "since": 0})
    for method in ("pool/stats", "templates/list", "store/health", "store/metrics", "metrics/prometheus"):
        await call(method)
    await call("store/consistency", {"agentId": "g1"})
    # Context compression: two exchanges, then agent/compact summarises the first.
    await c.request("agent/create", {"agentId": "g4", "sandbox": {"workDir": str(work_dir)},
                                     "context": {"keepRecentTokens": 10},
                                     "model": scripted({"text": "hi"}, {"text": "ho"}, {"text": "what happened so far"})})
    await c.request("agent/complete", {"agentId": "g4", "text": "one"})
    await c.request("agent/complete", {"agentId": "g4", "text": "two"})
    await call("agent/compact", {"agentId": "g4", "instructions": "the greetings"})
    await call("agent/delete", {"agentId": "g1-fork"})
    await call("shutdown")

    for name, method in METHODS.items():
        if method.direction != "client->server" or method.kind != "request":
            continue
        assert name in results, f"the golden session does not call {name}"
        if method.result is not None and not isinstance(results[name], type(None)):
            method.result.model_validate(results[name])
        check("results", name, normalize(results[name], paths))

    first: dict[str, dict[str, Any]] = {}
    for msg in c.messages:
        if msg.get("method") == "agent/event" and not msg["params"].get("replay"):
            first.setdefault(msg["params"]["event"]["type"], msg["params"])
            if msg["params"]["event"]["type"] == "context_compression":  # the end: every field
                first["context_compression"] = msg["params"]
    for etype in EVENT_TYPES:
        if etype in SAMPLES:
            check("events", etype, SAMPLES[etype].wire())
            continue
        if etype in ("file_changed",) and etype not in first:
            pytest.fail(f"{etype} was not emitted by the golden session")
        assert etype in first, f"the golden session emits no {etype} event"
        ev.EventEnvelope.model_validate(first[etype])
        check("events", etype, normalize(first[etype], paths))
    approval = next(m for m in c.messages if m.get("method") == "approval/request")
    check("requests", "approval_request", normalize(approval["params"], paths))


def test_the_fast_chunk_events_equal_their_models() -> None:
    for kind, model in (("text", ev.TextChunk), ("think", ev.ThinkChunk)):
        assert ev.chunk(kind, 3, "héllo ").wire() == model(step=3, delta="héllo ").wire()  # type: ignore[arg-type]
