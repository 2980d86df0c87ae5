"""`kode_rpc.client.RpcClient`'s reading side against a real child process over real pipes.

The client is how every end-to-end test and the bench see the server, and its `stray`
is what the "nothing but frames on stdout" checks read: it must take frames split
anywhere across writes, many frames in one read, and report bytes that are not a frame.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from kode_rpc.client import RpcClient

WRITER = r"""
import os, sys, time
for part in sys.argv[1:]:
    os.write(1, bytes.fromhex(part))
    time.sleep(0.02)
sys.stdin.read()
"""


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def read_from(parts: list[bytes], framing: str = "content-length") -> RpcClient:
    """A child that writes `parts` one by one (20 ms apart) and then waits for stdin to close."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, *(p.hex() for p in parts),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    client = RpcClient(proc, framing)
    await asyncio.sleep(0.05 + 0.02 * len(parts))
    return client


async def finish(client: RpcClient) -> None:
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    await client.proc.wait()


@pytest.mark.asyncio
async def test_frames_split_anywhere_and_many_in_one_read() -> None:
    events = [frame({"jsonrpc": "2.0", "method": "agent/event", "params": {"agentId": "a", "seq": i}})
              for i in range(500)]
    stream = b"".join(events)
    cuts = [0, 7, 20, 21, len(events[0]) + 3, len(stream) // 2, len(stream)]  # inside a header, at its end, mid-body
    client = await read_from([stream[a:b] for a, b in zip(cuts, cuts[1:])])
    seen = await client.wait_for(lambda: len(client.events) == 500, timeout=10)
    assert seen and [e["seq"] for e in client.events] == list(range(500))
    assert client.stray == b""
    await finish(client)


@pytest.mark.asyncio
async def test_bytes_that_are_not_frames_are_stray() -> None:
    ok = frame({"jsonrpc": "2.0", "method": "x"})
    client = await read_from([b"hello from a print()\r\n\r\n", ok, b"Content-Length: nope\r\n\r\n", ok])
    await client.wait_for(lambda: len(client.notifications) == 2, timeout=10)
    assert client.stray == b"hello from a print()\r\n\r\nContent-Length: nope\r\n\r\n"
    await finish(client)


@pytest.mark.asyncio
async def test_a_body_that_is_not_json_is_stray_and_reading_goes_on() -> None:
    bad = b"Content-Length: 5\r\n\r\nhello"
    client = await read_from([bad + frame({"jsonrpc": "2.0", "id": 1, "result": 1}), frame({"jsonrpc": "2.0", "method": "y"})])
    await client.wait_for(lambda: client.notifications, timeout=10)
    assert client.stray == b"hello" and client.messages[0] == {"jsonrpc": "2.0", "id": 1, "result": 1}
    await finish(client)


@pytest.mark.asyncio
async def test_ndjson_lines_split_across_writes_and_blank_lines() -> None:
    lines = b"".join(json.dumps({"jsonrpc": "2.0", "method": "n", "params": i}).encode() + b"\n\n" for i in range(50))
    client = await read_from([lines[:13], lines[13:400], lines[400:]], framing="ndjson")
    await client.wait_for(lambda: len(client.notifications) == 50, timeout=10)
    assert [m["params"] for m in client.notifications] == list(range(50)) and client.stray == b""
    await finish(client)


@pytest.mark.asyncio
async def test_pending_request_fails_when_stdout_closes_mid_frame() -> None:
    client = await read_from([b"Content-Length: 100\r\n\r\n{\"jsonrpc\""])
    pending = asyncio.ensure_future(client.request("agent/status", {"agentId": "a"}, timeout=10))
    await asyncio.sleep(0.05)
    await finish(client)
    with pytest.raises(ConnectionError):
        await pending
