"""Built-in tools against a real temp dir, real symlinks and real subprocesses."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kode_rpc.sandbox.fstype import fs_type, is_local, parse_mountinfo
from kode_rpc.sandbox.local import LocalSandbox
from kode_rpc.tools import fs
from kode_rpc.tools.base import Tool, ToolResult, builtin_tools
from kode_rpc.tools.bash import OutputBuffer, ShellRegistry

from .test_sandbox import alive

TOOLS: dict[str, Tool] = builtin_tools()
linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


class FakeCtx:
    """The smallest ToolContext: records what tools report."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.agent_id = "agent-1"
        self.call_id = "call-1"
        self.sandbox = sandbox
        self.shells = ShellRegistry()
        self.outputs: list[tuple[str, str]] = []
        self.changes: list[tuple[str, str]] = []
        self.todos: list[dict[str, Any]] = []

    def output(self, stream: str, text: str) -> None:
        self.outputs.append((stream, text))

    def file_changed(self, path: str, change: str) -> None:
        self.changes.append((path, change))

    def get_todos(self) -> list[dict[str, Any]]:
        return list(self.todos)

    async def set_todos(self, todos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.todos = list(todos)
        return list(self.todos)

    def streamed(self, stream: str) -> str:
        return "".join(text for s, text in self.outputs if s == stream)


async def call(ctx: FakeCtx, name: str, **args: Any) -> ToolResult:
    tool = TOOLS[name]
    return await tool.run(ctx, tool.input_model.model_validate(args))




def session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    return int(raw[raw.rfind(b")") + 2 :].split()[3])


async def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.02)
    return not alive(pid)


async def wait_for_output(ctx: FakeCtx, predicate: Any, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ctx.streamed("stdout")
        if predicate(text):
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"output never matched: {ctx.outputs!r}")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (work / "escape").symlink_to(outside)
    (work / "secret_link.txt").symlink_to(outside / "secret.txt")
    return work


@pytest.fixture
def ctx(work: Path) -> FakeCtx:
    return FakeCtx(LocalSandbox(str(work)))


def test_registry_and_flags() -> None:
    assert set(TOOLS) >= {
        "fs_read", "fs_write", "fs_edit", "fs_multi_edit", "fs_glob", "fs_grep",
        "bash_run", "bash_logs", "bash_kill", "todo_read", "todo_write",
    }
    readonly = {name for name, tool in TOOLS.items() if tool.readonly}
    assert readonly == {"fs_read", "fs_glob", "fs_grep", "bash_logs", "todo_read", "todo_write"}
    for tool in TOOLS.values():
        assert tool.spec()["input_schema"]["type"] == "object"


# ---------------------------------------------------------------- fs_read


async def test_read_lines_offset_limit(ctx: FakeCtx, work: Path) -> None:
    (work / "a.txt").write_text("".join(f"line{i}\n" for i in range(1, 11)))
    res = await call(ctx, "fs_read", path="a.txt")
    assert res.ok and res.data["totalLines"] == 10 and not res.data["truncated"]
    assert res.data["path"] == str(work / "a.txt")
    res = await call(ctx, "fs_read", path="a.txt", offset=3, limit=2)
    assert res.data["content"] == "line3\nline4\n" and res.data["truncated"]
    res = await call(ctx, "fs_read", path="a.txt", offset=20)
    assert res.ok and res.data["content"] == ""


async def test_read_refusals(ctx: FakeCtx, work: Path) -> None:
    (work / "bin.dat").write_bytes(b"abc\x00def")
    res = await call(ctx, "fs_read", path="bin.dat")
    assert not res.ok and res.error_type == "binary"
    res = await call(ctx, "fs_read", path="missing.txt")
    assert not res.ok and res.error_type == "not_found"
    for path in ("secret_link.txt", "escape/secret.txt", "../outside/secret.txt", "/etc/passwd"):
        res = await call(ctx, "fs_read", path=path)
        assert not res.ok and res.error_type == "boundary", path
    assert res.wire()["errorType"] == "boundary" and res.wire()["retryable"] is False


async def test_read_big_file_streams_window(ctx: FakeCtx, work: Path) -> None:
    line = "x" * 99 + "\n"
    count = 11 * 1024 * 1024 // len(line) + 1
    (work / "big.txt").write_text(line * count)
    res = await call(ctx, "fs_read", path="big.txt", offset=5, limit=3)
    assert res.ok and res.data["content"] == line * 3
    assert res.data["totalLines"] == count and res.data["truncated"]


# ------------------------------------------- fs_read on the loop or on a thread


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the functions the file tools ran on a worker thread."""
    ran: list[str] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    return ran


def _nowait_reads_work() -> bool:
    """Whether this kernel and the temp dir's filesystem answer `RWF_NOWAIT` reads."""
    if not fs.ON_LOOP_READS:
        return False
    import tempfile
    with tempfile.TemporaryFile() as f:
        f.write(b"x")
        f.flush()
        try:
            os.preadv(f.fileno(), [bytearray(2)], 0, os.RWF_NOWAIT)
        except OSError:
            return False
    return True


on_loop_reads = pytest.mark.skipif(not _nowait_reads_work(), reason="no RWF_NOWAIT reads here (Linux only)")


def drop_from_page_cache(path: Path) -> bool:
    """Evict a file's pages (written back first); False where that cannot work (tmpfs).
    Not probed afterwards: a read that finds the cache empty starts a readahead."""
    if fs_type(str(path)) in ("tmpfs", "ramfs"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


@on_loop_reads
async def test_a_small_cached_file_on_a_local_disk_is_read_on_the_loop(ctx: FakeCtx, work: Path,
                                                                      threads: list[str]) -> None:
    assert is_local(str(work)), f"the test's temp dir is on {fs_type(str(work))}"
    (work / "a.txt").write_text("one\ntwo\n")
    res = await call(ctx, "fs_read", path="a.txt")
    assert res.ok and res.data["content"] == "one\ntwo\n"
    assert threads == []


@on_loop_reads
@pytest.mark.parametrize("why", ["remote filesystem", "too big for the loop", "not in the page cache",
                                 "a symlink on the way"])
async def test_a_read_that_could_wait_goes_to_a_thread(ctx: FakeCtx, work: Path, threads: list[str],
                                                       monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    if why == "too big for the loop":
        text = "y" * 99 + "\n"
        text *= fs.ON_LOOP_READ_MAX // len(text) + 1
    (work / "a.txt").write_text(text)
    name = "a.txt"
    if why == "remote filesystem":
        monkeypatch.setattr(fs, "loop_readable", lambda path: False)
    if why == "not in the page cache" and not drop_from_page_cache(work / "a.txt"):
        pytest.skip("this filesystem keeps the file cached")
    if why == "a symlink on the way":  # even one inside the work dir: where it leads is not looked at on the loop
        (work / "sub").mkdir()
        (work / "a.txt").rename(work / "sub" / "a.txt")
        (work / "link").symlink_to(work / "sub")
        name = "link/a.txt"
    res = await call(ctx, "fs_read", path=name, limit=1_000_000)
    assert res.ok and res.data["content"] == text and res.data["totalLines"] == text.count("\n")
    assert threads == ["_read"]


@on_loop_reads
async def test_the_loop_and_the_thread_read_the_same(ctx: FakeCtx, work: Path, threads: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"text.txt": b"a\nb\n", "empty.txt": b"", "no_newline.txt": b"a\nlast", "bin.dat": b"ab\x00cd",
             "latin1.txt": b"caf\xe9\n", "crlf.txt": b"a\r\nb\r\n",
             "late_nul.txt": b"x\n" * 5000 + b"\x00", "long.txt": b"".join(b"line %d\n" % i for i in range(9000))}
    for name, data in files.items():
        (work / name).write_bytes(data)
    os.mkfifo(work / "fifo")
    (work / "dir").mkdir()
    names = [*files, "fifo", "dir", "missing.txt", "secret_link.txt"]
    windows = [(1, 5), (3, 100_000)]
    on_loop = [(await call(ctx, "fs_read", path=name, offset=o, limit=n)).wire() for name in names for o, n in windows]
    assert threads == ["_read"] * 4  # a missing file and a symlink are looked up on a thread
    monkeypatch.setattr(fs, "loop_readable", lambda path: False)
    on_thread = [(await call(ctx, "fs_read", path=name, offset=o, limit=n)).wire() for name in names for o, n in windows]
    assert on_loop == on_thread
    assert [r["ok"] for r in on_loop[::2]] == [True, True, True, False, True, True, True, True, False, False, False, False]


def test_mount_table_lookup() -> None:
    table = parse_mountinfo("\n".join([
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",
        "30 22 0:26 / /tmp rw - tmpfs tmpfs rw",
        r"40 22 0:50 / /home/me/my\040project rw - fuse.sshfs me@host:/src rw",
        "41 22 0:51 / /mnt/nfs rw - nfs4 srv:/export rw",
        "42 41 8:2 / /mnt/nfs/local rw - xfs /dev/sdb1 rw",
        "43 22 0:52 / /tmp rw - nfs srv:/tmp rw",  # mounted over /tmp later: wins
        "garbage line",
    ]).encode() + b"\n44 22 0:53 / /srv/caf\xe9 rw - nfs4 srv:/x rw\n")
    assert fs_type(os.fsdecode(b"/srv/caf\xe9/notes.txt"), table) == "nfs4"  # not UTF-8: still found
    assert ("/home/me/my project", "fuse.sshfs") in table
    assert fs_type("/usr/lib/x", table) == "ext4" and is_local("/usr/lib/x", table)
    assert fs_type("/home/me/my project/src/a.py", table) == "fuse.sshfs"
    assert not is_local("/home/me/my project/a.py", table)
    assert is_local("/home/me/my projectX/a.py", table)  # a name that only starts like the mount point
    assert not is_local("/mnt/nfs/data.txt", table) and is_local("/mnt/nfs/local/a", table)
    assert fs_type("/tmp/a", table) == "nfs" and not is_local("/tmp/a", table)
    assert fs_type("/x", []) is None and not is_local("/x", [])


# ---------------------------------------------------------------- fs_write


async def test_write_creates_parents_and_reports(ctx: FakeCtx, work: Path) -> None:
    res = await call(ctx, "fs_write", path="new/deep/f.txt", content="héllo\n")
    assert res.ok and res.data == {"path": str(work / "new/deep/f.txt"), "bytes": 7, "created": True}
    res = await call(ctx, "fs_write", path="new/deep/f.txt", content="bye\n")
    assert res.ok and not res.data["created"]
    assert (work / "new/deep/f.txt").read_text() == "bye\n"
    assert ctx.changes == [(str(work / "new/deep/f.txt"), "added"), (str(work / "new/deep/f.txt"), "modified")]


async def test_write_outside_refused(ctx: FakeCtx, work: Path, tmp_path: Path) -> None:
    for path in ("escape/new.txt", "secret_link.txt", "../outside/x.txt", str(tmp_path / "work2" / "f")):
        res = await call(ctx, "fs_write", path=path, content="pwned")
        assert not res.ok and res.error_type == "boundary", path
    assert (tmp_path / "outside" / "secret.txt").read_text() == "secret\n"
    assert not (tmp_path / "outside" / "new.txt").exists()
    assert not (tmp_path / "work2").exists()
    assert ctx.changes == []


async def test_allow_paths_permit_write(work: Path, tmp_path: Path) -> None:
    ctx = FakeCtx(LocalSandbox(str(work), allow_paths=[str(tmp_path / "outside")]))
    res = await call(ctx, "fs_write", path="escape/new.txt", content="ok")
    assert res.ok and (tmp_path / "outside" / "new.txt").read_text() == "ok"


def test_write_subject_diff_and_never_raises(ctx: FakeCtx, work: Path) -> None:
    (work / "a.txt").write_text("one\ntwo\n")
    tool = TOOLS["fs_write"]
    subject = tool.subject(tool.input_model.model_validate({"path": "a.txt", "content": "one\nTWO\n"}), ctx.sandbox)
    assert subject["type"] == "file_change" and subject["path"] == str(work / "a.txt")
    assert "-two" in subject["diff"] and "+TWO" in subject["diff"]
    subject = tool.subject({"path": "../outside/x", "content": "x"}, ctx.sandbox)
    assert subject == {"type": "file_change", "path": "../outside/x", "diff": ""}
    big = "x\n" * 30_000
    subject = tool.subject({"path": "b.txt", "content": big}, ctx.sandbox)
    assert len(subject["diff"]) <= 20_000 and subject["diff"].startswith("--- /dev/null")


# ---------------------------------------------------------------- fs_edit


async def test_edit_rules(ctx: FakeCtx, work: Path) -> None:
    f = work / "code.py"
    f.write_text("a = 1\nb = 1\nc = 1\n")
    res = await call(ctx, "fs_edit", path="code.py", old_string="= 1", new_string="= 2")
    assert not res.ok and res.error_type == "ambiguous"
    assert "3 times" in res.error and "replace_all" in res.error and "context" in res.error
    res = await call(ctx, "fs_edit", path="code.py", old_string="zzz", new_string="y")
    assert not res.ok and res.error_type == "not_found"
    res = await call(ctx, "fs_edit", path="code.py", old_string="a", new_string="a")
    assert not res.ok and res.error_type == "invalid_input"
    res = await call(ctx, "fs_edit", path="nope.py", old_string="a", new_string="b")
    assert not res.ok and res.error_type == "not_found"
    res = await call(ctx, "fs_edit", path="escape/secret.txt", old_string="secret", new_string="x")
    assert not res.ok and res.error_type == "boundary"
    assert f.read_text() == "a = 1\nb = 1\nc = 1\n" and ctx.changes == []

    res = await call(ctx, "fs_edit", path="code.py", old_string="b = 1", new_string="b = 5")
    assert res.ok and res.data == {"path": str(f), "replacements": 1}
    res = await call(ctx, "fs_edit", path="code.py", old_string="= 1", new_string="= 9", replace_all=True)
    assert res.ok and res.data["replacements"] == 2
    assert f.read_text() == "a = 9\nb = 5\nc = 9\n"
    assert ctx.changes == [(str(f), "modified")] * 2


async def test_edit_preserves_crlf_and_invalid_bytes(ctx: FakeCtx, work: Path) -> None:
    f = work / "win.txt"
    f.write_bytes(b"one\r\ntwo\xff\r\nthree\r\n")
    res = await call(ctx, "fs_edit", path="win.txt", old_string="one\ntwo", new_string="uno\ndos")
    assert res.ok
    assert f.read_bytes() == b"uno\r\ndos\xff\r\nthree\r\n"


def test_edit_subject(ctx: FakeCtx, work: Path) -> None:
    (work / "a.txt").write_text("x = 1\n")
    tool = TOOLS["fs_edit"]
    subject = tool.subject({"path": "a.txt", "old_string": "1", "new_string": "2"}, ctx.sandbox)
    assert "-x = 1" in subject["diff"] and "+x = 2" in subject["diff"]
    assert tool.subject({"path": "missing", "old_string": "1", "new_string": "2"}, ctx.sandbox)["diff"] == ""
    assert tool.subject({}, ctx.sandbox)["type"] == "file_change"


# ---------------------------------------------------------------- fs_multi_edit


async def test_multi_edit_all_or_nothing(ctx: FakeCtx, work: Path) -> None:
    (work / "a.txt").write_text("alpha beta\n")
    (work / "b.txt").write_text("gamma gamma\n")
    edits = [
        {"path": "a.txt", "old_string": "alpha", "new_string": "ALPHA"},
        {"path": "b.txt", "old_string": "gamma", "new_string": "G"},  # ambiguous
    ]
    res = await call(ctx, "fs_multi_edit", edits=edits)
    assert not res.ok and res.error_type == "ambiguous" and res.data == {"index": 1}
    assert "edits[1]" in res.error
    assert (work / "a.txt").read_text() == "alpha beta\n"
    assert (work / "b.txt").read_text() == "gamma gamma\n"
    assert ctx.changes == []

    edits[1]["replace_all"] = True
    edits.append({"path": "a.txt", "old_string": "ALPHA beta", "new_string": "done"})  # sees edit 0
    res = await call(ctx, "fs_multi_edit", edits=edits)
    assert res.ok and res.data["replacements"] == 4
    assert res.data["files"] == [str(work / "a.txt"), str(work / "b.txt")]
    assert (work / "a.txt").read_text() == "done\n" and (work / "b.txt").read_text() == "G G\n"
    assert sorted(ctx.changes) == [(str(work / "a.txt"), "modified"), (str(work / "b.txt"), "modified")]

    subject = TOOLS["fs_multi_edit"].subject({"edits": [{"path": "a.txt", "old_string": "done", "new_string": "x"}]}, ctx.sandbox)
    assert "+x" in subject["diff"]
    res = await call(ctx, "fs_multi_edit", edits=[{"path": "escape/secret.txt", "old_string": "s", "new_string": "t"}])
    assert not res.ok and res.error_type == "boundary"


# ---------------------------------------------------------------- fs_glob / fs_grep


@pytest.fixture
def tree(work: Path) -> Path:
    (work / "src" / "pkg").mkdir(parents=True)
    (work / "src" / "main.py").write_text("import os\nprint('Hello')\n")
    (work / "src" / "pkg" / "util.py").write_text("def hello():\n    return 'hello world'\n")
    (work / "README.md").write_text("hello readme\n")
    (work / "node_modules" / "x").mkdir(parents=True)
    (work / "node_modules" / "x" / "i.py").write_text("hello\n")
    (work / ".git").mkdir()
    (work / ".git" / "config").write_text("hello\n")
    (work / "img.bin").write_bytes(b"hello\x00")
    (work / "outside_py.py").symlink_to(work.parent / "outside" / "secret.txt")
    return work


async def test_glob(ctx: FakeCtx, tree: Path) -> None:
    res = await call(ctx, "fs_glob", pattern="**/*.py")
    assert res.ok
    assert res.data == {
        "matches": ["node_modules/x/i.py", "src/main.py", "src/pkg/util.py"],
        "truncated": False,
    }  # outside_py.py resolves outside the sandbox
    res = await call(ctx, "fs_glob", pattern="*.py", cwd="src")
    assert res.data["matches"] == ["src/main.py"]
    res = await call(ctx, "fs_glob", pattern="**/*.py", limit=2)
    assert len(res.data["matches"]) == 2 and res.data["truncated"]
    res = await call(ctx, "fs_glob", pattern="../outside/*")
    assert not res.ok and res.error_type == "boundary"  # refused before any walk (contract section 6)
    res = await call(ctx, "fs_glob", pattern="*", cwd="escape")
    assert not res.ok and res.error_type == "boundary"


async def test_grep(ctx: FakeCtx, tree: Path) -> None:
    res = await call(ctx, "fs_grep", pattern="hello")
    assert res.ok and not res.data["truncated"]
    assert res.data["matches"] == [
        {"path": "README.md", "line": 1, "text": "hello readme"},
        {"path": "src/pkg/util.py", "line": 1, "text": "def hello():"},
        {"path": "src/pkg/util.py", "line": 2, "text": "    return 'hello world'"},
    ]
    res = await call(ctx, "fs_grep", pattern="hello", case_sensitive=False, path="src")
    assert [m["path"] for m in res.data["matches"]] == ["src/main.py", "src/pkg/util.py", "src/pkg/util.py"]
    res = await call(ctx, "fs_grep", pattern=r"def \w+\(", regex=True)
    assert [(m["path"], m["line"]) for m in res.data["matches"]] == [("src/pkg/util.py", 1)]
    res = await call(ctx, "fs_grep", pattern="(", regex=False)
    assert res.ok and len(res.data["matches"]) == 2
    res = await call(ctx, "fs_grep", pattern="(unclosed", regex=True)
    assert not res.ok and res.error_type == "invalid_input"
    res = await call(ctx, "fs_grep", pattern="hello", max_results=1)
    assert len(res.data["matches"]) == 1 and res.data["truncated"]
    res = await call(ctx, "fs_grep", pattern="secret", path="escape")
    assert not res.ok and res.error_type == "boundary"
    res = await call(ctx, "fs_grep", pattern="x", path="missing")
    assert not res.ok and res.error_type == "not_found"


# ---------------------------------------------------------------- todo


async def test_todos(ctx: FakeCtx) -> None:
    res = await call(ctx, "todo_read")
    assert res.ok and res.data == {"todos": []}
    todos = [{"id": "1", "title": "plan", "status": "in_progress"}, {"id": "2", "title": "do", "notes": "n"}]
    res = await call(ctx, "todo_write", todos=todos)
    assert res.ok
    assert res.data["todos"] == [
        {"id": "1", "title": "plan", "status": "in_progress"},
        {"id": "2", "title": "do", "status": "pending", "notes": "n"},
    ]
    assert (await call(ctx, "todo_read")).data == res.data
    res = await call(ctx, "todo_write", todos=[{"id": "1", "title": "a"}, {"id": "1", "title": "b"}])
    assert not res.ok and res.error_type == "invalid_input"
    with pytest.raises(ValidationError):
        TOOLS["todo_write"].input_model.model_validate({"todos": [{"id": "1", "title": "a", "status": "done"}]})


# ---------------------------------------------------------------- bash


async def test_bash_streams_output(ctx: FakeCtx, work: Path) -> None:
    res = await call(ctx, "bash_run", cmd="printf 'a'; sleep 0.2; printf 'é'; echo oops >&2; pwd >&2")
    assert res.ok, res
    assert res.data["stdout"] == "aé" and res.data["exitCode"] == 0
    assert res.data["stderr"] == f"oops\n{work}\n"
    assert not res.data["timedOut"] and not res.data["truncated"]
    pieces = [text for stream, text in ctx.outputs if stream == "stdout"]
    assert pieces == ["a", "é"]
    assert ctx.streamed("stderr") == res.data["stderr"]


async def test_bash_exit_code_and_truncation(ctx: FakeCtx) -> None:
    res = await call(ctx, "bash_run", cmd="echo partial; exit 3")
    assert not res.ok and res.error_type == "exit_code" and res.data["exitCode"] == 3
    assert res.data["stdout"] == "partial\n"
    res = await call(ctx, "bash_run", cmd="head -c 100000 /dev/zero | tr '\\0' x")
    assert res.ok and res.data["truncated"] and len(res.data["stdout"]) == 32 * 1024
    assert sum(len(t) for _, t in ctx.outputs) >= 100000  # everything was streamed


async def test_bash_uses_child_env(ctx: FakeCtx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KODE_TOOL_TEST", "from-env")
    res = await call(ctx, "bash_run", cmd="echo $KODE_TOOL_TEST")
    assert res.data["stdout"] == "from-env\n"


@linux_only
async def test_bash_returns_when_shell_exits_despite_leftover_children(ctx: FakeCtx) -> None:
    start = time.monotonic()
    res = await call(
        ctx,
        "bash_run",
        cmd="sleep 30 & echo $!; setsid sleep 30 & echo $!; sleep 30 >/dev/null 2>&1 & echo $!",
        timeout_ms=10_000,
    )
    assert res.ok and time.monotonic() - start < 3
    attached, escaped, detached = (int(x) for x in res.data["stdout"].split())
    for pid in (attached, escaped):  # still held our pipes: killed with the command
        assert await wait_dead(pid, 1.0), pid
    assert alive(detached)  # redirected its output: deliberately left running
    os.kill(detached, 9)


@linux_only
async def test_bash_timeout_kills_tree_including_setsid_grandchild(ctx: FakeCtx) -> None:
    task = asyncio.create_task(
        call(ctx, "bash_run", cmd="setsid sleep 60 & echo $!; sleep 60 & echo $!; echo $$; wait", timeout_ms=700)
    )
    text = await wait_for_output(ctx, lambda t: t.count("\n") >= 3)
    escaped, child, shell = (int(x) for x in text.split())
    assert session_of(escaped) != session_of(shell)  # it really left the session
    res = await task
    assert not res.ok and res.error_type == "timeout" and res.retryable is False
    assert res.data["timedOut"] and res.data["stdout"] == text
    for pid in (escaped, child, shell):
        assert await wait_dead(pid, 1.0), pid


@linux_only
async def test_bash_cancel_kills_within_a_second(ctx: FakeCtx) -> None:
    task = asyncio.create_task(call(ctx, "bash_run", cmd="timeout 60 sleep 60 & echo $!; echo $$; wait"))
    text = await wait_for_output(ctx, lambda t: t.count("\n") >= 2)
    pids = [int(x) for x in text.split()]
    pids += _children(pids[0])  # the sleep under GNU timeout, which moved to its own group
    assert len(pids) == 3
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for pid in pids:
        assert await wait_dead(pid, 1.0 - (time.monotonic() - start)), pid


def _children(pid: int) -> list[int]:
    from kode_rpc.sandbox.process import descendants

    return descendants(pid)


def test_bash_subject_and_preview(ctx: FakeCtx, work: Path) -> None:
    tool = TOOLS["bash_run"]
    subject = tool.subject(tool.input_model.model_validate({"cmd": "ls -la"}), ctx.sandbox)
    assert subject == {"type": "command", "command": "ls -la", "cwd": str(work)}
    assert tool.preview({"cmd": "ls -la"}) == "ls -la"


@linux_only
async def test_background_shell_logs_and_kill(ctx: FakeCtx) -> None:
    res = await call(ctx, "bash_run", cmd="echo hello; sleep 0.3; echo world; echo $$; sleep 60", background=True)
    assert res.ok
    shell_id = res.data["shell_id"]

    seen = ""
    deadline = time.monotonic() + 5
    while "world" not in seen and time.monotonic() < deadline:
        logs = (await call(ctx, "bash_logs", shell_id=shell_id)).data
        assert logs["running"] and logs["exitCode"] is None
        assert "hello" not in seen or "hello" not in logs["stdout"]  # only new output
        seen += logs["stdout"]
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    seen += (await call(ctx, "bash_logs", shell_id=shell_id)).data["stdout"]
    lines = seen.split()
    assert lines[:2] == ["hello", "world"]
    shell_pid = int(lines[2])

    res = await call(ctx, "bash_kill", shell_id=shell_id)
    assert res.ok and res.data == {"shell_id": shell_id, "killed": True}
    assert await wait_dead(shell_pid, 1.0)
    logs = (await call(ctx, "bash_logs", shell_id=shell_id)).data
    assert logs["running"] is False and logs["exitCode"] == -9 and logs["stdout"] == ""

    for name in ("bash_logs", "bash_kill"):
        res = await call(ctx, name, shell_id="nope")
        assert not res.ok and res.error_type == "not_found"


async def test_background_shell_finishes_and_kill_all(ctx: FakeCtx) -> None:
    done = (await call(ctx, "bash_run", cmd="echo finished; exit 4", background=True)).data["shell_id"]
    long = (await call(ctx, "bash_run", cmd="sleep 60", background=True)).data["shell_id"]
    deadline = time.monotonic() + 5
    logs = (await call(ctx, "bash_logs", shell_id=done)).data
    while logs["running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        logs["stdout"] += (await call(ctx, "bash_logs", shell_id=done)).data["stdout"]
        logs["running"] = ctx.shells.get(done).running  # type: ignore[union-attr]
    assert logs["stdout"] == "finished\n" and ctx.shells.get(done).exit_code == 4  # type: ignore[union-attr]
    await ctx.shells.kill_all()
    shell = ctx.shells.get(long)
    assert shell is not None and not shell.running


def test_output_buffer_since() -> None:
    buf = OutputBuffer(10)
    buf.append("abcdef")
    assert buf.since(0) == ("abcdef", False)
    buf.append("ghijklmnop")
    assert buf.text() == "ghijklmnop" and buf.truncated
    assert buf.since(6) == ("ghijklmnop", False)
    assert buf.since(0) == ("ghijklmnop", True)
    assert buf.since(buf.total) == ("", False)
    for _ in range(100):
        buf.append("0123456789")
    assert buf.text() == "0123456789"
