"""Checkpoints, turn diffs and rewind (contract section 14), over real pipes.

A scripted model changes files with `fs_*` tools and `bash_run`; the tests check the
`checkpoint` and `turn_diff` events, `agent/checkpoints`, code and conversation
rewinds (dry runs and conflicts too), that the user's `.git` is never touched, and
that checkpoints survive restarts, are removed with the agent and are not forked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.client import RpcError
from kode_rpc.sandbox.checkpoints import ShadowRepo

from .conftest import Spawn, scripted
from .fakes import FakeResponse, FakeServer, sse

GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def tree_hash(root: Path, skip: str | None = None) -> str:
    """Every name, mode and byte under `root` (symlinks as their targets' names)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if skip is not None and skip in dirnames and Path(dirpath) == root:
            dirnames.remove(skip)
        for name in sorted(filenames + [d for d in dirnames]):
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


def files_of(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.read_text()
    return out


def only(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]["event"]


async def test_turn_diff_and_code_rewind_in_a_git_repository(spawn: Spawn, work_dir: Path, data_dir: Path) -> None:
    (work_dir / "a.txt").write_text("one\ntwo\n")
    (work_dir / "gone.txt").write_text("bye\n")
    (work_dir / "sub").mkdir()
    (work_dir / "sub" / "keep.txt").write_text("keep\n")
    (work_dir / ".gitignore").write_text("*.log\nbuild/\n")
    (work_dir / "notes.log").write_text("ignored\n")
    git(work_dir, "init", "-q")
    git(work_dir, "add", "-A")
    git(work_dir, "commit", "-q", "-m", "init")
    (work_dir / "a.txt").write_text("one\ntwo\nthree\n")  # uncommitted work is snapshotted too
    before_git = tree_hash(work_dir / ".git")
    start = files_of(work_dir)

    c = await spawn()
    script = scripted(
        {"toolCalls": [{"name": "fs_read", "input": {"path": "a.txt"}}]},
        {"toolCalls": [
            {"name": "fs_write", "input": {"path": "new.txt", "content": "n1\nn2\n"}},
            {"name": "fs_edit", "input": {"path": "a.txt", "old_string": "two", "new_string": "TWO"}},
            {"name": "bash_run", "input": {"cmd": "rm gone.txt && mkdir -p deep/er && echo shell > deep/er/s.txt"
                                                  " && echo more >> notes.log && mkdir -p build && echo b > build/x"}}]},
        {"text": "done"},
    )
    await c.request("agent/create", {"agentId": "g", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    res = await c.request("agent/complete", {"agentId": "g", "text": "change things"})
    assert res["status"] == "ok", res
    cp = only(c.events_of("g", "checkpoint"))
    assert cp == {"type": "checkpoint", "checkpointId": "cp_1", "turnId": res["turnId"], "messageIndex": 0}
    order = [e["event"]["type"] for e in c.events_of("g")]
    changing = [i for i, e in enumerate(c.events_of("g"))
                if e["event"]["type"] == "tool_executed" and e["event"]["call"]["name"] != "fs_read"]
    assert order.index("tool_executed") < order.index("checkpoint") < changing[0], "after the read, before any change"
    assert order.index("turn_diff") < order.index("done")
    diff = only(c.events_of("g", "turn_diff"))
    assert diff["turnId"] == res["turnId"] and diff["checkpointId"] == "cp_1" and diff["truncated"] is False
    assert diff["files"] == [
        {"path": "a.txt", "change": "modified", "additions": 1, "deletions": 1},
        {"path": "deep/er/s.txt", "change": "added", "additions": 1, "deletions": 0},
        {"path": "gone.txt", "change": "deleted", "additions": 0, "deletions": 1},
        {"path": "new.txt", "change": "added", "additions": 2, "deletions": 0},
    ]
    assert "-two\n+TWO\n" in diff["diff"] and "+++ b/new.txt\n@@ -0,0 +1,2 @@\n+n1\n+n2\n" in diff["diff"]
    assert "notes.log" not in diff["diff"] and "build/" not in diff["diff"]
    listed = (await c.request("agent/checkpoints", {"agentId": "g"}))["checkpoints"]
    assert len(listed) == 1 and listed[0]["checkpointId"] == "cp_1" and listed[0]["files"] == 4
    assert listed[0]["seq"] == c.events_of("g", "checkpoint")[0]["seq"] and listed[0]["turnId"] == res["turnId"]
    assert (await c.request("agent/status", {"agentId": "g"}))["checkpoints"] == {"enabled": True}
    assert tree_hash(work_dir / ".git") == before_git, "the user's .git is untouched"

    # A dry run reports and changes nothing.
    after_turn = tree_hash(work_dir, skip=".git")
    dry = await c.request("agent/rewind", {"agentId": "g", "checkpointId": "cp_1", "dryRun": True})
    expected = [{"path": "a.txt", "change": "modified"}, {"path": "deep/er/s.txt", "change": "deleted"},
                {"path": "gone.txt", "change": "added"}, {"path": "new.txt", "change": "deleted"}]
    assert dry == {"restored": False, "files": expected, "conflicts": []}
    assert tree_hash(work_dir, skip=".git") == after_turn and not c.events_of("g", "rewound")

    # An edit outside the agent blocks the rewind unless forced.
    (work_dir / "new.txt").write_text("edited in the editor\n")
    blocked = await c.request("agent/rewind", {"agentId": "g", "checkpointId": "cp_1", "restore": "code"})
    assert blocked == {"restored": False, "files": expected, "conflicts": ["new.txt"]}
    assert (work_dir / "new.txt").read_text() == "edited in the editor\n" and not c.events_of("g", "rewound")

    done = await c.request("agent/rewind", {"agentId": "g", "checkpointId": "cp_1", "restore": "code", "force": True})
    assert done == {"restored": True, "files": expected, "conflicts": ["new.txt"]}
    now = files_of(work_dir)
    assert now.pop("notes.log") == "ignored\nmore\n" and now.pop("build/x") == "b\n", "ignored files are left alone"
    start.pop("notes.log")
    assert now == start, "the workDir is what it was at the checkpoint"
    assert not (work_dir / "deep").exists(), "directories emptied by the rewind are removed"
    assert only(c.events_of("g", "rewound")) == {"type": "rewound", "checkpointId": "cp_1", "restore": "code",
                                                   "messageIndex": 0}
    msgs = (await c.request("agent/messages", {"agentId": "g"}))["messages"]
    assert not any(m.get("rewound") for m in msgs), "a code rewind keeps the conversation"
    assert tree_hash(work_dir / ".git") == before_git, "the user's .git is untouched"
    assert git(work_dir, "status", "--porcelain") == " M a.txt\n", "the user's repository sees its own state again"
    with pytest.raises(RpcError) as err:
        await c.request("agent/rewind", {"agentId": "g", "checkpointId": "cp_9"})
    assert err.value.code == -32002 and err.value.data["reason"] == "checkpoint_not_found"


async def test_checkpoints_survive_restarts_are_not_forked_and_go_with_the_agent(
        spawn: Spawn, work_dir: Path, data_dir: Path) -> None:
    (work_dir / "a.txt").write_text("A\n")
    c = await spawn()
    script = scripted(
        {"toolCalls": [{"name": "fs_read", "input": {"path": "a.txt"}},
                       {"name": "todo_write", "input": {"todos": [{"id": "1", "title": "t"}]}}]},
        {"text": "read it"},
        {"toolCalls": [{"name": "fs_write", "input": {"path": "b.txt", "content": "B\n"}}]},
        {"text": "wrote it"},
        {"text": "slowly", "delayMs": 500},
    )
    await c.request("agent/create", {"agentId": "r", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    assert (await c.request("agent/complete", {"agentId": "r", "text": "read"}))["status"] == "ok"
    assert not c.events_of("r", "checkpoint") and not c.events_of("r", "turn_diff"), "read-only turns take none"
    assert (await c.request("agent/checkpoints", {"agentId": "r"})) == {"checkpoints": []}
    assert not (data_dir / "checkpoints" / "r").exists()
    second = await c.request("agent/complete", {"agentId": "r", "text": "write"})
    assert only(c.events_of("r", "checkpoint"))["messageIndex"] == 4  # user, assistant, tool, assistant, *user*
    assert only(c.events_of("r", "turn_diff"))["files"] == [
        {"path": "b.txt", "change": "added", "additions": 1, "deletions": 0}]
    assert (data_dir / "checkpoints" / "r").is_dir()
    c.kill()
    await c.wait_exit(5)

    c = await spawn()  # after a crash: listed without loading the agent, then rewound
    listed = (await c.request("agent/checkpoints", {"agentId": "r"}))["checkpoints"]
    assert [(x["checkpointId"], x["turnId"], x["messageIndex"], x["files"]) for x in listed] == [
        ("cp_1", second["turnId"], 4, 1)]
    res = await c.request("agent/rewind", {"agentId": "r", "checkpointId": "cp_1"})
    assert res == {"restored": True, "files": [{"path": "b.txt", "change": "deleted"}], "conflicts": []}
    assert sorted(os.listdir(work_dir)) == ["a.txt"]
    assert only(c.events_of("r", "rewound")) == {"type": "rewound", "checkpointId": "cp_1", "restore": "both",
                                                   "messageIndex": 4}
    msgs = (await c.request("agent/messages", {"agentId": "r"}))["messages"]
    assert [m.get("rewound", False) for m in msgs] == [False] * 4 + [True] * 4
    c.kill()
    await c.wait_exit(5)

    c = await spawn()
    msgs = (await c.request("agent/messages", {"agentId": "r"}))["messages"]
    assert [m.get("rewound", False) for m in msgs] == [False] * 4 + [True] * 4, "the flags survive a restart"
    assert (await c.request("agent/status", {"agentId": "r"}))["checkpoints"] == {"enabled": True}
    fork = await c.request("agent/fork", {"agentId": "r", "newAgentId": "r2"})
    assert fork["agentId"] == "r2"
    assert (await c.request("agent/checkpoints", {"agentId": "r2"})) == {"checkpoints": []}, "a fork starts with none"
    fmsgs = (await c.request("agent/messages", {"agentId": "r2"}))["messages"]
    assert [m.get("rewound", False) for m in fmsgs] == [False] * 4 + [True] * 4
    await c.request("agent/send", {"agentId": "r", "text": "slow"})
    with pytest.raises(RpcError) as err:
        await c.request("agent/rewind", {"agentId": "r", "checkpointId": "cp_1", "dryRun": True})
    assert err.value.code == -32602 and err.value.data["reason"] == "agent_busy"
    await c.wait_event("r", "done")
    msgs = (await c.request("agent/messages", {"agentId": "r"}))["messages"]
    assert [m.get("rewound", False) for m in msgs] == [False] * 4 + [True] * 4 + [False] * 2
    assert (await c.request("agent/delete", {"agentId": "r"}))["deleted"] is True
    assert not (data_dir / "checkpoints" / "r").exists(), "agent/delete removes its checkpoints"
    with pytest.raises(RpcError) as err:
        await c.request("agent/checkpoints", {"agentId": "r"})
    assert err.value.data["reason"] == "agent_not_found"


def openai_chunks(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse(None, {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764201600, "model": "m",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def openai_reply(text: str | None = None, call: tuple[str, dict[str, Any]] | None = None) -> FakeResponse:
    chunks = [openai_chunks({"role": "assistant", "content": ""})]
    if text:
        chunks.append(openai_chunks({"content": text}))
    if call:
        chunks.append(openai_chunks({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
            "name": call[0], "arguments": json.dumps(call[1])}}]}))
    chunks += [openai_chunks({}, "tool_calls" if call else "stop"), sse(None, "[DONE]")]
    return FakeResponse(chunks=chunks)


async def test_a_turn_a_crash_ended_still_gets_its_turn_diff(spawn: Spawn, work_dir: Path) -> None:
    """kill -9 after a turn changed files and before it ended: recovery ends the turn with
    the `turn_diff` of the checkpoint the dead process took (no second checkpoint)."""
    c = await spawn()
    script = scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "b.txt", "content": "B\n"}}]},
                      {"text": "never said", "delayMs": 60000})
    await c.request("agent/create", {"agentId": "k", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    turn = (await c.request("agent/send", {"agentId": "k", "text": "write"}))["turnId"]
    await c.wait_for(lambda: c.events_of("k", "tool:end"), timeout=10)
    await c.wait_for(lambda: any(e["event"].get("current") == "STREAMING_MODEL" and e["seq"] > c.events_of("k", "tool:end")[0]["seq"]
                                 for e in c.events_of("k", "breakpoint_changed")), timeout=10)
    assert not c.events_of("k", "turn_diff")
    c.kill()
    await c.wait_exit(5)

    c = await spawn()
    await c.request("agent/resume", {"agentId": "k", "since": 0})
    done = await c.wait_for(lambda: [e for e in c.events_of("k", "done") if not e.get("replay")], timeout=10)
    assert done[0]["event"]["reason"] == "interrupted"
    live = [e for e in c.events_of("k", "turn_diff") if not e.get("replay")]
    diff = only(live)
    assert diff["turnId"] == turn and diff["checkpointId"] == "cp_1"
    assert diff["files"] == [{"path": "b.txt", "change": "added", "additions": 1, "deletions": 0}]
    assert len(c.events_of("k", "checkpoint")) == 1, "the replayed one; no second checkpoint"
    listed = (await c.request("agent/checkpoints", {"agentId": "k"}))["checkpoints"]
    assert [(x["checkpointId"], x["turnId"], x["files"], x["diffSeq"]) for x in listed] == [
        ("cp_1", turn, 1, live[0]["seq"])], "diffSeq points at the turn_diff event"


async def test_a_turn_continued_after_a_crash_keeps_its_one_checkpoint(spawn: Spawn, work_dir: Path) -> None:
    """One write ran (cp_1 taken), the next waits on its approval, kill -9: after resume and
    the approval, the turn's diff has both files against cp_1 and no cp_2 was taken."""
    c = await spawn()
    script = scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "one.txt", "content": "1\n"}}]},
                      {"toolCalls": [{"name": "bash_run", "input": {"cmd": "printf '2\\n' > two.txt"}}]},
                      {"text": "both"})
    await c.request("agent/create", {"agentId": "q", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto", "requireApprovalTools": ["bash_run"]}})
    turn = (await c.request("agent/send", {"agentId": "q", "text": "write two"}))["turnId"]
    approval_id = (await c.wait_event("q", "permission_required"))["event"]["approvalId"]
    assert [e["event"]["checkpointId"] for e in c.events_of("q", "checkpoint")] == ["cp_1"]
    c.kill()
    await c.wait_exit(5)

    c = await spawn(capabilities={"approvals": False})
    await c.request("agent/resume", {"agentId": "q", "since": 0})
    await c.wait_for(lambda: [e for e in c.events_of("q", "permission_required") if not e.get("replay")], timeout=10)
    await c.request("agent/decide", {"agentId": "q", "approvalId": approval_id, "decision": "allow"})
    done = await c.wait_for(lambda: [e for e in c.events_of("q", "done") if not e.get("replay")], timeout=10)
    assert done[0]["event"]["reason"] == "completed" and (work_dir / "two.txt").read_text() == "2\n"
    assert len(c.events_of("q", "checkpoint")) == 1, "no second checkpoint for the same turn"
    diff = only([e for e in c.events_of("q", "turn_diff") if not e.get("replay")])
    assert diff["turnId"] == turn and diff["checkpointId"] == "cp_1"
    assert sorted(f["path"] for f in diff["files"]) == ["one.txt", "two.txt"]


async def test_a_conversation_rewind_takes_messages_out_of_the_model_context(
        spawn: Spawn, fake: FakeServer, work_dir: Path, server_env: dict[str, str]) -> None:
    fake.add(openai_reply("first answer"),
             openai_reply(call=("fs_write", {"path": "x.txt", "content": "x\n"})), openai_reply("wrote x"),
             openai_reply("third answer"))
    c = await spawn(env=dict(server_env, TEST_OPENAI_KEY="sk-test"))
    model = {"provider": "openai", "model": "m", "baseUrl": fake.url + "/v1", "apiKeyEnv": "TEST_OPENAI_KEY",
             "retry": {"maxRetries": 0}}
    await c.request("agent/create", {"agentId": "m", "model": model, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    assert (await c.request("agent/complete", {"agentId": "m", "text": "question one"}))["status"] == "ok"
    assert (await c.request("agent/complete", {"agentId": "m", "text": "write x"}))["status"] == "ok"
    assert (work_dir / "x.txt").exists()
    res = await c.request("agent/rewind", {"agentId": "m", "checkpointId": "cp_1", "restore": "conversation"})
    assert res == {"restored": True, "files": [], "conflicts": []}
    assert (work_dir / "x.txt").exists(), "a conversation rewind leaves the files alone"
    assert (await c.request("agent/complete", {"agentId": "m", "text": "question three"}))["status"] == "ok"
    seen = [[m.get("content") for m in r.json["messages"] if m["role"] != "system"] for r in fake.requests]
    assert seen[3] == ["question one", "first answer", "question three"], seen[3]
    msgs = (await c.request("agent/messages", {"agentId": "m"}))["messages"]
    assert [bool(m.get("rewound")) for m in msgs] == [False, False, True, True, True, True, False, False]


async def test_no_git_on_path_turns_checkpoints_off(spawn: Spawn, work_dir: Path, tmp_path: Path,
                                                    server_env: dict[str, str]) -> None:
    empty = tmp_path / "nobin"
    empty.mkdir()
    c = await spawn(env=dict(server_env, PATH=str(empty)))
    script = scripted({"toolCalls": [{"name": "fs_write", "input": {"path": "o.txt", "content": "o"}}]},
                      {"text": "ok"})
    await c.request("agent/create", {"agentId": "n", "model": script, "sandbox": {"workDir": str(work_dir)},
                                     "permission": {"mode": "auto"}})
    st = (await c.request("agent/status", {"agentId": "n"}))["checkpoints"]
    assert st == {"enabled": False, "reason": "git was not found on PATH"}
    assert (await c.request("agent/complete", {"agentId": "n", "text": "write"}))["status"] == "ok"
    assert (work_dir / "o.txt").read_text() == "o"
    assert not c.events_of("n", "checkpoint") and not c.events_of("n", "turn_diff")
    assert (await c.request("agent/checkpoints", {"agentId": "n"})) == {"checkpoints": []}
    with pytest.raises(RpcError) as err:
        await c.request("agent/rewind", {"agentId": "n", "checkpointId": "cp_1"})
    assert err.value.code == -32002 and err.value.data["reason"] == "checkpoint_not_found"
    await c.request("agent/create", {"agentId": "off", "checkpoints": False})
    st = (await c.request("agent/status", {"agentId": "off"}))["checkpoints"]
    assert st["enabled"] is False and "checkpoints: false" in st["reason"]


# --- the engine alone ----------------------------------------------------------------


def test_large_files_and_ignored_paths_are_left_out(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "small.txt").write_text("s\n")
    (work / ".gitignore").write_text("out/\n")
    (work / "out").mkdir()
    (work / "out" / "gen.txt").write_text("g\n")
    with open(work / "big [1].bin", "wb") as fh:
        fh.truncate(10 * 1024 * 1024 + 1)
    with open(work / "edge.bin", "wb") as fh:
        fh.truncate(10 * 1024 * 1024)  # exactly 10 MiB is kept
    repo = ShadowRepo(str(tmp_path / "cp"), str(work))
    first = repo.snapshot()
    names = repo.git("ls-tree", "-r", "--name-only", first).decode().split()
    assert names == [".gitignore", "edge.bin", "small.txt"]
    (work / "small.txt").write_text("s\n" * 300_000)
    second = repo.snapshot()
    assert [(c.path, c.change, c.additions) for c in repo.changes(first, second)] == [("small.txt", "modified", 299_999)]
    diff, truncated = repo.patch(first, second, limit=1000)
    assert truncated and len(diff.encode()) <= 1000 and diff.endswith("\n")
    assert repo.snapshot() == second, "an unchanged workDir gives the same tree"
