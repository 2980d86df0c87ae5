"""`kode-rpc chat` end to end: the real command as a subprocess, spawning the real server.

chat is what a newcomer runs first, so these tests look at it from the outside
only: arguments in, text on stdin, the terminal transcript on stdout, files in
the work dir and the exit code. Each run gets its own data, log and config dirs
and no KODE_PROVIDER, so the default model is `echo` whatever the machine says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

RUN_TIMEOUT = 10.0


@pytest.fixture
def chat_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KODE_DATA_DIR=str(tmp_path / "data"), KODE_LOG_DIR=str(tmp_path / "logs"),
               KODE_CONFIG_DIR=str(tmp_path / "config"), PYTHONIOENCODING="utf-8", NO_COLOR="1")
    for key in ("KODE_PROVIDER", "KODE_MODEL", "KODE_RPC_SERVER"):
        env.pop(key, None)
    return env


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def chat_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kode_rpc", "chat", *args]


def run_chat(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """One whole chat run; a hang fails the test instead of stalling the suite."""
    return subprocess.run(chat_cmd(*args), input=stdin, capture_output=True, text=True, encoding="utf-8",
                          env=env, timeout=RUN_TIMEOUT)


def write_script(path: Path, *steps: dict[str, Any]) -> str:
    path.write_text(json.dumps(list(steps)), encoding="utf-8")
    return str(path)


def fs_write_script(tmp_path: Path) -> str:
    return write_script(
        tmp_path / "script.json",
        {"text": "Writing the file.", "toolCalls": [{"name": "fs_write", "input": {"path": "a.txt", "content": "hi"}}]},
        {"text": "All done."},
    )


class LiveChat:
    """A chat process fed line by line, its stdout collected on a thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(chat_cmd(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.chunks: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        for chunk in iter(lambda: stdout.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def out(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode("utf-8"))
        self.proc.stdin.flush()

    def wait_for(self, text: str, timeout: float = 6.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.out:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in output:\n{self.out}")

    def finish(self) -> int:
        try:
            return self.proc.wait(RUN_TIMEOUT)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            time.sleep(0.1)  # the pump thread takes the last chunk


@pytest.fixture
def live(chat_env: dict[str, str]) -> Iterator[Callable[..., LiveChat]]:
    """Start LiveChats; any still running at teardown (a failed test) is killed."""
    started: list[LiveChat] = []

    def start(*args: str) -> LiveChat:
        chat = LiveChat(chat_env, *args)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        if chat.proc.poll() is None:
            os.killpg(chat.proc.pid, signal.SIGKILL)
            chat.proc.wait()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return [int(p) for p in fh.read().split()]


def test_message_on_echo_prints_the_note_and_the_reply(chat_env: dict[str, str], tmp_path: Path) -> None:
    res = run_chat(chat_env, "-m", "hello", stdin="")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No model provider configured: running on `echo`" in res.stdout
    lines = res.stdout.splitlines()
    assert "hello" in lines, "the echoed reply is a line of its own"
    assert "kode-rpc serving" not in res.stdout + res.stderr, "the server's log stays off the terminal"
    assert (tmp_path / "logs" / "chat-server.stderr.log").exists(), "the server's stderr goes to a log file"


@pytest.mark.parametrize("answer, written, state", [("y\n", True, "COMPLETED"), ("n\n", False, "DENIED")])
def test_scripted_fs_write_asks_on_the_terminal(chat_env: dict[str, str], tmp_path: Path, work_dir: Path,
                                               answer: str, written: bool, state: str) -> None:
    script = fs_write_script(tmp_path)
    res = run_chat(chat_env, "--script", script, "--mode", "approval", "--work-dir", str(work_dir),
                   "-m", "write it", stdin=answer)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "⚙ fs_write a.txt (2 chars)" in out
    assert "Allow? [y/N/a(lways)]" in out and "+hi" in out, "the prompt shows the file's diff"
    assert f"fs_write {state}" in out
    assert "All done." in out
    assert (work_dir / "a.txt").exists() is written
    if written:
        assert (work_dir / "a.txt").read_text() == "hi"
    assert out.index("⚙ fs_write") < out.index("Allow?") < out.index(f"fs_write {state}")


def test_approval_with_stdin_at_eof_is_denied_and_says_so(chat_env: dict[str, str], tmp_path: Path,
                                                          work_dir: Path) -> None:
    script = fs_write_script(tmp_path)
    res = run_chat(chat_env, "--script", script, "--mode", "approval", "--work-dir", str(work_dir),
                   "-m", "write it", stdin="")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stdin is closed: denied" in res.stdout
    assert "fs_write DENIED" in res.stdout
    assert not (work_dir / "a.txt").exists()


def test_repl_reads_lines_until_quit(chat_env: dict[str, str]) -> None:
    res = run_chat(chat_env, stdin="hello\n/quit\n")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "you> hello" in out, "a piped transcript shows what was sent"
    assert out.splitlines().count("hello") == 1, "the echo reply"
    assert "you> /quit" in out


def test_agent_id_is_created_then_resumed(chat_env: dict[str, str]) -> None:
    first = run_chat(chat_env, "--agent", "notes", "-m", "one")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "agent notes (created)" in first.stdout
    second = run_chat(chat_env, "--agent", "notes", "-m", "two")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "agent notes (resumed)" in second.stdout
    assert "two" in second.stdout.splitlines()


def test_bad_script_is_a_usage_error(chat_env: dict[str, str], tmp_path: Path) -> None:
    res = run_chat(chat_env, "--script", str(tmp_path / "missing.json"), "-m", "x")
    assert res.returncode == 2
    assert "--script" in res.stderr


@pytest.mark.skipif(os.name == "nt", reason="sends SIGINT to a process group")
def test_ctrl_c_interrupts_the_turn_and_keeps_the_server(live: Callable[..., LiveChat], tmp_path: Path,
                                                         work_dir: Path) -> None:
    """Ctrl-C in a terminal reaches the whole foreground process group, so the
    signal goes to chat's group here: the server must survive it (chat puts it in
    its own session) and the turn must end as interrupted, back at the prompt."""
    script = write_script(tmp_path / "sleep.json",
                          {"text": "Sleeping.", "toolCalls": [{"name": "bash_run", "input": {"cmd": "sleep 8"}}]},
                          {"text": "Awake again."})
    chat = live("--script", script, "--mode", "auto", "--work-dir", str(work_dir))
    chat.send("go\n")
    chat.wait_for("⚙ bash_run sleep 8")
    time.sleep(0.3)  # the command is running
    started = time.monotonic()
    os.killpg(chat.proc.pid, signal.SIGINT)
    chat.wait_for("[turn ended: interrupted]")
    assert time.monotonic() - started < 5, "interrupt kills the sleeping command"
    chat.send("again\n")
    chat.wait_for("Awake again.")  # the same server still answers
    chat.send("/quit\n")
    assert chat.finish() == 0
    out = chat.out
    assert "bash_run FAILED" in out or "bash_run DENIED" in out
    assert "server exited unexpectedly" not in out


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the server through /proc")
def test_server_killed_mid_approval_then_resume_asks_again(live: Callable[..., LiveChat], tmp_path: Path,
                                                           work_dir: Path) -> None:
    """A dead server is reported (exit 1, no hang); the next `chat --agent` resumes the
    agent, follows its paused turn and answers the re-issued approval from stdin."""
    script = fs_write_script(tmp_path)
    first = live("--agent", "crashy", "--script", script, "--mode", "approval",
                     "--work-dir", str(work_dir))
    first.send("go\n")
    first.wait_for("Allow?")
    for pid in children(first.proc.pid):
        os.kill(pid, signal.SIGKILL)
    assert first.finish() == 1
    assert "server exited unexpectedly" in first.out
    assert not (work_dir / "a.txt").exists()

    second = live("--agent", "crashy")
    second.wait_for("Allow?")
    assert "agent crashy (resumed)" in second.out
    second.send("y\n")
    second.wait_for("All done.")
    assert (work_dir / "a.txt").read_text() == "hi"
    assert second.proc.stdin is not None
    second.proc.stdin.close()
    assert second.finish() == 0


async def test_chat_against_a_local_openai_compatible_server(chat_env: dict[str, str], fake: Any) -> None:
    """`kode-rpc chat --provider openai --model qwen2.5 --base-url .../v1`, as with Ollama: no key needed."""
    import asyncio

    from .fakes import FakeResponse, sse

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(None, {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764201600,
                          "model": "qwen2.5", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    fake.add(FakeResponse(chunks=[chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello from "}),
                                  chunk({"content": "qwen"}), chunk({}, "stop"), sse(None, "[DONE]")]))
    env = dict(chat_env)
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        *chat_cmd("--provider", "openai", "--model", "qwen2.5", "--base-url", fake.url + "/v1", "-m", "hi"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "Hello from qwen" in text and "running on `echo`" not in text
    body = fake.requests[0].json
    assert body["model"] == "qwen2.5" and body["stream"] is True
    assert fake.requests[0].path == "/v1/chat/completions" and "authorization" not in fake.requests[0].headers


def test_failed_turn_is_shown_and_exits_1(chat_env: dict[str, str]) -> None:
    """A provider failure (no key) is shown, and `chat -m` exits 1 so a script can tell."""
    env = dict(chat_env)
    env.pop("OPENAI_API_KEY", None)
    res = run_chat(env, "--provider", "openai", "--model", "gpt-4o", "-m", "hi", stdin="")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "authentication" in res.stdout and "OPENAI_API_KEY" in res.stdout
    assert "[turn ended: error]" in res.stdout


def test_diff_and_rewind_commands(chat_env: dict[str, str], tmp_path: Path, work_dir: Path) -> None:
    (work_dir / "a.txt").write_text("old\n")
    script = write_script(tmp_path / "s.json",
                          {"toolCalls": [{"name": "fs_write", "input": {"path": "a.txt", "content": "new\n"}},
                                         {"name": "fs_write", "input": {"path": "b.txt", "content": "b\n"}}]},
                          {"text": "Wrote them."})
    res = run_chat(chat_env, "--script", script, "--mode", "auto", "--work-dir", str(work_dir),
                   stdin="/diff\nwrite\n/checkpoints\n/diff\n/rewind\n/quit\n")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "no checkpoints yet" in out, "/diff before any turn changed files"
    assert "changed: a.txt (+1 -1), b.txt (added)  (/diff shows it, /rewind undoes it)" in out
    assert "cp_1  message 0  2 file(s)" in out
    assert "diff --git a/a.txt b/a.txt" in out and "-old\n+new\n" in out and "+b\n" in out
    assert "  restored a.txt\n  removed b.txt\n" in out
    assert "rewound files and conversation to cp_1 (before message 0)" in out
    assert (work_dir / "a.txt").read_text() == "old\n" and not (work_dir / "b.txt").exists()
