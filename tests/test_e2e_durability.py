"""Crash durability, resume, leases between processes, and pool hibernation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kode_rpc.client import RpcError

from .conftest import Spawn, scripted
from .helpers import assert_gapless, never_answer, types


async def test_sigkill_mid_turn_then_resume_replays_and_continues(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn(capabilities={"approvals": False})
    script = scripted(
        {"text": "one two three", "toolCalls": [{"name": "fs_write", "input": {"path": "a.txt", "content": "A"}},
                                                {"name": "bash_run", "input": {"cmd": "sleep 30"}}]},
        {"text": "after approval"},
    )
    await c.request("agent/create", {"agentId": "k", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto", "requireApprovalTools": ["fs_write"]}})
    await c.request("agent/send", {"agentId": "k", "text": "go"})
    required = await c.wait_event("k", "permission_required")
    approval_id = required["event"]["approvalId"]
    # bash_run runs beside the call waiting on approval; the agent stays PAUSED at
    # AWAITING_APPROVAL meanwhile (contract section 5), so no event says it started.
    await asyncio.sleep(0.4)
    assert c.events_of("k", "breakpoint_changed")[-1]["event"]["current"] == "AWAITING_APPROVAL"
    seen = c.events_of("k")
    last_seen = seen[-1]["seq"]
    assert_gapless(seen)
    c.kill()
    await c.wait_exit()

    c2 = await spawn(capabilities={"approvals": False})
    since = 3
    res = await c2.request("agent/resume", {"agentId": "k", "since": since})
    replayed = [e for e in c2.events_of("k") if e.get("replay")]
    assert res["replayed"] == len(replayed) >= last_seen - since
    assert [e["seq"] for e in replayed] == list(range(since + 1, since + 1 + len(replayed)))
    assert [e for e in seen if e["seq"] > since] == [{k: v for k, v in e.items() if k != "replay"} for e in replayed[: len(seen) - since]]
    # agent_resumed comes after the replay and before the response
    resumed = c2.events_of("k", "agent_resumed")[0]
    resp_idx = next(i for i, m in enumerate(c2.messages) if m.get("result") is res)
    resumed_idx = next(i for i, m in enumerate(c2.messages) if m.get("params") is resumed)
    assert resumed_idx < resp_idx and resumed["seq"] == replayed[-1]["seq"] + 1 and not resumed.get("replay")
    sealed = resumed["event"]["sealed"]
    assert len(sealed) == 1 and sealed[0].endswith("bash_run")
    # re-issued approval: same id, after the response
    again = await c2.wait_for(lambda: [e for e in c2.events_of("k", "permission_required") if not e.get("replay")])
    assert again[0]["event"]["approvalId"] == approval_id
    sealed_end = await c2.wait_for(lambda: [e for e in c2.events_of("k", "tool:end") if not e.get("replay")])
    assert sealed_end[0]["event"]["call"]["state"] == "SEALED"
    status = await c2.request("agent/status", {"agentId": "k"})
    assert [p["approvalId"] for p in status["pendingApprovals"]] == [approval_id]
    await c2.request("agent/decide", {"agentId": "k", "approvalId": approval_id, "decision": "allow"})
    done = await c2.wait_event("k", "done")
    assert done["event"]["reason"] == "completed"
    assert (work_dir / "a.txt").read_text() == "A"
    everything = c2.events_of("k")
    assert_gapless(everything, start=since + 1)
    msgs = (await c2.request("agent/messages", {"agentId": "k"}))["messages"]
    assert msgs[-1]["content"][0]["text"] == "after approval"
    results = {b["toolUseId"]: b for b in msgs[2]["content"]}
    assert len(results) == 2 and all(r["type"] == "tool_result" for r in results.values())
    assert (await c2.request("store/consistency", {"agentId": "k"}))["consistent"]


async def test_sigkill_without_approval_ends_turn_interrupted(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "z", "model": scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 30"}}]}),
                                     "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"}})
    await c.request("agent/send", {"agentId": "z", "text": "go"})
    await c.wait_for(lambda: any(e["event"]["type"] == "breakpoint_changed" and e["event"]["current"] == "TOOL_EXECUTING"
                                 for e in c.events_of("z")))
    queued = await c.request("agent/send", {"agentId": "z", "text": "queued one"})
    assert queued["queued"] is True
    c.kill()
    await c.wait_exit()

    c2 = await spawn()
    await c2.request("agent/resume", {"agentId": "z", "since": 0})
    await c2.wait_for(lambda: len([e for e in c2.events_of("z", "done") if not e.get("replay")]) == 2)
    live = [e for e in c2.events_of("z") if not e.get("replay")]
    dones = [e for e in live if e["event"]["type"] == "done"]
    assert dones[0]["event"]["reason"] == "interrupted" and dones[1]["event"]["reason"] == "completed"
    assert dones[1]["turnId"] == queued["turnId"], "the acknowledged queued send ran after resume"
    t = types(live)
    assert t.index("tool:end") < t.index("done")
    assert_gapless(c2.events_of("z"))
    assert (await c2.request("store/consistency", {"agentId": "z"}))["consistent"]


async def test_resume_without_since_replays_nothing_and_manual_strategy(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "r"})
    await c.request("agent/complete", {"agentId": "r", "text": "hi"})
    last = c.events_of("r")[-1]["seq"]
    await c.close()
    c2 = await spawn()
    res = await c2.request("agent/resume", {"agentId": "r", "strategy": "manual"})
    assert res["replayed"] == 0 and res["lastSeq"] == last + 1
    assert [e["seq"] for e in c2.events_of("r")] == [last + 1]
    assert c2.events_of("r")[0]["event"] == {"type": "agent_resumed", "strategy": "manual", "sealed": []}
    again = await c2.request("agent/resume", {"agentId": "r", "since": last})
    assert again["replayed"] == 1
    with pytest.raises(RpcError) as err:
        await c2.request("agent/resume", {"agentId": "nobody"})
    assert err.value.code == -32002


async def test_two_servers_cannot_run_the_same_agent(spawn: Spawn) -> None:
    a = await spawn()
    await a.request("agent/create", {"agentId": "shared"})
    b = await spawn()
    with pytest.raises(RpcError) as err:
        await b.request("agent/send", {"agentId": "shared", "text": "hi"})
    assert err.value.code == -32012 and err.value.data["pid"] == a.proc.pid
    with pytest.raises(RpcError) as err:
        await b.request("agent/resume", {"agentId": "shared", "since": 0})
    assert err.value.code == -32012
    # reads do not need the lease
    assert (await b.request("agent/status", {"agentId": "shared"}))["active"] is False
    a.kill()
    await a.wait_exit()
    res = await b.request("agent/complete", {"agentId": "shared", "text": "mine now"})
    assert res["status"] == "ok", "a dead owner's lease is taken over at once"


async def test_pool_hibernates_lru_and_resumes_transparently(spawn: Spawn) -> None:
    c = await spawn("--max-agents", "2")
    for name in ("h1", "h2", "h3"):
        await c.request("agent/create", {"agentId": name})
        await c.request("agent/complete", {"agentId": name, "text": f"hi {name}"})
    stats = await c.request("pool/stats")
    assert stats["active"] == 2 and stats["hibernated"] == 1 and stats["maxAgents"] == 2
    status = await c.request("agent/status", {"agentId": "h1"})
    assert status["active"] is False and status["messageCount"] == 2
    assert (await c.request("pool/stats"))["hibernated"] == 1, "status does not activate"
    before = c.events_of("h1")[-1]["seq"]
    res = await c.request("agent/complete", {"agentId": "h1", "text": "back"})
    assert res["status"] == "ok" and res["text"] == "back"
    after = [e for e in c.events_of("h1") if e["seq"] > before]
    assert after[0]["seq"] == before + 1, "seq continues across hibernation"
    assert_gapless(c.events_of("h1"))
    assert (await c.request("agent/status", {"agentId": "h1"}))["active"] is True
    assert (await c.request("pool/stats"))["active"] == 2


async def test_graceful_restart_keeps_pending_approval_and_reissues_request(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    first: list[dict] = []

    async def hold(params: dict) -> dict:
        first.append(params)
        await asyncio.sleep(60)
        return {"decision": "deny"}

    c.on_approval = hold
    await c.request("agent/create", {"agentId": "g", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "approval"},
                                     "model": scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "g.txt", "content": "G"}}]}, {"text": "written"})})
    await c.request("agent/send", {"agentId": "g", "text": "go"})
    await c.wait_for(lambda: c.server_requests)
    await asyncio.sleep(0.05)
    assert first and await c.close() == 0

    c2 = await spawn()
    second: list[dict] = []

    async def allow(params: dict) -> dict:
        second.append(params)
        return {"decision": "allow"}

    c2.on_approval = allow
    res = await c2.request("agent/resume", {"agentId": "g", "since": 0})
    assert res["replayed"] > 0
    done = await c2.wait_for(lambda: [e for e in c2.events_of("g", "done") if not e.get("replay")])
    assert done[0]["event"]["reason"] == "completed"
    assert [p["approvalId"] for p in second] == [first[0]["approvalId"]]
    req_idx = next(i for i, m in enumerate(c2.messages) if m.get("method") == "approval/request")
    resp_idx = next(i for i, m in enumerate(c2.messages) if m.get("result") is res)
    assert resp_idx < req_idx, "pending approvals are re-issued after the resume response"
    assert (work_dir / "g.txt").read_text() == "G"
    assert not [e for e in c2.events_of("g", "permission_decided") if e["event"]["decidedBy"] == "interrupt"]


async def test_error_or_malformed_approval_reply_means_deny(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    replies = iter(["error", "garbage"])

    async def bad(params: dict) -> dict:
        kind = next(replies)
        if kind == "error":
            raise RuntimeError("client blew up")
        return {"decision": "maybe"}

    c.on_approval = bad
    call = {"name": "bash_run", "input": {"cmd": "touch should-not-exist"}}
    await c.request("agent/create", {"agentId": "e", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "approval"},
                                     "model": scripted({"toolCalls": [call, dict(call)]})})
    await c.request("agent/complete", {"agentId": "e", "text": "go"})
    states = [e["event"]["call"]["state"] for e in c.events_of("e", "tool:end")]
    assert states == ["DENIED", "DENIED"]
    assert not (work_dir / "should-not-exist").exists()


async def test_manual_resume_leaves_turn_until_interrupt(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "mn", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"},
                                     "model": scripted({"toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 30"}}]})})
    await c.request("agent/send", {"agentId": "mn", "text": "go"})
    await c.wait_for(lambda: any(e["event"]["type"] == "breakpoint_changed" and e["event"]["current"] == "TOOL_EXECUTING"
                                 for e in c.events_of("mn")))
    c.kill()
    await c.wait_exit()
    c2 = await spawn()
    await c2.request("agent/resume", {"agentId": "mn", "strategy": "manual"})
    await asyncio.sleep(0.3)
    assert not c2.events_of("mn", "done") and c2.events_of("mn", "agent_resumed")[0]["event"]["sealed"] == []
    assert (await c2.request("agent/interrupt", {"agentId": "mn"})) == {"interrupted": True}
    done = await c2.wait_event("mn", "done")
    assert done["event"]["reason"] == "interrupted"
    assert (await c2.request("store/consistency", {"agentId": "mn"}))["consistent"]


async def test_graceful_shutdown_keeps_queued_turns_queued(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "gq", "model": scripted({"text": "one", "delayMs": 400}, {"text": "two"})})
    first = await c.request("agent/send", {"agentId": "gq", "text": "first"})
    second = await c.request("agent/send", {"agentId": "gq", "text": "second"})
    assert second["queued"] is True
    await c.wait_event("gq", "breakpoint_changed")
    assert await c.close() == 0
    assert all(e.get("turnId") != second["turnId"] for e in c.events_of("gq")), "the queued turn did not start at shutdown"
    c2 = await spawn()
    await c2.request("agent/resume", {"agentId": "gq", "since": 0})
    done = await c2.wait_for(lambda: [e for e in c2.events_of("gq", "done") if e["turnId"] == second["turnId"]])
    assert done[0]["event"]["reason"] == "completed"
    dones = [e for e in c2.events_of("gq", "done")]
    assert [d["turnId"] for d in dones] == [first["turnId"], second["turnId"]]


async def test_delete_with_pending_approval_answers_complete(spawn: Spawn, work_dir: Path, data_dir: Path) -> None:
    c = await spawn()

    c.on_approval = never_answer
    await c.request("agent/create", {"agentId": "dl", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "approval"},
                                     "model": scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "x", "content": "1"}}]})})
    task = asyncio.create_task(c.request("agent/complete", {"agentId": "dl", "text": "go"}))
    req = await c.wait_for(lambda: next((m for m in c.messages if m.get("method") == "approval/request"), None))
    assert (await c.request("agent/delete", {"agentId": "dl"})) == {"deleted": True}
    assert (await task)["status"] == "interrupted"
    await c.wait_for(lambda: any(m.get("method") == "$/cancelRequest" and m["params"]["id"] == req["id"] for m in c.messages))
    import sqlite3

    conn = sqlite3.connect(data_dir / "kode.db")
    assert conn.execute("SELECT COUNT(*) FROM approvals WHERE agent_id='dl'").fetchone()[0] == 0
    assert not (work_dir / "x").exists()


async def test_crash_between_done_and_turn_row_does_not_end_the_turn_twice(spawn: Spawn, data_dir: Path) -> None:
    import sqlite3

    c = await spawn()
    await c.request("agent/create", {"agentId": "cw"})
    res = await c.request("agent/complete", {"agentId": "cw", "text": "hi"})
    assert await c.close() == 0
    conn = sqlite3.connect(data_dir / "kode.db")
    conn.execute("UPDATE turns SET status='running' WHERE turn_id=?", (res["turnId"],))  # the crash window
    conn.commit()
    conn.close()
    c2 = await spawn()
    await c2.request("agent/resume", {"agentId": "cw", "since": 0})
    await c2.request("agent/complete", {"agentId": "cw", "text": "next"})
    dones = [e["turnId"] for e in c2.events_of("cw", "done")]
    assert dones.count(res["turnId"]) == 1
    assert (await c2.request("store/consistency", {"agentId": "cw"}))["consistent"]


async def test_decide_racing_resume_after_a_crash_recovers_once(spawn: Spawn) -> None:
    """A request that loads the agent (decide) racing agent/resume must not recover it twice."""
    c = await spawn()
    await c.request("agent/create", {"agentId": "rr", "model": scripted({"text": "one", "delayMs": 5000}, {"text": "two"})})
    first = await c.request("agent/send", {"agentId": "rr", "text": "first"})
    second = await c.request("agent/send", {"agentId": "rr", "text": "second"})
    await c.wait_event("rr", "breakpoint_changed")
    c.kill()
    await c.wait_exit()
    c2 = await spawn()
    decide = asyncio.ensure_future(c2.request("agent/decide", {"agentId": "rr", "approvalId": "apr_nope", "decision": "allow"}))
    resume = asyncio.ensure_future(c2.request("agent/resume", {"agentId": "rr", "since": 0}))
    with pytest.raises(RpcError):
        await decide
    await resume
    await c2.wait_for(lambda: any(e["turnId"] == second["turnId"] for e in c2.events_of("rr", "done")))
    await asyncio.sleep(0.3)
    # decide subscribed first, so a done it caused may also come again in the since-0 replay:
    # count distinct stored events (by seq)
    by_seq = {e["seq"]: e for e in c2.events_of("rr", "done")}
    dones = [(e["turnId"], e["event"]["reason"]) for _, e in sorted(by_seq.items())]
    assert dones == [(first["turnId"], "interrupted"), (second["turnId"], "completed")]
    assert len([e for e in c2.events_of("rr", "agent_resumed") if not e.get("replay")]) <= 2
    assert (await c2.request("store/consistency", {"agentId": "rr"}))["consistent"]


async def test_hibernation_racing_requests_keeps_leases(spawn: Spawn, data_dir: Path) -> None:
    """With one slot, creating agents hibernates `a` while a request touches it: `a` must
    never be active without its lease, and no request may fail with an internal error."""
    import sqlite3

    c = await spawn("--max-agents", "1")
    await c.request("agent/create", {"agentId": "a"})
    for i in range(40):  # the race hit 1-2 times in 40 before the fix
        create = asyncio.ensure_future(c.request("agent/create", {"agentId": f"b{i}"}))
        await asyncio.sleep(0.0005 * (i % 8))
        todos = asyncio.ensure_future(c.request("agent/todos", {"agentId": "a", "todos": [{"id": "1", "title": f"t{i}"}]}))
        results = await asyncio.gather(create, todos, return_exceptions=True)
        assert not [r for r in results if isinstance(r, RpcError) and r.code == -32603]
        status = await c.request("agent/status", {"agentId": "a"})
        conn = sqlite3.connect(data_dir / "kode.db")
        lease = conn.execute("SELECT pid FROM leases WHERE agent_id='a'").fetchall()
        conn.close()
        assert not status["active"] or lease, f"iteration {i}: a is active without a lease"
