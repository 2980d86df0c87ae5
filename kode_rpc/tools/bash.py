"""Shell tools: `bash_run` (foreground or background), `bash_logs`, `bash_kill`.

Commands run through `sandbox.process.spawn_shell` in their own process group;
whenever a run ends early (timeout, interrupt, a bug) the whole process tree is
killed, including children that escaped the group with setsid. Output is read in
small chunks from both pipes at once (a full stderr pipe must not block a process
we are only reading stdout from) and decoded incrementally, so a multi-byte UTF-8
character split across chunks is not mangled.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import Field

from ..sandbox.base import Sandbox
from ..sandbox.process import kill_leftovers, kill_tree, pipe_inodes, spawn_shell, wait_exit
from .base import OutputStream, Tool, ToolContext, ToolInput, ToolResult, register

log = logging.getLogger(__name__)

CHUNK_BYTES = 4096
RESULT_TAIL_CHARS = 32 * 1024
"""What a foreground result keeps of each stream (the model needs the end, usually errors)."""
SHELL_BUFFER_CHARS = 1024 * 1024
"""What a background shell keeps of each stream between two bash_logs calls."""
DRAIN_GRACE_S = 0.5
"""After the shell exits, how long to wait for pipes still held open by leftover children."""
KILL_WAIT_S = 2.0
"""After SIGKILL, how long to wait for the process to be reaped."""


class OutputBuffer:
    """Keeps the last `limit` characters of a stream and knows how much was ever written.

    `total` is an absolute position, so a reader can ask for "everything since
    position N" and learn whether part of it has already been dropped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._parts: list[str] = []
        self._size = 0

    def append(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._size += len(text)
        self.total += len(text)
        if self._size > 2 * self.limit:  # compact lazily: amortised O(1) per append
            self._compact()

    def _compact(self) -> None:
        kept = "".join(self._parts)[-self.limit :]
        self._parts = [kept]
        self._size = len(kept)

    def text(self) -> str:
        """The retained tail (at most `limit` characters)."""
        if self._size > self.limit:
            self._compact()
        return "".join(self._parts)

    @property
    def truncated(self) -> bool:
        """True when output was dropped from the front."""
        return self.total > self.limit

    def since(self, position: int) -> tuple[str, bool]:
        """Text written after absolute `position`, and whether some of it was dropped."""
        kept = self.text()
        start = self.total - len(kept)
        if position < start:
            return kept, True
        return kept[position - start :], False


async def _pump(
    stream: asyncio.StreamReader | None,
    buffer: OutputBuffer,
    on_text: Callable[[str], None] | None,
) -> None:
    """Read `stream` to EOF in chunks, decoding UTF-8 incrementally (errors replaced)."""
    if stream is None:
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await stream.read(CHUNK_BYTES)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            buffer.append(text)
            if on_text is not None:
                on_text(text)
        if not chunk:
            return


async def _drain(readers: list[asyncio.Task[None]]) -> bool:
    """Give the readers a moment to reach EOF after the shell exited; True if they all did.

    A child left behind (`server &`) can hold the pipes open forever, and we do not
    wait for it.
    """
    if not readers:
        return True
    _, pending = await asyncio.wait(readers, timeout=DRAIN_GRACE_S)
    return not pending


def _cleanup(proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]) -> None:
    """Make sure nothing of the command survives, and stop reading its pipes.

    - the shell is still running (timeout, interrupt, a bug): kill the whole tree;
    - the shell exited but its pipes are still held by children it left behind
      (`server &`): kill those holders and close our pipe ends. A foreground
      command owns its output; long-running work belongs in `background: true`.
    Processes that redirected their output (`nohup x >log 2>&1 &`) do not hold the
    pipes and are deliberately left alone.
    """
    held = any(not task.done() for task in readers)
    if proc.returncode is None:
        kill_tree(proc.pid)
    elif held:
        log.debug("pid %s exited but its pipes stayed open; killing the holders", proc.pid)
        kill_leftovers(proc.pid, pipe_inodes(proc))
    for task in readers:
        if not task.done():
            task.cancel()
    if held and proc.returncode is not None:
        # Closing the transport while the process runs would make it poll() the
        # child and steal the exit status from the child watcher, hence the guard.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


async def _wait_exited(proc: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(wait_exit(proc), KILL_WAIT_S)
    except TimeoutError:
        log.warning("pid %s did not exit %.1fs after SIGKILL", proc.pid, KILL_WAIT_S)


# ---------------------------------------------------------------- background shells


class BackgroundShell:
    """One `bash_run {background: true}` process and its bounded output."""

    def __init__(self, shell_id: str, cmd: str, proc: asyncio.subprocess.Process) -> None:
        self.shell_id = shell_id
        self.cmd = cmd
        self.proc = proc
        self.stdout = OutputBuffer(SHELL_BUFFER_CHARS)
        self.stderr = OutputBuffer(SHELL_BUFFER_CHARS)
        self.exit_code: int | None = None
        """Set only after the output is fully drained, so `running: false` means all output is in."""
        self._stdout_pos = 0
        self._stderr_pos = 0
        readers = [
            asyncio.create_task(_pump(proc.stdout, self.stdout, None)),
            asyncio.create_task(_pump(proc.stderr, self.stderr, None)),
        ]
        self._watcher = asyncio.create_task(self._watch(readers))

    async def _watch(self, readers: list[asyncio.Task[None]]) -> None:
        try:
            await wait_exit(self.proc)
            await _drain(readers)
        finally:
            _cleanup(self.proc, readers)
            self.exit_code = self.proc.returncode if self.proc.returncode is not None else -1

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def read_new(self) -> dict[str, Any]:
        """Output since the previous call; `truncated` when some was dropped meanwhile."""
        out, out_cut = self.stdout.since(self._stdout_pos)
        err, err_cut = self.stderr.since(self._stderr_pos)
        self._stdout_pos = self.stdout.total
        self._stderr_pos = self.stderr.total
        return {
            "shell_id": self.shell_id,
            "running": self.running,
            "exitCode": self.exit_code,
            "stdout": out,
            "stderr": err,
            "truncated": out_cut or err_cut,
        }

    async def kill(self) -> None:
        if self.proc.returncode is None:
            kill_tree(self.proc.pid)
            await _wait_exited(self.proc)
        try:
            await asyncio.wait_for(asyncio.shield(self._watcher), DRAIN_GRACE_S + KILL_WAIT_S)
        except TimeoutError:
            log.warning("background shell %s did not finish after kill", self.shell_id)


class ShellRegistry:
    """An agent's background shells (satisfies `ShellRegistryLike`)."""

    def __init__(self) -> None:
        self._shells: dict[str, BackgroundShell] = {}

    async def start(self, cmd: str, cwd: str, env: dict[str, str]) -> BackgroundShell:
        proc = await spawn_shell(cmd, cwd, env)
        shell = BackgroundShell(f"shell_{uuid.uuid4().hex[:12]}", cmd, proc)
        self._shells[shell.shell_id] = shell
        return shell

    def get(self, shell_id: str) -> BackgroundShell | None:
        return self._shells.get(shell_id)

    def list(self) -> list[BackgroundShell]:
        return list(self._shells.values())

    async def kill(self, shell_id: str) -> bool:
        """Kill a shell's process tree; False if the id is unknown."""
        shell = self._shells.get(shell_id)
        if shell is None:
            return False
        await shell.kill()
        return True

    async def kill_all(self) -> None:
        """Kill every shell (agent disposal, server shutdown)."""
        shells = list(self._shells.values())
        if shells:
            await asyncio.gather(*(shell.kill() for shell in shells), return_exceptions=True)


def _registry(ctx: ToolContext) -> ShellRegistry | None:
    shells = getattr(ctx, "shells", None)
    return shells if isinstance(shells, ShellRegistry) else None


_NO_REGISTRY = "background shells are not available in this context"


# ---------------------------------------------------------------- bash_run


class BashRunInput(ToolInput):
    cmd: str = Field(min_length=1, description="Shell command (run with /bin/sh -c in the work directory).")
    timeout_ms: int = Field(default=120_000, ge=1, description="Kill the command after this many milliseconds.")
    background: bool = Field(
        default=False,
        description="Start the command in the background and return a shell_id for bash_logs/bash_kill.",
    )


class BashRunTool(Tool):
    """Run a shell command in the work directory, streaming its output."""

    name = "bash_run"
    description = (
        "Run a shell command in the work directory. Returns exitCode, stdout and stderr (the last "
        "32 KiB of each). A non-zero exit code or a timeout is reported as a failure. With "
        "background=true the command keeps running and a shell_id is returned."
    )
    input_model = BashRunInput

    async def run(self, ctx: ToolContext, args: BashRunInput) -> ToolResult:
        cwd = ctx.sandbox.work_dir
        env = ctx.sandbox.child_env()
        if args.background:
            registry = _registry(ctx)
            if registry is None:
                return ToolResult.fail(_NO_REGISTRY, "unsupported")
            try:
                shell = await registry.start(args.cmd, cwd, env)
            except OSError as exc:
                return ToolResult.fail(f"could not start the shell: {exc}", "spawn_failed")
            return ToolResult(ok=True, data={"shell_id": shell.shell_id})

        try:
            proc = await spawn_shell(args.cmd, cwd, env)
        except OSError as exc:
            return ToolResult.fail(f"could not start the shell: {exc}", "spawn_failed")

        stdout = OutputBuffer(RESULT_TAIL_CHARS)
        stderr = OutputBuffer(RESULT_TAIL_CHARS)

        def emitter(stream: OutputStream) -> Callable[[str], None]:
            return lambda text: ctx.output(stream, text)

        readers = [
            asyncio.create_task(_pump(proc.stdout, stdout, emitter("stdout"))),
            asyncio.create_task(_pump(proc.stderr, stderr, emitter("stderr"))),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(wait_exit(proc), args.timeout_ms / 1000)
            except TimeoutError:
                timed_out = True
                kill_tree(proc.pid)
                await _wait_exited(proc)
            await _drain(readers)
        finally:
            # Timeout, interrupt (CancelledError) or a bug: nothing of this command may survive.
            _cleanup(proc, readers)

        data = {
            "exitCode": proc.returncode,
            "stdout": stdout.text(),
            "stderr": stderr.text(),
            "timedOut": timed_out,
            "truncated": stdout.truncated or stderr.truncated,
        }
        if timed_out:
            return ToolResult.fail(
                f"command timed out after {args.timeout_ms} ms; its process tree was killed",
                "timeout",
                retryable=False,
                data=data,
            )
        if proc.returncode != 0:
            return ToolResult.fail(f"command exited with code {proc.returncode}", "exit_code", data=data)
        return ToolResult(ok=True, data=data)

    def subject(self, args: Any, sandbox: Sandbox) -> dict[str, Any]:
        cmd = args.get("cmd", "") if isinstance(args, dict) else getattr(args, "cmd", "")
        return {"type": "command", "command": cmd, "cwd": sandbox.work_dir}

    def preview(self, args: dict[str, Any]) -> str:
        text = str(args.get("cmd", ""))
        return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------- bash_logs / bash_kill


class ShellIdInput(ToolInput):
    shell_id: str = Field(description="The shell_id returned by bash_run with background=true.")


class BashLogsTool(Tool):
    """New output of a background shell since the previous bash_logs call."""

    name = "bash_logs"
    description = (
        "Get the output a background shell produced since the last bash_logs call, whether it is "
        "still running, and its exit code once finished."
    )
    input_model = ShellIdInput
    readonly = True

    async def run(self, ctx: ToolContext, args: ShellIdInput) -> ToolResult:
        registry = _registry(ctx)
        if registry is None:
            return ToolResult.fail(_NO_REGISTRY, "unsupported")
        shell = registry.get(args.shell_id)
        if shell is None:
            return ToolResult.fail(f"unknown shell_id: {args.shell_id}", "not_found")
        return ToolResult(ok=True, data=shell.read_new())


class BashKillTool(Tool):
    """Kill a background shell and its whole process tree."""

    name = "bash_kill"
    description = "Kill a background shell started with bash_run (background=true), including its child processes."
    input_model = ShellIdInput

    async def run(self, ctx: ToolContext, args: ShellIdInput) -> ToolResult:
        registry = _registry(ctx)
        if registry is None:
            return ToolResult.fail(_NO_REGISTRY, "unsupported")
        if not await registry.kill(args.shell_id):
            return ToolResult.fail(f"unknown shell_id: {args.shell_id}", "not_found")
        return ToolResult(ok=True, data={"shell_id": args.shell_id, "killed": True})


register(BashRunTool())
register(BashLogsTool())
register(BashKillTool())
