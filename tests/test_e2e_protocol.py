"""Transport and lifecycle over real pipes: every bad input gets the right error and the server lives on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kode_rpc.client import RpcClient, RpcError

from .conftest import Spawn
from .helpers import pipeline


async def raw_reply(c: RpcClient, data: bytes, count: int = 1, timeout: float = 10) -> list[dict]:
    """Write raw bytes and collect the next `count` responses (messages without a method)."""
    start = len(c.messages)
    c.write_raw(data)
    await c.wait_for(lambda: len([m for m in c.messages[start:] if "method" not in m]) >= count, timeout)
    return [m for m in c.messages[start:] if "method" not in m]


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def assert_alive(c: RpcClient) -> None:
    assert (await c.request("pool/stats"))["maxAgents"] == 50


async def test_requests_before_initialize_get_32003(spawn: Spawn) -> None:
    c = await spawn(init=False)
    for method in ("agent/list", "no/such/method"):
        with pytest.raises(RpcError) as err:
            await c.request(method, {})
        assert err.value.code == -32003 and err.value.data["reason"] == "not_initialized"
    with pytest.raises(RpcError) as err:
        await c.request("initialize", {"protocolVersion": 2})
    assert err.value.code == -32014 and err.value.data["supported"] == [1]
    init = await c.initialize()
    assert init["protocolVersion"] == 1 and init["serverInfo"]["name"] == "kode-rpc"
    assert os.path.isabs(init["dataDir"]) and "echo" in init["capabilities"]["providers"]
    assert set(init["capabilities"]["framings"]) == {"content-length", "ndjson"}
    with pytest.raises(RpcError) as err:
        await c.initialize()
    assert err.value.code == -32003 and err.value.data["reason"] == "already_initialized"


async def test_malformed_input_gets_errors_and_server_survives(spawn: Spawn) -> None:
    c = await spawn()
    [r] = await raw_reply(c, frame(b"{not json"))
    assert r["id"] is None and r["error"]["code"] == -32700 and r["error"]["data"]["reason"] == "parse_error"
    [r] = await raw_reply(c, frame(b"\xff\xfe\x00garbage"))
    assert r["error"]["code"] == -32700
    [r] = await raw_reply(c, frame(b'[{"jsonrpc":"2.0","id":1,"method":"pool/stats"}]'))
    assert r["id"] is None and r["error"]["code"] == -32600 and r["error"]["data"]["reason"] == "batch_not_supported"
    [r] = await raw_reply(c, frame(b"42"))
    assert r["error"]["code"] == -32600
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":7,"method":"agent/nope"}'))
    assert r["id"] == 7 and r["error"]["code"] == -32601 and r["error"]["data"]["reason"] == "method_not_found"
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":8,"method":"agent/status","params":{"agentId":"bad/id"}}'))
    assert r["error"]["code"] == -32602 and r["error"]["data"]["errors"][0]["field"] == "agentId"
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":9,"method":"agent/create","params":{"model":{"provider":"nope"},"sandbox":{"workDir":"rel"}}}'))
    fields = {e["field"] for e in r["error"]["data"]["errors"]}
    assert {"model.provider", "sandbox.workDir"} <= fields
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":10,"method":"agent/send","params":[1,2]}'))
    assert r["error"]["code"] == -32602
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":true,"method":"pool/stats"}'))
    assert r["id"] is None and r["error"]["code"] == -32600
    [r] = await raw_reply(c, b"Bogus-Header\r\n\r\n")
    assert r["id"] is None and r["error"]["data"]["reason"] == "malformed_header"
    deep = b'{"jsonrpc":"2.0","id":11,"method":"pool/stats","params":{"x":' + b"[" * 600 + b"]" * 600 + b"}}"
    [r] = await raw_reply(c, frame(deep))
    assert r["error"]["code"] == -32600 and r["error"]["data"]["reason"] == "too_deep"
    # unknown notifications are ignored silently; nothing comes back
    c.notify("$/setTrace", {"value": "off"})
    c.notify("initialized", {})
    await assert_alive(c)
    assert not [m for m in c.messages if "error" in m and m["id"] not in (None, 7, 8, 9, 10, 11)]
    assert c.stray == b""


async def test_ids_and_empty_params(spawn: Spawn) -> None:
    c = await spawn()
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":0,"method":"pool/stats"}'))
    assert r["id"] == 0 and isinstance(r["id"], int) and "result" in r
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":"0","method":"pool/stats","params":[]}'))
    assert r["id"] == "0" and "result" in r
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":"x","method":"templates/list"}'))
    assert r["id"] == "x" and r["result"]["templates"]


async def test_oversized_message_gets_32013(spawn: Spawn) -> None:
    c = await spawn()
    big = b'{"jsonrpc":"2.0","id":99,"method":"agent/send","params":{"agentId":"x","text":"' + b"a" * (64 * 1024 * 1024 + 10) + b'"}}'
    [r] = await raw_reply(c, frame(big), timeout=60)
    assert r["id"] == 99 and r["error"]["code"] == -32013
    await assert_alive(c)


async def test_cancel_request_answers_32800_and_turn_goes_on(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "cx", "model": {"provider": "scripted", "script": [{"text": "slow", "delayMs": 500}]}})
    task = asyncio.create_task(c.request("agent/complete", {"agentId": "cx", "text": "go"}, msg_id=555))
    await c.wait_event("cx", "breakpoint_changed")
    c.notify("$/cancelRequest", {"id": 555})
    with pytest.raises(RpcError) as err:
        await task
    assert err.value.code == -32800
    done = await c.wait_event("cx", "done")
    assert done["event"]["reason"] == "completed"


async def test_ndjson_framing(spawn: Spawn) -> None:
    c = await spawn(framing="ndjson")
    await c.request("agent/create", {"agentId": "n"})
    res = await c.request("agent/complete", {"agentId": "n", "text": "über ✓"})
    assert res["text"] == "über ✓"
    start = len(c.messages)
    c.write_raw(b"not json\r\n")
    await c.wait_for(lambda: len(c.messages) > start)
    assert c.messages[start]["error"]["code"] == -32700
    await assert_alive(c)


async def test_shutdown_then_exit_codes(spawn: Spawn) -> None:
    c = await spawn()
    assert await c.request("shutdown") is None
    with pytest.raises(RpcError) as err:
        await c.request("agent/list")
    assert err.value.code == -32001 and err.value.data["reason"] == "shutting_down"
    c.notify("exit")
    assert await c.wait_exit() == 0

    c2 = await spawn()
    c2.notify("exit")
    assert await c2.wait_exit() == 1

    c3 = await spawn()
    assert c3.proc.stdin is not None
    c3.proc.stdin.close()
    assert await c3.wait_exit() == 0

    c4 = await spawn()
    c4.proc.send_signal(signal.SIGTERM)
    assert await c4.wait_exit() == 0


async def test_exits_when_parent_process_dies(spawn: Spawn) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    c = await spawn(processId=parent.pid)
    parent.kill()
    parent.wait()
    assert await c.wait_exit(timeout=8) == 0


async def test_stray_print_cannot_reach_stdout(spawn: Spawn, work_dir) -> None:
    """A tool subprocess writing to fd 1 of the server must not corrupt the stream."""
    c = await spawn()
    await c.request("agent/create", {"agentId": "p", "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"},
                                     "model": {"provider": "scripted", "script": [{"toolCalls": [{"name": "bash_run", "input": {"cmd": "echo to-stdout; echo to-stderr >&2"}}]}]}})
    await c.request("agent/complete", {"agentId": "p", "text": "go"})
    outs = {e["event"]["stream"]: e["event"]["delta"] for e in c.events_of("p", "tool:output")}
    assert outs == {"stdout": "to-stdout\n", "stderr": "to-stderr\n"}
    assert c.stray == b""


def test_schema_command_exports_every_method() -> None:
    out = subprocess.run([sys.executable, "-m", "kode_rpc", "schema"], capture_output=True, check=True)
    schema = json.loads(out.stdout)
    assert {"initialize", "agent/send", "agent/event", "approval/request"} <= set(schema["methods"])
    ref = schema["methods"]["agent/create"]["params"]["$ref"].split("/")[-1]
    assert "agentId" in schema["$defs"][ref]["properties"]


def test_version_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "kode_rpc", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("kode-rpc ")


async def test_pipelined_requests_right_after_initialize(spawn: Spawn) -> None:
    """Requests pipelined behind initialize wait for it and run in arrival order."""
    c = await spawn(init=False)
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "agent/create", "params": {"agentId": "pipe"}},
        {"jsonrpc": "2.0", "id": 3, "method": "agent/send", "params": {"agentId": "pipe", "text": "fast"}},
        {"jsonrpc": "2.0", "id": 4, "method": "agent/status", "params": {"agentId": "pipe"}},
        {"jsonrpc": "2.0", "id": 5, "method": "agent/status", "params": {"agentId": "pipe"}},
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 5}},
    ]
    c.write_raw(b"".join(frame(json.dumps(m).encode()) for m in msgs))
    replies = await c.wait_for(lambda: (r := {m["id"]: m for m in c.messages if "id" in m and "method" not in m})
                               and len(r) == 5 and r)
    assert replies[1]["result"]["protocolVersion"] == 1
    assert replies[2]["result"]["agentId"] == "pipe"
    assert replies[3]["result"]["queued"] is False
    assert replies[4]["result"]["agentId"] == "pipe"
    assert replies[5]["error"]["code"] == -32800
    done = await c.wait_event("pipe", "done")
    assert done["event"]["reason"] == "completed"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_reads_pipelined_right_behind_create_find_the_agent(spawn: Spawn, tmp_path: Path,
                                                                   request: pytest.FixtureRequest, store: str) -> None:
    """Requests run concurrently, yet a read sees what the requests that arrived before it did:
    reads pipelined behind `agent/create` (and behind a fork) find the new agent. Before the fix
    most of these reads answered not-found on both stores (they ran before the create's insert)."""
    if store == "postgres":
        pg = request.getfixturevalue("pg_server")
        url = pg.socket_url(pg.create_database("pipe"))
    else:
        url = f"sqlite://{tmp_path / 'pipe.db'}"
    c = await spawn("--store", url)
    calls: list[tuple[str, dict]] = []
    for i in range(200):
        ref = {"agentId": f"p{i}"}
        calls += [("agent/create", ref), ("agent/status", ref), ("agent/list", {"prefix": f"p{i}"}),
                  ("agent/events", ref), ("agent/messages", ref), ("agent/todos", ref),
                  ("agent/fork", {**ref, "newAgentId": f"f{i}"}), ("agent/status", {"agentId": f"f{i}"})]
    replies = await pipeline(c, calls)
    failed = [(m, p, r["error"]) for (m, p), r in zip(calls, replies) if "error" in r]
    assert not failed, f"{len(failed)} of {len(calls)} failed, e.g. {failed[:3]}"
    for (m, p), r in zip(calls, replies):
        if m == "agent/list":
            assert p["prefix"] in [info["agentId"] for info in r["result"]["agents"]]
        elif m == "agent/events":
            assert [e["event"]["type"] for e in r["result"]["events"]] == ["state_changed"]
    # and behind a delete they no longer find it
    gone = {"agentId": "gone"}
    replies = await pipeline(c, [("agent/create", gone), ("agent/delete", gone), ("agent/status", gone),
                                 ("agent/list", {"prefix": "gone"}), ("agent/events", gone)])
    assert replies[1]["result"] == {"deleted": True}
    assert replies[2]["error"]["code"] == replies[4]["error"]["code"] == -32002
    assert replies[3]["result"]["agents"] == []


async def test_empty_nested_objects_sent_as_arrays_are_accepted(spawn: Spawn) -> None:
    """Neovim encodes an empty Lua table as `[]`, also inside params."""
    c = await spawn(init=False)
    init = await c.request("initialize", {"protocolVersion": 1, "capabilities": [], "workspaceFolders": []})
    assert init["protocolVersion"] == 1
    info = await c.request("agent/create", {"agentId": "nv", "metadata": [], "budget": []})
    assert info["metadata"] == {}


async def test_exit_right_behind_shutdown_still_answers_shutdown(spawn: Spawn) -> None:
    c = await spawn()
    await c.request("agent/create", {"agentId": "x"})
    c.write({"jsonrpc": "2.0", "id": 900, "method": "shutdown"})
    c.notify("exit")
    assert await c.wait_exit() == 0
    reply = next(m for m in c.messages if m.get("id") == 900)
    assert reply == {"jsonrpc": "2.0", "id": 900, "result": None}


async def test_review_findings_bad_input_never_internal_error(spawn: Spawn) -> None:
    """Lone surrogates, huge integers, LSP-style folder URIs, stray responses, pipelined unknown methods."""
    c = await spawn(init=False)
    c.write_raw(frame(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1,'
                      b'"workspaceFolders":["file:///tmp/kode%20ws"]}}')
                + frame(b'{"jsonrpc":"2.0","id":2,"method":"no/such"}'))
    replies = await c.wait_for(lambda: (r := {m["id"]: m for m in c.messages if "id" in m and "method" not in m})
                               and len(r) == 2 and r)
    assert replies[2]["error"]["data"]["reason"] == "method_not_found"
    info = await c.request("agent/create", {"agentId": "rv"})
    assert info["workDir"] == "/tmp/kode ws"
    [r] = await raw_reply(c, frame(b'{"jsonrpc":"2.0","id":3,"method":"agent/send","params":{"agentId":"rv","text":"\\ud800"}}'))
    assert r["error"]["code"] == -32602 and r["error"]["data"]["reason"] == "invalid_string"
    assert r["error"]["data"]["errors"][0]["field"] == "text"
    for params in ({"agentId": "rv", "limit": 2**70}, {"agentId": "rv", "before": 2**70}):
        with pytest.raises(RpcError) as err:
            await c.request("agent/messages", params)
        assert err.value.code == -32602
    # a "response" reusing the id of the client's own in-flight request is ignored
    task = asyncio.create_task(c.request("agent/complete", {"agentId": "rv", "text": "still answered"}, msg_id=77))
    c.write({"jsonrpc": "2.0", "id": 77, "result": {"bogus": True}})
    assert (await task)["text"] == "still answered"
    assert (await c.request("agent/messages", {"agentId": "rv"}))["total"] == 2, "the rejected send left no turn"
