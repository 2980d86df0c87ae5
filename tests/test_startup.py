"""Start-up imports only what the request needs.

A real server is spawned as `python -X importtime -m kode_rpc serve` (the interpreter
logs every module it imports to stderr, nested by importer), driven through
`initialize`, `agent/create` + one turn with `echo`, and `agent/create` + one turn
with `scripted` (text and one `fs_read`), then shut down. After it exits, its import
log must not name the network stack, the retry library or packages the server no
longer uses: they load when a real provider is first called (`providers/http.py`,
`providers/retry.py` on a retried failure), never for the offline providers.
`prometheus_client` loads on the first `metrics/prometheus` or `GET /metrics`.

`ssl` is the one exception, and only when asyncio imported it: `asyncio.base_events`
imports `ssl` itself (CPython's own `try: import ssl`), so any asyncio program has it.
Anything else that brings `ssl` in first fails the test.

Also: `kode_rpc.cli`'s argparse-free reading of plain `serve` command lines gives
exactly what the argparse parser gives.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from kode_rpc.cli import _fast_serve_args, build_parser
from kode_rpc.client import RpcClient

NOT_ON_START = ("httpx", "httpx_sse", "tenacity", "mcp", "psycopg", "pygls", "lsprotocol", "ssl", "prometheus_client")
"""Top-level packages that must not be imported by start-up and offline turns."""
IMPORTED_BY_ASYNCIO = ("ssl",)
"""Allowed only when their importer is asyncio itself (see the module docstring)."""

IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*?)\s*$")


def parse_importtime(stderr: str) -> list[tuple[str, list[str]]]:
    """[(module, its importers innermost first)] in import order, from `-X importtime` output.

    The log is post-order (a module's line follows the lines of what it imported), and
    indentation gives the depth: a module's importer is the next line that is less deep.
    """
    entries: list[tuple[int, str]] = []
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m and "imported package" not in line:
            entries.append((len(m.group(3)), m.group(4)))
    result: list[tuple[str, list[str]]] = []
    for i, (depth, name) in enumerate(entries):
        importers: list[str] = []
        level = depth
        for d, n in entries[i + 1:]:
            if d < level:
                importers.append(n)
                level = d
                if d == 0:
                    break
        result.append((name, importers))
    return result


def forbidden_imports(stderr: str) -> list[str]:
    """Every import of a NOT_ON_START package (with its importers), asyncio's own ssl excepted."""
    found = []
    for name, importers in parse_importtime(stderr):
        top = name.split(".")[0]
        if top not in NOT_ON_START:
            continue
        if top in IMPORTED_BY_ASYNCIO and importers and importers[0].split(".")[0] == "asyncio":
            continue
        if importers and importers[0].split(".")[0] == top:
            continue  # a submodule of a package already reported
        found.append(" <- ".join([name, *importers]))
    return found


def test_parse_importtime_reads_importers() -> None:
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |       _ssl",
        "import time:       200 |        300 |     ssl",
        "import time:        50 |        350 |   asyncio.base_events",
        "import time:        10 |        360 | asyncio",
        "import time:        30 |         30 |     httpx._api",
        "import time:        40 |         70 |   httpx",
        "import time:        20 |         90 | kode_rpc.providers.http",
    ])
    assert parse_importtime(log)[1] == ("ssl", ["asyncio.base_events", "asyncio"])
    assert forbidden_imports(log) == ["httpx <- kode_rpc.providers.http"]
    assert forbidden_imports(log.replace("asyncio.base_events", "kode_rpc.x").replace("| asyncio", "| kode_rpc.y")) \
        == ["ssl <- kode_rpc.x <- kode_rpc.y", "httpx <- kode_rpc.providers.http"]


async def test_start_and_offline_turns_import_no_network_or_retry_stack(
        server_env: dict[str, str], work_dir: Path, tmp_path: Path) -> None:
    (work_dir / "notes.txt").write_text("one\ntwo\n")
    stderr_path = tmp_path / "server.stderr"
    env = {k: v for k, v in server_env.items() if k != "PYTHONPROFILEIMPORTTIME"}
    with open(stderr_path, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "importtime", "-m", "kode_rpc", "serve",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env=env, limit=1 << 26)
    client = RpcClient(proc)
    try:
        await client.initialize(processId=os.getpid())
        echo = (await client.request("agent/create", {"model": {"provider": "echo"}}))["agentId"]
        result = await client.request("agent/complete", {"agentId": echo, "text": "hello there"})
        assert result["status"] == "ok" and result["text"] == "hello there"
        script = [{"toolCalls": [{"name": "fs_read", "input": {"path": "notes.txt"}}]},
                  {"chunks": ["read ", "it"]}]
        scripted = (await client.request("agent/create", {
            "model": {"provider": "scripted", "script": script}, "permission": {"mode": "readonly"},
            "sandbox": {"workDir": str(work_dir)}}))["agentId"]
        result = await client.request("agent/complete", {"agentId": scripted, "text": "read the notes"})
        assert result["status"] == "ok" and result["text"] == "read it"
        assert [e["event"]["call"]["state"] for e in client.events_of(scripted, "tool:end")] == ["COMPLETED"]
        resumed = await client.request("agent/resume", {"agentId": echo, "since": 0})
        assert resumed["replayed"] > 0
        assert await client.close() == 0
    finally:
        client.kill()
        await client.wait_exit(5)
    log = stderr_path.read_text(encoding="utf-8", errors="replace")
    imported = {name for name, _ in parse_importtime(log)}
    assert {"kode_rpc.server.app", "kode_rpc.providers.echo", "kode_rpc.providers.scripted",
            "kode_rpc.tools.fs"} <= imported, "no usable -X importtime log on the server's stderr"
    found = forbidden_imports(log)
    assert not found, "imported on start-up or by an offline turn (module <- importers):\n" + "\n".join(found)


@pytest.mark.parametrize("argv", [
    ["serve"],
    ["serve", "--framing", "ndjson"],
    ["serve", "--framing=content-length", "--log-level", "debug"],
    ["serve", "--data-dir", "/tmp/x y", "--max-agents", "7"],
    ["serve", "--data-dir=", "--max-agents=07", "--log-level=warning"],
    ["serve", "--data-dir=a=b", "--data-dir", "c"],
    ["serve", "--http", "9464"],
    ["serve", "--http=0.0.0.0:0", "--framing", "ndjson"],
    ["serve", "--http", "[::1]:80"],
])
def test_fast_serve_args_match_argparse(argv: list[str]) -> None:
    fast = _fast_serve_args(argv)
    args = vars(build_parser().parse_args(argv))
    assert fast is not None
    expected = {k: args[k] for k in ("data_dir", "framing", "log_level", "max_agents")}
    if args["http"] is not None:  # set only when given, like --store
        expected["http"] = args["http"]
    assert fast == expected


@pytest.mark.parametrize("argv", [
    [], ["chat"], ["serve", "-h"], ["serve", "--help"], ["serve", "--data"], ["serve", "--framing", "lsp"],
    ["serve", "--framing"], ["serve", "--data-dir", "--framing", "ndjson"], ["serve", "--max-agents", "-1"],
    ["serve", "--max-agents", "x"], ["serve", "--log-level", "trace"], ["serve", "extra"], ["serve", "--"],
    ["serve", "--http"], ["serve", "--http", "65536"], ["serve", "--http", "host:"], ["serve", "--http=::1:80"],
])
def test_fast_serve_args_leave_the_rest_to_argparse(argv: list[str]) -> None:
    assert _fast_serve_args(argv) is None
