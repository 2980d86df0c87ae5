"""`server.rpc.Output`: frames go out in order, a client that stops reading never blocks
the sender, and a closed stdout is survived. Real pipes, no server."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from kode_rpc.server.rpc import Output


def _frames(n: int) -> list[bytes]:
    """Small frames (written at once) mixed with large ones (always through the thread)."""
    return [json.dumps({"i": i, "pad": "x" * (9000 if i % 7 == 0 else i % 50)}).encode() for i in range(n)]


def test_a_client_that_stops_reading_never_blocks_and_order_is_kept() -> None:
    r, w = os.pipe()
    out = Output(os.fdopen(w, "wb", buffering=0), "ndjson")
    frames = _frames(3000)  # ~4 MB: far more than a pipe holds while nobody reads
    sent = threading.Event()

    def send_all() -> None:
        for body in frames:
            out.send(body)
        sent.set()

    sender = threading.Thread(target=send_all, daemon=True)
    t0 = time.monotonic()
    sender.start()
    assert sent.wait(30), "send() blocked on a full pipe"
    assert time.monotonic() - t0 < 30
    got = bytearray()
    expected = b"".join(body + b"\n" for body in frames)
    while len(got) < len(expected):
        chunk = os.read(r, 1 << 16)
        assert chunk
        got += chunk
    assert bytes(got) == expected  # every frame, whole, in order
    out.close()
    os.close(r)


def test_direct_and_queued_frames_interleave_in_order() -> None:
    """Once one frame waits for the thread, later small frames queue behind it."""
    r, w = os.pipe()
    out = Output(os.fdopen(w, "wb", buffering=0), "content-length")
    frames = [b'{"a":1}', b"{" + b'"b":"' + b"y" * 70_000 + b'"}', b'{"c":3}', b'{"d":4}']
    for body in frames:
        out.send(body)
    got = bytearray()
    expected = b"".join(b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in frames)
    while len(got) < len(expected):
        got += os.read(r, 1 << 16)
    assert bytes(got) == expected
    out.close()
    os.close(r)


def test_a_closed_stdout_is_survived() -> None:
    r, w = os.pipe()
    out = Output(os.fdopen(w, "wb", buffering=0), "ndjson")
    os.close(r)
    for body in _frames(50):
        out.send(body)  # EPIPE (SIGPIPE is ignored by Python): marked broken, no exception
    out.close()
    assert out.broken


async def test_on_the_servers_loop_an_iterations_frames_go_out_in_few_writes(monkeypatch: Any) -> None:
    """Frames sent in one loop iteration are written together before the loop polls
    again, in order, in writes of at most PIPE_BUF bytes (a bigger frame alone)."""
    r, w = os.pipe()
    writes: list[int] = []
    real_write = os.write

    def counting(fd: int, data: Any) -> int:
        if fd == w:
            writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    out = Output(os.fdopen(w, "wb", buffering=0), "ndjson")
    try:
        frames = [json.dumps({"i": i, "pad": "x" * 100}).encode() for i in range(30)]  # ~3.6 KB
        for body in frames:
            out.send(body)
        assert writes == []  # nothing yet: the iteration is not over
        await asyncio.sleep(0)
        assert len(writes) == 1 and writes[0] <= Output.DIRECT_MAX
        more = [json.dumps({"j": j, "pad": "y" * 1000}).encode() for j in range(10)]  # ~10 KB
        for body in more:
            out.send(body)
        assert len(writes) == 3  # full writes go out while the burst is produced (a replay streams)
        await asyncio.sleep(0)
        assert 3 <= len(writes) - 1 <= 4 and all(n <= Output.DIRECT_MAX for n in writes)
        expected = b"".join(body + b"\n" for body in frames + more)
        got = bytearray()
        while len(got) < len(expected):
            got += os.read(r, 1 << 16)
        assert bytes(got) == expected
        out.send(b'{"last":1}')
    finally:
        out.close()  # writes what the iteration left
    assert os.read(r, 1 << 16) == b'{"last":1}\n'
    os.close(r)
