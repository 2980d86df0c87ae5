"""The PyInstaller-frozen executable, driven exactly like an editor drives it.

Skipped unless `KODE_FROZEN_BINARY` names a built binary (so a plain `pytest` stays
fast); `packaging/ci.sh` builds one and runs this file:

    python packaging/build.py && KODE_FROZEN_BINARY=dist/kode-rpc/kode-rpc python -m pytest -q tests/test_frozen.py

The binary is first copied (the whole one-dir folder, or the one-file binary) into a
directory whose path contains spaces, and every run gets a brand-new HOME with no
XDG_* / KODE_* path overrides, as on a user's machine the first time. The client is
`kode_rpc.client.RpcClient`; `KODE_RPC_SERVER` makes its `server_command()` start the
frozen binary instead of `python -m kode_rpc`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import kode_rpc
from kode_rpc.client import RpcClient, server_command

from .fakes import FakeResponse, FakeServer, sse

BINARY_ENV = "KODE_FROZEN_BINARY"
pytestmark = pytest.mark.skipif(not os.environ.get(BINARY_ENV), reason=f"set {BINARY_ENV} to a frozen kode-rpc binary "
                                                                        "(python packaging/build.py)")

DROPPED = ("KODE_DATA_DIR", "KODE_LOG_DIR", "KODE_CONFIG_DIR", "KODE_PROVIDER", "KODE_MODEL", "KODE_BASE_URL",
           "KODE_MAX_AGENTS", "KODE_RPC_SERVER", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "LD_LIBRARY_PATH",
           "LD_LIBRARY_PATH_ORIG", "PYINSTALLER_RESET_ENVIRONMENT")
RUN_TIMEOUT = 60


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def frozen_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the build under a path with spaces (one-dir: the whole folder)."""
    source = Path(os.environ[BINARY_ENV]).resolve()
    assert source.is_file(), f"{BINARY_ENV}={source} is not a file"
    dest_root = tmp_path_factory.mktemp("frozen") / "Program Files" / "kode rpc app"
    if (source.parent / "_internal").is_dir():  # one-dir: the binary needs its folder
        shutil.copytree(source.parent, dest_root, symlinks=True)
    else:  # one-file
        dest_root.mkdir(parents=True)
        shutil.copy2(source, dest_root / source.name)
    binary = dest_root / source.name
    assert os.access(binary, os.X_OK)
    return binary


@pytest.fixture
def home(tmp_path: Path) -> Path:
    d = tmp_path / "new home"
    d.mkdir()
    return d


@pytest.fixture
def frozen_env(home: Path) -> dict[str, str]:
    """The environment of a user who never ran kode-rpc: new HOME, no XDG_*, no KODE_* paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k not in DROPPED}
    env["HOME"] = str(home)
    if sys.platform == "win32":  # platformdirs asks the shell API there; these only steer what reads them
        env.update(USERPROFILE=str(home), APPDATA=str(home / "AppData" / "Roaming"),
                   LOCALAPPDATA=str(home / "AppData" / "Local"))
    return env


Spawn = Callable[..., Awaitable[RpcClient]]


@pytest.fixture
async def spawn(frozen_binary: Path, frozen_env: dict[str, str], home: Path, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Spawn]:
    """Start the frozen server through RpcClient (initialized unless `init=False`); killed at teardown."""
    monkeypatch.setenv("KODE_RPC_SERVER", str(frozen_binary))
    assert server_command()[0] == str(frozen_binary)
    clients: list[RpcClient] = []
    logs: list[Any] = []

    async def start(*args: str, env: dict[str, str] | None = None, init: bool = True, **init_params: Any) -> RpcClient:
        log = open(tmp_path / f"server-{len(clients)}.stderr", "wb")
        logs.append(log)
        # Own session/process group: a one-file build is two processes (bootloader + Python),
        # and teardown must reach both (SIGKILL on the bootloader alone leaves the other).
        client = await RpcClient.spawn(*args, env=env or frozen_env, stderr=log, cwd=str(home), new_session=True)
        clients.append(client)
        if init:
            await client.initialize(processId=os.getpid(), **init_params)
        return client

    yield start
    for client in clients:
        await stop_tree(client)
    for log in logs:
        log.close()


async def stop_tree(client: RpcClient) -> None:
    """End a server a test left running: SIGTERM to its group first (a one-file bootloader
    forwards it and then removes its `_MEI*` dir), SIGKILL if that does not do it."""
    if client.proc.returncode is None and sys.platform != "win32":
        try:
            os.killpg(client.proc.pid, signal.SIGTERM)
            await asyncio.wait_for(client.proc.wait(), 5)
        except (ProcessLookupError, asyncio.TimeoutError):
            pass
        try:
            os.killpg(client.proc.pid, signal.SIGKILL)  # stragglers in the group
        except ProcessLookupError:
            pass
    client.kill()
    await client.wait_exit(5)


def python_pid(pid: int) -> int:
    """The pid running Python: a one-file bootloader's only child, else `pid` itself (Linux)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def run(binary: Path, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT)


def stderr_of(tmp_path: Path, index: int = 0) -> str:
    path = tmp_path / f"server-{index}.stderr"
    return path.read_text(encoding="utf-8", errors="replace")[-3000:] if path.exists() else ""


def scripted_bash(cmd: str) -> dict[str, Any]:
    return {"provider": "scripted", "script": [{"toolCalls": [{"name": "bash_run", "input": {"cmd": cmd}}]},
                                               {"text": "ran it"}]}


async def bash_stdout(c: RpcClient, agent_id: str, cmd: str, work_dir: Path) -> str:
    """Run `cmd` through a scripted `bash_run` (permission mode auto) and return its stdout."""
    await c.request("agent/create", {"agentId": agent_id, "model": scripted_bash(cmd),
                                     "sandbox": {"workDir": str(work_dir)}, "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": agent_id, "text": "run it"}, timeout=RUN_TIMEOUT)
    assert res["status"] == "ok", res
    call = c.events_of(agent_id, "tool:end")[0]["event"]["call"]
    assert call["name"] == "bash_run" and call["state"] == "COMPLETED", call
    data = call["result"]["data"]
    assert data["exitCode"] == 0, data
    return str(data["stdout"])


# --------------------------------------------------------------------------- tests


def test_version_prints_the_package_version(frozen_binary: Path, frozen_env: dict[str, str], home: Path) -> None:
    res = run(frozen_binary, frozen_env, "--version", cwd=home)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"kode-rpc {kode_rpc.__version__}\n"
    stamp = frozen_binary.parent / "VERSION"
    if stamp.exists():  # one-dir builds carry the stamp in their folder
        assert stamp.read_text(encoding="utf-8").strip() == kode_rpc.__version__


def test_doctor_exits_0_and_knows_it_is_frozen(frozen_binary: Path, frozen_env: dict[str, str], home: Path) -> None:
    res = run(frozen_binary, frozen_env, "doctor", cwd=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "frozen" in res.stdout.splitlines()[0]
    report = json.loads(run(frozen_binary, frozen_env, "doctor", "--json", cwd=home).stdout)
    assert report["ok"] and report["frozen"] and report["version"] == kode_rpc.__version__
    if sys.platform != "win32":
        assert report["paths"]["data"].startswith(str(home)), report["paths"]


def test_schema_is_the_same_as_from_source(frozen_binary: Path, frozen_env: dict[str, str], home: Path) -> None:
    res = run(frozen_binary, frozen_env, "schema", cwd=home)
    assert res.returncode == 0, res.stderr
    from kode_rpc.protocol.schema import protocol_schema

    assert json.loads(res.stdout) == json.loads(json.dumps(protocol_schema(kode_rpc.__version__)))


def test_acp_mode_serves_a_prompt(frozen_binary: Path, frozen_env: dict[str, str], home: Path) -> None:
    """`kode-rpc acp` from the binary: initialize, a session, an echo prompt, exit on EOF."""
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": str(home), "mcpServers": []}},
    ]
    proc = subprocess.Popen([str(frozen_binary), "acp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=frozen_env, cwd=home)
    assert proc.stdin is not None and proc.stdout is not None
    for line in lines:
        proc.stdin.write((json.dumps(line) + "\n").encode())
    proc.stdin.flush()
    replies = [json.loads(proc.stdout.readline()) for _ in lines]
    assert replies[0]["result"]["agentInfo"]["name"] == "kode-rpc"
    sid = replies[1]["result"]["sessionId"]
    prompt = {"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
              "params": {"sessionId": sid, "prompt": [{"type": "text", "text": "frozen acp"}]}}
    proc.stdin.write((json.dumps(prompt) + "\n").encode())
    proc.stdin.flush()
    text = ""
    while True:
        msg = json.loads(proc.stdout.readline())
        if msg.get("method") == "session/update" and msg["params"]["update"]["sessionUpdate"] == "agent_message_chunk":
            text += msg["params"]["update"]["content"]["text"]
        if msg.get("id") == 3:
            assert msg["result"]["stopReason"] == "end_turn"
            break
    assert text == "frozen acp"
    proc.stdin.close()
    assert proc.wait(RUN_TIMEOUT) == 0


async def test_first_start_echo_turn_and_clean_exit(spawn: Spawn, frozen_env: dict[str, str], home: Path,
                                                    frozen_binary: Path, tmp_path: Path) -> None:
    c = await spawn(init=False)
    init = await c.initialize(processId=os.getpid())
    assert init["serverInfo"]["version"] == kode_rpc.__version__
    assert set(init["capabilities"]["providers"]) >= {"echo", "scripted", "anthropic", "openai"}
    data_dir = Path(init["dataDir"])
    if sys.platform != "win32":
        assert data_dir.is_relative_to(home), f"dataDir {data_dir} is not under the new HOME {home}"
    info = await c.request("agent/create", {"agentId": "hello", "model": {"provider": "echo"}})
    assert info["agentId"] == "hello"
    sent = await c.request("agent/send", {"agentId": "hello", "text": "hello from a frozen binary"})
    done = await c.wait_event("hello", "done", timeout=RUN_TIMEOUT)
    assert done["event"]["reason"] == "completed"
    text = "".join(e["event"]["delta"] for e in c.events_of("hello", "text_chunk"))
    assert text == "hello from a frozen binary" and sent["turnId"]
    code = await c.close()
    assert code == 0, stderr_of(tmp_path)
    assert c.stray == b"", f"stray bytes on stdout: {c.stray[:300]!r}"
    assert (data_dir / "kode.db").is_file()
    # the log dir is the platform default under the new HOME; doctor reports where
    report = json.loads(run(frozen_binary, frozen_env, "doctor", "--json", cwd=home).stdout)
    assert Path(report["paths"]["data"]) == data_dir
    assert report["database"]["exists"] and report["database"]["agents"] == 1
    log_dir = Path(report["paths"]["log"])
    assert (log_dir / "kode-rpc.log").is_file(), f"no log file in {log_dir}"
    if sys.platform != "win32":
        assert log_dir.is_relative_to(home)
    assert "kode-rpc serving" in (log_dir / "kode-rpc.log").read_text(encoding="utf-8")


async def test_scripted_bash_run_works(spawn: Spawn, home: Path) -> None:
    work = home / "project dir"
    work.mkdir()
    (work / "marker.txt").write_text("frozen ok", encoding="utf-8")
    c = await spawn()
    out = await bash_stdout(c, "sh", "cat marker.txt; echo; pwd", work)
    assert out.splitlines() == ["frozen ok", str(work.resolve())]
    assert await c.close() == 0 and c.stray == b""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_LIBRARY_PATH is what the Linux bootloader sets")
@pytest.mark.parametrize("original", ["/custom/original", None])
async def test_tools_get_the_users_ld_library_path(spawn: Spawn, frozen_env: dict[str, str], home: Path,
                                                   original: str | None) -> None:
    env = dict(frozen_env)
    if original is not None:
        env["LD_LIBRARY_PATH"] = original
    c = await spawn(env=env)
    # the server itself runs with the bundle's library dir first (what the tools must not inherit)
    server_env = Path(f"/proc/{python_pid(c.proc.pid)}/environ").read_bytes().split(b"\0")
    server_ldp = next((v for v in server_env if v.startswith(b"LD_LIBRARY_PATH=")), b"").decode()
    assert "_internal" in server_ldp or "_MEI" in server_ldp, server_ldp
    out = await bash_stdout(c, "ldp", 'echo "LDP=[${LD_LIBRARY_PATH-unset}]"; echo "ORIG=[${LD_LIBRARY_PATH_ORIG-unset}]"',
                            home)
    assert out.splitlines() == [f"LDP=[{original or 'unset'}]", "ORIG=[unset]"], out
    assert await c.close() == 0 and c.stray == b""


def _restore_env_drops_pyinstaller_vars() -> bool:
    from kode_rpc.sandbox.local import restore_env

    return "_PYI_ARCHIVE_FILE" not in restore_env({"_PYI_ARCHIVE_FILE": "x"}, True)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell syntax")
async def test_tools_can_run_another_frozen_instance(spawn: Spawn, frozen_binary: Path, home: Path) -> None:
    """A tool running `kode-rpc doctor` (or any PyInstaller app) must start a fresh, independent instance."""
    c = await spawn()
    out = await bash_stdout(c, "nested", f'env | grep "^_PYI_" | sort; "{frozen_binary}" --version', home)
    lines = out.splitlines()
    assert lines[-1] == f"kode-rpc {kode_rpc.__version__}", out
    leaked = [line for line in lines if line.startswith("_PYI_")]
    if leaked and not _restore_env_drops_pyinstaller_vars():
        pytest.xfail("kode_rpc.sandbox.local.restore_env() keeps PyInstaller's private _PYI_* variables "
                     f"(a nested one-file app would reuse this one's unpack dir): {leaked}")
    assert not leaked, leaked
    assert await c.close() == 0 and c.stray == b""


async def test_openai_and_anthropic_providers_work_frozen(spawn: Spawn, frozen_env: dict[str, str]) -> None:
    """httpx, anyio, httpx-sse, tenacity, certifi and the lazily imported providers are all in the bundle."""
    fake = await FakeServer().start()
    try:
        openai_chunk = lambda delta, finish=None: sse(None, {  # noqa: E731
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741569952, "model": "qwen2.5",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        fake.add(FakeResponse(chunks=[openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "Hi"}),
                                      openai_chunk({"content": " there"}), openai_chunk({}, "stop"),
                                      b"data: [DONE]\n\n"]))
        fake.add(FakeResponse(chunks=[
            sse("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
                "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}}),
            sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "Hello"}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 2}}),
            sse("message_stop", {"type": "message_stop"}),
        ]))
        c = await spawn(env=dict(frozen_env, FROZEN_TEST_KEY="sk-ant-frozen-test-0123456789"))
        await c.request("agent/create", {"agentId": "oa", "model": {"provider": "openai", "model": "qwen2.5",
                                                                    "baseUrl": fake.url + "/v1"}})
        res = await c.request("agent/complete", {"agentId": "oa", "text": "hi"}, timeout=RUN_TIMEOUT)
        assert res["status"] == "ok" and res["text"] == "Hi there", res
        await c.request("agent/create", {"agentId": "an", "model": {"provider": "anthropic", "model": "claude-sonnet-4-5",
                                                                    "baseUrl": fake.url, "apiKeyEnv": "FROZEN_TEST_KEY"}})
        res = await c.request("agent/complete", {"agentId": "an", "text": "hi"}, timeout=RUN_TIMEOUT)
        assert res["status"] == "ok" and res["text"] == "Hello", res
        assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/messages"]
        assert await c.close() == 0 and c.stray == b""
    finally:
        await fake.stop()


def _server_command_is_frozen_aware(binary: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Would this source's `server_command()` start `<binary> serve` when frozen (no KODE_RPC_SERVER)?"""
    with monkeypatch.context() as m:
        m.delenv("KODE_RPC_SERVER", raising=False)
        m.setattr(sys, "frozen", True, raising=False)
        m.setattr(sys, "executable", str(binary))
        return server_command()[:2] == [str(binary), "serve"]


def test_chat_spawns_its_own_frozen_server(frozen_binary: Path, frozen_env: dict[str, str], home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`kode-rpc chat` from the frozen binary spawns the server from the same binary (no Python needed)."""
    res = run(frozen_binary, dict(frozen_env, NO_COLOR="1"), "chat", "-m", "hello frozen", cwd=home)
    if res.returncode != 0 and not _server_command_is_frozen_aware(frozen_binary, monkeypatch):
        pytest.xfail("kode_rpc.client.server_command() runs `sys.executable -m kode_rpc serve`, which a frozen "
                     "binary does not understand; it needs `[sys.executable, 'serve']` when sys.frozen")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "hello frozen" in res.stdout.splitlines()


MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))


def _mcp_statuses(c: RpcClient, agent_id: str, server: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.events_of(agent_id, "mcp_status") if e["event"]["server"] == server]


@pytest.mark.skipif(sys.platform == "win32", reason="the test MCP server is started with the venv's python")
async def test_mcp_stdio_server_works_frozen(spawn: Spawn, home: Path, tmp_path: Path) -> None:
    """The bundle carries `mcp`: an agent's stdio MCP server (the FastMCP test server, run by the
    venv's python) connects, lists its tools, and a scripted turn calls one of them."""
    work = home / "mcp project"
    work.mkdir()
    c = await spawn()
    model = {"provider": "scripted", "script": [
        {"toolCalls": [{"name": "mcp__fz__echo", "input": {"text": "from frozen"}}]}, {"text": "echoed"}]}
    await c.request("agent/create", {"agentId": "mcp", "model": model, "sandbox": {"workDir": str(work)},
                                     "permission": {"mode": "auto"},
                                     "mcpServers": {"fz": {"command": sys.executable, "args": [MCP_SERVER]}}})

    def settled() -> dict[str, Any] | None:
        return next((s for s in _mcp_statuses(c, "mcp", "fz")[::-1] if s["status"] in ("ready", "failed")), None)

    status = await c.wait_for(settled, RUN_TIMEOUT)
    assert status["status"] == "ready", f"{status}\n{stderr_of(tmp_path)}"
    assert "mcp__fz__echo" in status["tools"], status
    res = await c.request("agent/complete", {"agentId": "mcp", "text": "echo it"}, timeout=RUN_TIMEOUT)
    assert res["status"] == "ok" and res["text"] == "echoed", res
    call = next(e["event"]["call"] for e in c.events_of("mcp", "tool:end")
                if e["event"]["call"]["name"] == "mcp__fz__echo")
    assert call["state"] == "COMPLETED" and call["result"] == {"ok": True, "data": "echo: from frozen"}, call
    assert await c.close() == 0 and c.stray == b""


async def test_watchfiles_reports_external_changes_frozen(spawn: Spawn, home: Path) -> None:
    """The bundle carries `watchfiles` (its Rust extension): a file written from outside the
    agent's workDir shows up as `file_changed` with `by: "external"`."""
    work = home / "watched dir"
    work.mkdir()
    c = await spawn()
    await c.request("agent/create", {"agentId": "watch", "model": {"provider": "echo"},
                                     "sandbox": {"workDir": str(work)}})
    await asyncio.sleep(0.3)  # the watcher starts when the agent is loaded

    def seen() -> dict[str, Any] | None:
        return next((e["event"] for e in c.events_of("watch", "file_changed")
                     if e["event"]["path"] == "outside.txt"), None)

    (work / "outside.txt").write_text("written by the test\n", encoding="utf-8")
    try:
        got = await c.wait_for(seen, 10)
    except TimeoutError:
        # a write that raced the watcher's start: write once more
        (work / "outside.txt").write_text("written again\n", encoding="utf-8")
        got = await c.wait_for(seen, 10)
    assert got["by"] == "external" and got["change"] in ("added", "modified"), got
    assert await c.close() == 0 and c.stray == b""


async def test_http_serves_metrics_frozen(spawn: Spawn, tmp_path: Path) -> None:
    """`--http` from the binary: the bundle carries prometheus_client (imported only on the
    first scrape, so PyInstaller must have been told), and GET /metrics is the RPC's text."""
    import http.client
    import re

    from prometheus_client.parser import text_string_to_metric_families

    c = await spawn("--http", "127.0.0.1:0")
    await c.request("agent/create", {"agentId": "m", "model": {"provider": "echo"}})
    assert (await c.request("agent/complete", {"agentId": "m", "text": "count"}, timeout=RUN_TIMEOUT))["status"] == "ok"
    port = int(re.findall(r"http: listening on http://127\.0\.0\.1:(\d+) ", stderr_of(tmp_path))[0])

    def get(path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            return res.status, res.getheader("Content-Type") or "", res.read()
        finally:
            conn.close()

    status, content_type, body = await asyncio.to_thread(get, "/metrics")
    prom = await c.request("metrics/prometheus")
    assert status == 200 and content_type == prom["contentType"] and body.decode() == prom["text"], stderr_of(tmp_path)
    turns = {s.labels["reason"]: s.value for f in text_string_to_metric_families(body.decode())
             if f.name == "kode_turns" for s in f.samples}
    assert turns["completed"] == 1, turns
    status, content_type, body = await asyncio.to_thread(get, "/health")
    assert status == 200 and json.loads(body)["healthy"] is True
    assert await c.close() == 0 and c.stray == b""
