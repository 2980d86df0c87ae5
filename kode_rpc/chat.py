"""`kode-rpc chat`: talk to an agent in the terminal through a spawned server.

This is the newcomer's first contact with kode-rpc, so it drives the server
exactly as an editor would (a child process, real pipes, `initialize` with
approvals, `agent/create`/`agent/resume`, `agent/send` plus streamed events,
`approval/request` answered from the terminal). Whatever works here works for a
plugin, and whatever is broken shows up here first.

Three things shape the design:

- stdin has exactly one reader (`LineReader`), shared by the REPL prompt and the
  approval prompt. Two independent readers would race for the same line, or one
  would block the event loop while the other waits forever.
- The server runs in its own process group/session: a Ctrl-C in the terminal
  goes to the whole foreground group, and the server treats SIGINT as "shut
  down". Ctrl-C is meant for chat, which turns it into `agent/interrupt`.
- The server's stderr goes to a file in the log directory, never to the
  terminal: chat's stdout and the terminal are the user interface.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable
from typing import IO, Any, TextIO, TypeVar

from . import __version__
from .client import RpcClient, RpcError
from .config import expand_preset, log_dir

T = TypeVar("T")

NOT_FOUND = -32002
"""`agent/resume` of an unknown id: create the agent under that id instead."""

WAIT_FOREVER = 7 * 24 * 3600.0
"""`RpcClient.wait_for` needs a timeout; a turn waiting on a human has none."""

ECHO_NOTE = ("No model provider configured: running on `echo`, which repeats what you type. "
             "Set KODE_PROVIDER / --provider to use a real model.")

MAX_DIFF_LINES = 80
MAX_INPUT_CHARS = 2000
MAX_STDERR_LOG = 5 * 1024 * 1024


class ServerGone(Exception):
    """The server process ended (or closed its stdout) while chat still needed it."""


class Quit(Exception):
    """The user asked to leave: Ctrl-C at the prompt, or a second Ctrl-C during a turn."""


class UsageError(Exception):
    """Bad command-line input found before anything was spawned (exit code 2)."""


# --- terminal input ------------------------------------------------------------------------
class LineReader:
    """The single reader of stdin, feeding whole lines into an asyncio queue.

    A thread is the portable way to read stdin without blocking the loop: it works
    for a TTY, a pipe and a redirected file alike (`connect_read_pipe` refuses
    regular files and does not exist for the Windows console). The thread reads
    the unbuffered raw stream, so it never holds the lock of `sys.stdin.buffer`;
    a daemon thread blocked while holding that lock makes interpreter shutdown
    abort with "could not acquire lock for <stdin>".

    The thread starts on the first `readline()`, so `-m` runs that never ask
    anything leave the terminal's stdin alone. EOF is sticky: after it every
    `readline()` returns None at once.
    """

    def __init__(self, stream: IO[Any] | None) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self.eof = False

    @property
    def interactive(self) -> bool:
        """Whether a human types the lines (and the terminal echoes them)."""
        try:
            return self._stream is not None and self._stream.isatty()
        except (ValueError, OSError):
            return False

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="chat-stdin", daemon=True)
        self._thread.start()

    def _raw_read(self) -> Any:
        """The lock-free read function: the raw FileIO (or the Windows console) under stdin."""
        stream = self._stream
        if stream is None:
            return None
        raw = getattr(getattr(stream, "buffer", None), "raw", None)
        if raw is not None and hasattr(raw, "read"):
            return raw.read
        try:
            fd = stream.fileno()
        except (ValueError, OSError, io.UnsupportedOperation):
            return None
        return lambda n: os.read(fd, n)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        read = self._raw_read()
        pending = b""
        try:
            while read is not None:
                try:
                    data = read(65536)
                except InterruptedError:
                    continue
                except (OSError, ValueError):
                    break
                if not data:  # EOF (None would mean non-blocking and no data: never here)
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    loop.call_soon_threadsafe(self._queue.put_nowait, line.decode("utf-8", "replace") + "\n")
            if pending:
                loop.call_soon_threadsafe(self._queue.put_nowait, pending.decode("utf-8", "replace"))
            loop.call_soon_threadsafe(self._queue.put_nowait, None)
        except RuntimeError:  # the loop is closed: chat has ended
            pass

    async def readline(self) -> str | None:
        """The next line with its newline, or None at EOF. Cancelling loses no line."""
        if self.eof:
            return None
        if self._thread is None:
            self._start()
        line = await self._queue.get()
        if line is None:
            self.eof = True
        return line


# --- terminal output -----------------------------------------------------------------------
class Terminal:
    """chat's stdout, tracking whether the cursor is at a line start so streamed text,
    tool lines and prompts never run into each other."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.bol = True
        try:
            tty = out.isatty()
        except (ValueError, OSError):
            tty = False
        self.color = (tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
                      and (os.name != "nt" or "WT_SESSION" in os.environ))

    def write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self.bol = text.endswith("\n")

    def newline(self) -> None:
        if not self.bol:
            self.write("\n")

    def line(self, text: str = "") -> None:
        self.newline()
        self.write(text + "\n")

    def style(self, text: str, code: str) -> str:
        """ANSI SGR styling, only on a real terminal (pipes and logs get plain text)."""
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and text else text

    def dim(self, text: str) -> str:
        return self.style(text, "2")

    def bold(self, text: str) -> str:
        return self.style(text, "1")

    def red(self, text: str) -> str:
        return self.style(text, "31")

    def green(self, text: str) -> str:
        return self.style(text, "32")

    def yellow(self, text: str) -> str:
        return self.style(text, "33")


# --- command line -> protocol ------------------------------------------------------------
def load_script(path: str) -> list[dict[str, Any]]:
    """The `scripted` provider's steps from `--script FILE` (a JSON list)."""
    try:
        with open(path, encoding="utf-8") as fh:
            script = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read --script {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--script {path} is not valid JSON: {exc}") from None
    if not isinstance(script, list) or not all(isinstance(step, dict) for step in script):
        raise UsageError(f"--script {path} must hold a JSON list of steps (objects)")
    return script


def model_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The `ModelConfig` from --provider/--model/--script; None lets the server's default apply.

    `--script` alone implies the `scripted` provider, since nothing else reads it.
    """
    provider: str | None = args.provider
    if provider is None and args.script:
        provider = "scripted"
    if provider is None:
        if args.model:
            raise UsageError("--model needs --provider (the default provider comes from KODE_PROVIDER or config.toml)")
        return None
    model: dict[str, Any] = {"provider": provider}
    if args.model:
        model["model"] = args.model
    if getattr(args, "base_url", None):
        model["baseUrl"] = args.base_url
    model = expand_preset(model)  # --provider ollama / lmstudio / vllm / llamacpp
    if args.script:
        if provider != "scripted":
            raise UsageError("--script is only for --provider scripted")
        model["script"] = load_script(args.script)
    return model


def agent_config(args: argparse.Namespace, work_dir: str) -> dict[str, Any]:
    """The `AgentConfig` for `agent/create`."""
    cfg: dict[str, Any] = {"sandbox": {"workDir": work_dir}, "permission": {"mode": args.mode}}
    if args.agent:
        cfg["agentId"] = args.agent
    model = model_config(args)
    if model is not None:
        cfg["model"] = model
    return cfg


def open_server_stderr() -> tuple[IO[Any] | int, str | None]:
    """Where the server's stderr goes: next to its own rotating log, never the terminal.

    Appended to (two chats may run at once), and started afresh past
    `MAX_STDERR_LOG` bytes so it cannot grow without bound; the server's rotating
    `kode-rpc.log` keeps the history.
    """
    try:
        directory = log_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "chat-server.stderr.log")
        big = os.path.exists(path) and os.path.getsize(path) > MAX_STDERR_LOG
        return open(path, "wb" if big else "ab"), path
    except OSError:
        return subprocess.DEVNULL, None


async def spawn_server(args: argparse.Namespace, stderr: IO[Any] | int) -> RpcClient:
    """Start `kode-rpc serve` in its own session/process group: a terminal Ctrl-C
    (SIGINT to the whole foreground group) must interrupt the turn, not shut the server down."""
    extra = ["--data-dir", args.data_dir] if args.data_dir else []
    return await RpcClient.spawn(*extra, stderr=stderr, new_session=True)


# --- the session -----------------------------------------------------------------------
class Chat:
    """One chat session: the server, the agent, the rendering of its events, the prompts."""

    def __init__(self, args: argparse.Namespace, term: Terminal, reader: LineReader) -> None:
        self.args = args
        self.term = term
        self.reader = reader
        self.client: RpcClient | None = None
        self.agent_id = ""
        self.cursor = 0
        """Index into `client.events` of the next event to render."""
        self.finished: set[str] = set()
        """turnIds whose `done` has been rendered."""
        self.any_done = False
        self.turn_id: str | None = None
        """The turn being followed (Ctrl-C then means interrupt, not quit)."""
        self.interrupting = False
        self.failed = False
        self._quit = asyncio.Event()
        self._ready = asyncio.Event()
        """Set once the agent id is known: approvals re-issued by `agent/resume` can
        arrive before chat has read the resume response."""
        self._wake = asyncio.Event()
        self._gone: asyncio.Future[int] | None = None
        self._approval_lock = asyncio.Lock()
        self._orphan_turn: str | None = None
        self._out_bol = True
        self._out_stream = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- plumbing -----------------------------------------------------------------------
    @property
    def rpc(self) -> RpcClient:
        assert self.client is not None
        return self.client

    async def guard(self, aw: Awaitable[T], wake: bool = False) -> T:
        """Await `aw` unless the server dies (ServerGone) or the user quits (Quit) first.

        `RpcClient.request` only fails its future when the reader sees EOF; racing
        the process exit as well means chat never sits out a 30 s timeout against a
        dead server. With `wake`, a raised `_wake` also ends the wait (returns None).
        """
        task = asyncio.ensure_future(aw)
        waiters: set[asyncio.Future[Any]] = {task}
        quit_wait = asyncio.ensure_future(self._quit.wait())
        waiters.add(quit_wait)
        wake_wait = asyncio.ensure_future(self._wake.wait()) if wake else None
        if wake_wait is not None:
            waiters.add(wake_wait)
        if self._gone is not None:
            waiters.add(self._gone)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            quit_wait.cancel()
            if wake_wait is not None:
                wake_wait.cancel()
        if task in done:
            try:
                return task.result()
            except ConnectionError:
                raise ServerGone() from None
        task.cancel()
        if quit_wait in done:
            raise Quit()
        if wake_wait is not None and wake_wait in done:
            return None  # type: ignore[return-value]
        raise ServerGone()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.guard(self.rpc.request(method, params))

    def spawn_task(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- start ----------------------------------------------------------------------------
    async def start(self, stderr: IO[Any] | int) -> dict[str, Any]:
        """Spawn, initialize, create or resume the agent; returns its AgentInfo."""
        args = self.args
        work_dir = os.path.abspath(args.work_dir or os.getcwd())
        config = agent_config(args, work_dir)  # UsageError before anything is spawned
        self.client = await spawn_server(args, stderr)
        self._gone = asyncio.ensure_future(self.client.proc.wait())
        self.client.on_approval = self.on_approval
        await self.call("initialize", {
            "protocolVersion": 1, "clientInfo": {"name": "kode-rpc chat", "version": __version__},
            "processId": os.getpid(), "workspaceFolders": [work_dir], "capabilities": {"approvals": True},
        })
        self.rpc.notify("initialized", {})
        info: dict[str, Any] | None = None
        if args.agent:
            try:
                info = await self.call("agent/resume", {"agentId": args.agent})
            except RpcError as exc:
                if exc.code != NOT_FOUND:
                    raise
        resumed = info is not None
        if info is None:
            info = await self.call("agent/create", config)
        self.agent_id = info["agentId"]
        self.describe(info, resumed)
        self._ready.set()
        if resumed and info.get("state") in ("WORKING", "PAUSED"):
            # a turn from before (queued, or paused on an approval that is re-issued
            # now): follow it to its end so its approval is not fought over with the prompt
            self.term.line(self.term.dim("(the agent is still busy with an earlier turn; following it)"))
            await self.follow(None)
        return info

    def describe(self, info: dict[str, Any], resumed: bool) -> None:
        """The header: which agent, model and directory (and mode, when we set it), plus the echo warning."""
        model = info.get("model") or {}
        provider = model.get("provider") or "?"
        name = f"{provider}/{model['model']}" if model.get("model") else provider
        verb = "resumed" if resumed else "created"
        mode = "" if resumed else f" · mode {self.args.mode}"
        self.term.line(self.term.dim(f"kode-rpc chat · agent {info['agentId']} ({verb}) · model {name}{mode} · "
                                     f"work dir {info.get('workDir') or '?'}"))
        if resumed and (self.args.provider or self.args.model or self.args.script or self.args.work_dir):
            self.term.line(self.term.yellow("Resumed an existing agent: its stored model, sandbox and permission "
                                            "settings apply; --provider/--model/--script/--work-dir/--mode are ignored."))
        if provider == "echo":
            self.term.line(self.term.yellow(ECHO_NOTE))

    # --- turns ----------------------------------------------------------------------------
    async def send(self, text: str) -> None:
        """One turn: `agent/send`, then render its events until its `done`."""
        try:
            sent = await self.call("agent/send", {"agentId": self.agent_id, "text": text})
        except RpcError as exc:
            self.failed = True
            self.term.line(self.term.red(f"error: {exc.message} ({exc.code})"))
            return
        if sent.get("queued"):
            self.term.line(self.term.dim("(queued behind the running turn)"))
        await self.follow(sent["turnId"])

    async def follow(self, turn_id: str | None) -> None:
        """Render events as they arrive until `turn_id` is done (None: the next `done` of any turn)."""
        self.turn_id = turn_id or "?"
        self.interrupting = False
        self.any_done = False
        try:
            while True:
                self.drain()
                if (turn_id in self.finished) if turn_id else self.any_done:
                    return
                seen = self.cursor
                await self.guard(self.rpc.wait_for(lambda: len(self.rpc.events) > seen, timeout=WAIT_FOREVER))
        finally:
            self.term.newline()
            self.turn_id = None

    def drain(self) -> None:
        """Render every event received so far (synchronous, so it never interleaves with a prompt)."""
        events = self.rpc.events
        while self.cursor < len(events):
            env = events[self.cursor]
            self.cursor += 1
            if env.get("agentId") == self.agent_id:
                self.render(env)

    def render(self, env: dict[str, Any]) -> None:
        """One event on the terminal; monitor noise (usage, breakpoints, states) is skipped."""
        ev = env["event"]
        etype = ev.get("type")
        t = self.term
        if etype in ("think_chunk_start", "text_chunk_start"):
            t.newline()
            if etype == "think_chunk_start":
                t.write(t.dim("thinking: ") if t.color else "[thinking] ")
        elif etype == "think_chunk":
            t.write(t.dim(ev.get("delta", "")))
        elif etype == "text_chunk":
            t.write(ev.get("delta", ""))
        elif etype in ("think_chunk_end", "text_chunk_end"):
            t.newline()
        elif etype == "tool:start":
            call = ev.get("call") or {}
            self._out_bol = True
            t.line(t.bold(f"⚙ {call.get('name', '?')} {call.get('inputPreview', '')}".rstrip()))
        elif etype == "tool:output":
            self.render_output(ev.get("delta", ""), ev.get("stream") == "stderr")
            if ev.get("truncated"):
                t.line(t.dim("    │ … (output truncated)"))
        elif etype == "tool:end":
            self.render_end(ev.get("call") or {})
        elif etype == "tool:error":
            t.line(t.red(f"  ✗ {(ev.get('call') or {}).get('name', 'tool')} raised: {ev.get('error')}"))
        elif etype == "error":
            severity = ev.get("severity", "error")
            color = t.red if severity == "error" else t.yellow
            t.line(color(f"[{severity}] {ev.get('phase', '?')}: {ev.get('message', '')}"))
        elif etype == "retry":
            err = ev.get("error") or {}
            t.line(t.dim(f"(retry {ev.get('attempt')} in {ev.get('delayMs')} ms: {err.get('message', '')})"))
        elif etype == "context_compression" and ev.get("phase") == "start":
            t.line(t.dim("(compressing the context…)"))
        elif etype == "turn_diff":
            files = ", ".join(f"{f['path']} (+{f['additions']} -{f['deletions']})" if f["change"] == "modified"
                              else f"{f['path']} ({f['change']})" for f in ev.get("files") or [])
            t.line(t.dim(f"changed: {files}  (/diff shows it, /rewind undoes it)"))
        elif etype == "agent_resumed" and ev.get("sealed"):
            t.line(t.yellow(f"(resumed after a crash: {len(ev['sealed'])} unfinished tool call(s) sealed)"))
        elif etype == "done":
            reason = ev.get("reason", "completed")
            if reason != "completed":
                t.line(t.yellow(f"[turn ended: {reason}]"))
            if reason == "error":
                self.failed = True  # `chat -m` exits 1 when a turn failed (a script can tell)
            self.any_done = True
            if env.get("turnId"):
                self.finished.add(env["turnId"])

    def render_output(self, delta: str, stderr: bool) -> None:
        """Tool output indented under its tool line, whatever the deltas' line breaks."""
        t = self.term
        if not delta:
            return
        if self._out_stream != stderr and not self._out_bol:
            t.write("\n")  # the other stream's unfinished line ends here
            self._out_bol = True
        self._out_stream = stderr
        if self._out_bol:
            t.newline()
        parts = delta.split("\n")
        out = []
        for i, part in enumerate(parts):
            if i > 0:
                out.append("\n")
                self._out_bol = True
            if part:
                if self._out_bol:
                    out.append("    │ ")
                    self._out_bol = False
                out.append(t.red(part) if stderr else part)
        t.write("".join(out))

    def render_end(self, call: dict[str, Any]) -> None:
        t = self.term
        state = call.get("state", "?")
        name = call.get("name", "tool")
        result = call.get("result")
        error = call.get("error") or (result.get("error") if isinstance(result, dict) else None)
        took = f" ({call['durationMs']} ms)" if call.get("durationMs") is not None else ""
        if state == "COMPLETED":
            t.line(t.green(f"  ✓ {name} COMPLETED{took}"))
        else:
            text = f"  ✗ {name} {state}{took}" + (f": {error}" if error else "")
            t.line(t.red(text) if state == "FAILED" else t.yellow(text))
        self._out_bol = True

    # --- approvals ------------------------------------------------------------------------
    async def on_approval(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer `approval/request` from the terminal: show what is asked, read y/N/a.

        Prompts are serialized (a step with parallel calls asks several at once),
        and a prompt gives up as soon as the approval is decided elsewhere (timeout,
        interrupt), so a stale question never eats the next line the user types.
        """
        deny = {"decision": "deny", "remember": False}
        try:
            await self.guard(self._ready.wait())
        except (Quit, ServerGone):
            return deny
        if params.get("agentId") != self.agent_id:
            return deny
        if self.turn_id is None:
            # the REPL sits at its prompt (an approval of an older turn, e.g. after a
            # resume): wake it so it follows that turn and leaves stdin to us
            self._orphan_turn = params.get("turnId")
            self._wake.set()
            await asyncio.sleep(0)
        async with self._approval_lock:
            approval_id = params.get("approvalId")
            if self.decided(approval_id):
                return deny  # already settled while we waited for the lock; the reply is ignored
            self.drain()  # the tool line goes above its question
            self.show_request(params)
            t = self.term
            if self.reader.eof:
                t.line(t.yellow("stdin is closed: denied (nobody can answer)."))
                return deny
            t.newline()
            t.write(t.bold("Allow? [y/N/a(lways)] "))
            line_task = asyncio.ensure_future(self.reader.readline())
            decided_task = asyncio.ensure_future(
                self.rpc.wait_for(lambda: self.decided(approval_id), timeout=WAIT_FOREVER))
            quit_task = asyncio.ensure_future(self._quit.wait())
            waiters: set[asyncio.Future[Any]] = {line_task, decided_task, quit_task}
            if self._gone is not None:
                waiters.add(self._gone)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (line_task, decided_task, quit_task):
                    if not task.done():
                        task.cancel()
                    elif not task.cancelled():
                        task.exception()  # retrieved: a dead server's ConnectionError is expected here
            if not line_task.done() or line_task.cancelled():
                t.newline()
                decided = self.decided(approval_id)
                if decided:
                    why = f"decided by {decided.get('decidedBy')}: {decided.get('decision')}"
                else:
                    why = "the server is gone" if self._gone is not None and self._gone.done() else "no answer"
                t.line(t.dim(f"({why})"))
                return deny
            line = line_task.result()
            if line is None:
                t.line(t.yellow("stdin is closed: denied."))
                return deny
            if not self.reader.interactive:
                t.write(line if line.endswith("\n") else line + "\n")  # a transcript shows the answer
            else:
                t.bol = True  # the terminal echoed the answer and its newline
            answer = line.strip().lower()
            if answer in ("y", "yes"):
                return {"decision": "allow", "remember": False}
            if answer in ("a", "always"):
                name = (params.get("call") or {}).get("name", "this tool")
                t.line(t.dim(f"(allowing {name} from now on for this agent)"))
                return {"decision": "allow", "remember": True}
            return deny

    def decided(self, approval_id: Any) -> dict[str, Any] | None:
        """The `permission_decided` event of this approval, if one has arrived."""
        for env in reversed(self.rpc.events):
            ev = env.get("event") or {}
            if ev.get("type") == "permission_decided" and ev.get("approvalId") == approval_id:
                return ev
        return None

    def show_request(self, params: dict[str, Any]) -> None:
        """The title and the subject: a command and its cwd, a file and its diff, or the call."""
        t = self.term
        t.line(t.yellow(f"⚠ approval needed: {params.get('title', '')}"))
        subject = params.get("subject") or {}
        kind = subject.get("type")
        if kind == "command":
            t.line(f"  $ {subject.get('command', '')}")
            t.line(t.dim(f"  in {subject.get('cwd', '?')}"))
        elif kind == "file_change":
            t.line(f"  file: {subject.get('path', '?')}")
            lines = (subject.get("diff") or "").splitlines()
            for line in lines[:MAX_DIFF_LINES]:
                if line.startswith("+") and not line.startswith("+++"):
                    line = t.green(line)
                elif line.startswith("-") and not line.startswith("---"):
                    line = t.red(line)
                t.line("  " + line)
            if len(lines) > MAX_DIFF_LINES:
                t.line(t.dim(f"  … {len(lines) - MAX_DIFF_LINES} more diff lines"))
        else:
            call = params.get("call") or {}
            raw = json.dumps(call.get("input", {}), ensure_ascii=False)
            if len(raw) > MAX_INPUT_CHARS:
                raw = raw[:MAX_INPUT_CHARS] + " …"
            t.line(f"  tool: {call.get('name', '?')}")
            t.line(f"  input: {raw}")

    # --- Ctrl-C ---------------------------------------------------------------------------
    def on_sigint(self) -> None:
        """During a turn: interrupt it (a second Ctrl-C quits). At the prompt: quit."""
        if self.turn_id is not None and not self.interrupting and self.agent_id:
            self.interrupting = True
            self.term.line(self.term.yellow("^C interrupting the turn (Ctrl-C again to quit)"))
            self.spawn_task(self._interrupt())
        else:
            self.term.newline()
            self._quit.set()

    async def _interrupt(self) -> None:
        try:
            await self.call("agent/interrupt", {"agentId": self.agent_id})
        except (RpcError, ServerGone, Quit, asyncio.TimeoutError) as exc:
            if isinstance(exc, RpcError):
                self.term.line(self.term.red(f"interrupt failed: {exc.message}"))

    # --- the loops ------------------------------------------------------------------------
    async def run_messages(self, messages: list[str]) -> None:
        """`-m`: each message in order, each turn to its end, then leave."""
        for text in messages:
            self.term.line(self.term.bold("you> ") + text)
            await self.send(text)

    async def repl(self) -> None:
        """Prompt, send, follow, repeat, until EOF, /quit or Ctrl-C at the prompt."""
        t = self.term
        t.line(t.dim("Type a message; /quit or Ctrl-D to leave; Ctrl-C interrupts a running turn; "
                     "/diff, /rewind, /checkpoints."))
        while True:
            t.newline()
            t.write(t.bold("you> "))
            self._wake.clear()
            line = await self.guard(self.reader.readline(), wake=True)
            if self._wake.is_set() and line is None and not self.reader.eof:
                # an approval for a turn we were not following: follow it, then prompt again
                self._wake.clear()
                t.newline()
                await self.follow(self._orphan_turn)
                continue
            if line is None:
                t.newline()
                return
            if self.reader.interactive:
                t.bol = True
            else:
                t.write(line if line.endswith("\n") else line + "\n")
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if text.strip() in ("/quit", "/exit"):
                return
            if text.split()[0] in ("/diff", "/rewind", "/checkpoints"):
                await self.command(text.split())
                continue
            await self.send(text)

    # --- /diff, /rewind, /checkpoints ----------------------------------------------------
    async def command(self, words: list[str]) -> None:
        t = self.term
        try:
            listed = (await self.call("agent/checkpoints", {"agentId": self.agent_id}))["checkpoints"]
            if words[0] == "/checkpoints":
                for cp in listed:
                    t.line(f"{cp['checkpointId']}  message {cp['messageIndex']}  {cp['files']} file(s)  {cp['createdAt']}")
                if not listed:
                    t.line(t.dim("no checkpoints yet (a turn that changes files takes one)"))
                return
            named = [w for w in words[1:] if w.startswith("cp_")]
            cp = next((c for c in listed if c["checkpointId"] == named[0]), None) if named else \
                (listed[-1] if listed else None)
            if cp is None:
                t.line(t.yellow(f"no checkpoint {named[0]}" if named else "no checkpoints yet"))
                return
            if words[0] == "/diff":
                await self.show_diff(cp)
            else:
                await self.rewind(cp, words[1:])
        except RpcError as exc:
            t.line(t.red(f"error: {exc.message} ({exc.code})"))

    async def show_diff(self, cp: dict[str, Any]) -> None:
        """The `turn_diff` of a checkpoint's turn (the last one's without an id)."""
        t = self.term
        page = await self.call("agent/events", {"agentId": self.agent_id, "since": cp["seq"],
                                                "channels": ["monitor"]})
        diff = next((e["event"] for e in page["events"] if e["event"].get("type") == "turn_diff"
                     and e["event"].get("checkpointId") == cp["checkpointId"]), None)
        if diff is None:
            t.line(t.dim(f"{cp['checkpointId']}: the turn changed no files"))
            return
        for line in diff["diff"].splitlines():
            color = t.green if line.startswith("+") and not line.startswith("+++") else \
                t.red if line.startswith("-") and not line.startswith("---") else \
                t.bold if line.startswith("diff --git") else (lambda x: x)
            t.line(color(line))
        if diff.get("truncated"):
            t.line(t.dim("… (diff truncated at 1 MiB)"))

    async def rewind(self, cp: dict[str, Any], words: list[str]) -> None:
        """`/rewind [cp_N] [code|conversation|both] [force]`: back to before that turn."""
        t = self.term
        restore = next((w for w in words if w in ("code", "conversation", "both")), "both")
        res = await self.call("agent/rewind", {"agentId": self.agent_id, "checkpointId": cp["checkpointId"],
                                               "restore": restore, "force": "force" in words})
        verb = {"added": "restored", "modified": "restored", "deleted": "removed"}
        for f in res["files"]:
            t.line(f"  {verb[f['change']] if res['restored'] else 'would ' + verb[f['change']][:-1]} {f['path']}")
        if not res["restored"]:
            t.line(t.yellow(f"not rewound: changed outside the agent since its last turn: {', '.join(res['conflicts'])}"
                            f" (/rewind {cp['checkpointId']} {restore} force overwrites them)"))
            return
        what = {"code": "files", "conversation": "conversation", "both": "files and conversation"}[restore]
        t.line(t.green(f"rewound {what} to {cp['checkpointId']} (before message {cp['messageIndex']})"))

    async def close(self, died: bool = False) -> int:
        """`shutdown` + `exit` and wait for the server; its exit code.

        After the server died only its exit is awaited: `RpcClient.request` sent to
        a server whose stdout is already closed would wait out its whole timeout.
        """
        for task in list(self._tasks):
            task.cancel()
        if self.client is None:
            return 0
        if died:
            return await self.client.wait_exit(5)
        return await self.client.close()


async def chat_main(args: argparse.Namespace, out: TextIO, stdin: IO[Any] | None) -> int:
    """The whole session on one event loop; returns the process exit code."""
    term = Terminal(out)
    reader = LineReader(stdin)
    chat = Chat(args, term, reader)
    loop = asyncio.get_running_loop()
    installed = False
    previous: Any = None
    try:
        loop.add_signal_handler(signal.SIGINT, chat.on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        try:
            previous = signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(chat.on_sigint))
        except ValueError:
            previous = None
    stderr, path = open_server_stderr()
    code = 0
    died = False
    try:
        try:
            await chat.start(stderr)
            if args.message:
                await chat.run_messages(list(args.message))
            else:
                await chat.repl()
        except Quit:
            pass
        except ServerGone:
            died = True
        except RpcError as exc:
            term.line(term.red(f"error: {exc.message} ({exc.code})"))
            code = 1
        except UsageError:
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            term.line(term.red(f"error: {exc or type(exc).__name__}"))
            code = 1
        term.newline()
        exit_code = await chat.close(died)
        if died or exit_code != 0:
            where = f"; its stderr is in {path}" if path else ""
            term.line(term.red(f"The server exited unexpectedly (code {exit_code}){where}."))
            code = 1
        elif args.message and chat.failed:
            code = 1
        return code
    finally:
        if chat.client is not None and chat.client.proc.returncode is None:
            chat.client.kill()
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
        elif previous is not None:
            signal.signal(signal.SIGINT, previous)
        if not isinstance(stderr, int):
            stderr.close()


def run_chat(args: argparse.Namespace) -> int:
    """Entry point from `kode-rpc chat`."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        # "⚙", "✓" and the model's text must never crash a cp1252 or ASCII terminal
        out.reconfigure(errors="replace")
    try:
        return asyncio.run(chat_main(args, out, sys.stdin))
    except UsageError as exc:
        sys.stderr.write(f"kode-rpc chat: {exc}\n")
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the handler was installed
        return 130
