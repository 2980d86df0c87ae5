#!/usr/bin/env python3
"""kode-rpc benchmarks: spawn the real server over real pipes and measure what an editor feels.

    python bench/run.py [--quick] [--out bench/results/latest.json] [--only NAME ...]
    python bench/run.py --baseline-server OLD_EXE [--baseline-env PYTHONPATH=OLD_CHECKOUT]

Prints a table (name, value, unit, target, pass/fail) and writes the same rows as JSON
together with the machine's description; with a baseline (an older commit's server),
each measurement runs for it and right after for the server under test, and both are
printed side by side. A missed target is reported, never turned into
a failing exit code: the exit code is 0 when every measurement ran and checked its data,
1 when something broke (an exception, a wrong or missing event, a bad reply).

Every server gets fresh temporary data, log and config dirs (`KODE_DATA_DIR`,
`KODE_LOG_DIR`, `KODE_CONFIG_DIR`), is shut down with `shutdown` + `exit`, and the
dirs are removed at the end. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kode_rpc import __version__ as kode_version
from kode_rpc.client import RpcClient, server_command

if TYPE_CHECKING:
    from tests.pg import PgServer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
ENV_DROPPED = ("KODE_PROVIDER", "KODE_MODEL", "KODE_MAX_AGENTS", "KODE_DATA_DIR", "KODE_LOG_DIR", "KODE_CONFIG_DIR")
"""User settings that would change what is measured (default model, pool size, paths)."""


class BenchError(Exception):
    """The server answered, but with wrong or missing data: the run is broken, not slow."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


# --- configuration and results ----------------------------------------------------


@dataclass(frozen=True)
class Counts:
    spawn_runs: int
    status_warmup: int
    status_calls: int
    chunks: int
    chunk_runs: int
    resume_events: int
    resume_runs: int
    agents: int
    turns_per_agent: int
    provider_runs: int
    provider_tokens: int
    transcript_messages: int
    """Messages in the agent that `spawn_to_transcript` resumes (2 per echo turn of 11 events)."""
    transcript_runs: int
    turn_warmup: int
    turns: int
    """Timed 100-chunk turns on one agent (median, p95 and growth first -> last `growth_window`)."""
    growth_window: int
    tool_turns: int
    """Timed turns with one fs_read each."""


FULL = Counts(spawn_runs=10, status_warmup=200, status_calls=2000, chunks=20_000, chunk_runs=3,
              resume_events=10_000, resume_runs=3, agents=50, turns_per_agent=50, provider_runs=10,
              provider_tokens=2000, transcript_messages=1000, transcript_runs=5, turn_warmup=5, turns=200,
              growth_window=50, tool_turns=100)
QUICK = Counts(spawn_runs=2, status_warmup=20, status_calls=200, chunks=2_000, chunk_runs=1,
               resume_events=1_000, resume_runs=1, agents=5, turns_per_agent=10, provider_runs=2,
               provider_tokens=200, transcript_messages=200, transcript_runs=1, turn_warmup=2, turns=40,
               growth_window=10, tool_turns=20)

CHUNKS_PER_REPLY = 100
"""Issue 10's per-turn row: a scripted reply streamed as 100 `chunks`."""
TOOL_REPLY_CHUNKS = 10
"""The reply after the fs_read in the tool-turn row."""


@dataclass
class Row:
    """One figure. `target` with `lower_is_better` gives pass/fail; rows without a target are context."""

    name: str
    value: float | None
    unit: str
    target: float | None = None
    lower_is_better: bool = True
    note: str = ""
    error: bool = False
    inclusive: bool = False
    """The target itself passes (`<=` / `>=`): issue 10's targets are written that way."""
    stores: dict[str, float | None] | None = None
    """One measure on each store (`--only stores`): a column per store in the table; `value` is SQLite's."""

    @property
    def op(self) -> str:
        return ("<" if self.lower_is_better else ">") + ("=" if self.inclusive else "")

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        if self.inclusive:
            return self.value <= self.target if self.lower_is_better else self.value >= self.target
        return self.value < self.target if self.lower_is_better else self.value > self.target

    @property
    def status(self) -> str:
        if self.error:
            return "ERROR"
        if self.value is None:
            return "n/a"
        return {True: "pass", False: "FAIL", None: "-"}[self.passed]

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{self.op} {self.target:,g}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "target_op": None if self.target is None else self.op,
                "passed": self.passed, "status": self.status}


def goal(name: str, value: float | None, unit: str, target: float | None, note: str = "",
         higher_is_better: bool = False) -> Row:
    """A row of issue 10's table: the target is inclusive (`<= 250 ms`, `>= 100,000/s`)."""
    return Row(name, value, unit, target, lower_is_better=not higher_is_better, note=note, inclusive=True)


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if value == int(value) and abs(value) >= 100:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation, so p99 is a sample that really happened)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --- servers ----------------------------------------------------------------------


class TempDirs:
    """Every temp dir the run creates, removed at the end."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def new(self, kind: str) -> str:
        path = tempfile.mkdtemp(prefix=f"kode-bench-{kind}-")
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)


class TimedClient(RpcClient):
    """`RpcClient` that lets a benchmark see each message (with its arrival time) before dispatch.

    Hooks `RpcClient._dispatch`, the one place every decoded message passes through.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.on_message: Callable[[dict[str, Any], float], None] | None = None
        super().__init__(*args, **kwargs)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if self.on_message is not None:
            self.on_message(msg, time.perf_counter())
        await super()._dispatch(msg)


def default_frozen() -> list[tuple[str, Path, float | None]]:
    """Frozen builds measured beside the source when they exist (`python packaging/build.py [--onefile]`):
    (label, binary, spawn_to_initialize target)."""
    return [
        ("onedir", Path(os.environ.get("KODE_BENCH_ONEDIR", "dist/kode-rpc/kode-rpc")), 400.0),
        ("onefile", Path(os.environ.get("KODE_BENCH_ONEFILE", "dist/kode-rpc-onefile")), None),
    ]


@dataclass
class ServerUnderTest:
    """What `serve` runs: `exe` (`--server`, else `$KODE_RPC_SERVER`, else `python -m kode_rpc`)
    plus `--server-env` variables (e.g. `PYTHONPATH` of an older checkout), and the frozen
    builds measured beside it. A run may have two: the baseline and the server under test."""

    exe: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    label: str = "now"
    frozen: list[tuple[str, Path, float | None]] = field(default_factory=default_frozen)

    def describe(self) -> str:
        cmd = " ".join(server_command(exe=self.exe))
        extra = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{extra} {cmd}".strip()

    def frozen_builds(self) -> list[tuple[str, Path, float | None]]:
        return [(label, path, target) for label, path, target in self.frozen if path.exists()]


SERVER = ServerUnderTest()
"""The server the measurements spawn; `run_all` switches it between baseline and server under test."""


BYTECODE: dict[str, str | None] = {"dir": None}
"""Where every server run from source keeps its compiled modules (`PYTHONPYCACHEPREFIX`),
one temp dir for the whole run; None (`--cold-bytecode`): the environment decides.

An installed package has its bytecode (pip compiles it at install time; a frozen build
carries it), so the user's start-up never compiles our modules. A checkout run with
`PYTHONDONTWRITEBYTECODE=1` (this machine's default) compiles every one of them at every
start: ~45 ms of the ~230 ms agent-ready row here, a cost no user pays. The servers write
their bytecode on first import into this dir and read it after; a warm-up start per
server (`warm_up`) does the first import before anything is timed."""


def server_env(tmp: TempDirs, data_dir: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    if BYTECODE["dir"] is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = BYTECODE["dir"]
    env.update(SERVER.env)
    if env.get("PYTHONPATH"):  # servers run in another directory (see `server_cwd`)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env["KODE_DATA_DIR"] = data_dir or tmp.new("data")
    env["KODE_LOG_DIR"] = tmp.new("log")
    env["KODE_CONFIG_DIR"] = tmp.new("config")
    return env


def server_cwd(env: dict[str, str]) -> str:
    """Servers run in their own (empty, temporary) log dir: `python -m kode_rpc` puts the
    working directory first on `sys.path`, so started from a checkout it would run that
    checkout's `kode_rpc` whatever `--server-env PYTHONPATH` says."""
    return env["KODE_LOG_DIR"]


@dataclass(frozen=True)
class Store:
    """A store a server is pointed at with `--store URL` (as a user does), and the variables its
    servers need besides (PostgreSQL: `PGPASSFILE`, so the URL carries no password)."""

    kind: str
    url: str
    env: dict[str, str] = field(default_factory=dict)


def store_args(store: Store | None) -> tuple[str, ...]:
    return ("--store", store.url) if store else ()


def store_env(env: dict[str, str], store: Store | None) -> dict[str, str]:
    return {**env, **store.env} if store else env


async def start_server(env: dict[str, str], server: str | None = None, store: Store | None = None) -> TimedClient:
    client = await TimedClient.spawn(*store_args(store), env=store_env(env, store), server=server or SERVER.exe,
                                     cwd=server_cwd(env))
    try:
        await client.initialize(processId=os.getpid())
    except BaseException:
        client.kill()
        await client.wait_exit()
        raise
    return client


async def stop_server(client: RpcClient) -> None:
    code = await client.close()
    check(code == 0, f"server pid {client.proc.pid} exited with code {code} after shutdown+exit")
    check(not client.stray, f"server wrote non-protocol bytes to stdout: {client.stray[:200]!r}")


@asynccontextmanager
async def running_server(tmp: TempDirs, data_dir: str | None = None,
                         store: Store | None = None) -> AsyncIterator[TimedClient]:
    client = await start_server(server_env(tmp, data_dir), store=store)
    try:
        yield client
    except BaseException:
        client.kill()
        await client.wait_exit()
        raise
    await stop_server(client)


async def create_agent(client: RpcClient, model: dict[str, Any]) -> str:
    info = await client.request("agent/create", {"model": model})
    return str(info["agentId"])


async def complete(client: RpcClient, agent_id: str, text: str, timeout: float = 120.0) -> dict[str, Any]:
    result = await client.request("agent/complete", {"agentId": agent_id, "text": text}, timeout=timeout)
    check(result["status"] == "ok", f"agent/complete on {agent_id} ended {result['status']!r}")
    return result


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """`field` of /proc/<pid>/status in MB (MiB); None where there is no /proc (not Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    raise BenchError(f"no {field} in /proc/{pid}/status")


# --- measurements -----------------------------------------------------------------


async def python_startup_ms() -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    check(await proc.wait() == 0, "`python -c pass` failed")
    return (time.perf_counter() - start) * 1000


async def spawn_to_initialize_ms(tmp: TempDirs, binary: Path | None = None) -> tuple[float, float]:
    """(spawn to `initialize` answered, spawn to the first other request answered)."""
    env = server_env(tmp)
    start = time.perf_counter()
    client = await start_server(env, str(binary.resolve()) if binary else None)
    elapsed = (time.perf_counter() - start) * 1000
    await client.request("pool/stats")
    ready = (time.perf_counter() - start) * 1000
    await stop_server(client)
    return elapsed, ready


READY_TARGETS: dict[str, float | None] = {"source": 250.0, "onedir": 300.0, "onefile": None}
"""Issue 10: spawn -> initialize + agent/create answered, <= 250 ms from source, <= 300 ms one-dir."""
TRANSCRIPT_TARGETS: dict[str, float | None] = {"source": 300.0, "onedir": None, "onefile": None}
"""Issue 10: spawn -> transcript back <= 300 ms (one target, given for the source run)."""


def exe_of(binary: Path | None) -> str | None:
    return str(binary.resolve()) if binary else None


async def spawn_to_agent_ready_ms(tmp: TempDirs, binary: Path | None = None) -> tuple[float, float]:
    """(spawn to `initialize` answered, spawn to `agent/create` answered right after it): "agent ready"."""
    env = server_env(tmp)
    start = time.perf_counter()
    client = await start_server(env, exe_of(binary))
    initialized = (time.perf_counter() - start) * 1000
    try:
        info = await client.request("agent/create", {"model": {"provider": "echo"}})
    except BaseException:
        client.kill()
        await client.wait_exit()
        raise
    ready = (time.perf_counter() - start) * 1000
    check(bool(info.get("agentId")), f"agent/create answered without an agentId: {info}")
    await stop_server(client)
    return initialized, ready


async def agent_ready_rows(counts: Counts, tmp: TempDirs, label: str, binary: Path | None) -> list[Row]:
    runs = [await spawn_to_agent_ready_ms(tmp, binary) for _ in range(counts.spawn_runs)]
    ready = [r[1] for r in runs]
    suffix = "" if binary is None else f"_{label}"
    where = "python -m kode_rpc" if binary is None and SERVER.exe is None else str(binary or SERVER.exe)
    return [
        goal(f"spawn_to_agent_ready{suffix}_median", statistics.median(ready), "ms", READY_TARGETS[label],
             note=f"spawn -> initialize + agent/create (echo) answered, {where}, N={len(ready)}, "
                  f"best {min(ready):.0f}, initialize alone {statistics.median(r[0] for r in runs):.0f}"),
    ]


async def warm_up(tmp: TempDirs) -> None:
    """One untimed start of the current server through the paths the rows take (create, an
    echo turn, a turn with `fs_read`, resume), so each module's bytecode is written (see
    `BYTECODE`) before anything is measured."""
    work_dir = tmp.new("work")
    Path(work_dir, "a.txt").write_text("warm\n")
    script = [{"toolCalls": [{"name": "fs_read", "input": {"path": "a.txt"}}]}, {"chunks": ["o", "k"]}]
    async with running_server(tmp) as client:
        await complete(client, await create_agent(client, {"provider": "echo"}), "hello")
        info = await client.request("agent/create", {"model": {"provider": "scripted", "script": script},
                                                     "permission": {"mode": "readonly"},
                                                     "sandbox": {"workDir": work_dir}})
        await complete(client, str(info["agentId"]), "read it")
        await client.request("agent/resume", {"agentId": info["agentId"], "since": 0})


async def bench_spawn(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Spawn-to-initialize latency.

    Editors spawn the server when a window opens or a chat panel first shows, and
    nothing works until `initialize` is answered: this is the wait the user sees on
    every start. Each run has a fresh data dir, so it includes creating the store.
    `python -c pass` is the floor set by the interpreter itself.
    """
    baseline = [await python_startup_ms() for _ in range(max(counts.spawn_runs, 5))]
    pairs = [await spawn_to_initialize_ms(tmp) for _ in range(counts.spawn_runs)]
    runs = [p[0] for p in pairs]
    ready = [p[1] for p in pairs]
    return [
        Row("spawn_to_initialize_median", statistics.median(runs), "ms", 300,
            note=f"N={len(runs)}, fresh data dir each"),
        Row("spawn_to_initialize_best", min(runs), "ms", 300, note=f"N={len(runs)}"),
        Row("spawn_to_first_request_median", statistics.median(ready), "ms",
            note="initialize, then pool/stats answered (a server that loads pygls after initialize pays it here)"),
        Row("python_startup_median (baseline)", statistics.median(baseline), "ms",
            note=f"`python -c pass`, N={len(baseline)}"),
        *await agent_ready_rows(counts, tmp, "source", None),
        *[row for label, path, target in SERVER.frozen_builds()
          for row in [*await frozen_spawn_rows(counts, tmp, label, path, target),
                      *await agent_ready_rows(counts, tmp, label, path)]],
    ]


async def frozen_spawn_rows(counts: Counts, tmp: TempDirs, label: str, binary: Path,
                            target: float | None) -> list[Row]:
    """The same spawn measurement for a PyInstaller build, with its size on disk."""
    runs = [(await spawn_to_initialize_ms(tmp, binary))[0] for _ in range(counts.spawn_runs)]
    root = binary.parent if (binary.parent / "_internal").is_dir() else binary
    size = root.stat().st_size if root.is_file() else sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return [
        Row(f"spawn_to_initialize_{label}_median", statistics.median(runs), "ms", target,
            note=f"{binary}, N={len(runs)}"),
        Row(f"frozen_{label}_size", size / 1e6, "MB", note=str(root)),
    ]


async def bench_status(counts: Counts, tmp: TempDirs) -> list[Row]:
    """`agent/status` round trip on an active echo agent.

    The cheapest request there is, so it measures the fixed cost of one message through
    framing, dispatch, validation and serialization both ways. UIs poll status and every
    other request pays at least this much.
    """
    async with running_server(tmp) as client:
        agent_id = await create_agent(client, {"provider": "echo"})
        await complete(client, agent_id, "warm up")
        params = {"agentId": agent_id}
        for _ in range(counts.status_warmup):
            await client.request("agent/status", params)
        samples: list[float] = []
        for _ in range(counts.status_calls):
            start = time.perf_counter()
            status = await client.request("agent/status", params)
            samples.append((time.perf_counter() - start) * 1000)
        check(status["agentId"] == agent_id and status["active"] is True,
              f"agent/status: expected active agent {agent_id}, got {status}")
    n = f"N={len(samples)} after {counts.status_warmup} warm-up"
    return [
        Row("agent_status_rtt_p50", percentile(samples, 50), "ms", 0.5, note=n),
        Row("agent_status_rtt_p99", percentile(samples, 99), "ms", note=n),
    ]


@dataclass
class StreamRun:
    """One streamed turn, timed at the client (seconds from `time.perf_counter`)."""

    deltas: int
    events: int
    sent: float
    chunk_times: list[float]
    done: float
    stored: int
    """Events of the turn, all kinds (each is stored before it is sent)."""

    @property
    def window(self) -> float:
        return self.done - self.chunk_times[0]

    @property
    def deltas_per_s(self) -> float:
        return self.deltas / self.window

    @property
    def events_per_s(self) -> float:
        return self.events / self.window

    @property
    def send_to_done_deltas_per_s(self) -> float:
        return self.deltas / (self.done - self.sent)

    @property
    def send_to_done_stored_per_s(self) -> float:
        return self.stored / (self.done - self.sent)

    @property
    def first_chunk_ms(self) -> float:
        return (self.chunk_times[0] - self.sent) * 1000

    @property
    def max_gap_ms(self) -> float:
        times = self.chunk_times + [self.done]
        return max(b - a for a, b in zip(times, times[1:])) * 1000


class StreamWatch:
    """Arrival time of each `text_chunk` of one agent; `finished` resolves on its `done`.

    Waiting on a future instead of `RpcClient.wait_event` keeps the client from rescanning
    its whole event list while 20,000 events arrive: the client must not be the bottleneck.
    """

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.chunk_times: list[float] = []
        self.finished: asyncio.Future[tuple[dict[str, Any], float]] = asyncio.get_running_loop().create_future()

    def __call__(self, msg: dict[str, Any], now: float) -> None:
        if msg.get("method") != "agent/event" or msg["params"]["agentId"] != self.agent_id:
            return
        etype = msg["params"]["event"]["type"]
        if etype == "text_chunk":
            self.chunk_times.append(now)
        elif etype == "done" and not self.finished.done():
            self.finished.set_result((msg["params"], now))


async def stream_once(client: TimedClient, deltas: list[str]) -> StreamRun:
    """One scripted turn streaming `deltas`; checks the text that arrived."""
    agent_id = await create_agent(client, {"provider": "scripted", "script": [{"chunks": deltas}]})
    watch = StreamWatch(agent_id)
    client.on_message = watch
    try:
        sent_at = time.perf_counter()
        sent = await client.request("agent/send", {"agentId": agent_id, "text": "stream"})
        done, done_at = await asyncio.wait_for(watch.finished, timeout=300)
    finally:
        client.on_message = None
    check(done["event"]["reason"] == "completed", f"turn ended {done['event']['reason']!r}")
    chunk_events = [e for e in client.events_of(agent_id, "text_chunk") if e.get("turnId") == sent["turnId"]]
    check_stream(chunk_events, client.events_of(agent_id, "text_chunk_end"), "".join(deltas))
    check(len(watch.chunk_times) == len(chunk_events), "text_chunk events seen twice or missed by the watch")
    stored = sum(e.get("turnId") == sent["turnId"] for e in client.events_of(agent_id))
    return StreamRun(len(deltas), len(chunk_events), sent_at, watch.chunk_times, done_at, stored)


def check_stream(chunk_events: list[dict[str, Any]], end_events: list[dict[str, Any]], expected: str) -> None:
    """Deltas may be merged, never split, lost or reordered: their concatenation is the text."""
    check(bool(chunk_events), "no text_chunk event arrived")
    got = "".join(e["event"]["delta"] for e in chunk_events)
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise BenchError(f"concatenated text_chunk deltas differ from the script at char {at}: "
                         f"got {len(got)} chars ...{got[at:at + 40]!r}, expected {len(expected)} "
                         f"chars ...{expected[at:at + 40]!r}")
    seqs = [e["seq"] for e in chunk_events]
    check(seqs == sorted(seqs), "text_chunk events arrived out of seq order")
    check(len(end_events) == 1 and end_events[0]["event"]["text"] == expected,
          "text_chunk_end.text is not the concatenation of the deltas")


def median_of(runs: list[Any], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def spread(runs: list[Any], attr: str) -> str:
    """`median of N (min-max)` for the note column; just `1 run` when there is one."""
    if len(runs) == 1:
        return "1 run"
    values = [getattr(r, attr) for r in runs]
    return f"median of {len(runs)} ({min(values):,.0f}-{max(values):,.0f})"


async def bench_chunks(counts: Counts, tmp: TempDirs) -> list[Row]:
    """`text_chunk` throughput as seen by the client.

    Streaming is what the user watches; the server must keep up with a fast model
    (and with a long answer) without its per-event costs (store append and commit,
    JSON, framing, pipe write) becoming the bottleneck. The primary row times the
    first `text_chunk` to `done`; because delivery waits for the store's group commit,
    that window depends on how the commits fall, so send-to-done, the wait for the
    first chunk and the longest silence in the stream are reported too.
    """
    deltas = [f"w{i} " for i in range(counts.chunks)]
    async with running_server(tmp) as client:
        runs = [await stream_once(client, deltas) for _ in range(counts.chunk_runs)]
    events = statistics.median(r.events for r in runs)
    shape = f"{counts.chunks:,} deltas in {events:,.0f} events"
    return [
        Row("text_chunk_deltas_per_s (first chunk to done)", median_of(runs, "deltas_per_s"), "deltas/s",
            20_000, lower_is_better=False, note=f"{shape}, {spread(runs, 'deltas_per_s')}"),
        Row("text_chunk_events_per_s (first chunk to done)", median_of(runs, "events_per_s"), "events/s",
            note=spread(runs, "events_per_s")),
        goal("text_chunk_deltas_per_s (send to done)", median_of(runs, "send_to_done_deltas_per_s"), "deltas/s",
             100_000, higher_is_better=True,
             note=f"issue 10's source chunks/s: all persisted and delivered, {spread(runs, 'send_to_done_deltas_per_s')}"),
        Row("text_chunk_first_latency", median_of(runs, "first_chunk_ms"), "ms",
            note=f"agent/send to first text_chunk, {spread(runs, 'first_chunk_ms')}"),
        Row("text_chunk_max_gap", median_of(runs, "max_gap_ms"), "ms",
            note=f"longest silence between chunks, {spread(runs, 'max_gap_ms')}"),
    ]


class TurnWatch:
    """One turn of one agent as the client sees it: its deltas, tool ends, and `done` (with arrival time)."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.deltas: list[str] = []
        self.tool_ends: list[dict[str, Any]] = []
        self.finished: asyncio.Future[tuple[dict[str, Any], float]] = asyncio.get_running_loop().create_future()

    def __call__(self, msg: dict[str, Any], now: float) -> None:
        if msg.get("method") != "agent/event" or msg["params"]["agentId"] != self.agent_id:
            return
        event = msg["params"]["event"]
        if event["type"] == "text_chunk":
            self.deltas.append(event["delta"])
        elif event["type"] == "tool:end":
            self.tool_ends.append(event)
        elif event["type"] == "done" and not self.finished.done():
            self.finished.set_result((event, now))


async def timed_turn(client: TimedClient, agent_id: str, expected: str, tools: int = 0) -> tuple[float, int]:
    """(`agent/send` written -> `done` received in ms, `text_chunk` events); checks the text and the tool calls."""
    watch = TurnWatch(agent_id)
    client.on_message = watch
    try:
        start = time.perf_counter()
        await client.request("agent/send", {"agentId": agent_id, "text": "next"})
        done, done_at = await asyncio.wait_for(watch.finished, timeout=60)
    finally:
        client.on_message = None
    check(done["reason"] == "completed", f"turn ended {done['reason']!r}")
    check("".join(watch.deltas) == expected, f"turn streamed {''.join(watch.deltas)[:60]!r}, expected {expected[:60]!r}")
    check(len(watch.tool_ends) == tools, f"{len(watch.tool_ends)} tool:end events, expected {tools}")
    return (done_at - start) * 1000, len(watch.deltas)


async def hundred_chunk_agent(client: TimedClient, counts: Counts) -> tuple[str, str]:
    """(agent id, its reply): a new scripted agent replying in 100 chunks for `counts.turns` timed
    turns, its `counts.turn_warmup` untimed turns done."""
    chunks = [f"w{i} " for i in range(CHUNKS_PER_REPLY)]
    reply = "".join(chunks)
    agent_id = await create_agent(client, {"provider": "scripted",
                                           "script": [{"chunks": chunks}] * (counts.turn_warmup + counts.turns)})
    for _ in range(counts.turn_warmup):
        await timed_turn(client, agent_id, reply)
    return agent_id, reply


async def bench_turns(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Per-turn cost of a reply (issue 10), send -> done as the client sees it.

    (1) A scripted reply of 100 chunks, `turns` times on one agent after `turn_warmup`
    untimed turns: median, p95, and growth (median of the last `growth_window` turns /
    median of the first), which shows a cost that rises with the agent's history.
    (2) A turn with one `fs_read` (readonly mode, so no approval) of a 200-line file,
    then a 10-chunk reply: two model calls, a tool call and its events, in one turn.
    """
    tool_chunks = [f"r{i} " for i in range(TOOL_REPLY_CHUNKS)]
    work_dir = tmp.new("work")
    Path(work_dir, "notes.txt").write_text("".join(f"line {i}: some text to read\n" for i in range(200)))
    tool_script = [step for _ in range(counts.turn_warmup + counts.tool_turns)
                   for step in ({"toolCalls": [{"name": "fs_read", "input": {"path": "notes.txt"}}]},
                                {"chunks": tool_chunks})]
    async with running_server(tmp) as client:
        agent_id, reply = await hundred_chunk_agent(client, counts)
        timed = [await timed_turn(client, agent_id, reply) for _ in range(counts.turns)]
        info = await client.request("agent/create", {"model": {"provider": "scripted", "script": tool_script},
                                                     "permission": {"mode": "readonly"},
                                                     "sandbox": {"workDir": work_dir}})
        tool_agent = str(info["agentId"])
        for _ in range(counts.turn_warmup):
            await timed_turn(client, tool_agent, "".join(tool_chunks), tools=1)
        tool_timed = [await timed_turn(client, tool_agent, "".join(tool_chunks), tools=1)
                      for _ in range(counts.tool_turns)]
    samples, tool_samples = [t[0] for t in timed], [t[0] for t in tool_timed]
    events = statistics.median(t[1] for t in timed)
    w = counts.growth_window
    first, last = statistics.median(samples[:w]), statistics.median(samples[-w:])
    shape = f"{CHUNKS_PER_REPLY}-chunk scripted reply, {counts.turns} turns on one agent after {counts.turn_warmup} warm-up"
    tool_shape = (f"fs_read of 200 lines + {TOOL_REPLY_CHUNKS}-chunk reply, {counts.tool_turns} turns "
                  f"after {counts.turn_warmup} warm-up")
    return [
        goal("turn_100_chunks_median", statistics.median(samples), "ms", 2,
             note=f"send -> done, {shape}, {events:g} text_chunk events a turn (median)"),
        goal("turn_100_chunks_p95", percentile(samples, 95), "ms", 4, note=f"N={len(samples)}, max {max(samples):.1f}"),
        goal("turn_100_chunks_growth", last / first, "x", 1.1,
             note=f"median of last {w} turns / first {w}: {last:.2f} / {first:.2f} ms"),
        goal("turn_fs_read_median", statistics.median(tool_samples), "ms", 3, note=f"send -> done, {tool_shape}"),
        goal("turn_fs_read_p95", percentile(tool_samples, 95), "ms", 6,
             note=f"N={len(tool_samples)}, max {max(tool_samples):.1f}"),
    ]


async def build_long_history(client: RpcClient, min_events: int) -> str:
    """A scripted agent whose store holds at least `min_events` events."""
    script = [{"chunks": [f"e{i} " for i in range(min_events)]}]
    agent_id = await create_agent(client, {"provider": "scripted", "script": script})
    last_seq = 0
    for turn in range(min_events):  # a turn adds >= 1 event, so this always ends
        last_seq = (await complete(client, agent_id, f"turn {turn}", timeout=300))["lastSeq"]
        if last_seq >= min_events:
            break
    status = await client.request("agent/status", {"agentId": agent_id})
    check(status["lastSeq"] >= min_events, f"history has {status['lastSeq']} events, wanted {min_events}")
    return agent_id


def check_replay(client: RpcClient, agent_id: str, min_events: int, result: dict[str, Any]) -> int:
    """Every stored event came back (`replay: true`, seq 1..n in order, no gap), then `agent_resumed`."""
    events = client.events_of(agent_id)
    replayed = [e for e in events if e.get("replay")]
    live = [e for e in events if not e.get("replay")]
    check(bool(live) and live[0]["event"]["type"] == "agent_resumed",
          f"expected agent_resumed right after the replay, got {[e['event']['type'] for e in live[:3]]}")
    check(events.index(live[0]) == len(replayed), "a live event arrived in the middle of the replay")
    seqs = [e["seq"] for e in replayed]
    check(seqs == list(range(1, live[0]["seq"])),
          f"replay: expected seq 1..{live[0]['seq'] - 1} in order before agent_resumed, got {len(seqs)} "
          f"events (first {seqs[:3]}, last {seqs[-3:]})")
    check(len(replayed) >= min_events, f"replayed {len(replayed)} events, the history has >= {min_events}")
    check(result.get("replayed") == len(replayed),
          f"agent/resume says replayed={result.get('replayed')}, client received {len(replayed)}")
    return len(replayed)


@dataclass
class ResumeRun:
    total_ms: float
    first_event_ms: float
    replayed: int


async def resume_once(tmp: TempDirs, data_dir: str, agent_id: str, min_events: int) -> ResumeRun:
    """`agent/resume {since: 0}` in a new server on `data_dir`, through `RpcClient`."""
    first: list[float] = []

    def on_message(msg: dict[str, Any], now: float) -> None:
        if not first and msg.get("method") == "agent/event" and msg["params"].get("replay"):
            first.append(now)

    async with running_server(tmp, data_dir) as client:
        await client.request("pool/stats")  # the server is fully up (start-up is measured apart)
        client.on_message = on_message
        start = time.perf_counter()
        result = await client.request("agent/resume", {"agentId": agent_id, "since": 0}, timeout=300)
        total_ms = (time.perf_counter() - start) * 1000
        client.on_message = None
        replayed = check_replay(client, agent_id, min_events, result)
    return ResumeRun(total_ms, (first[0] - start) * 1000, replayed)


class RawServer:
    """Just enough of a client to time the server alone: it splits frames but never
    JSON-decodes an `agent/event` body, so it is not bounded by a Python client's parsing."""

    EVENT_PREFIX = b'{"jsonrpc":"2.0","method":"agent/event"'

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids = itertools.count(1)

    @classmethod
    async def spawn(cls, env: dict[str, str], store: Store | None = None) -> "RawServer":
        proc = await asyncio.create_subprocess_exec(
            *server_command(*store_args(store), exe=SERVER.exe), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=store_env(env, store),
            cwd=server_cwd(env), limit=1 << 26)
        return cls(proc)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        body = json.dumps(msg).encode("utf-8")
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def frame(self) -> bytes:
        assert self.proc.stdout is not None
        header = await self.proc.stdout.readuntil(b"\r\n\r\n")
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return await self.proc.stdout.readexactly(int(line.split(b":", 1)[1]))
        raise BenchError(f"frame without Content-Length: {header[:100]!r}")

    async def call(self, method: str, params: Any = None) -> tuple[Any, int]:
        """Send a request, read until its response; returns (result, agent/event frames before it)."""
        msg_id = next(self.ids)
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}})
        events = 0
        while True:
            body = await self.frame()
            if body.startswith(self.EVENT_PREFIX):
                events += 1
                continue
            msg = json.loads(body)
            if msg.get("method") == "agent/event":
                events += 1
            elif msg.get("id") == msg_id:
                check("error" not in msg, f"{method} failed: {msg.get('error')}")
                return msg.get("result"), events

    async def close(self) -> None:
        await self.call("shutdown")
        self.send({"jsonrpc": "2.0", "method": "exit"})
        try:
            code = await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        check(code == 0, f"server pid {self.proc.pid} exited with code {code} after shutdown+exit")


async def resume_wire_ms(tmp: TempDirs, data_dir: str | None, agent_id: str, min_events: int,
                         store: Store | None = None) -> float:
    """`agent/resume {since: 0}` from request written to response read, events left undecoded."""
    server = await RawServer.spawn(server_env(tmp, data_dir), store)
    try:
        await server.call("initialize", {"protocolVersion": 1, "clientInfo": {"name": "kode-rpc-bench"}})
        await server.call("pool/stats")  # the server is fully up (start-up is measured apart)
        start = time.perf_counter()
        result, events = await server.call("agent/resume", {"agentId": agent_id, "since": 0})
        elapsed_ms = (time.perf_counter() - start) * 1000
        check(result["replayed"] >= min_events and events == result["replayed"] + 1,
              f"raw resume: replayed={result['replayed']}, {events} events before the response")
        await server.close()
    finally:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
    return elapsed_ms


async def bench_resume(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Resume (with full replay) of an agent with a long history, in a fresh server.

    After a restart or a reload of the editor window, the client resumes its agents
    with `since: 0` (or an old cursor) to rebuild the transcript; the chat stays blank
    until the response. Timed once the new server answers requests (its start-up is the
    spawn rows). This includes loading the agent from SQLite, taking its lease,
    reading every event and streaming them all to the client, which must parse them:
    the wire row shows the server's share (a client that does not decode the events).
    """
    data_dir = tmp.new("data")
    async with running_server(tmp, data_dir) as client:
        agent_id = await build_long_history(client, counts.resume_events)
    runs = [await resume_once(tmp, data_dir, agent_id, counts.resume_events) for _ in range(counts.resume_runs)]
    wire = [await resume_wire_ms(tmp, data_dir, agent_id, counts.resume_events) for _ in range(counts.resume_runs)]
    replayed = runs[0].replayed
    return [
        Row("resume_since_0", median_of(runs, "total_ms"), "ms", 50,
            note=f"request to response via RpcClient, {replayed:,} events, {spread(runs, 'total_ms')}"),
        Row("resume_since_0_first_event", median_of(runs, "first_event_ms"), "ms",
            note=f"request to first replayed event, {spread(runs, 'first_event_ms')}"),
        Row("resume_since_0_wire", statistics.median(wire), "ms",
            note=f"same, events framed but not JSON-decoded, {len(wire)} run(s), best {min(wire):.0f}"),
        Row("resume_events_replayed", replayed, "events", note="first run (each resume adds agent_resumed)"),
    ]


async def build_transcript(tmp: TempDirs, messages: int) -> tuple[str, str, int]:
    """A data dir holding one echo agent with `messages` messages; (data dir, agent id, its lastSeq).

    Each text has no whitespace, so echo streams it as one delta: a turn is two messages
    and 11 events (2 state_changed, 3 breakpoint_changed, text_chunk_start, text_chunk,
    text_chunk_end, token_usage, step_complete, done), 1,000 messages ~ 5,500 events.
    """
    data_dir = tmp.new("transcript")
    async with running_server(tmp, data_dir) as client:
        agent_id = await create_agent(client, {"provider": "echo"})
        for turn in range(messages // 2):
            text = f"message-{turn}:" + "-lorem-ipsum-dolor-sit-amet" * 6
            result = await complete(client, agent_id, text)
            check(result["text"] == text, f"echo answered {result['text'][:60]!r}")
        status = await client.request("agent/status", {"agentId": agent_id})
        check(status["messageCount"] == messages, f"transcript agent has {status['messageCount']} messages")
    return data_dir, agent_id, int(status["lastSeq"])


@dataclass
class TranscriptRun:
    total_ms: float
    initialize_ms: float
    replayed: int


async def spawn_to_transcript_ms(tmp: TempDirs, source: str | None, agent_id: str, min_events: int,
                                 binary: Path | None = None, store: Store | None = None) -> TranscriptRun:
    """Spawn -> `initialize` -> `agent/resume {since: 0}` answered with every event received.

    Each run copies the `source` data dir first (untimed), so every run resumes the same
    history (a resume appends `agent_resumed`); with a `store` the server uses that store
    as it is (`--store URL`, no copy: each run's history is one event longer). The end is
    the arrival of the resume response, taken in the client's read loop, which has by then
    delivered every replayed event (counted at that moment and checked against `replayed`).
    """
    data_dir = tmp.new("data")
    if source is not None:
        shutil.copytree(source, data_dir, dirs_exist_ok=True)
    env = server_env(tmp, data_dir)
    replay_seen = 0
    at_response: list[tuple[float, int]] = []

    def on_message(msg: dict[str, Any], now: float) -> None:
        nonlocal replay_seen
        if msg.get("method") == "agent/event":
            replay_seen += bool(msg["params"].get("replay"))
        elif isinstance(msg.get("result"), dict) and "replayed" in msg["result"]:
            at_response.append((now, replay_seen))

    start = time.perf_counter()
    client = await start_server(env, exe_of(binary), store)
    initialized = (time.perf_counter() - start) * 1000
    client.on_message = on_message
    try:
        result = await client.request("agent/resume", {"agentId": agent_id, "since": 0}, timeout=300)
    except BaseException:
        client.kill()
        await client.wait_exit()
        raise
    check(len(at_response) == 1, "agent/resume response not seen by the timing hook")
    answered, seen = at_response[0]
    client.on_message = None
    replayed = check_replay(client, agent_id, min_events, result)
    check(seen == replayed, f"{seen} replayed events had arrived with the response, {replayed} in all")
    await stop_server(client)
    return TranscriptRun((answered - start) * 1000, initialized, replayed)


async def transcript_rows(counts: Counts, tmp: TempDirs, source: str, agent_id: str, min_events: int,
                          label: str, binary: Path | None) -> list[Row]:
    runs = [await spawn_to_transcript_ms(tmp, source, agent_id, min_events, binary)
            for _ in range(counts.transcript_runs)]
    suffix = "" if binary is None else f"_{label}"
    return [
        goal(f"spawn_to_transcript{suffix}_median", median_of(runs, "total_ms"), "ms", TRANSCRIPT_TARGETS[label],
             note=f"spawn -> initialize -> agent/resume since 0 answered, {counts.transcript_messages:,} messages, "
                  f"{runs[0].replayed:,} events received, {spread(runs, 'total_ms')}, "
                  f"initialize at {median_of(runs, 'initialize_ms'):.0f}"),
    ]


async def bench_transcript(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Editor restart -> transcript back (issue 10).

    The editor reloads: it spawns a new server, initializes it and resumes its agent
    with `since: 0` to rebuild the chat; the user sees an empty panel until the last
    replayed event is in. The agent (echo, small config, like a real one) is built once;
    each run is a fresh server process on a copy of that data dir.
    """
    source, agent_id, last_seq = await build_transcript(tmp, counts.transcript_messages)
    return [
        *await transcript_rows(counts, tmp, source, agent_id, last_seq, "source", None),
        *[row for label, path, _ in SERVER.frozen_builds()
          for row in await transcript_rows(counts, tmp, source, agent_id, last_seq, label, path)],
    ]


async def fill_agent(client: RpcClient, agent_id: str, turns: int) -> None:
    for turn in range(turns):
        text = f"{agent_id} message {turn}: " + "lorem ipsum " * 8
        result = await complete(client, agent_id, text)
        check(result["text"] == text, f"echo agent {agent_id} answered {result['text'][:60]!r}")


async def check_agents_loaded(client: RpcClient, agent_ids: list[str], messages: int) -> None:
    for agent_id in agent_ids:
        status = await client.request("agent/status", {"agentId": agent_id})
        check(status["messageCount"] == messages and status["active"] is True,
              f"{agent_id}: messageCount={status['messageCount']} active={status['active']}, "
              f"expected {messages} messages, active")
    stats = await client.request("pool/stats")
    check(stats["active"] == len(agent_ids), f"pool/stats active={stats['active']}, expected {len(agent_ids)}")


@dataclass
class LoadRun:
    """One server filled with echo agents in parallel; memory in MiB from /proc (None off Linux)."""

    agents: int
    turns: int
    idle: float | None
    """VmRSS right after `initialize`."""
    fresh: float | None
    """VmRSS after the first `agent/create` ("agent ready")."""
    loaded: float | None
    peak: float | None
    fill_s: float
    events: int
    """Events the fill stored (all delivered, and each is stored before it is sent)."""

    @property
    def per_agent_kb(self) -> float | None:
        return None if self.loaded is None or self.idle is None else (self.loaded - self.idle) / self.agents * 1024

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.fill_s

    @property
    def events_per_s(self) -> float:
        return self.events / self.fill_s


async def load_agents(client: TimedClient, counts: Counts) -> LoadRun:
    """`counts.agents` echo agents, `counts.turns_per_agent` `agent/complete` turns each, agents in
    parallel (as a server behind many chat panels), on a server that has done nothing else yet."""
    pid = client.proc.pid
    idle = rss_mb(pid)
    agent_ids = [await create_agent(client, {"provider": "echo"})]
    fresh = rss_mb(pid)  # "agent ready": initialize + agent/create answered
    agent_ids += [await create_agent(client, {"provider": "echo"}) for _ in range(counts.agents - 1)]
    before = len(client.events)
    start = time.perf_counter()
    await asyncio.gather(*(fill_agent(client, a, counts.turns_per_agent) for a in agent_ids))
    fill_s = time.perf_counter() - start
    events = len(client.events) - before
    await check_agents_loaded(client, agent_ids, 2 * counts.turns_per_agent)
    return LoadRun(counts.agents, counts.agents * counts.turns_per_agent, idle, fresh, rss_mb(pid),
                   rss_mb(pid, "VmHWM"), fill_s, events)


async def bench_memory(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Resident memory of one server holding many active agents.

    One server per editor window, running for days, with a pool of up to 50 agents
    kept in memory (the default `maxAgents`): its RSS is what the user pays for
    keeping it around. The idle row is the cost of an empty server.
    """
    async with running_server(tmp) as client:
        load = await load_agents(client, counts)
    shape = f"{counts.agents} echo agents x {2 * counts.turns_per_agent} messages"
    per_agent = load.per_agent_kb
    return [
        Row("rss_loaded", load.loaded, "MB", 100, note=shape),
        Row("rss_peak_loaded (VmHWM)", load.peak, "MB", note=shape),
        Row("rss_idle_after_initialize (baseline)", load.idle, "MB"),
        goal("rss_fresh (agent ready)", load.fresh, "MiB", 45, note="VmRSS after initialize + agent/create answered"),
        goal("rss_per_agent", per_agent, "KB", 0.27 * 1024,
             note="(loaded - idle) / agents; target 0.27 MiB"
                  + ("" if per_agent is None else f", = {per_agent / 1024:.3f} MiB")),
        Row("echo_turns_per_s (while filling)", load.turns_per_s, "turns/s",
            note=f"{load.turns:,} agent/complete, {counts.agents} agents in parallel"),
    ]


# --- checkpoints ------------------------------------------------------------------------

CHECKPOINT_FILES = 10_000
CHECKPOINT_FILE_BYTES = 10_000
"""The checkpoint rows' workDir: 10,000 files of 10 kB (100 MB) in 100 directories."""


class EventTimes:
    """Arrival times (perf_counter) of one agent's events, by type, in order."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.times: dict[str, list[float]] = {}

    def __call__(self, msg: dict[str, Any], now: float) -> None:
        if msg.get("method") == "agent/event" and msg["params"]["agentId"] == self.agent_id:
            self.times.setdefault(msg["params"]["event"]["type"], []).append(now)


async def watched_turn(client: TimedClient, agent_id: str, text: str) -> tuple[float, EventTimes]:
    """send -> done in ms, and the arrival times of the turn's events."""
    times = EventTimes(agent_id)
    watch = TurnWatch(agent_id)

    def both(msg: dict[str, Any], now: float) -> None:
        times(msg, now)
        watch(msg, now)

    client.on_message = both
    try:
        start = time.perf_counter()
        await client.request("agent/send", {"agentId": agent_id, "text": text})
        done, done_at = await asyncio.wait_for(watch.finished, timeout=300)
    finally:
        client.on_message = None
    check(done["reason"] == "completed", f"turn ended {done['reason']!r}")
    return (done_at - start) * 1000, times


def write_tree(root: str, files: int, size: int) -> None:
    for i in range(files):
        d = os.path.join(root, f"d{i % 100:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "w", encoding="ascii") as fh:
            fh.write((os.urandom(size // 2).hex() + "\n")[:size])


async def bench_checkpoints(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Checkpoints (contract 14) as an editor feels them.

    (1) A workDir of 10,000 files / 100 MB: the snapshot before the first fs_write of a
    turn (`tool:start` -> `checkpoint` arrival), first on a fresh agent, then on later
    turns (median), and the end-of-turn snapshot + diff (`state_changed READY` ->
    `turn_diff`). (2) What checkpoints add to a turn: the same scripted turns on two
    agents, one with `checkpoints: false`, in a small workDir (median send -> done
    difference): a turn with one fs_read (no checkpoint may be taken: checked) and a
    turn with one fs_write.
    """
    runs = max(4, counts.tool_turns // 5)
    big = tmp.new("cpwork")
    write_tree(big, CHECKPOINT_FILES, CHECKPOINT_FILE_BYTES)
    small = tmp.new("cpsmall")
    write_tree(small, 100, 1000)
    writes = [step for i in range(runs + 1)
              for step in ({"toolCalls": [{"name": "fs_write", "input": {"path": f"new{i}.txt", "content": f"{i}\n"}}]},
                           {"text": "ok"})]
    reads = [step for _ in range(counts.turn_warmup + runs)
             for step in ({"toolCalls": [{"name": "fs_read", "input": {"path": "d00/f0.txt"}}]}, {"text": "ok"})]
    data_dir = tmp.new("data")
    async with running_server(tmp, data_dir) as client:
        info = await client.request("agent/create", {"model": {"provider": "scripted", "script": writes},
                                                     "permission": {"mode": "auto"}, "sandbox": {"workDir": big}})
        agent = str(info["agentId"])
        snaps, ends = [], []
        for i in range(runs + 1):
            _, t = await watched_turn(client, agent, f"write {i}")
            check(len(t.times.get("checkpoint", [])) == 1 and len(t.times.get("turn_diff", [])) == 1,
                  "a fs_write turn takes one checkpoint and sends one turn_diff")
            snaps.append((t.times["checkpoint"][0] - t.times["tool:start"][0]) * 1000)
            ends.append((t.times["turn_diff"][0] - t.times["state_changed"][-1]) * 1000)
        listed = (await client.request("agent/checkpoints", {"agentId": agent}))["checkpoints"]
        check(len(listed) == runs + 1 and all(c["files"] == 1 for c in listed), "every turn's checkpoint is listed")
        stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(data_dir, "checkpoints", agent))
                     for f in fs) / 1e6
        medians: dict[tuple[str, bool], float] = {}
        for kind, script in (("read", reads), ("write", writes)):
            for enabled in (True, False):
                info = await client.request("agent/create", {
                    "model": {"provider": "scripted", "script": script}, "checkpoints": enabled,
                    "permission": {"mode": "auto"}, "sandbox": {"workDir": small if kind == "read" else tmp.new("cpw")}})
                agent = str(info["agentId"])
                samples = []
                for i in range(runs + (counts.turn_warmup if kind == "read" else 1)):
                    ms, t = await watched_turn(client, agent, "go")
                    taken = len(t.times.get("checkpoint", []))
                    check(taken == (1 if kind == "write" and enabled else 0),
                          f"{kind} turn with checkpoints {enabled}: {taken} checkpoint events")
                    samples.append(ms)
                medians[(kind, enabled)] = statistics.median(samples[-runs:])
    size = f"{CHECKPOINT_FILES:,} files / {CHECKPOINT_FILES * CHECKPOINT_FILE_BYTES / 1e6:.0f} MB"
    read_cost = medians[("read", True)] - medians[("read", False)]
    write_cost = medians[("write", True)] - medians[("write", False)]
    return [
        Row("checkpoint_first_ms", snaps[0], "ms",
            note=f"first snapshot of {size} (tool:start -> checkpoint); {stored:.0f} MB on disk after {runs + 1} turns"),
        Row("checkpoint_next_ms", statistics.median(snaps[1:]), "ms",
            note=f"later turns, median of {runs}, max {max(snaps[1:]):.1f}; {size}"),
        Row("checkpoint_turn_end_ms", statistics.median(ends), "ms",
            note=f"end snapshot + diff of a 1-file turn (READY -> turn_diff), median of {runs + 1}; {size}"),
        goal("checkpoint_cost_read_turn_ms", read_cost, "ms", 0.5,
             note=f"fs_read turn, checkpoints on - off: {medians[('read', True)]:.2f} - {medians[('read', False)]:.2f} ms "
                  f"(no checkpoint taken: checked)"),
        Row("checkpoint_cost_write_turn_ms", write_cost, "ms",
            note=f"fs_write turn in a 100-file workDir, on - off: {medians[('write', True)]:.2f} - "
                 f"{medians[('write', False)]:.2f} ms"),
    ]


# --- stores: SQLite vs PostgreSQL (vs JSON) ---------------------------------------------

STORE_KINDS = ("sqlite", "postgres", "json")
"""The columns of the store comparison; `sqlite` is the default store, the one the other rows use."""
EVENTS_PER_ECHO_TURN = 11
"""An echo turn of one delta stores 11 events (see `build_transcript`); an agent starts with 1."""


def import_repo_tests() -> None:
    """Make the repository's `tests` package importable: its fake provider server and its
    throwaway PostgreSQL cluster are reused here rather than copied."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


class StoreLab:
    """Fresh, empty stores of each kind for one comparison.

    PostgreSQL is a throwaway cluster started by `tests/pg.py`'s `PgServer` (as user
    postgres when we are root; fsync off, like the tests: these rows time kode-rpc, not a
    disk). Servers reach it over TCP on 127.0.0.1 with scram-sha-256 and a `PGPASSFILE`,
    the deployment docs' advice, so no password sits in the URL (a password there would also
    be registered as a secret and every event scanned for it, which SQLite URLs never pay).
    Without PostgreSQL binaries (or when the cluster does not start) `skipped` says why and
    only the other stores are measured: no failure, CI machines need not have PostgreSQL.
    """

    def __init__(self, tmp: TempDirs) -> None:
        self.tmp = tmp
        self.pg: PgServer | None = None
        self.skipped = ""
        self.pgpass = ""
        self.user = ""

    def start_postgres(self) -> None:
        import_repo_tests()
        try:
            from tests.pg import PASSWORD, SUPERUSER, start_pg
        except ImportError as exc:  # pytest (which tests/pg.py imports) is a dev dependency
            self.skipped = f"tests/pg.py not importable: {exc}"
            return
        try:
            started = start_pg()
        except Exception as exc:  # e.g. no user to run it as (root without a `postgres` user)
            started = f"PostgreSQL did not start: {exc}"
        if isinstance(started, str):
            self.skipped = started
            return
        self.pg = started
        self.pgpass = os.path.join(self.tmp.new("pgpass"), "pgpass")
        with open(self.pgpass, "w", encoding="utf-8") as fh:
            fh.write(f"127.0.0.1:{started.port}:*:{SUPERUSER}:{PASSWORD}\n")
        os.chmod(self.pgpass, 0o600)  # libpq ignores a pgpass file others can read
        self.user = SUPERUSER

    def kinds(self) -> list[str]:
        return [k for k in STORE_KINDS if k != "postgres" or self.pg is not None]

    def fresh(self, kind: str) -> Store:
        """A new empty store of `kind` (a new file, database or folder)."""
        if kind == "sqlite":
            return Store(kind, f"sqlite://{self.tmp.new('sqlite')}/kode.db")
        if kind == "json":
            return Store(kind, f"json://{self.tmp.new('json')}")
        assert self.pg is not None, "no PostgreSQL cluster: kinds() leaves postgres out"
        db = self.pg.create_database("bench")
        return Store(kind, f"postgresql://{self.user}@127.0.0.1:{self.pg.port}/{db}", {"PGPASSFILE": self.pgpass})

    def connections(self, store: Store) -> dict[str, int]:
        """The store's database connections by `application_name` ("kode-rpc": pooled,
        "kode-rpc locks": the advisory-lock connection), from `pg_stat_activity`."""
        if store.kind != "postgres" or self.pg is None:
            return {}
        database = store.url.rsplit("/", 1)[1]  # as `fresh` made it: no query string
        out = self.pg.psql("SELECT application_name, count(*) FROM pg_stat_activity "
                           f"WHERE datname = '{database}' GROUP BY 1 ORDER BY 1")
        return {name: int(n) for name, _, n in (line.rpartition("|") for line in out.splitlines() if line)}

    def close(self) -> None:
        if self.pg is not None:
            self.pg.destroy()


async def copy_into(source_url: str, target: Store, tmp: TempDirs) -> None:
    """`kode-rpc store copy SOURCE TARGET`, the way a user moves agents to another store,
    run by the server under test."""
    env = store_env(server_env(tmp), target)
    cmd = [*server_command(exe=SERVER.exe)[:-1], "store", "copy", source_url, target.url]  # [:-1]: not `serve`
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=server_cwd(env), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    check(proc.returncode == 0, f"store copy to {target.kind} exited {proc.returncode}: {out[-500:]!r}")


def store_row(name: str, values: dict[str, float | None], unit: str, note: str = "") -> Row:
    """One measure with a column per store (None: not measured there, or not applicable)."""
    columns = {kind: values.get(kind) for kind in STORE_KINDS}
    return Row(name, columns["sqlite"], unit, note=note, stores=columns)


def connections_row(name: str, by_name: dict[str, int] | None, when: str) -> Row:
    """A PostgreSQL-only row: one server's connections, the note split by `application_name`."""
    if by_name is None:
        return store_row(name, {}, "connections", note=f"{when}: postgres not measured")
    split = ", ".join(f"{n} {app!r}" for app, n in by_name.items()) or "none"
    return store_row(name, {"postgres": sum(by_name.values())}, "connections", note=f"{when}: {split}")


async def bench_stores(counts: Counts, tmp: TempDirs) -> list[Row]:
    """SQLite vs PostgreSQL (vs JSON files), measured as the user feels them, in one run (issue 11).

    Every figure is a real server spawned with `--store URL` on a fresh store and driven over
    stdio, like the other rows, so the columns differ only in the store.
    (1) Per-turn cost: the 100-chunk scripted turns of `turn_100_chunks` (send -> done; `done`
    goes out after the turn's events are stored), one server per store, all up at once, taking
    turns, so a busy moment of the machine hits every store alike.
    (2) Events persisted per second: a long streamed reply (`counts.chunks` deltas), every event
    of the turn / send -> done, in the same rotation.
    (3) Capacity: one server filling `counts.agents` echo agents in parallel (RSS per agent,
    turns and events stored per second) and, on PostgreSQL, the connections it holds
    (`pg_stat_activity`) before and after.
    (4) Editor restart: an agent of >= `counts.resume_events` events, seeded once on SQLite by
    echo turns and moved to each store with `kode-rpc store copy`; each run spawns a new server
    -> `initialize` -> `agent/resume {since: 0}` with every event received (runs alternate
    between stores, so they share the machine's moments).
    """
    lab = StoreLab(tmp)
    await asyncio.to_thread(lab.start_postgres)
    try:
        kinds = lab.kinds()
        turns: dict[str, list[float]] = {kind: [] for kind in kinds}
        streams: dict[str, list[StreamRun]] = {kind: [] for kind in kinds}
        deltas = [f"w{i} " for i in range(counts.chunks)]
        async with AsyncExitStack() as servers:
            clients = {kind: await servers.enter_async_context(running_server(tmp, store=lab.fresh(kind)))
                       for kind in kinds}
            agents = {kind: await hundred_chunk_agent(client, counts) for kind, client in clients.items()}
            for _ in range(counts.turns):  # turn by turn in rotation: a busy moment hits every store
                for kind, (agent_id, reply) in agents.items():
                    turns[kind].append((await timed_turn(clients[kind], agent_id, reply))[0])
            for _ in range(counts.chunk_runs):
                for kind, client in clients.items():
                    streams[kind].append(await stream_once(client, deltas))
        loads: dict[str, LoadRun] = {}
        conns: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
        for kind in kinds:
            store = lab.fresh(kind)
            async with running_server(tmp, store=store) as client:
                idle = await asyncio.to_thread(lab.connections, store)
                loads[kind] = await load_agents(client, counts)
                conns[kind] = (idle, await asyncio.to_thread(lab.connections, store))
        messages = 2 * math.ceil(counts.resume_events / EVENTS_PER_ECHO_TURN)
        seed, agent_id, last_seq = await build_transcript(tmp, messages)
        targets = {kind: lab.fresh(kind) for kind in kinds}
        for store in targets.values():
            await copy_into(f"sqlite://{seed}/kode.db", store, tmp)
        resumes: dict[str, list[TranscriptRun]] = {kind: [] for kind in kinds}
        wires: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(counts.transcript_runs):
            for kind, store in targets.items():
                resumes[kind].append(await spawn_to_transcript_ms(tmp, None, agent_id, last_seq, store=store))
                wires[kind].append(await resume_wire_ms(tmp, None, agent_id, last_seq, store))
    finally:
        await asyncio.to_thread(lab.close)

    def per(values: Callable[[str], float | None]) -> dict[str, float | None]:
        return {kind: values(kind) for kind in kinds}

    skipped = f"; postgres skipped: {lab.skipped}" if lab.skipped else ""
    pg_conns = conns.get("postgres")
    shape = f"{counts.agents} echo agents x {2 * counts.turns_per_agent} messages in parallel"
    return [
        store_row("store_turn_100_chunks_median", per(lambda k: statistics.median(turns[k])), "ms",
                  note=f"send -> done, {CHUNKS_PER_REPLY}-chunk scripted reply, {counts.turns} turns on one agent "
                       f"after {counts.turn_warmup} warm-up{skipped}"),
        store_row("store_turn_100_chunks_p95", per(lambda k: percentile(turns[k], 95)), "ms",
                  note=f"N={counts.turns}"),
        store_row("store_stream_events_per_s (send to done)", per(lambda k: median_of(streams[k],
                                                                                      "send_to_done_stored_per_s")),
                  "events/s", note=f"every event of a {counts.chunks:,}-delta reply (stored, then sent) / "
                                   f"send -> done, {counts.chunk_runs} run(s), median; deltas merge while a "
                                   "batch commits, so a slower commit makes fewer, bigger events"),
        store_row("store_stream_deltas_per_s (send to done)", per(lambda k: median_of(streams[k],
                                                                                      "send_to_done_deltas_per_s")),
                  "deltas/s", note="the same turns in source deltas (deltas merge into fewer events)"),
        store_row("store_echo_turns_per_s (parallel)", per(lambda k: loads[k].turns_per_s), "turns/s",
                  note=f"{counts.agents * counts.turns_per_agent:,} agent/complete, {shape}"),
        store_row("store_echo_events_per_s (parallel)", per(lambda k: loads[k].events_per_s), "events/s",
                  note=f"events those turns stored / the same time ({loads[kinds[0]].events:,} events): "
                       "sustained events persisted, none merged"),
        store_row("store_rss_per_agent", per(lambda k: loads[k].per_agent_kb), "KB",
                  note=f"(loaded - idle) / {counts.agents}, {shape}"),
        store_row("store_rss_idle_after_initialize", per(lambda k: loads[k].idle), "MiB",
                  note="an empty server on that store"),
        store_row("store_rss_loaded", per(lambda k: loads[k].loaded), "MiB", note=shape),
        connections_row("store_pg_connections_idle", pg_conns and pg_conns[0], "one server after initialize"),
        connections_row("store_pg_connections_loaded", pg_conns and pg_conns[1],
                        f"the same server after {shape} (default poolMax 20)"),
        store_row("store_spawn_to_transcript_median", per(lambda k: median_of(resumes[k], "total_ms")), "ms",
                  note=f"spawn -> initialize -> agent/resume since 0 answered, {resumes[kinds[0]][0].replayed:,} "
                       f"events received, {counts.transcript_runs} run(s) per store, median"),
        store_row("store_resume_since_0_median",
                  per(lambda k: statistics.median(r.total_ms - r.initialize_ms for r in resumes[k])), "ms",
                  note="the same runs from initialize answered to the resume answered"),
        store_row("store_resume_since_0_wire_median", per(lambda k: statistics.median(wires[k])), "ms",
                  note="the resume (after initialize + pool/stats) through a client that splits frames but "
                       "never decodes the events: the server's share"),
    ]


# --- provider overhead -------------------------------------------------------------------


def openai_stream(tokens: list[str]) -> list[bytes]:
    """A chat-completions SSE stream, one chunk per token, then usage and [DONE]."""
    from tests.fakes import sse

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(None, {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764201600,
                          "model": "bench", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    return [chunk({"role": "assistant", "content": ""}), *[chunk({"content": t}) for t in tokens],
            chunk({}, "stop"),
            sse(None, {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764201600,
                       "model": "bench", "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)}}),
            sse(None, "[DONE]")]


async def bench_provider(counts: Counts, tmp: TempDirs) -> list[Row]:
    """Provider overhead: what the server adds between a model's bytes and the client.

    A fake OpenAI-compatible server on 127.0.0.1 streams real chat-completions SSE.
    (1) From the fake server writing its first SSE byte to the client receiving the
    first `text_chunk`: httpx, SSE parsing, the agent loop, the store commit and the
    pipe. (2) A stream paced at 1,000 tokens/s: are events delivered as fast as they
    come (the rate should be the model's, not the server's)?
    """
    import_repo_tests()
    from tests.fakes import FakeResponse, FakeServer

    fake = await FakeServer().start()
    latencies: list[float] = []
    paced_events = paced_deltas = source_rate = 0.0
    try:
        async with running_server(tmp) as client:
            agent_id = await create_agent(client, {"provider": "openai", "model": "bench", "baseUrl": fake.url + "/v1"})
            for _ in range(counts.provider_runs):
                first: list[float] = []
                client.on_message = lambda msg, now: (not first and msg.get("method") == "agent/event"
                                                      and msg["params"]["event"]["type"] == "text_chunk"
                                                      and first.append(time.monotonic()))
                fake.add(FakeResponse(chunks=openai_stream(["hello ", "world"])))
                await complete(client, agent_id, "hi")
                check(bool(first) and bool(fake.first_byte_at), "no text_chunk or no first byte recorded")
                latencies.append((first[0] - fake.first_byte_at[-1]) * 1000)
            tokens = [f"t{i} " for i in range(counts.provider_tokens)]
            times: list[float] = []
            client.on_message = lambda msg, now: (msg.get("method") == "agent/event"
                                                  and msg["params"]["agentId"] == agent_id
                                                  and msg["params"]["event"]["type"] in ("text_chunk", "done")
                                                  and times.append(now))
            before = len(client.events_of(agent_id, "text_chunk"))
            fake.add(FakeResponse(chunks=openai_stream(tokens), delay=0.001))
            result = await complete(client, agent_id, "stream", timeout=300)
            check(result["text"] == "".join(tokens), "paced stream arrived altered")
            events = len(client.events_of(agent_id, "text_chunk")) - before
            window = times[-1] - times[0]
            paced_events = events / window
            paced_deltas = len(tokens) / window
            source_rate = len(tokens) / (fake.last_byte_at[-1] - fake.first_byte_at[-1])
    finally:
        await fake.stop()
    return [
        Row("provider_first_byte_to_text_chunk_median", statistics.median(latencies), "ms",
            note=f"fake OpenAI SSE on 127.0.0.1, N={len(latencies)}"),
        Row("provider_first_byte_to_text_chunk_p90", percentile(latencies, 90), "ms", note=f"N={len(latencies)}"),
        Row("provider_paced_source_rate", source_rate, "tokens/s",
            note=f"{len(tokens)} tokens, 1 ms apart: the rate the fake server achieved"),
        Row("provider_paced_deltas_per_s", paced_deltas, "deltas/s", note="tokens the client got per second"),
        Row("provider_paced_events_per_s", paced_events, "events/s", note="text_chunk events the client got"),
    ]


MEASUREMENTS: list[tuple[str, Callable[[Counts, TempDirs], Awaitable[list[Row]]]]] = [
    ("spawn", bench_spawn),
    ("status", bench_status),
    ("chunks", bench_chunks),
    ("resume", bench_resume),
    ("transcript", bench_transcript),
    ("turns", bench_turns),
    ("memory", bench_memory),
    ("provider", bench_provider),
    ("checkpoints", bench_checkpoints),
    ("stores", bench_stores),
]


# --- running and reporting ----------------------------------------------------------


@dataclass
class RunResult:
    server: ServerUnderTest
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def run_all(counts: Counts, tmp: TempDirs, servers: list[ServerUnderTest]) -> list[RunResult]:
    """Every measurement for every server; with a baseline, each measurement runs for the
    baseline and right after it for the server under test, so both see the same machine."""
    global SERVER
    results = [RunResult(server) for server in servers]
    if BYTECODE["dir"] is not None:
        for result in results:
            SERVER = result.server
            await warm_up(tmp)
    for name, measure in MEASUREMENTS:
        for result in results:
            SERVER = result.server
            start = time.perf_counter()
            print(f"[bench] {name} ({result.server.label}) ...", file=sys.stderr, flush=True)
            try:
                result.rows.extend(await measure(counts, tmp))
            except Exception as exc:  # one broken measurement must not hide the others
                traceback.print_exc()
                result.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                result.rows.append(Row(name, None, "", note=f"{type(exc).__name__}: {exc}", error=True))
            print(f"[bench] {name} ({result.server.label}) took {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
    SERVER = servers[-1]
    return results


def bytecode_cache() -> str:
    if BYTECODE["dir"] is not None:
        return "compiled once per run, as installed (PYTHONPYCACHEPREFIX)"
    return "off (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "kode_rpc": kode_version,
        "bytecode_cache": bytecode_cache(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "server": SERVER.describe(),
        "frozen": {label: str(path) for label, path, _ in SERVER.frozen_builds()},
    }


def layout(cells: Sequence[tuple[str, ...]], figures: int) -> str:
    """Aligned columns with a rule under the header: the name left, the next `figures` columns
    right-aligned, the rest left; the last one (a note) is not padded and its rule is its header's."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    widths[-1] = len(cells[0][-1])
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(c[j].rjust(widths[j]) if 1 <= j <= figures else c[j].ljust(widths[j])
                               for j in range(len(c))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_table(rows: list[Row]) -> str:
    """The rows as a table; rows measured on each store follow as a second table, a column per store."""
    header = ("name", "value", "unit", "target", "result", "note")
    cells = [header] + [(r.name, fmt(r.value), r.unit, r.target_text, r.status, r.note)
                        for r in rows if r.stores is None]
    by_store = [r for r in rows if r.stores is not None]
    tables = [layout(cells, 1)] if len(cells) > 1 or not by_store else []
    return "\n\n".join(tables + ([render_stores(by_store)] if by_store else []))


def render_stores(rows: list[Row]) -> str:
    """Store comparison rows side by side: one row per measure, a column per store."""
    kinds = list(dict.fromkeys(kind for r in rows for kind in r.stores or {}))
    cells = [("store comparison", *kinds, "unit", "note")]
    cells += [(r.name, *(fmt((r.stores or {}).get(k)) for k in kinds), r.unit, r.note) for r in rows]
    return layout(cells, len(kinds))


def render_comparison(before: dict[str, Any], rows: list[Row], label_now: str = "now") -> str:
    """`before` (an earlier JSON report, e.g. of an older commit) beside this run, row by row."""
    old = {r["name"]: r for r in before["results"]}
    label = before.get("label") or "before"
    header = ("name", label, label_now, "unit", "target", f"{label_now} result", f"{label} result")
    cells = [header]
    for r in rows:
        b = old.pop(r.name, None)
        cells.append((r.name, fmt(b["value"]) if b else "-", fmt(r.value), r.unit, r.target_text, r.status,
                      b["status"] if b else "-"))
    for name, b in old.items():  # rows only the earlier run has
        cells.append((name, fmt(b["value"]), "-", b["unit"], "-", "-", b["status"]))
    return layout(cells, 2)


def report_of(result: RunResult, quick: bool, counts: Counts, seconds: float) -> dict[str, Any]:
    global SERVER
    current, SERVER = SERVER, result.server
    try:
        info = machine_info()
    finally:
        SERVER = current
    return {"machine": info, "label": result.server.label, "mode": "quick" if quick else "full",
            "counts": asdict(counts), "duration_s": round(seconds, 1), "errors": result.errors,
            "results": [r.to_json() for r in result.rows]}


def write_json(path: Path, report: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """The run's report; a baseline measured in the same run is kept under `baseline`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, **({"baseline": baseline} if baseline else {})}, indent=2) + "\n",
                    encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark kode-rpc over its real stdio transport.")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run of every measurement (< 60 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
    parser.add_argument("--server", help="server executable run as `EXE serve` (default: $KODE_RPC_SERVER, "
                                         "else this interpreter's `-m kode_rpc`)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in every server's environment, e.g. PYTHONPATH=/tmp/perf-old (repeatable)")
    parser.add_argument("--label", default="now", help="name of this run in the JSON report and in a later --compare")
    parser.add_argument("--compare", type=Path, metavar="JSON",
                        help="an earlier report (e.g. of an older commit) printed beside this run")
    parser.add_argument("--baseline-server", metavar="EXE",
                        help="also measure this server (e.g. an older commit's), each measurement right before "
                             "the server under test's, and print both side by side")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the baseline servers' environment (repeatable); without --baseline-server "
                             "the baseline is `python -m kode_rpc` with these, e.g. PYTHONPATH=/tmp/perf-old")
    parser.add_argument("--baseline-onedir", type=Path, metavar="BINARY",
                        help="the baseline's one-dir build, measured beside it (default: none)")
    parser.add_argument("--baseline-label", default="before", help="its name in the tables and JSON (default: before)")
    parser.add_argument("--cold-bytecode", action="store_true",
                        help="leave bytecode caching to the environment (with PYTHONDONTWRITEBYTECODE=1 a "
                             "server compiles its modules at every start) instead of compiling once per run")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these measurements (repeatable): {', '.join(n for n, _ in MEASUREMENTS)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = QUICK if args.quick else FULL
    try:
        current = ServerUnderTest(args.server, parse_env(args.server_env), args.label)
        servers = [current]
        if args.baseline_server or args.baseline_env:
            frozen: list[tuple[str, Path, float | None]] = (
                [("onedir", args.baseline_onedir, 400.0)] if args.baseline_onedir else [])
            servers.insert(0, ServerUnderTest(args.baseline_server, parse_env(args.baseline_env),
                                              args.baseline_label, frozen))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {n for n, _ in MEASUREMENTS}
        if unknown:
            print(f"--only: unknown measurement(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        MEASUREMENTS[:] = [(n, m) for n, m in MEASUREMENTS if n in args.only]
    before = json.loads(args.compare.read_text(encoding="utf-8")) if args.compare else None
    tmp = TempDirs()
    BYTECODE["dir"] = None if args.cold_bytecode else tmp.new("pycache")
    start = time.perf_counter()
    try:
        results = asyncio.run(run_all(counts, tmp, servers))
    finally:
        tmp.cleanup()
    seconds = time.perf_counter() - start
    reports = [report_of(r, args.quick, counts, seconds) for r in results]
    info = reports[-1]["machine"]
    print(f"kode-rpc {info['kode_rpc']} bench ({'quick' if args.quick else 'full'}), Python {info['python']}, "
          f"{info['platform']}, {info['cpu_count']} CPUs, bytecode cache {info['bytecode_cache']}, "
          f"{info['date']}, {seconds:.1f} s")
    print(f"server: {info['server']}")
    print(render_table(results[-1].rows))
    baseline = reports[0] if len(reports) > 1 else None
    for other, source in ((baseline, "measured in this run, each measurement just before"),
                          (before, str(args.compare))):
        if other is not None:
            print(f"\n{other.get('label') or 'before'} ({source}): {other['machine'].get('server', '?')}, "
                  f"{other['machine']['date']}, {other['mode']}")
            print(render_comparison(other, results[-1].rows, results[-1].server.label))
    write_json(args.out, reports[-1], baseline)
    print(f"wrote {args.out}")
    errors = [f"{r.server.label}: {e}" for r in results for e in r.errors]
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


def parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"NAME=VALUE expected, got {item!r}")
        env[name] = value
    return env


if __name__ == "__main__":
    sys.exit(main())
