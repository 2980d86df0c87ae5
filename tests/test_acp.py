"""ACP mode end to end: `kode-rpc acp` driven by the official ACP TypeScript client SDK
(`@agentclientprotocol/sdk` 2.x, through tests/acp/driver.mjs) over real pipes.

Each test writes a script of client steps; the driver runs it against a real
`kode-rpc acp` process and returns the transcript (every wire message, each
step's result or error, the updates between a prompt and its response, the
agent's exit). Messages are also validated against the SDK's JSON schema.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.client import RpcClient

from .conftest import scripted

DRIVER_DIR = Path(__file__).parent / "acp"
pytestmark = pytest.mark.skipif(
    not (DRIVER_DIR / "node_modules" / "@agentclientprotocol" / "sdk").exists() and os.environ.get("CI") != "true",
    reason="tests/acp has no node_modules: run `bash tests/acp/ci.sh` (CI always does)")


def drive(steps: list[dict[str, Any]], env: dict[str, str], cwd: Path, timeout: float = 60) -> dict[str, Any]:
    """Run the driver with `steps` against `kode-rpc acp`; the transcript."""
    node = shutil.which("node")
    assert node, "node is needed for the ACP client SDK"
    extra = [arg for k in ("KODE_DATA_DIR", "KODE_LOG_DIR", "KODE_CONFIG_DIR") for arg in ("--env", f"{k}={env[k]}")]
    proc = subprocess.run(
        [node, str(DRIVER_DIR / "driver.mjs"), "--timeout", str(int(timeout * 1000)), "--cwd", str(cwd), *extra,
         "--", sys.executable, "-m", "kode_rpc", "acp"],
        input=json.dumps(steps), capture_output=True, text=True, env=env, timeout=timeout + 30)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = json.loads(proc.stdout)
    assert not out["timedOut"] and not out["driverErrors"], out["driverErrors"]
    assert out["schemaErrors"] == [], out["schemaErrors"]
    assert not [m for m in out["messages"] if "noise" in m], "stdout carries ACP frames only"
    return out


def step(out: dict[str, Any], label: str) -> dict[str, Any]:
    return next(s for s in out["steps"] if s.get("label") == label)


def kinds(updates: list[dict[str, Any]]) -> list[str]:
    return [u["sessionUpdate"] for u in updates]


def session(model: dict[str, Any] | None = None, mode: str = "approval", label: str = "new",
            **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"permission": {"mode": mode}}
    if model is not None:
        meta["model"] = model
    return {"op": "newSession", "label": label, "_meta": {"kode": meta}, **extra}


@pytest.fixture
def acp_env(server_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(server_env)
    env.setdefault("KODE_LOG_DIR", str(tmp_path / "logs"))
    return env


def test_initialize_prompt_tools_plan_usage_and_interop(acp_env: dict[str, str], work_dir: Path) -> None:
    script = scripted(
        {"thinking": "plan first", "text": "I will write a file.",
         "toolCalls": [{"name": "todo_write", "input": {"todos": [{"id": "1", "title": "write a.txt",
                                                                  "status": "in_progress"}]}}]},
        {"toolCalls": [{"name": "fs_write", "input": {"path": "a.txt", "content": "new\n"}}]},
        {"toolCalls": [{"name": "fs_edit", "input": {"path": "a.txt", "old_string": "new", "new_string": "edited"}}]},
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": "cat a.txt"}}]},
        {"text": "All done."},
    )
    out = drive([
        {"op": "initialize", "label": "init", "protocolVersion": 7},
        session(script, mode="auto"),
        {"op": "prompt", "label": "p1", "text": "write a.txt\nand more"},
    ], acp_env, work_dir)
    init = step(out, "init")["result"]
    assert init["protocolVersion"] == 1 and init["agentInfo"]["name"] == "kode-rpc"
    caps = init["agentCapabilities"]
    assert caps["loadSession"] and caps["promptCapabilities"] == {"image": True, "embeddedContext": True}
    assert caps["mcpCapabilities"] == {"http": True, "sse": True}
    assert {"list", "resume"} <= set(caps["sessionCapabilities"])
    new = step(out, "new")["result"]
    assert new["modes"]["currentModeId"] == "auto"
    assert {m["id"] for m in new["modes"]["availableModes"]} == {"auto", "approval", "readonly"}
    [model] = new["configOptions"]
    assert (model["id"], model["category"], model["type"]) == ("model", "model", "select")
    assert model["currentValue"] in [o["value"] for o in model["options"]]

    p1 = step(out, "p1")
    assert p1["result"] == {"stopReason": "end_turn"}
    updates = p1["updates"]
    assert not p1.get("lateUpdates"), "no update after the response"
    seen = kinds(updates)
    for kind in ("agent_thought_chunk", "agent_message_chunk", "tool_call", "tool_call_update", "plan", "usage_update"):
        assert kind in seen, kind
    assert "".join(u["content"]["text"] for u in updates if u["sessionUpdate"] == "agent_message_chunk") \
        == "I will write a file.All done."
    calls = {u["toolCallId"]: u for u in updates if u["sessionUpdate"] == "tool_call"}
    assert [c["kind"] for c in calls.values()] == ["think", "edit", "edit", "execute"]
    write = next(c for c in calls.values() if c["title"].startswith("fs_write"))
    assert write["locations"] == [{"path": str(work_dir / "a.txt")}]
    finals = {u["toolCallId"]: u for u in updates if u["sessionUpdate"] == "tool_call_update" and u.get("status") in ("completed", "failed")}
    assert all(f["status"] == "completed" for f in finals.values())
    statuses = [u.get("status") for u in updates if u.get("toolCallId") == write["toolCallId"]]
    assert statuses == ["pending", "in_progress", "completed"]
    diff = next(c for c in finals[write["toolCallId"]]["content"] if c["type"] == "diff")
    assert diff == {"type": "diff", "path": str(work_dir / "a.txt"), "newText": "new\n"}  # oldText absent: a new file
    edit = next(c for c in calls.values() if c["title"].startswith("fs_edit"))
    diff = next(c for c in finals[edit["toolCallId"]]["content"] if c["type"] == "diff")
    assert (diff["oldText"], diff["newText"]) == ("new\n", "edited\n")
    bash = next(c for c in calls.values() if c["kind"] == "execute")
    assert "edited" in finals[bash["toolCallId"]]["content"][0]["content"]["text"]
    plan = next(u for u in updates if u["sessionUpdate"] == "plan")
    assert plan["entries"] == [{"content": "write a.txt", "priority": "medium", "status": "in_progress"}]
    usage = next(u for u in updates if u["sessionUpdate"] == "usage_update")
    assert usage["size"] == 128000 and usage["used"] > 0 and usage["cost"]["currency"] == "USD"
    assert out["exit"]["code"] == 0 and out["exit"]["afterEofMs"] < 2000

    # The session is a kode agent: the kode protocol sees it and resumes it.
    sid = step(out, "new")["result"]["sessionId"]

    async def check() -> None:
        c = await RpcClient.spawn(env=acp_env)
        await c.initialize()
        listed = await c.request("agent/list", {})
        assert sid in [a["agentId"] for a in listed["agents"]]
        res = await c.request("agent/resume", {"agentId": sid, "since": 0})
        assert res["workDir"] == str(work_dir) and res["replayed"] > 10
        assert await c.close() == 0

    import asyncio

    asyncio.run(check())


def test_permissions_allow_always_reject_and_cancelled(acp_env: dict[str, str], work_dir: Path) -> None:
    writes = [{"toolCalls": [{"name": "fs_write", "input": {"path": f"f{i}.txt", "content": "x"}}]} for i in range(4)]
    script = scripted(writes[0], {"text": "one"}, writes[1], {"text": "two"}, writes[2], {"text": "three"},
                      writes[3], {"text": "four"})
    out = drive([
        {"op": "initialize"}, session(script),
        {"op": "permissionPolicy", "answer": "reject_once"},
        {"op": "prompt", "label": "rejected", "text": "1"},
        {"op": "permissionPolicy", "answer": "cancelled"},
        {"op": "prompt", "label": "cancelled", "text": "2"},
        {"op": "permissionPolicy", "answer": "allow_always"},
        {"op": "prompt", "label": "always", "text": "3"},
        {"op": "permissionPolicy", "answer": "reject_once"},
        {"op": "prompt", "label": "remembered", "text": "4"},
    ], acp_env, work_dir)
    perms = out["permissions"]
    assert len(perms) == 3, "the fourth write is allowed by the remembered allow_always"
    assert {o["kind"] for o in perms[0]["options"]} == {"allow_once", "allow_always", "reject_once", "reject_always"}
    assert not (work_dir / "f0.txt").exists() and not (work_dir / "f1.txt").exists()
    assert (work_dir / "f2.txt").exists() and (work_dir / "f3.txt").exists()
    for label, status in (("rejected", "failed"), ("cancelled", "failed"), ("always", "completed"), ("remembered", "completed")):
        s = step(out, label)
        assert s["result"]["stopReason"] == "end_turn"
        final = [u for u in s["updates"] if u["sessionUpdate"] == "tool_call_update"][-1]
        assert final["status"] == status, (label, final)


def _cancel_within(out: dict[str, Any], label: str, limit_ms: float = 2000) -> None:
    s = step(out, label)
    assert s["result"] == {"stopReason": "cancelled"}, s
    cancel = next(m for m in out["messages"] if m["dir"] == "out" and m["msg"].get("method") == "session/cancel")
    assert s["tEnd"] - cancel["t"] < limit_ms


def test_cancel_during_model_wait_command_and_permission(acp_env: dict[str, str], work_dir: Path) -> None:
    marker = f"{int(time.time() * 1000) % 100000}.5"
    script = scripted(
        {"text": "thinking slowly", "delayMs": 30000},
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": f"sleep {marker}"}}]},
        {"toolCalls": [{"name": "fs_write", "input": {"path": "never.txt", "content": "x"}}]},
    )
    out = drive([
        {"op": "initialize"}, session(script, mode="readonly"),
        {"op": "cancelAfterMs", "ms": 500},
        {"op": "prompt", "label": "model", "text": "wait"},
        {"op": "permissionPolicy", "answer": "allow_once"},
        {"op": "prompt", "label": "command", "text": "run", "wait": False, "as": "cmd"},
        {"op": "waitFor", "sessionUpdate": "tool_call_update", "count": 1, "since": "lastPrompt"},
        {"op": "sleep", "ms": 300},
        {"op": "cancel"},
        {"op": "wait", "name": "cmd"},
        {"op": "permissionPolicy", "answer": "never"},
        {"op": "prompt", "label": "permission", "text": "write", "wait": False, "as": "perm"},
        {"op": "waitFor", "method": "session/request_permission", "count": 1, "since": "lastPrompt"},
        {"op": "cancel"},
        {"op": "wait", "name": "perm"},
    ], acp_env, work_dir)
    _cancel_within(out, "model")
    s = step(out, "command")
    assert s["result"] == {"stopReason": "cancelled"}
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).startswith(f"sleep {marker}")], \
        "the command's process tree is gone"
    assert step(out, "permission")["result"] == {"stopReason": "cancelled"}
    assert not (work_dir / "never.txt").exists()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_load_in_a_new_process_replays_and_modes_and_models_apply(acp_env: dict[str, str], work_dir: Path) -> None:
    script = scripted(
        {"text": "first answer", "toolCalls": [{"name": "todo_write", "input": {"todos": [{"id": "t", "title": "step one"}]}},
                                               {"name": "fs_read", "input": {"path": "missing.txt"}}]},
        {"text": "second answer"},
        {"toolCalls": [{"name": "fs_write", "input": {"path": "auto.txt", "content": "x"}}]},
        {"text": "written"},
    )
    first = drive([{"op": "initialize"}, session(script, mode="approval"),
                   {"op": "prompt", "label": "p", "text": "Hello there\nsecond line"}], acp_env, work_dir)
    sid = step(first, "new")["result"]["sessionId"]
    second = drive([
        {"op": "initialize"},
        {"op": "listSessions", "label": "list"},
        {"op": "listSessions", "label": "list-other", "cwd": "/nowhere"},
        {"op": "loadSession", "label": "load", "sessionId": sid, "cwd": str(work_dir)},
        {"op": "setMode", "label": "mode", "sessionId": sid, "modeId": "auto"},
        {"op": "permissionPolicy", "answer": "reject_once"},
        {"op": "prompt", "label": "auto", "sessionId": sid, "text": "write"},
        {"op": "setConfigOption", "label": "model", "sessionId": sid, "configId": "model", "value": "echo/echo"},
        {"op": "prompt", "label": "echo", "sessionId": sid, "text": "repeat me"},
        {"op": "closeSession", "label": "close", "sessionId": sid},
    ], acp_env, work_dir)
    sessions = step(second, "list")["result"]["sessions"]
    assert sessions[0]["sessionId"] == sid and sessions[0]["title"] == "Hello there"
    assert sessions[0]["cwd"] == str(work_dir) and sessions[0]["updatedAt"]
    assert step(second, "list-other")["result"]["sessions"] == []
    load = step(second, "load")
    assert load["ok"] and load["result"]["modes"]["currentModeId"] == "approval"
    replay = load["updates"]
    assert kinds(replay)[0] == "user_message_chunk" and replay[0]["content"]["text"] == "Hello there\nsecond line"
    assert [u["content"]["text"] for u in replay if u["sessionUpdate"] == "agent_message_chunk"] \
        == ["first answer", "second answer"]
    tools = [u for u in replay if u["sessionUpdate"] == "tool_call"]
    assert [t["status"] for t in tools] == ["completed", "failed"], "final states"
    assert replay[-1]["sessionUpdate"] == "plan"
    mode_updates = [m["msg"]["params"]["update"] for m in second["messages"] if m["dir"] == "in"
                    and m["msg"].get("method") == "session/update"
                    and m["msg"]["params"]["update"]["sessionUpdate"] == "current_mode_update"]
    assert mode_updates == [{"sessionUpdate": "current_mode_update", "currentModeId": "auto"}]
    assert not second["permissions"], "auto mode asks nothing"
    assert (work_dir / "auto.txt").exists()
    assert step(second, "model")["result"]["configOptions"][0]["currentValue"] == "echo/echo"
    echo = step(second, "echo")
    assert "".join(u["content"]["text"] for u in echo["updates"] if u["sessionUpdate"] == "agent_message_chunk") == "repeat me"
    assert step(second, "close")["ok"]


def test_load_and_resume_connect_the_editors_mcp_servers(acp_env: dict[str, str], work_dir: Path) -> None:
    """ACP's session/load and session/resume carry the editor's MCP servers: they are
    connected for the session and stored with it (a later load without them keeps them)."""
    echo = {"name": "mcp__t__echo", "input": {"text": "from the editor's server"}}
    script = scripted({"text": "no tools yet"},
                      {"toolCalls": [echo]}, {"text": "used it"},
                      {"toolCalls": [echo]}, {"text": "used it again"})
    first = drive([{"op": "initialize"}, session(script, mode="auto"),
                   {"op": "prompt", "label": "p", "text": "hi"}], acp_env, work_dir)
    sid = step(first, "new")["result"]["sessionId"]
    server = {"name": "t", "command": sys.executable, "args": [str(Path(__file__).parent / "mcp_server.py")], "env": []}
    second = drive([{"op": "initialize"},
                    {"op": "loadSession", "label": "load", "sessionId": sid, "cwd": str(work_dir), "mcpServers": [server]},
                    {"op": "prompt", "label": "use", "sessionId": sid, "text": "use it"}], acp_env, work_dir)
    assert step(second, "load")["ok"]
    third = drive([{"op": "initialize"},
                   {"op": "resumeSession", "label": "resume", "sessionId": sid, "cwd": str(work_dir), "mcpServers": []},
                   {"op": "prompt", "label": "again", "sessionId": sid, "text": "again"}], acp_env, work_dir)
    assert step(third, "resume")["ok"]
    for out, label in ((second, "use"), (third, "again")):
        updates = step(out, label)["updates"]
        final = [u for u in updates if u["sessionUpdate"] == "tool_call_update"
                 and u.get("status") in ("completed", "failed")][-1]
        assert final["status"] == "completed", final
        assert "echo: from the editor's server" in json.dumps(final), final


def test_resume_reconnects_only_the_mcp_servers_that_changed(acp_env: dict[str, str], work_dir: Path,
                                                             tmp_path: Path) -> None:
    def server(name: str, log: Path) -> dict[str, Any]:
        return {"name": name, "command": sys.executable, "args": [str(Path(__file__).parent / "mcp_server.py")],
                "env": [{"name": "MCP_START_LOG", "value": str(log)}]}

    logs = {k: tmp_path / f"{k}.log" for k in ("a", "b", "b2")}
    use = {"toolCalls": [{"name": "mcp__a__echo", "input": {"text": "a"}}, {"name": "mcp__b__echo", "input": {"text": "b"}}]}
    script = scripted(use, {"text": "one"}, use, {"text": "two"})
    out = drive([{"op": "initialize"},
                 session(script, mode="auto", mcpServers=[server("a", logs["a"]), server("b", logs["b"])]),
                 {"op": "prompt", "label": "one", "text": "use both"},
                 {"op": "resumeSession", "label": "resume", "sessionId": "$last", "cwd": str(work_dir),
                  "mcpServers": [server("a", logs["a"]), server("b", logs["b2"])]},
                 {"op": "prompt", "label": "two", "text": "again"}], acp_env, work_dir)
    for label in ("one", "two"):
        finals = [u for u in step(out, label)["updates"] if u["sessionUpdate"] == "tool_call_update"
                  and u.get("status") in ("completed", "failed")]
        assert [u["status"] for u in finals] == ["completed", "completed"], finals
    starts = {k: len(v.read_text().splitlines()) if v.exists() else 0 for k, v in logs.items()}
    assert starts == {"a": 1, "b": 1, "b2": 1}, "a kept its connection; b reconnected with its new entry"


def test_load_with_mcp_servers_after_a_crash_asks_again_after_the_response(acp_env: dict[str, str],
                                                                         work_dir: Path) -> None:
    """The editor's MCP servers are connected without running recovery early: the approval
    a crash left pending is asked again after the `session/load` response, as without them."""
    script = scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "after.txt", "content": "x"}}]},
                      {"text": "written"})
    first = drive([{"op": "initialize"}, session(script, mode="approval"),
                   {"op": "permissionPolicy", "answer": "never"},
                   {"op": "prompt", "label": "p", "text": "write", "wait": False, "as": "p"},
                   {"op": "waitFor", "method": "session/request_permission", "count": 1, "since": "lastPrompt"},
                   {"op": "kill"}], acp_env, work_dir)
    sid = step(first, "new")["result"]["sessionId"]
    server = {"name": "t", "command": sys.executable, "args": [str(Path(__file__).parent / "mcp_server.py")], "env": []}
    second = drive([{"op": "initialize"},
                    {"op": "permissionPolicy", "answer": "allow_once"},
                    {"op": "loadSession", "label": "load", "sessionId": sid, "cwd": str(work_dir), "mcpServers": [server]},
                    {"op": "waitFor", "method": "session/request_permission", "count": 1, "since": "start"},
                    {"op": "waitFor", "sessionUpdate": "agent_message_chunk", "count": 1, "since": "start"}],
                   acp_env, work_dir)
    load = step(second, "load")
    assert load["ok"] and second["permissions"], second["permissions"]
    assert second["permissions"][0]["seq"] > load["respSeq"], "asked again before the load was answered"
    assert (work_dir / "after.txt").read_text() == "x"


def test_kode_agent_loads_over_acp_and_errors(acp_env: dict[str, str], work_dir: Path) -> None:
    import asyncio

    async def make() -> None:
        c = await RpcClient.spawn(env=acp_env)
        await c.initialize()
        await c.request("agent/create", {"agentId": "from-kode", "sandbox": {"workDir": str(work_dir)}})
        await c.request("agent/complete", {"agentId": "from-kode", "text": "made over kode"})
        assert await c.close() == 0

    asyncio.run(make())
    out = drive([
        {"op": "initialize"},
        {"op": "loadSession", "label": "load", "sessionId": "from-kode", "cwd": str(work_dir)},
        {"op": "prompt", "label": "unknown", "sessionId": "no-such-session", "text": "x"},
        {"op": "loadSession", "label": "unknown-load", "sessionId": "no-such-session", "cwd": str(work_dir)},
        {"op": "request", "label": "bad", "method": "session/new", "params": {"mcpServers": []}},
        {"op": "request", "label": "nomethod", "method": "session/nothing", "params": {}},
        {"op": "setMode", "label": "badmode", "sessionId": "from-kode", "modeId": "yolo"},
    ], acp_env, work_dir)
    assert [u["content"]["text"] for u in step(out, "load")["updates"]] == ["made over kode", "made over kode"]
    assert step(out, "unknown")["error"]["code"] == -32002
    assert step(out, "unknown-load")["error"]["code"] == -32002
    assert step(out, "bad")["error"]["code"] == -32602
    assert step(out, "nomethod")["error"]["code"] == -32601
    assert step(out, "badmode")["error"]["code"] == -32602
    assert out["exit"]["code"] == 0


def test_hostile_lines_meta_overrides_big_prompts_and_eof_mid_turn(acp_env: dict[str, str], work_dir: Path,
                                                                   tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    big = "x" * (2 * 1024 * 1024)
    out = drive([
        {"op": "initialize"},
        {"op": "raw", "line": "this is not json"},
        {"op": "raw", "line": "null"},
        {"op": "raw", "line": "42"},
        {"op": "raw", "line": "[1, 2]"},
        {"op": "raw", "line": '{"jsonrpc":"2.0","id":"nan","method":"session/list","params":{"cursor":NaN}}'},
        {"op": "request", "label": "meta", "method": "session/new",
         "params": {"cwd": str(work_dir), "mcpServers": [], "_meta": {"cwd": str(other), "session_id": "x"}}},
        session(None, mode="auto", label="echo-new"),
        {"op": "prompt", "label": "big", "text": big},
        session(scripted({"text": "slow", "delayMs": 30000}), label="slow-new"),
        {"op": "prompt", "label": "slow", "text": "wait", "wait": False, "as": "slow"},
        {"op": "waitFor", "sessionUpdate": "usage_update", "count": 0, "since": "lastPrompt", "timeoutMs": 10},
        {"op": "sleep", "ms": 300},
        {"op": "closeStdin"},
        {"op": "wait", "name": "slow"},
        {"op": "waitExit", "timeoutMs": 5000},
    ], acp_env, work_dir)
    errors = [m["msg"] for m in out["messages"] if m["dir"] == "in" and "error" in m["msg"] and m["msg"].get("id") is None]
    assert sorted(e["error"]["code"] for e in errors) == [-32700, -32700, -32600, -32600, -32600], errors
    meta = step(out, "meta")["result"]
    listed = [s for s in out["steps"] if s.get("label") == "meta"]
    assert meta["sessionId"] and listed
    big_step = step(out, "big")
    assert big_step["result"] == {"stopReason": "end_turn"}, "a 2 MiB prompt (echo) is read whole"
    assert "".join(u["content"]["text"] for u in big_step["updates"] if u["sessionUpdate"] == "agent_message_chunk") == big
    assert step(out, "slow")["result"] == {"stopReason": "cancelled"}, "stdin EOF cancels the running prompt first"
    assert out["exit"]["code"] == 0 and out["exit"]["afterEofMs"] < 2000

    import asyncio

    async def where() -> str:
        c = await RpcClient.spawn(env=acp_env)
        await c.initialize()
        status = await c.request("agent/status", {"agentId": meta["sessionId"]})
        await c.close()
        return status["workDir"]

    assert asyncio.run(where()) == str(work_dir), "_meta cannot override cwd"
