"""The runtime in-process (no server, no pipes): `RuntimeService` over a real SQLite store,
with a fake provider that records what it was given and replies as the test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.config import Settings
from kode_rpc.protocol import agents as a
from kode_rpc.protocol.approvals import ApprovalResponse
from kode_rpc.providers import registry
from kode_rpc.providers.base import ModelRequest, Provider, ProviderError, StreamEvent, TextDelta, ToolCallRequest, UsageReport
from kode_rpc.runtime.agent import Services
from kode_rpc.runtime.errors import ApprovalNotPending, InvalidInput, NotFound
from kode_rpc.runtime.events import Envelope, EventLog
from kode_rpc.runtime.pool import AgentPool, PoolSettings
from kode_rpc.runtime.service import RuntimeService
from kode_rpc.store.sqlite import SQLiteStore
from kode_rpc.tools.base import builtin_tools

Reply = Callable[[ModelRequest], list[StreamEvent]]


class FakeProvider(Provider):
    """Replies with what `replies` (one function per model call) returns; records every request.
    A reply may raise ProviderError, or `hang` forever (to test interrupts)."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []
        self.replies: list[Reply | str] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else (lambda r: [TextDelta("ok")])
        if reply == "hang":
            await asyncio.Event().wait()
        assert callable(reply)
        for item in reply(request):
            yield item
            await asyncio.sleep(0)


@pytest.fixture
async def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RuntimeService, FakeProvider]]:
    fake = FakeProvider()
    monkeypatch.setitem(registry._cache, "scripted", fake)
    store = SQLiteStore(str(tmp_path / "kode.db"))
    await store.open()
    events = EventLog(store)
    svc = Services(store, events, builtin_tools(), Settings({"provider": "scripted"}, "builtin"))
    pool = AgentPool(svc, PoolSettings(str(tmp_path), default_model={"provider": "scripted"}))
    service = RuntimeService(pool)
    yield service, fake
    await pool.shutdown()
    await store.close()


def collect(service: RuntimeService, answer: str | None = None) -> tuple[list[Envelope], Any]:
    seen: list[Envelope] = []

    def ask(request: dict[str, Any]) -> tuple[Callable[[], None], Any]:
        async def reply() -> ApprovalResponse:
            return ApprovalResponse(decision=answer or "deny")
        return (lambda: None), reply()

    return seen, service.watcher(seen.append, ask if answer else None)


def types(seen: list[Envelope]) -> list[str]:
    return [e.event["type"] for e in seen]


async def test_a_turn_streams_stores_and_completes(runtime: tuple[RuntimeService, FakeProvider], tmp_path: Path) -> None:
    service, fake = runtime
    seen, watcher = collect(service)
    fake.replies = [lambda r: [TextDelta("hello "), TextDelta("world"), UsageReport(10, 2)]]
    info = await service.create(a.AgentConfig(agent_id="r1", system_prompt="be brief"), watcher)
    assert info.agent_id == "r1" and info.state == "READY"
    sent = await service.send("r1", [{"type": "text", "text": "hi"}], "user", watcher)
    result = await service.wait(sent, stop_on_pause=False)
    assert result.status == "ok" and result.text == "hello world" and result.error is None
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert types(seen)[-1] == "done" and "token_usage" in types(seen)
    assert fake.requests[0].system == "be brief"
    assert fake.requests[0].messages == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    stored, last = await service.events_json("r1", 0, None, None)
    assert last == seen[-1].seq and len(stored) == len(seen)
    messages = await service.messages("r1")
    assert [m.role for m in messages.messages] == ["user", "assistant"]
    assert (await service.consistency("r1"))["consistent"]


async def test_a_provider_failure_is_a_result(runtime: tuple[RuntimeService, FakeProvider]) -> None:
    service, fake = runtime
    seen, watcher = collect(service)

    def fail(request: ModelRequest) -> list[StreamEvent]:
        raise ProviderError("quota_exceeded", "no credit left")

    fake.replies = [fail]
    await service.create(a.AgentConfig(agent_id="r2"), watcher)
    result = await service.wait(await service.send("r2", [{"type": "text", "text": "x"}], "user", watcher), False)
    assert result.status == "error" and result.error is not None
    assert (result.error.type, result.error.retryable) == ("quota_exceeded", False)
    assert "error" in types(seen) and seen[-1].event == {"type": "done", "step": 1, "reason": "error"}


async def test_tool_call_asks_through_the_watcher_and_runs_when_allowed(
    runtime: tuple[RuntimeService, FakeProvider], tmp_path: Path
) -> None:
    service, fake = runtime
    seen, watcher = collect(service, answer="allow")
    work = tmp_path / "w"
    work.mkdir()
    fake.replies = [lambda r: [ToolCallRequest("c1", "fs_write", {"path": "f.txt", "content": "hi"})],
                    lambda r: [TextDelta("written")]]
    await service.create(a.AgentConfig(agent_id="r3", sandbox=a.SandboxConfig(work_dir=str(work)),
                                       permission=a.PermissionConfig(mode="approval")), watcher)
    result = await service.wait(await service.send("r3", [{"type": "text", "text": "w"}], "user", watcher), False)
    assert result.status == "ok" and (work / "f.txt").read_text() == "hi"
    decided = next(e.event for e in seen if e.event["type"] == "permission_decided")
    assert decided["decision"] == "allow" and decided["decidedBy"] == "client"
    # the model saw the tool result in its next call
    assert fake.requests[1].messages[-1]["content"][0]["type"] == "tool_result"
    with pytest.raises(ApprovalNotPending):
        await service.decide("r3", decided["approvalId"], "deny", None, False, watcher)


async def test_paused_turn_returns_paused_then_interrupt_denies(runtime: tuple[RuntimeService, FakeProvider]) -> None:
    service, fake = runtime
    seen, watcher = collect(service)  # no ask: approvals are answered with decide
    fake.replies = [lambda r: [ToolCallRequest("c1", "bash_run", {"cmd": "echo hi"})]]
    await service.create(a.AgentConfig(agent_id="r4", permission=a.PermissionConfig(mode="approval")), watcher)
    sent = await service.send("r4", [{"type": "text", "text": "run"}], "user", watcher)
    paused = await service.wait(sent, stop_on_pause=True)
    assert paused.status == "paused" and len(paused.permission_ids) == 1
    status = await service.status("r4")
    assert (status.state, status.breakpoint) == ("PAUSED", "AWAITING_APPROVAL")
    assert await service.interrupt("r4", "stop") is True
    done = await service.wait(sent, stop_on_pause=False)
    assert done.status == "interrupted"
    assert (await service.status("r4")).state == "READY"


async def test_interrupt_stops_a_hanging_model_call(runtime: tuple[RuntimeService, FakeProvider]) -> None:
    service, fake = runtime
    seen, watcher = collect(service)
    fake.replies = ["hang"]
    await service.create(a.AgentConfig(agent_id="r5"), watcher)
    sent = await service.send("r5", [{"type": "text", "text": "x"}], "user", watcher)
    await asyncio.sleep(0.05)
    assert await service.interrupt("r5", None) is True
    assert (await asyncio.wait_for(service.wait(sent, False), 5)).status == "interrupted"


async def test_domain_errors(runtime: tuple[RuntimeService, FakeProvider]) -> None:
    service, _ = runtime
    _, watcher = collect(service)
    with pytest.raises(NotFound) as nf:
        await service.status("nobody")
    assert nf.value.reason == "agent_not_found"
    await service.create(a.AgentConfig(agent_id="r6"), watcher)
    with pytest.raises(InvalidInput) as exists:
        await service.create(a.AgentConfig(agent_id="r6"), watcher)
    assert exists.value.reason == "agent_exists"
    with pytest.raises(InvalidInput):
        await service.set_todos("r6", [a.Todo(id="1", title="a"), a.Todo(id="1", title="b")], watcher)
    with pytest.raises(NotFound):
        await service.create(a.AgentConfig(agent_id="r7", template_id="nope"), watcher)
    assert await service.delete("r6", watcher) is True
    assert await service.delete("r6", watcher) is False


async def test_the_model_sees_the_whole_conversation_turn_after_turn(
        runtime: tuple[RuntimeService, FakeProvider]) -> None:
    """The messages a provider gets are kept and extended between calls (not rebuilt):
    each call still gets every message so far, and a provider that changes its list
    does not change what the next call gets."""
    service, fake = runtime
    seen, watcher = collect(service)

    def scribble(request: ModelRequest) -> list[StreamEvent]:
        request.messages.append({"role": "user", "content": [{"type": "text", "text": "injected"}]})
        return [TextDelta("ok")]

    fake.replies = [lambda r: [TextDelta("one")], scribble, lambda r: [TextDelta("three")]]
    await service.create(a.AgentConfig(agent_id="conv"), watcher)
    for text in ("a", "b", "c"):
        await service.wait(await service.send("conv", [{"type": "text", "text": text}], "user", watcher), False)
    stored = [{"role": m.role, "content": [b.wire() for b in m.content]} for m in (await service.messages("conv")).messages]
    assert len(stored) == 6
    for i, request in enumerate(fake.requests):
        got = request.messages[:-1] if i == 1 else request.messages  # minus what scribble appended
        assert got == stored[:2 * i + 1]


def test_now_iso_formats_each_second_once_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime, timezone

    from kode_rpc.runtime import util

    formatted: list[int] = []
    real = util.datetime

    class Counting:
        @staticmethod
        def fromtimestamp(t: float, tz: timezone) -> datetime:
            formatted.append(int(t))
            return real.fromtimestamp(t, tz)

    monkeypatch.setattr(util, "datetime", Counting)
    stamps = [1_700_000_000_999_500_000, 1_700_000_001_000_400_000, 1_700_000_001_250_000_000,
              1_700_000_001_998_000_000, 1_700_003_601_500_000_000]
    for ns in stamps:
        monkeypatch.setattr(util.time, "time_ns", lambda ns=ns: ns)
        ms = ns // 1_000_000
        expected = real.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
        assert util.now_iso() == expected
    assert util.now_iso().endswith(".500Z")
    assert formatted == [1_700_000_000, 1_700_000_001, 1_700_003_601]  # once per second seen
