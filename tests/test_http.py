"""`--http [HOST:]PORT`: the read-only HTTP endpoint for process managers (contract section 11).

Every test runs a real server process and talks to it with the standard library's
`http.client` (a client that knows nothing of ours) or with raw sockets for requests no
well-behaved client sends. The port is 0 (a free one) and read back from the line the
server logs on stderr, except where a test needs a known port.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from kode_rpc.client import RpcError, server_command

from .conftest import Spawn
from .pg import PgServer

LISTENING = re.compile(r"http: listening on http://127\.0\.0\.1:(\d+) ")
HTTP = ("--http", "127.0.0.1:0")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def _request(port: int, path: str, method: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        res = conn.getresponse()
        body = res.read()
        return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, body)
    finally:
        conn.close()


async def fetch(port: int, path: str, method: str = "GET") -> Reply:
    """One request with http.client (in a thread: the test's loop also reads the server's stdout)."""
    return await asyncio.to_thread(_request, port, path, method)


async def raw(port: int, data: bytes, *, eof: bool = False, wait: float = 15.0) -> bytes:
    """Send bytes as they are (then end our side when `eof`); everything the server answers
    before it closes (b"" when it just closes, or resets the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(response: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(m.group(1)) if m else None


async def http_port(stderr: Path, timeout: float = 20.0) -> int:
    """The port the server said it listens on (its stderr log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = LISTENING.search(stderr.read_text(errors="replace")) if stderr.exists() else None
        if m:
            return int(m.group(1))
        await asyncio.sleep(0.05)
    raise AssertionError(f"no 'http: listening on' line in {stderr}:\n{stderr.read_text(errors='replace')[-2000:]}")


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on, from /proc (Linux): its socket inodes, matched
    against the LISTEN rows of /proc/net/tcp and tcp6."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def completed_turns(text: str) -> float:
    return samples(text)[("kode_turns_total", (("reason", "completed"),))]


def without_timings(health: dict[str, Any]) -> dict[str, Any]:
    """A `store/health` result without what differs between two calls (when, how fast)."""
    return {**health, "checkedAt": None, "database": {**health["database"], "latencyMs": None}}


def stderr_of(tmp_path: Path, index: int = 0) -> Path:
    return tmp_path / f"server-{index}.stderr"


async def test_endpoints_answer_what_the_rpc_methods_answer(spawn: Spawn, tmp_path: Path) -> None:
    c = await spawn(*HTTP)
    port = await http_port(stderr_of(tmp_path))
    if sys.platform.startswith("linux"):
        assert listening_ports(c.proc.pid) == {port}

    health = await fetch(port, "/health")
    assert health.status == 200 and health.headers["content-type"] == "application/json"
    over_rpc = await c.request("store/health")
    assert without_timings(health.json()) == without_timings(over_rpc) and health.json()["healthy"] is True
    assert health.headers["connection"] == "close"

    ready = await fetch(port, "/ready")
    assert (ready.status, ready.body, ready.headers["content-length"]) == (200, b"", "0")

    before = await fetch(port, "/metrics")
    assert before.status == 200 and before.headers["content-type"] == CONTENT_TYPE_LATEST
    assert completed_turns(before.body.decode()) == 0
    assert "_created" not in before.body.decode()
    agent = (await c.request("agent/create", {"model": {"provider": "echo"}}))["agentId"]
    assert (await c.request("agent/complete", {"agentId": agent, "text": "count me"}))["status"] == "ok"
    after = await fetch(port, "/metrics")
    assert completed_turns(after.body.decode()) == 1
    assert samples(after.body.decode())[("kode_agents_total", ())] == 1
    # Quiet now: the RPC method and the endpoint render the same registry, byte for byte.
    prom = await c.request("metrics/prometheus")
    again = await fetch(port, "/metrics")
    assert prom["text"] == again.body.decode() and prom["contentType"] == again.headers["content-type"]

    head = await fetch(port, "/metrics", "HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(len(again.body))
    for path in ("/", "/nope", "/health/", "/metricsx"):
        assert (await fetch(port, path)).status == 404, path
    assert (await fetch(port, "/metrics?name[]=kode_turns_total")).status == 200  # a query is ignored
    for method, path in (("POST", "/health"), ("PUT", "/metrics"), ("DELETE", "/ready")):
        refused = await fetch(port, path, method)
        assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD", (method, path)
    # Nothing of the HTTP side reached stdout: only protocol frames, and the server exits cleanly.
    assert await c.close() == 0
    assert c.stray == b"", c.stray[:300]


async def test_hostile_requests_are_refused_and_the_server_keeps_serving(spawn: Spawn, tmp_path: Path) -> None:
    c = await spawn(*HTTP)
    port = await http_port(stderr_of(tmp_path))
    # A slow client: half a request line, then nothing. It is cut off after the read timeout
    # (10 s) while everything else is answered meanwhile.
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_writer.write(b"GET /hea")
    await slow_writer.drain()
    t0 = time.monotonic()

    cases = {
        b"garbage\r\n\r\n": 400,
        b"\x00\xff\xfe binary \x80\r\n\r\n": 400,
        b"GET /health HTTP/2.0\r\n\r\n": 400,
        b"GET http://x/health HTTP/1.1\r\n\r\n": 400,
        b"GET  /health HTTP/1.1\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\n folded: header\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n": 431,
        b"GET /health HTTP/1.1\r\n" + b"X-Many: b\r\n" * 1000 + b"\r\n": 431,
        b"GET /" + b"x" * 20000: 431,  # no newline at all, never ending
    }
    for request, expected in cases.items():
        answer = await raw(port, request)
        # An oversized request may be reset before its answer is read: closed is fine too.
        assert status_of(answer) == expected or (expected == 431 and answer == b""), (request[:60], answer[:200])
    assert await raw(port, b"GET /hea", eof=True) == b""  # the client gives up: nothing to answer
    # Bare LF line ends and leading empty lines are tolerated (RFC 9112 2.2).
    assert status_of(await raw(port, b"\r\nGET /ready HTTP/1.0\nHost: x\n\n")) == 200

    assert (await c.request("pool/stats"))["active"] == 0
    assert (await fetch(port, "/health")).status == 200
    cut = await asyncio.wait_for(slow_reader.read(), 30)
    assert status_of(cut) == 408 and 9 < time.monotonic() - t0 < 25
    slow_writer.close()
    assert (await fetch(port, "/ready")).status == 200
    assert await c.close() == 0 and c.stray == b""


async def test_too_many_idle_connections_do_not_starve_rpc(spawn: Spawn, tmp_path: Path) -> None:
    """Past 64 open connections a new one is told 503 at once; the RPC side never notices, and
    HTTP is back as soon as the idle ones go."""
    c = await spawn(*HTTP)
    port = await http_port(stderr_of(tmp_path))
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(64)]
    try:
        await asyncio.sleep(0.2)
        assert status_of(await raw(port, b"GET /ready HTTP/1.1\r\n\r\n")) == 503
        assert (await c.request("pool/stats"))["active"] == 0
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.2)
    assert (await fetch(port, "/ready")).status == 200
    assert await c.close() == 0 and c.stray == b""


async def test_http_is_off_by_default(spawn: Spawn, tmp_path: Path) -> None:
    c = await spawn()
    assert (await c.request("pool/stats"))["active"] == 0
    if sys.platform.startswith("linux"):
        assert listening_ports(c.proc.pid) == set()
    assert "http:" not in stderr_of(tmp_path).read_text()
    assert await c.close() == 0


def write_config(server_env: dict[str, str], text: str) -> None:
    config = Path(server_env["KODE_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    with open(config / "config.toml", "a", encoding="utf-8") as fh:  # a test store's [store] may be there
        fh.write("\n" + text)


async def test_config_listen_and_the_flag_over_it(spawn: Spawn, server_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    write_config(server_env, f'[http]\nlisten = "{port}"\n')
    c = await spawn()
    assert await http_port(stderr_of(tmp_path)) == port  # host default: 127.0.0.1
    assert (await fetch(port, "/ready")).status == 200
    assert await c.close() == 0
    other = await spawn(*HTTP)  # --http wins over [http] listen
    flagged = await http_port(stderr_of(tmp_path, 1))
    assert flagged != port and (await fetch(flagged, "/ready")).status == 200
    assert await other.close() == 0


async def test_a_bad_config_listen_exits_1(spawn: Spawn, server_env: dict[str, str], tmp_path: Path) -> None:
    write_config(server_env, '[http]\nlisten = "localhost:http"\n')
    c = await spawn(init=False)
    assert await c.wait_exit(20) == 1
    assert "[http] listen: expected [HOST:]PORT" in stderr_of(tmp_path).read_text()


async def test_a_port_in_use_exits_1_at_start(spawn: Spawn, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        c = await spawn("--http", f"127.0.0.1:{port}", init=False)
        assert await c.wait_exit(20) == 1
    err = stderr_of(tmp_path).read_text()
    assert f"--http: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err[-2000:]
    assert "Traceback" not in err and c.stray == b""


def test_a_bad_http_flag_is_a_usage_error(server_env: dict[str, str]) -> None:
    import subprocess

    res = subprocess.run(server_command("--http", "127.0.0.1:99999"), capture_output=True, text=True,
                         env=server_env, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert res.returncode == 2 and "--http" in res.stderr and "0 to 65535" in res.stderr and res.stdout == ""


async def test_acp_mode_serves_http_too(server_env: dict[str, str], tmp_path: Path) -> None:
    stderr = tmp_path / "acp.stderr"
    with open(stderr, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kode_rpc", "acp", *HTTP, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=server_env)
    try:
        port = await http_port(stderr)
        assert (await fetch(port, "/ready")).status == 200
        metrics = await fetch(port, "/metrics")
        assert metrics.status == 200 and completed_turns(metrics.body.decode()) == 0
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # EOF: the ACP face shuts down, HTTP with it
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert await proc.stdout.read() == b""  # stdout: ACP frames only, and none were asked for
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_status(port: int, path: str, status: int, timeout: float = 30.0) -> Reply:
    deadline = time.monotonic() + timeout
    while True:
        reply = await fetch(port, path)
        if reply.status == status or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def test_health_and_ready_follow_a_postgres_outage(spawn: Spawn, pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.url(pg_server.create_database(), connectTimeoutMs="1000")
    c = await spawn(*HTTP, "--store", url)
    port = await http_port(stderr_of(tmp_path))
    assert (await fetch(port, "/health")).status == 200 and (await fetch(port, "/ready")).status == 200
    pg_server.stop()
    try:
        down = await wait_status(port, "/health", 503)
        assert down.status == 503 and down.headers["content-type"] == "application/json"
        body = down.json()
        assert body["healthy"] is False and body["database"]["connected"] is False, body
        ready = await fetch(port, "/ready")
        assert (ready.status, ready.body) == (503, b"")
        metrics = await fetch(port, "/metrics")
        assert metrics.status == 503 and metrics.body.startswith(b"store unavailable")
        with pytest.raises(RpcError) as info:  # the RPC method says the same
            await c.request("metrics/prometheus")
        assert info.value.data["reason"] == "store_unavailable"
        assert (await c.request("store/health"))["healthy"] is False
    finally:
        pg_server.start()
    assert (await wait_status(port, "/health", 200)).json()["healthy"] is True
    assert (await fetch(port, "/ready")).status == 200
    assert (await fetch(port, "/metrics")).status == 200
    assert await c.close() == 0 and c.stray == b""
