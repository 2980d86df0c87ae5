"""MCP servers as agent tools (contract section 12), end to end over real pipes: a real
kode-rpc, the scripted model, and the FastMCP server of tests/mcp_server.py over stdio
and streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Spawn, scripted
from .helpers import assert_gapless

SERVER = str(Path(__file__).with_name("mcp_server.py"))
SECRET = "s3cr3t-mcp-value-7f1e2d"


def stdio(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER], **extra}


def call(tool: str, /, **args: Any) -> dict[str, Any]:
    return {"name": tool, "input": args}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not alive(pid)


async def read_pid(path: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pid in {path}")


def statuses(c: Any, agent: str, server: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.events_of(agent, "mcp_status") if e["event"]["server"] == server]


async def wait_lines(path: Path, n: int, timeout: float = 5.0) -> bool:
    """Whether `path` has at least `n` lines within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return True
        await asyncio.sleep(0.05)
    return False


async def wait_status(c: Any, agent: str, server: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    return await c.wait_for(lambda: next((s for s in statuses(c, agent, server)[::-1] if s["status"] == status), None),
                            timeout)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes in /proc")


async def test_stdio_tools_listed_called_results_images_errors(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    script = scripted({"toolCalls": [call("mcp__t__echo", text="hi"), call("mcp__t__image"), call("mcp__t__fail", reason="nope")]},
                      {"text": "done"})
    await c.request("agent/create", {"agentId": "m", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}, "mcpServers": {"t": stdio()}})
    ready = await wait_status(c, "m", "t", "ready")
    assert [s["status"] for s in statuses(c, "m", "t")] == ["connecting", "ready"]
    assert {"mcp__t__echo", "mcp__t__write_note", "mcp__t__image", "mcp__t__fail", "mcp__t__hang",
            "mcp__t__env_value"} <= set(ready["tools"])
    assert c.events_of("m")[0]["event"]["type"] == "state_changed", "agent/create's first event stays seq 1"
    res = await c.request("agent/complete", {"agentId": "m", "text": "go"})
    assert res["status"] == "ok" and res["text"] == "done"
    ends = {e["event"]["call"]["name"]: e["event"]["call"] for e in c.events_of("m", "tool:end")}
    assert ends["mcp__t__echo"]["state"] == "COMPLETED" and ends["mcp__t__echo"]["result"] == {"ok": True, "data": "echo: hi"}
    img = ends["mcp__t__image"]
    assert img["state"] == "COMPLETED"
    assert img["result"]["data"][0] == {"type": "text", "text": "a red pixel"}
    assert img["result"]["data"][1]["type"] == "image" and img["result"]["data"][1]["mediaType"] == "image/png"
    fail = ends["mcp__t__fail"]
    assert fail["state"] == "FAILED" and "nope" in fail["result"]["error"] and fail["result"]["errorType"] == "tool_error"
    msgs = (await c.request("agent/messages", {"agentId": "m"}))["messages"]
    results = {b["toolUseId"]: b for b in msgs[2]["content"]}
    image_result = next(b for b in results.values() if isinstance(b["content"].get("data"), list))
    assert image_result["content"]["data"][1]["type"] == "image" and image_result["isError"] is False
    status = await c.request("agent/status", {"agentId": "m"})
    assert status["mcp"][0]["server"] == "t" and status["mcp"][0]["status"] == "ready"
    assert "mcp__t__echo" in status["mcp"][0]["tools"]
    assert_gapless(c.events_of("m"))
    assert (await c.request("store/consistency", {"agentId": "m"}))["consistent"]


async def test_readonly_mode_runs_read_only_tools_and_asks_for_the_rest(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    asked: list[dict[str, Any]] = []

    async def on_approval(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        return {"decision": "allow"}

    c.on_approval = on_approval
    script = scripted({"toolCalls": [call("mcp__t__echo", text="look")]},
                      {"toolCalls": [call("mcp__t__write_note", text="hello note")]}, {"text": "ok"})
    await c.request("agent/create", {"agentId": "r", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "readonly"},
                                     "mcpServers": {"t": stdio(env={"MCP_NOTE_DIR": str(work_dir)})}})
    res = await c.request("agent/complete", {"agentId": "r", "text": "go"})
    assert res["status"] == "ok"
    assert [a["call"]["name"] for a in asked] == ["mcp__t__write_note"], "echo is readOnlyHint: no question"
    assert asked[0]["subject"] == {"type": "tool_call"}
    assert (work_dir / "note.txt").read_text() == "hello note"
    states = [e["event"]["call"]["state"] for e in c.events_of("r", "tool:end")]
    assert states == ["COMPLETED", "COMPLETED"]


async def test_var_references_resolve_and_never_leak(spawn: Spawn, server_env: dict[str, str], work_dir: Path,
                                                     tmp_path: Path, data_dir: Path) -> None:
    env = dict(server_env, KODE_TEST_MCP_TOKEN=SECRET)
    c = await spawn(env=env)
    script = scripted({"toolCalls": [call("mcp__t__env_value", name="PASSED_VALUE"),
                                     call("mcp__t__leak_env", name="PASSED_VALUE"),
                                     call("mcp__t__env_value", name="KODE_TEST_MCP_TOKEN")]}, {"text": "ok"})
    await c.request("agent/create", {"agentId": "v", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"},
                                     "mcpServers": {"t": stdio(env={"PASSED_VALUE": "${KODE_TEST_MCP_TOKEN}"}),
                                                    "u": stdio(env={"X": "${KODE_TEST_MCP_UNSET_VAR}"})}})
    failed = await wait_status(c, "v", "u", "failed")
    assert "KODE_TEST_MCP_UNSET_VAR" in failed["error"]
    res = await c.request("agent/complete", {"agentId": "v", "text": "go"})
    assert res["status"] == "ok"
    results = [e["event"]["call"]["result"] for e in c.events_of("v", "tool:end")]
    assert results[0]["data"] == f"PASSED_VALUE is set ({len(SECRET)} characters)"
    assert SECRET not in str(results[1]) and "[REDACTED]" in results[1]["data"], "an echoed value is redacted"
    assert results[2]["data"] == "KODE_TEST_MCP_TOKEN is unset", "the server's own environment is not passed on"
    config = await c.request("agent/status", {"agentId": "v"})
    assert await c.close() == 0
    raw = SECRET.encode()
    for root in (data_dir, tmp_path / "logs"):
        for path in root.rglob("*"):
            if path.is_file():
                assert raw not in path.read_bytes(), f"secret found in {path}"
    assert SECRET not in str(c.messages) and SECRET not in str(config)
    stored = (data_dir / "kode.db").read_bytes() if (data_dir / "kode.db").exists() else b""
    assert b"${KODE_TEST_MCP_TOKEN}" in stored or not stored, "the reference is stored, not its value"


async def test_failed_server_does_not_fail_the_turn(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    script = scripted({"toolCalls": [call("mcp__bad__anything", x=1)]}, {"text": "carried on"})
    await c.request("agent/create", {"agentId": "f", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"},
                                     "mcpServers": {"bad": {"command": "/nonexistent/mcp-server-binary"}}})
    failed = await wait_status(c, "f", "bad", "failed")
    assert "cannot start" in failed["error"]
    res = await c.request("agent/complete", {"agentId": "f", "text": "go"})
    assert res["status"] == "ok" and res["text"] == "carried on"
    end = c.events_of("f", "tool:end")[0]["event"]["call"]
    assert end["state"] == "FAILED" and end["result"]["errorType"] == "unavailable"
    assert "bad" in end["result"]["error"] and "failed" in end["result"]["error"]
    status = await c.request("agent/status", {"agentId": "f"})
    assert status["mcp"] == [{"server": "bad", "status": "failed", "tools": [], "error": failed["error"]}]


async def test_server_killed_mid_call_and_hang_bounded(spawn: Spawn, work_dir: Path, tmp_path: Path) -> None:
    c = await spawn()
    pid_file = tmp_path / "k.pid"
    cancels = tmp_path / "cancels.txt"
    script = scripted({"toolCalls": [call("mcp__h__hang")]},  # bounded by timeoutMs
                      {"toolCalls": [call("mcp__k__hang")]},  # its server is killed meanwhile
                      {"toolCalls": [call("mcp__k__echo", text="x")]},  # then it is gone
                      {"text": "end"},
                      {"toolCalls": [call("mcp__h__hang")]},  # interrupted
                      {"text": "never"})
    await c.request("agent/create", {"agentId": "h", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"},
                                     "mcpServers": {"h": stdio(timeoutMs=700, env={"MCP_CANCEL_FILE": str(cancels)}),
                                                    "k": stdio(env={"MCP_PID_FILE": str(pid_file)})}})
    await c.request("agent/send", {"agentId": "h", "text": "go"})
    first = await c.wait_for(lambda: [e for e in c.events_of("h", "tool:end")], timeout=20)
    call0 = first[0]["event"]["call"]
    assert call0["state"] == "FAILED" and call0["result"]["errorType"] == "timeout"
    assert 600 <= call0["durationMs"] < 3000
    # the call given up on is cancelled on the server too (MCP notifications/cancelled)
    assert await wait_lines(cancels, 1), "the timed-out call still runs on the MCP server"
    await c.wait_for(lambda: len(c.events_of("h", "tool:start")) >= 2)
    pid = await read_pid(pid_file)
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    done = await c.wait_event("h", "done", timeout=20)
    assert done["event"]["reason"] == "completed"
    ends = [e["event"]["call"] for e in c.events_of("h", "tool:end")]
    assert ends[1]["state"] == "FAILED" and ends[1]["result"]["errorType"] == "unavailable"
    assert ends[2]["state"] == "FAILED" and "not available" in ends[2]["result"]["error"], "the model is told"
    failed = await wait_status(c, "h", "k", "failed", timeout=5)
    assert "exited" in failed["error"]
    # agent/interrupt ends a call to a hanging server at once
    await c.request("agent/send", {"agentId": "h", "text": "again"})
    await c.wait_for(lambda: len(c.events_of("h", "tool:start")) >= 4)
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    assert (await c.request("agent/interrupt", {"agentId": "h"}))["interrupted"] is True
    done2 = await c.wait_event("h", "done", after=done["seq"], timeout=5)
    assert done2["event"]["reason"] == "interrupted" and time.monotonic() - t0 < 1.5
    assert c.events_of("h", "tool:end")[-1]["event"]["call"]["result"]["errorType"] == "interrupted"
    assert statuses(c, "h", "h")[-1]["status"] == "ready", "the hanging server itself stays connected"
    assert await wait_lines(cancels, 2), "the interrupted call still runs on the MCP server"


async def test_no_orphans_after_shutdown_delete_hibernate_or_sigkill(spawn: Spawn, server_env: dict[str, str],
                                                                     work_dir: Path, tmp_path: Path) -> None:
    env = dict(server_env, KODE_MAX_AGENTS="2")
    c = await spawn(env=env)
    pids: dict[str, int] = {}
    for name in ("a", "b", "d"):
        if name == "d":
            await c.request("agent/delete", {"agentId": "b"})
            assert await gone(pids["b"]), "agent/delete stops its server"
        await c.request("agent/create", {"agentId": name, "sandbox": {"workDir": str(work_dir)},
                                         "mcpServers": {"t": stdio(env={"MCP_PID_FILE": str(tmp_path / f"{name}.pid")})}})
        await wait_status(c, name, "t", "ready")
        pids[name] = await read_pid(tmp_path / f"{name}.pid")
    await c.request("agent/create", {"agentId": "e", "sandbox": {"workDir": str(work_dir)}})  # a hibernates
    assert await gone(pids["a"]), "hibernation stops the server"
    assert statuses(c, "a", "t")[-1]["status"] == "closed"
    assert alive(pids["d"])
    assert await c.close() == 0
    assert await gone(pids["d"], 2), "shutdown stops the server"

    c2 = await spawn()
    await c2.request("agent/resume", {"agentId": "a"})
    await wait_status(c2, "a", "t", "ready")
    pid = await read_pid(tmp_path / "a.pid")
    assert pid != pids["a"] and alive(pid)
    c2.kill()  # SIGKILL: kode-rpc gets no chance to clean up
    await c2.wait_exit()
    assert await gone(pid, 3), "a stdio server never outlives kode-rpc"


async def test_reconnect_after_resume_and_global_config(spawn: Spawn, server_env: dict[str, str], work_dir: Path,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    args = ", ".join(f'"{a}"' for a in [SERVER])
    (config / "config.toml").write_text(
        f'[mcp_servers.g]\ncommand = "{sys.executable}"\nargs = [{args}]\n\n'
        f'[mcp_servers.off]\ncommand = "/nonexistent/never-started"\n')
    c = await spawn()
    script = scripted({"toolCalls": [call("mcp__g__echo", text="one")]}, {"text": "first"},
                      {"toolCalls": [call("mcp__g__echo", text="two")]}, {"text": "second"})
    await c.request("agent/create", {"agentId": "g", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}, "mcpServers": {"off": None}})
    await c.request("agent/create", {"agentId": "o", "sandbox": {"workDir": str(work_dir)},
                                     "mcpServers": {"g": None, "off": None}})
    await wait_status(c, "g", "g", "ready")
    assert (await c.request("agent/complete", {"agentId": "g", "text": "go"}))["status"] == "ok"
    assert c.events_of("g", "tool:end")[0]["event"]["call"]["result"]["data"] == "echo: one"
    assert not statuses(c, "g", "off"), "null turns a global server off"
    assert (await c.request("agent/status", {"agentId": "o"}))["mcp"] == []
    c.kill()
    await c.wait_exit()

    c2 = await spawn()
    stored = await c2.request("agent/status", {"agentId": "g"})
    assert stored["active"] is False and stored["mcp"] == [{"server": "g", "status": "closed", "tools": []}]
    await c2.request("agent/resume", {"agentId": "g"})
    await wait_status(c2, "g", "g", "ready")
    assert (await c2.request("agent/complete", {"agentId": "g", "text": "again"}))["status"] == "ok"
    assert c2.events_of("g", "tool:end")[-1]["event"]["call"]["result"]["data"] == "echo: two"


@pytest.fixture
async def http_server(tmp_path: Path) -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "mcp-http.log", "wb")
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the HTTP MCP server did not start")
                await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()
        log.close()


async def test_streamable_http_server(spawn: Spawn, server_env: dict[str, str], work_dir: Path, http_server: str,
                                      data_dir: Path) -> None:
    c = await spawn(env=dict(server_env, KODE_TEST_MCP_HEADER=SECRET))
    script = scripted({"toolCalls": [call("mcp__web__echo", text="over http"), call("mcp__web__image")]}, {"text": "ok"})
    await c.request("agent/create", {"agentId": "w", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"},
                                     "mcpServers": {"web": {"type": "http", "url": http_server,
                                                            "headers": {"Authorization": "Bearer ${KODE_TEST_MCP_HEADER}"}}}})
    ready = await wait_status(c, "w", "web", "ready")
    assert "mcp__web__echo" in ready["tools"]
    assert (await c.request("agent/complete", {"agentId": "w", "text": "go"}))["status"] == "ok"
    ends = [e["event"]["call"] for e in c.events_of("w", "tool:end")]
    assert ends[0]["result"] == {"ok": True, "data": "echo: over http"}
    assert ends[1]["result"]["data"][1]["type"] == "image"
    assert await c.close() == 0
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
