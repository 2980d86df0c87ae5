"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kode_rpc.client import RpcClient


def assert_gapless(events: list[dict[str, Any]], start: int = 1) -> None:
    """Seqs are exactly start, start+1, ... with no gap and no duplicate."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(start, start + len(seqs))), seqs


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"]["type"] for e in events]


async def never_answer(params: dict[str, Any]) -> dict[str, Any]:
    """An approval handler that never replies (the test decides some other way)."""
    import asyncio

    await asyncio.sleep(3600)
    return {"decision": "deny"}


def request_frame(msg_id: Any, method: str, params: dict[str, Any]) -> bytes:
    """One JSON-RPC request in Content-Length framing."""
    import json

    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def pipeline(client: Any, calls: list[tuple[str, dict[str, Any]]], timeout: float = 120) -> list[dict[str, Any]]:
    """Write every request in one write, none waiting for an earlier answer; returns the reply
    messages (`result` or `error`) in the order of `calls`."""
    import uuid

    tag = uuid.uuid4().hex[:8]
    ids = [f"pipe-{tag}-{i}" for i in range(len(calls))]
    client.write_raw(b"".join(request_frame(i, m, p) for i, (m, p) in zip(ids, calls)))
    wanted = set(ids)
    got: dict[str, dict[str, Any]] = {}
    seen = 0

    def all_in() -> bool:
        nonlocal seen
        for msg in client.messages[seen:]:
            if "method" not in msg and msg.get("id") in wanted:
                got[msg["id"]] = msg
        seen = len(client.messages)
        return len(got) == len(ids)

    await client.wait_for(all_in, timeout)
    return [got[i] for i in ids]


PROBE = ".watch-probe"
"""The file `watching` touches; tests leave its `file_changed` events out."""


async def watching(c: RpcClient, agent_id: str, root: Path) -> None:
    """Wait until the agent's workDir is watched: a client cannot know when the OS watch
    is up (it starts just after the agent loads), so touch a probe file until it is seen."""
    probe = root / PROBE
    for i in range(100):
        probe.write_text(str(i))
        try:
            await c.wait_for(lambda: any(e["event"]["path"] == PROBE for e in c.events_of(agent_id, "file_changed")),
                             0.2)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError(f"{root} was never watched")
    probe.unlink()
    await c.wait_for(lambda: any(e["event"]["path"] == PROBE and e["event"]["change"] == "deleted"
                                 for e in c.events_of(agent_id, "file_changed")), 10)
