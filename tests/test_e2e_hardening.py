"""Promises of the contract under attack (issue 8), over real pipes against a real server.

Secrets never reach a tool, an event, the store or a log; bad strings are -32602
naming the field; after a crash a paused agent says PAUSED and its stored data is
consistent; an interrupted tool call reports its duration.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from .conftest import Spawn, scripted
from .helpers import never_answer

ANTHROPIC = "sk-ant-test-0123456789abcdefSECRET"
OPENAI = "sk-openai-test-9876543210zyxwvu"
SERVICE_TOKEN = "svc-token-5d41402abc4b2a76"
CUSTOM_KEY = "custom-llm-key-00ff00ff00ff"
ALLOWED = "allowed-token-visible-42424242"
DOTENV = "sk_live_dotenv_only_7e7e7e7e7e7e"


def _all_text(paths: list[Path]) -> str:
    out = []
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                out.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


async def test_secrets_never_reach_tools_events_store_or_logs(
    spawn: Spawn, server_env: dict[str, str], work_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    env = dict(server_env, ANTHROPIC_API_KEY=ANTHROPIC, OPENAI_API_KEY=OPENAI, MY_SERVICE_TOKEN=SERVICE_TOKEN,
               CUSTOM_LLM=CUSTOM_KEY, MY_ALLOWED_TOKEN=ALLOWED, PLAIN_SETTING="plain-value-visible")
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text('[sandbox]\nenvAllow = ["MY_ALLOWED_TOKEN"]\n')
    (work_dir / ".env").write_text(f"STRIPE_SECRET_KEY={DOTENV}\nDEBUG=1\n")
    (work_dir / "leak.txt").write_text(f"copied by hand: {ANTHROPIC}\n")
    c = await spawn(env=env)
    script = scripted(
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": "env; cat .env"}}]},
        {"toolCalls": [{"name": "fs_read", "input": {"path": "leak.txt"}},
                       {"name": "fs_grep", "input": {"pattern": "sk_live"}}]},
        # a secret split across two output chunks must still be caught
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": f"printf %s {OPENAI[:9]}; sleep 0.3; printf %s {OPENAI[9:]}"}}]},
        {"text": "done"},
    )
    script["apiKeyEnv"] = "CUSTOM_LLM"
    await c.request("agent/create", {"agentId": "sec", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    result = await c.request("agent/complete", {"agentId": "sec", "text": "show me the environment"})
    assert result["status"] == "ok"
    ends = c.events_of("sec", "tool:end")
    env_out = json.dumps(ends[0]["event"]["call"]["result"])
    assert "PLAIN_SETTING=plain-value-visible" in env_out, "the tool really printed its environment"
    assert f"MY_ALLOWED_TOKEN={ALLOWED}" in env_out, "envAllow lets a chosen variable through"
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MY_SERVICE_TOKEN", "CUSTOM_LLM"):
        assert f"{name}=" not in env_out, f"{name} reached the tool"
    assert "[REDACTED]" in env_out, "the .env value is redacted, not shown"
    assert "[REDACTED]" in json.dumps(ends[1]["event"]["call"]["result"])
    messages = await c.request("agent/messages", {"agentId": "sec"})
    assert await c.close() == 0
    secret_values = (ANTHROPIC, OPENAI, SERVICE_TOKEN, CUSTOM_KEY, DOTENV)
    wire = json.dumps(c.messages) + json.dumps(messages)
    stored = _all_text([data_dir, tmp_path / "logs", *tmp_path.glob("server-*.stderr")])
    for value in secret_values:
        assert value not in wire, f"{value} reached the client"
        assert value not in stored, f"{value} reached the store or a log"
    assert ALLOWED in wire, "what envAllow lets through is not redacted"


async def test_bad_strings_are_invalid_params_naming_the_field(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("agent/create", {"agentId": "n1", "sandbox": {"workDir": str(work_dir) + "\x00x"}}, "sandbox.workDir"),
        ("agent/create", {"agentId": "n2", "sandbox": {"workDir": str(work_dir), "allowPaths": ["/tmp/\x00"]}},
         "sandbox.allowPaths.0"),
        ("agent/list", {"prefix": "\ud800"}, "prefix"),
        ("agent/create", {"agentId": "n3", "metadata": {"k": ["ok", "bad\x00"]}}, "metadata.k.1"),
        ("agent/create", {"agentId": "n4", "sandbox": {"workDir": "/" + "a" * 300}}, "sandbox.workDir"),
        ("agent/create", {"agentId": "n5", "sandbox": {"workDir": "/" + "a/" * 3000}}, "sandbox.workDir"),
        ("agent/events", {"agentId": "x", "since": 2**64}, "since"),
        ("agent/list", {"limit": -(2**70)}, "limit"),
    ]
    for method, params, field in cases:
        frame = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, ensure_ascii=True)
        before = len(c.messages)
        c.write_raw(f"Content-Length: {len(frame)}\r\n\r\n{frame}".encode())
        reply = await c.wait_for(lambda: next((m for m in c.messages[before:] if m.get("id") == 7), None))
        err = reply.get("error")
        assert err is not None and err["code"] == -32602, (method, params, reply)
        assert field in [e["field"] for e in err["data"]["errors"]], (method, field, err)
    assert (await c.request("pool/stats"))["active"] == 0


async def test_crash_with_pending_approval_resumes_paused_and_consistent(spawn: Spawn, work_dir: Path) -> None:
    """SIGKILL while an approval is pending (beside a call already sealed): after resume the
    agent says PAUSED at AWAITING_APPROVAL and its stored data is consistent."""
    for attempt in range(3):  # the kill lands at a few different instants
        agent_id = f"cp{attempt}"
        c = await spawn(capabilities={"approvals": False})
        script = scripted(
            {"toolCalls": [{"name": "fs_write", "input": {"path": f"{agent_id}.txt", "content": "x"}},
                           {"name": "bash_run", "input": {"cmd": "sleep 30"}}]},
            {"text": "after"},
        )
        await c.request("agent/create", {"agentId": agent_id, "model": script, "sandbox": {"workDir": str(work_dir)},
                                         "permission": {"mode": "auto", "requireApprovalTools": ["fs_write"]}})
        await c.request("agent/send", {"agentId": agent_id, "text": "go"})
        await c.wait_event(agent_id, "permission_required")
        await asyncio.sleep(0.05 * attempt)
        c.kill()
        await c.wait_exit()

        c2 = await spawn(capabilities={"approvals": False})
        await c2.request("agent/resume", {"agentId": agent_id, "since": 0})
        required = await c2.wait_for(lambda: [e for e in c2.events_of(agent_id, "permission_required")
                                              if not e.get("replay")])
        status = await c2.request("agent/status", {"agentId": agent_id})
        assert status["state"] == "PAUSED" and status["breakpoint"] == "AWAITING_APPROVAL", status
        assert len(status["pendingApprovals"]) == 1
        check = await c2.request("store/consistency", {"agentId": agent_id})
        assert check == {"consistent": True, "issues": []}, check
        await c2.request("agent/decide", {"agentId": agent_id, "approvalId": required[0]["event"]["approvalId"],
                                          "decision": "allow"})
        done = await c2.wait_event(agent_id, "done")
        assert done["event"]["reason"] == "completed"
        assert (await c2.request("store/consistency", {"agentId": agent_id}))["consistent"]
        assert (await c2.request("agent/status", {"agentId": agent_id}))["state"] == "READY"
        assert await c2.close() == 0


async def test_interrupted_tool_call_reports_its_duration(spawn: Spawn, work_dir: Path) -> None:
    c = await spawn()
    c.on_approval = never_answer
    await c.request("agent/create", {"agentId": "du", "model": scripted(
        {"toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 30"}}]}), "sandbox": {"workDir": str(work_dir)},
        "permission": {"mode": "auto"}})
    await c.request("agent/send", {"agentId": "du", "text": "go"})
    await c.wait_for(lambda: [e for e in c.events_of("du", "breakpoint_changed")
                              if e["event"]["current"] == "TOOL_EXECUTING"])
    await asyncio.sleep(0.3)
    assert (await c.request("agent/interrupt", {"agentId": "du"}))["interrupted"] is True
    executed = (await c.wait_event("du", "tool_executed"))["event"]["call"]
    assert executed["state"] == "FAILED" and executed["durationMs"] >= 250
    end = c.events_of("du", "tool:end")[0]["event"]["call"]
    assert end["durationMs"] == executed["durationMs"]
    assert (await c.wait_event("du", "done"))["event"]["reason"] == "interrupted"
