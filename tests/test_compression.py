"""Context compression (contract section 13), over real pipes.

A scripted model reports big `usage.inputTokens` so the estimate crosses
`compressAt * maxTokens`; the summary call is a script step like any other. A fake
Anthropic server shows what the model is sent after a compression, and that a
resumed agent (after kill -9) sends the very same context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import Spawn, scripted
from .fakes import FakeResponse, FakeServer
from .test_e2e_providers import KEY, anthropic_text

BIG = {"inputTokens": 1500, "outputTokens": 5}
SMALL_CONTEXT = {"maxTokens": 2000, "compressAt": 0.5, "keepRecentTokens": 10}


def texts(message: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")


async def messages(c: Any, agent_id: str) -> list[dict[str, Any]]:
    return (await c.request("agent/messages", {"agentId": agent_id}))["messages"]


async def test_automatic_compression_before_a_model_call(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "auto", "sandbox": {"workDir": str(work_dir)}, "context": SMALL_CONTEXT,
                                     "model": scripted({"text": "reply one", "usage": BIG},
                                                       {"text": "SUMMARY one"},
                                                       {"text": "reply two"})})
    first = await c.request("agent/complete", {"agentId": "auto", "text": "question one " + "detail " * 300})
    assert first["text"] == "reply one" and not c.events_of("auto", "context_compression")
    second = await c.request("agent/complete", {"agentId": "auto", "text": "question two"})
    assert second["status"] == "ok" and second["text"] == "reply two"  # the summary is not the turn's text
    start, end = c.events_of("auto", "context_compression")
    assert start["event"] == {"type": "context_compression", "phase": "start"}
    assert start["turnId"] == end["turnId"] == second["turnId"]
    e = end["event"]
    assert e["phase"] == "end" and e["summary"] == "SUMMARY one" and e["compactedMessages"] == 2
    assert 0 < e["ratio"] < 1
    # The summary call does not stream as the turn's text.
    assert [x["event"]["text"] for x in c.events_of("auto", "text_chunk_end")] == ["reply one", "reply two"]
    msgs = await messages(c, "auto")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "user", "assistant"]
    assert [m.get("compacted") for m in msgs] == [True, True, None, None, None]
    assert [m.get("kind") for m in msgs] == [None, None, None, "summary", None]
    assert "SUMMARY one" in texts(msgs[3]) and texts(msgs[2]) == "question two"
    # A fork's context is the same; a fork before the compression has none of it.
    await c.request("agent/fork", {"agentId": "auto", "newAgentId": "auto-fork"})
    forked = await messages(c, "auto-fork")
    assert [(m.get("compacted"), m.get("kind")) for m in forked] == [(m.get("compacted"), m.get("kind")) for m in msgs]
    early = first["lastSeq"]
    await c.request("agent/fork", {"agentId": "auto", "newAgentId": "auto-early", "atSeq": early})
    assert not any(m.get("compacted") or m.get("kind") for m in await messages(c, "auto-early"))
    # Below the threshold again: no further compression.
    await c.request("agent/complete", {"agentId": "auto", "text": "question three"})
    assert len(c.events_of("auto", "context_compression")) == 2


async def test_manual_compact_and_nothing_to_compact(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "m", "sandbox": {"workDir": str(work_dir)},
                                     "context": {"keepRecentTokens": 10},
                                     "model": scripted({"text": "hi"}, {"text": "ho"}, {"text": "MANUAL SUMMARY"})})
    await c.request("agent/complete", {"agentId": "m", "text": "one"})
    # One exchange: the latest user message always stays, so there is nothing to summarise.
    res = await c.request("agent/compact", {"agentId": "m", "instructions": "the greetings"})
    assert res == {"compressed": False, "compactedMessages": 0}
    await c.request("agent/complete", {"agentId": "m", "text": "two"})
    res = await c.request("agent/compact", {"agentId": "m", "instructions": "the greetings"})
    assert res["compressed"] is True and res["compactedMessages"] == 2 and res["ratio"] > 0
    end = c.events_of("m", "context_compression")[-1]
    assert end["event"]["summary"] == "MANUAL SUMMARY" and "turnId" not in end
    msgs = await messages(c, "m")
    assert [m.get("compacted") for m in msgs] == [True, True, None, None, None]
    assert msgs[4].get("kind") == "summary"
    # The events are stored before the answer.
    stored = (await c.request("agent/events", {"agentId": "m", "since": 0}))["events"]
    assert [x["event"]["phase"] for x in stored if x["event"]["type"] == "context_compression"] == ["start", "end"]


async def test_a_tool_use_and_its_result_stay_together(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    pad = "x" * 2000  # makes the tool_use message too big for keepRecentTokens on its own
    await c.request("agent/create", {"agentId": "tp", "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"},
                                     "context": {"maxTokens": 2000, "compressAt": 0.5, "keepRecentTokens": 150},
                                     "model": scripted({"toolCalls": [{"name": "todo_read", "input": {"pad": pad}}]},
                                                       {"text": "done", "usage": BIG},
                                                       {"text": "SUM"}, {"text": "ok"})})
    await c.request("agent/complete", {"agentId": "tp", "text": "start"})
    before = await messages(c, "tp")
    assert [m["role"] for m in before] == ["user", "assistant", "tool", "assistant"]
    await c.request("agent/complete", {"agentId": "tp", "text": "next"})
    end = c.events_of("tp", "context_compression")[-1]["event"]
    # The suffix that fits would start at the tool_result; it is extended to its tool_use.
    assert end["compactedMessages"] == 1
    msgs = await messages(c, "tp")
    assert [m.get("compacted") for m in msgs] == [True, None, None, None, None, None, None]
    assert [m.get("kind") for m in msgs][5] == "summary"


async def test_compact_during_a_turn_waits_for_it(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "w", "sandbox": {"workDir": str(work_dir)},
                                     "context": {"keepRecentTokens": 5},
                                     "model": scripted({"text": "a"}, {"text": "slow", "delayMs": 800},
                                                       {"text": "SUM"})})
    await c.request("agent/complete", {"agentId": "w", "text": "one"})
    await c.request("agent/send", {"agentId": "w", "text": "two"})
    res = await c.request("agent/compact", {"agentId": "w"})
    assert res["compressed"] is True
    done = c.events_of("w", "done")
    assert len(done) == 2
    start = c.events_of("w", "context_compression")[0]
    assert start["seq"] > done[1]["seq"] and "turnId" not in start
    msgs = await messages(c, "w")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[4]["kind"] == "summary"


def anthropic_model(fake: FakeServer) -> dict[str, Any]:
    return {"provider": "anthropic", "model": "claude-sonnet-4-5", "baseUrl": fake.url,
            "apiKeyEnv": "TEST_ANTHROPIC_KEY", "retry": {"maxRetries": 0}}


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without cache markers (the provider moves them to the latest message)."""
    return [{**m, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]}
            if isinstance(m["content"], list) else m for m in messages]


def body_texts(body: dict[str, Any]) -> list[str]:
    out = []
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out.append("".join(b.get("text", "") for b in content if b.get("type") == "text"))
    return out


async def test_resume_after_kill_rebuilds_the_same_context(spawn: Spawn, fake: FakeServer, work_dir: Path,
                                                           server_env: dict[str, str]) -> None:
    env = dict(server_env, TEST_ANTHROPIC_KEY=KEY)
    fake.add(FakeResponse(chunks=anthropic_text("answer one", input_tokens=1500)),
             FakeResponse(chunks=anthropic_text("THE SUMMARY", input_tokens=50)),
             FakeResponse(chunks=anthropic_text("answer two", input_tokens=100)),
             FakeResponse(chunks=anthropic_text("answer three", input_tokens=120)),
             FakeResponse(chunks=anthropic_text("FOCUSED SUMMARY", input_tokens=50)))
    c = await spawn(env=env)
    await c.request("agent/create", {"agentId": "r", "sandbox": {"workDir": str(work_dir)},
                                     "systemPrompt": "You are terse.", "context": SMALL_CONTEXT,
                                     "model": anthropic_model(fake)})
    assert (await c.request("agent/complete", {"agentId": "r", "text": "first question"}))["text"] == "answer one"
    assert (await c.request("agent/complete", {"agentId": "r", "text": "second question"}))["text"] == "answer two"
    summary_call, after = fake.requests[1].json, fake.requests[2].json
    assert "first question" in body_texts(summary_call)[0] and "answer one" in body_texts(summary_call)[0]
    assert not summary_call.get("tools")
    assert after["system"] == fake.requests[0].json["system"]  # the system prompt is never summarised away
    sent = body_texts(after)
    assert "THE SUMMARY" in sent[0] and "first question" not in "".join(sent) and sent[-1].endswith("second question")
    c.kill()
    await c.wait_exit(5)

    c2 = await spawn(env=env)
    await c2.request("agent/resume", {"agentId": "r"})
    assert (await c2.request("agent/complete", {"agentId": "r", "text": "third"}))["text"] == "answer three"
    resumed = fake.requests[3].json
    assert plain(resumed["messages"])[:len(after["messages"])] == plain(after["messages"])
    assert body_texts(resumed)[len(after["messages"]):][-1].endswith("third")
    # A manual compaction with focus instructions; the summary call carries them.
    res = await c2.request("agent/compact", {"agentId": "r", "instructions": "the numbering of the questions"})
    assert res["compressed"] is True
    focused = body_texts(fake.requests[4].json)[0]
    assert "the numbering of the questions" in focused and "THE SUMMARY" in focused
    msgs = await messages(c2, "r")
    kinds = [m.get("kind") for m in msgs]
    assert kinds.count("summary") == 2
    # The first summary is itself summarised away by the second.
    assert msgs[kinds.index("summary")]["compacted"] is True
    assert msgs[-1]["kind"] == "summary" and not msgs[-1].get("compacted")
    assert [m.get("compacted") for m in msgs] == [True] * 5 + [None] * 3
