"""End to end over real pipes: turns, streaming, approvals, interrupt, queueing, budgets, tools."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from kode_rpc.client import RpcError

from .conftest import Spawn, scripted
from .helpers import assert_gapless, never_answer, types


async def test_echo_turn_streams_chunks_and_done(spawn: Spawn) -> None:
    c = await spawn()
    info = await c.request("agent/create", {"agentId": "a1"})
    assert info["agentId"] == "a1" and info["model"]["provider"] == "echo"
    sent = await c.request("agent/send", {"agentId": "a1", "text": "hello brave new world"})
    assert sent["queued"] is False and sent["turnId"].startswith("turn_")
    done = await c.wait_event("a1", "done")
    assert done["event"]["reason"] == "completed" and done["turnId"] == sent["turnId"]
    evs = c.events_of("a1")
    assert_gapless(evs)
    chunks = c.events_of("a1", "text_chunk")
    assert len(chunks) >= 2, "a multi-word reply streams as several text_chunk events"
    assert "".join(e["event"]["delta"] for e in chunks) == "hello brave new world"
    assert c.events_of("a1", "text_chunk_end")[0]["event"]["text"] == "hello brave new world"
    assert all(e["turnId"] == sent["turnId"] for e in evs if e["seq"] > 1)
    assert c.stray == b"", "nothing but frames on stdout"
    msgs = await c.request("agent/messages", {"agentId": "a1"})
    assert [m["role"] for m in msgs["messages"]] == ["user", "assistant"] and msgs["total"] == 2
    assert await c.close() == 0


async def test_complete_returns_after_done(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "c1"})
    res = await c.request("agent/complete", {"agentId": "c1", "text": "ping"})
    assert res["status"] == "ok" and res["text"] == "ping" and res["permissionIds"] == []
    done_idx = next(i for i, m in enumerate(c.messages) if m.get("params", {}).get("event", {}).get("type") == "done")
    resp_idx = next(i for i, m in enumerate(c.messages) if "result" in m and m["result"] == res)
    assert done_idx < resp_idx, "the response is sent after the done event"
    assert res["lastSeq"] == c.events_of("c1", "done")[0]["seq"]


@pytest.mark.parametrize("answer", ["allow", "deny"])
async def test_scripted_fs_write_in_approval_mode(spawn: Spawn, work_dir: Path, answer: str) -> None:
    c = await spawn()
    asked: list[dict] = []

    async def on_approval(params: dict) -> dict:
        asked.append(params)
        return {"decision": answer, "note": "from test"}

    c.on_approval = on_approval
    script = scripted({"text": "Writing.", "toolCalls": [{"name": "fs_write", "input": {"path": "out.txt", "content": "data"}}]},
                      {"text": "Finished."})
    await c.request("agent/create", {"agentId": "w", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "approval"}})
    res = await c.request("agent/complete", {"agentId": "w", "text": "write it"})
    assert res["status"] == "ok"
    assert len(asked) == 1
    req = asked[0]
    assert req["subject"]["type"] == "file_change" and req["subject"]["path"].endswith("out.txt")
    assert "+data" in req["subject"]["diff"]
    assert req["call"]["state"] == "APPROVAL_REQUIRED" and req["options"] == ["allow", "deny"]
    end = c.events_of("w", "tool:end")[0]["event"]["call"]
    decided = c.events_of("w", "permission_decided")[0]["event"]
    assert decided["decision"] == answer and decided["decidedBy"] == "client"
    assert decided["approvalId"] == req["approvalId"]
    msgs = (await c.request("agent/messages", {"agentId": "w"}))["messages"]
    result = msgs[2]["content"][0]
    assert result["type"] == "tool_result"
    if answer == "allow":
        assert (work_dir / "out.txt").read_text() == "data"
        assert end["state"] == "COMPLETED" and result["isError"] is False
    else:
        assert not (work_dir / "out.txt").exists()
        assert end["state"] == "DENIED" and result["isError"] is True
        assert "denied" in result["content"]["error"] and "from test" in result["content"]["error"]
    order = types(c.events_of("w"))
    assert order.index("tool:start") < order.index("permission_required") < order.index("permission_decided") < order.index("tool:end")
    assert (await c.request("store/consistency", {"agentId": "w"}))["consistent"]


async def test_interrupt_kills_bash_run_within_a_second(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    script = scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 30 & echo PID=$!; wait"}}]})
    await c.request("agent/create", {"agentId": "s", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    await c.request("agent/send", {"agentId": "s", "text": "sleep"})
    out = await c.wait_for(lambda: next((e for e in c.events_of("s", "tool:output") if "PID=" in e["event"]["delta"]), None))
    pid = int(out["event"]["delta"].split("PID=")[1].split()[0])
    assert os.path.exists(f"/proc/{pid}")
    t0 = time.monotonic()
    res = await c.request("agent/interrupt", {"agentId": "s"})
    assert res == {"interrupted": True}
    done = await c.wait_event("s", "done", timeout=5)
    elapsed = time.monotonic() - t0
    assert done["event"]["reason"] == "interrupted"
    assert elapsed < 1.0, elapsed
    deadline = time.monotonic() + 1.0
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    end = c.events_of("s", "tool:end")[0]["event"]["call"]
    assert end["state"] == "FAILED"
    st = await c.request("agent/status", {"agentId": "s"})
    assert st["state"] == "READY" and st["breakpoint"] == "READY"
    assert (await c.request("store/consistency", {"agentId": "s"}))["consistent"]
    # the agent keeps working after an interrupt
    assert (await c.request("agent/complete", {"agentId": "s", "text": "again"}))["status"] == "ok"


async def test_interrupt_denies_pending_approval(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn(capabilities={"approvals": False})
    script = scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "echo hi"}}]})
    await c.request("agent/create", {"agentId": "p", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "approval"}})
    res = await c.request("agent/complete", {"agentId": "p", "text": "go"})
    assert res["status"] == "paused" and len(res["permissionIds"]) == 1
    assert not [m for m in c.messages if m.get("method") == "approval/request"]
    await c.request("agent/interrupt", {"agentId": "p"})
    done = await c.wait_event("p", "done")
    assert done["event"]["reason"] == "interrupted"
    decided = c.events_of("p", "permission_decided")[0]["event"]
    assert decided["decidedBy"] == "interrupt" and decided["decision"] == "deny"
    with pytest.raises(RpcError) as err:
        await c.request("agent/decide", {"agentId": "p", "approvalId": res["permissionIds"][0], "decision": "allow"})
    assert err.value.code == -32011 and err.value.data["recordedDecision"]["decision"] == "deny"


async def test_decide_paths_and_errors(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn(capabilities={"approvals": False})
    script = scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "f.txt", "content": "x"}}]}, {"text": "ok"})
    await c.request("agent/create", {"agentId": "d", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "approval"}})
    res = await c.request("agent/complete", {"agentId": "d", "text": "go"})
    assert res["status"] == "paused"
    status = await c.request("agent/status", {"agentId": "d"})
    assert status["state"] == "PAUSED" and status["breakpoint"] == "AWAITING_APPROVAL"
    assert [p["approvalId"] for p in status["pendingApprovals"]] == res["permissionIds"]
    with pytest.raises(RpcError) as err:
        await c.request("agent/decide", {"agentId": "d", "approvalId": "apr_nope", "decision": "allow"})
    assert err.value.code == -32002
    ok = await c.request("agent/decide", {"agentId": "d", "approvalId": res["permissionIds"][0], "decision": "allow"})
    assert ok == {"accepted": True}
    await c.wait_event("d", "done")
    assert (work_dir / "f.txt").read_text() == "x"
    with pytest.raises(RpcError) as err:
        await c.request("agent/decide", {"agentId": "d", "approvalId": res["permissionIds"][0], "decision": "deny"})
    assert err.value.code == -32011 and err.value.data["recordedDecision"]["decision"] == "allow"


async def test_remember_allows_tool_for_later_calls(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    count = 0

    async def on_approval(params: dict) -> dict:
        nonlocal count
        count += 1
        return {"decision": "allow", "remember": True}

    c.on_approval = on_approval
    write = {"name": "fs_write", "input": {"path": "r.txt", "content": "1"}}
    await c.request("agent/create", {"agentId": "r", "model": scripted({"toolCalls": [write]}, {"text": "a"}, {"toolCalls": [write]}, {"text": "b"}),
                                     "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "approval"}})
    await c.request("agent/complete", {"agentId": "r", "text": "one"})
    await c.request("agent/complete", {"agentId": "r", "text": "two"})
    assert count == 1
    assert len([e for e in c.events_of("r", "tool:end") if e["event"]["call"]["state"] == "COMPLETED"]) == 2


async def test_approval_timeout_denies_and_cancels_request(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()

    c.on_approval = never_answer
    await c.request("agent/create", {"agentId": "t", "model": scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "echo x"}}]}),
                                     "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "approval", "approvalTimeoutMs": 300}})
    res = await c.request("agent/complete", {"agentId": "t", "text": "go"})
    assert res["status"] == "ok"
    decided = c.events_of("t", "permission_decided")[0]["event"]
    assert decided["decidedBy"] == "timeout"
    req_id = next(m["id"] for m in c.messages if m.get("method") == "approval/request")
    assert any(m.get("method") == "$/cancelRequest" and m["params"]["id"] == req_id for m in c.messages)
    msgs = (await c.request("agent/messages", {"agentId": "t"}))["messages"]
    assert "nobody answered" in msgs[2]["content"][0]["content"]["error"]


async def test_policy_lists(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn(capabilities={"approvals": False})
    (work_dir / "y").write_text("y")
    calls = [{"name": "fs_write", "input": {"path": "x", "content": "1"}}, {"name": "fs_read", "input": {"path": "y"}},
             {"name": "bash_run", "input": {"cmd": "true"}}]
    await c.request("agent/create", {"agentId": "pl", "model": scripted({"toolCalls": calls}),
                                     "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto", "denyTools": ["bash_run"], "allowTools": ["fs_read", "fs_write", "bash_run"],
                                                    "requireApprovalTools": ["fs_write"]}})
    res = await c.request("agent/complete", {"agentId": "pl", "text": "go"})
    assert res["status"] == "paused" and len(res["permissionIds"]) == 1
    policy = [e["event"] for e in c.events_of("pl", "permission_decided") if e["event"]["decidedBy"] == "policy"]
    assert [(p["callId"].endswith("bash_run"), p["decision"], p["approvalId"]) for p in policy] == [(True, "deny", None)]
    await c.request("agent/decide", {"agentId": "pl", "approvalId": res["permissionIds"][0], "decision": "allow"})
    await c.wait_event("pl", "done")
    states = {e["event"]["call"]["name"]: e["event"]["call"]["state"] for e in c.events_of("pl", "tool:end")}
    assert states == {"fs_write": "COMPLETED", "fs_read": "COMPLETED", "bash_run": "DENIED"}


async def test_send_during_turn_is_queued(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "q", "model": scripted({"text": "first", "delayMs": 300}, {"text": "second"})})
    a = await c.request("agent/send", {"agentId": "q", "text": "1"})
    b = await c.request("agent/send", {"agentId": "q", "text": "2"})
    assert a["queued"] is False and b["queued"] is True
    await c.wait_for(lambda: len(c.events_of("q", "done")) == 2)
    dones = c.events_of("q", "done")
    assert [d["turnId"] for d in dones] == [a["turnId"], b["turnId"]]
    msgs = (await c.request("agent/messages", {"agentId": "q"}))["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in msgs] == [("user", "1"), ("assistant", "first"), ("user", "2"), ("assistant", "second")]


async def test_budget_max_tokens_ends_turn(spawn: Spawn) -> None:
    c = await spawn()
    script = scripted({"text": "a", "usage": {"inputTokens": 60, "outputTokens": 50},
                       "toolCalls": [{"name": "todo_read", "input": {}}]}, {"text": "never"})
    await c.request("agent/create", {"agentId": "b", "model": script, "budget": {"maxTokens": 100}})
    res = await c.request("agent/complete", {"agentId": "b", "text": "go"})
    assert res["status"] == "interrupted"
    assert c.events_of("b", "done")[0]["event"]["reason"] == "budget_exceeded"
    assert not c.events_of("b", "tool:start")
    status = await c.request("agent/status", {"agentId": "b"})
    assert status["usage"]["inputTokens"] == 60 and status["usage"]["outputTokens"] == 50
    assert (await c.request("store/consistency", {"agentId": "b"}))["consistent"]


async def test_many_parallel_tool_calls_finish(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    for i in range(5):
        (work_dir / f"f{i}.txt").write_text(f"content {i}")
    calls = [{"name": "fs_read", "input": {"path": f"f{i % 5}.txt"}} for i in range(120)]
    calls += [{"name": "bash_run", "input": {"cmd": "sleep 0.2"}} for _ in range(8)]
    await c.request("agent/create", {"agentId": "m", "model": scripted({"toolCalls": calls}, {"text": "read all"}),
                                     "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": "m", "text": "go"}, timeout=30)
    assert res["status"] == "ok" and res["text"] == "read all"
    ends = c.events_of("m", "tool:end")
    assert len(ends) == 128 and all(e["event"]["call"]["state"] == "COMPLETED" for e in ends)
    msgs = (await c.request("agent/messages", {"agentId": "m"}))["messages"]
    assert len(msgs[2]["content"]) == 128
    assert_gapless(c.events_of("m"))


async def test_tool_cannot_leave_sandbox(spawn: Spawn, work_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (work_dir / "link").symlink_to(secret)
    c = await spawn()
    calls = [{"name": "fs_read", "input": {"path": str(secret)}}, {"name": "fs_read", "input": {"path": "link"}},
             {"name": "fs_write", "input": {"path": "../escape.txt", "content": "x"}}]
    await c.request("agent/create", {"agentId": "sb", "model": scripted({"toolCalls": calls}), "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    await c.request("agent/complete", {"agentId": "sb", "text": "go"})
    results = [e["event"]["call"]["result"] for e in c.events_of("sb", "tool:end")]
    assert [r["errorType"] for r in results] == ["boundary"] * 3
    assert not (tmp_path / "escape.txt").exists()
    assert "top secret" not in str(c.events)


async def test_unknown_tool_and_bad_input_are_tool_errors(spawn: Spawn) -> None:
    c = await spawn()
    calls = [{"name": "no_such_tool", "input": {}}, {"name": "fs_read", "input": {"nope": 1}}]
    await c.request("agent/create", {"agentId": "u", "model": scripted({"toolCalls": calls}, {"text": "fine"}),
                                     "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": "u", "text": "go"})
    assert res["status"] == "ok"
    errs = [e["event"]["call"]["result"]["errorType"] for e in c.events_of("u", "tool:end")]
    assert errs == ["unknown_tool", "invalid_input"]


async def test_todos_fork_delete_list(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "f1", "metadata": {"k": "v"}})
    await c.request("agent/complete", {"agentId": "f1", "text": "one"})
    todos = [{"id": "1", "title": "write tests", "status": "in_progress"}]
    assert (await c.request("agent/todos", {"agentId": "f1", "todos": todos}))["todos"] == todos
    assert (await c.request("agent/todos", {"agentId": "f1"}))["todos"] == todos
    assert c.events_of("f1", "todo_changed")[0]["event"]["todos"] == todos
    fork = await c.request("agent/fork", {"agentId": "f1", "newAgentId": "f2"})
    assert fork["agentId"] == "f2" and fork["messageCount"] == 2 and fork["metadata"]["forkedFrom"] == "f1"
    res = await c.request("agent/complete", {"agentId": "f2", "text": "two"})
    assert res["status"] == "ok"
    f2_events = (await c.request("agent/events", {"agentId": "f2"}))["events"]
    assert_gapless(f2_events)
    assert all(e["agentId"] == "f2" for e in f2_events)
    listed = await c.request("agent/list", {"prefix": "f", "limit": 1})
    assert [a["agentId"] for a in listed["agents"]] == ["f1"] and listed["nextCursor"]
    rest = await c.request("agent/list", {"prefix": "f", "cursor": listed["nextCursor"]})
    assert [a["agentId"] for a in rest["agents"]] == ["f2"]
    assert (await c.request("agent/delete", {"agentId": "f1"})) == {"deleted": True}
    assert (await c.request("agent/delete", {"agentId": "f1"})) == {"deleted": False}
    with pytest.raises(RpcError) as err:
        await c.request("agent/status", {"agentId": "f1"})
    assert err.value.code == -32002
    with pytest.raises(RpcError) as err:
        await c.request("agent/create", {"agentId": "f2"})
    assert err.value.code == -32602 and err.value.data["reason"] == "agent_exists"


async def test_events_query_and_observability(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "o"})
    await c.request("agent/complete", {"agentId": "o", "text": "a b c"})
    evs = await c.request("agent/events", {"agentId": "o", "since": 2, "limit": 3})
    assert [e["seq"] for e in evs["events"]] == [3, 4, 5]
    assert evs["lastSeq"] == c.events_of("o")[-1]["seq"]
    prog = await c.request("agent/events", {"agentId": "o", "channels": ["progress"]})
    assert {e["channel"] for e in prog["events"]} == {"progress"}
    health = await c.request("store/health")
    assert health["healthy"] and health["database"]["connected"] and health["fileSystem"]["writable"]
    metrics = await c.request("store/metrics")
    assert metrics["storage"]["totalAgents"] == 1 and metrics["storage"]["totalMessages"] == 2
    assert metrics["operations"]["saves"] > 0
    stats = await c.request("pool/stats")
    assert stats == {"active": 1, "maxAgents": 50, "working": 0, "hibernated": 0}
    tpl = await c.request("templates/list")
    assert "default" in [t["id"] for t in tpl["templates"]]
    prom = await c.request("metrics/prometheus")
    lines = prom["text"].splitlines()
    assert "kode_agents_total 1.0" in lines and 'kode_turns_total{reason="completed"} 1.0' in lines


async def test_tool_output_is_bounded(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    cmd = "python3 -c \"import sys; sys.stdout.write('x' * (3 * 1024 * 1024))\""
    await c.request("agent/create", {"agentId": "big", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"},
                                     "model": scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": cmd}}]})})
    await c.request("agent/complete", {"agentId": "big", "text": "go"}, timeout=60)
    outs = [e["event"] for e in c.events_of("big", "tool:output")]
    sizes = [len(o["delta"].encode()) for o in outs]
    assert max(sizes) <= 64 * 1024 and sum(sizes) == 1024 * 1024
    assert outs[-1]["truncated"] is True and not any(o["truncated"] for o in outs[:-1])



async def test_agent_decide_cancels_the_outstanding_request_and_can_remember(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()

    c.on_approval = never_answer
    write = {"name": "fs_write", "input": {"path": "d.txt", "content": "1"}}
    await c.request("agent/create", {"agentId": "dc", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "approval"},
                                     "model": scripted({"toolCalls": [write]}, {"text": "a"}, {"toolCalls": [write]}, {"text": "b"})})
    await c.request("agent/send", {"agentId": "dc", "text": "go"})
    req = await c.wait_for(lambda: next((m for m in c.messages if m.get("method") == "approval/request"), None))
    ok = await c.request("agent/decide", {"agentId": "dc", "approvalId": req["params"]["approvalId"], "decision": "allow",
                                          "remember": True})
    assert ok == {"accepted": True}
    await c.wait_for(lambda: any(m.get("method") == "$/cancelRequest" and m["params"]["id"] == req["id"] for m in c.messages))
    await c.wait_event("dc", "done")
    res = await c.request("agent/complete", {"agentId": "dc", "text": "again"})
    assert res["status"] == "ok"
    assert len([m for m in c.messages if m.get("method") == "approval/request"]) == 1, "remembered: not asked again"
