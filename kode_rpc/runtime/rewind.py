"""Checkpoints, turn diffs and rewind of one agent (contract section 14).

`AgentCheckpoints` is held by an `Agent` (`agent.checkpoints`):

- `before_change(turn, tool)` runs before every tool call; before the turn's first
  call of a tool that may change files (any tool not `readonly`) it snapshots the
  workDir into the agent's shadow repository (`sandbox/checkpoints.py`) and emits
  `checkpoint`. Read-only calls and turns cost nothing.
- `end_turn(turn)` snapshots again at the end of a checkpointed turn, records what it
  changed and emits `turn_diff` when it changed files; also for a turn that crash
  recovery ends or continues, whose checkpoint the dead process took (found in the
  stored metadata, never taken twice).
- `rewind(params)` restores the workDir and/or takes messages out of the model context.

The checkpoints' metadata lives in the shadow repository's directory
(`<fileStoreBaseDir>/checkpoints/<agentId>/checkpoints.json`); the rewound message
ranges live in the agent's runtime state (`rewound`), stored with the agent row, so
both survive restarts. git runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from ..protocol import agents as a
from ..protocol import events as ev
from ..protocol.approvals import CheckpointsStatus
from ..sandbox.checkpoints import CheckpointError, ShadowRepo, git_available, load_meta
from .errors import AgentBusy, InvalidInput, NotFound
from .util import now_iso

if TYPE_CHECKING:
    from ..tools.base import Tool
    from .agent import Agent
    from .records import Turn

log = logging.getLogger(__name__)


def checkpoint_dir(base: str | None, agent_id: str) -> str | None:
    return os.path.join(base, agent_id) if base else None


def status_of(config: a.AgentConfig | dict[str, Any], base: str | None) -> CheckpointsStatus:
    """Whether an agent with this config gets checkpoints in this process, and why not."""
    enabled = config.checkpoints if isinstance(config, a.AgentConfig) else config.get("checkpoints", True) is not False
    if not enabled:
        return CheckpointsStatus(enabled=False, reason="turned off in the agent's config (checkpoints: false)")
    if not base:
        return CheckpointsStatus(enabled=False, reason="the server has no directory for checkpoints")
    if git_available() is None:
        return CheckpointsStatus(enabled=False, reason="git was not found on PATH")
    return CheckpointsStatus(enabled=True)


def listing(meta: dict[str, Any], created_at: str) -> a.CheckpointsResult:
    if meta.get("agentCreatedAt") not in (None, created_at):
        return a.CheckpointsResult(checkpoints=[])  # left over from a deleted agent of that id
    return a.CheckpointsResult(checkpoints=[
        a.Checkpoint(checkpoint_id=r["checkpointId"], turn_id=r["turnId"], message_index=r["messageIndex"],
                     seq=r["seq"], created_at=r["createdAt"], files=r.get("files", 0), diff_seq=r.get("diffSeq"))
        for r in meta.get("checkpoints", [])])


async def stored_checkpoints(base: str | None, agent_id: str, created_at: str) -> a.CheckpointsResult:
    """The checkpoints of an agent that is not in memory."""
    directory = checkpoint_dir(base, agent_id)
    if directory is None or not os.path.isdir(directory):
        return a.CheckpointsResult(checkpoints=[])
    return listing(await asyncio.to_thread(load_meta, directory), created_at)


async def remove_checkpoints(base: str | None, agent_id: str) -> None:
    directory = checkpoint_dir(base, agent_id)
    if directory is not None and os.path.isdir(directory):
        await asyncio.to_thread(shutil.rmtree, directory, True)


def rewound_of(runtime: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(r[0]), int(r[1])) for r in runtime.get("rewound") or [] if isinstance(r, list) and len(r) == 2]


def is_rewound(ranges: list[tuple[int, int]], index: int) -> bool:
    return any(start <= index < end for start, end in ranges)


class AgentCheckpoints:
    def __init__(self, agent: Agent, rewound: list[tuple[int, int]]) -> None:
        self.agent = agent
        self.rewound = rewound
        """Message index ranges [start, end) that a rewind took out of the model context."""
        self.base: str | None = agent.svc.checkpoint_dir
        self._status: CheckpointsStatus | None = None
        self._repo: ShadowRepo | None = None
        self._meta: dict[str, Any] | None = None
        self._taking: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._lock = asyncio.Lock()

    # --- state --------------------------------------------------------------------------
    def status(self) -> CheckpointsStatus:
        if self._status is None:
            self._status = status_of(self.agent.config, self.base)
        return self._status

    @property
    def enabled(self) -> bool:
        return self.status().enabled

    def runtime(self) -> list[list[int]]:
        return [[s, e] for s, e in self.rewound]

    def context(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages the model sees: all but those a rewind took out."""
        if not self.rewound:
            return messages
        return [m for m in messages if not is_rewound(self.rewound, m["index"])]

    def repo(self) -> ShadowRepo:
        if self._repo is None:
            directory = checkpoint_dir(self.base, self.agent.id)
            assert directory is not None
            self._repo = ShadowRepo(directory, self.agent.sandbox.work_dir)
        return self._repo

    def _load(self) -> dict[str, Any]:
        """The metadata (blocking); a directory left by a deleted agent of the same id is wiped."""
        if self._meta is None:
            repo = self.repo()
            meta = repo.load()
            created = self.agent.row.created_at
            if meta.get("agentCreatedAt") not in (None, created):
                shutil.rmtree(repo.dir, ignore_errors=True)
                meta = {"checkpoints": []}
            meta["agentCreatedAt"] = created
            self._meta = meta
        return self._meta

    # --- taking checkpoints ----------------------------------------------------------------
    async def before_change(self, turn: Turn, tool: Tool) -> None:
        """Before a call runs: the turn's checkpoint, taken once, before its first call of
        a tool that may change files. Concurrent calls of the turn wait for it."""
        if tool.readonly or not self.enabled:
            return
        fut = self._taking.get(turn.id)
        if fut is not None:
            if not fut.done():
                await asyncio.shield(fut)
            return
        fut = asyncio.get_running_loop().create_future()
        self._taking[turn.id] = fut
        try:
            stored = await self._taken_before_crash(turn)
            fut.set_result(stored if stored is not None else await self._take(turn))
        except CheckpointError as exc:
            log.warning("agent %s: no checkpoint for turn %s: %s", self.agent.id, turn.id, exc)
            self.agent.emit(ev.ErrorEvent(severity="warn", phase="system", message=f"no checkpoint taken: {exc}"),
                            turn.id)
            fut.set_result(None)
        finally:
            if not fut.done():  # interrupted while snapshotting
                fut.set_result(None)

    async def _take(self, turn: Turn) -> dict[str, Any]:
        async with self._lock:
            repo = self.repo()

            def snap() -> tuple[dict[str, Any], str]:
                meta = self._load()
                return meta, repo.snapshot()

            meta, tree = await asyncio.to_thread(snap)
            cid = f"cp_{len(meta['checkpoints']) + 1}"
            index = turn.row.message_index
            env = self.agent.emit(ev.CheckpointTaken(checkpoint_id=cid, turn_id=turn.id, message_index=index), turn.id)
            rec = {"checkpointId": cid, "turnId": turn.id, "messageIndex": index, "seq": env.seq,
                   "createdAt": now_iso(), "files": 0, "tree": tree}
            meta["checkpoints"].append(rec)
            await asyncio.to_thread(repo.save, meta)
            return rec

    async def _taken_before_crash(self, turn: Turn) -> dict[str, Any] | None:
        """A recovered turn's checkpoint, taken by the process that died (the turn has no
        end snapshot yet); None for any other turn, which costs nothing."""
        if not turn.recovered or not self.enabled:
            return None
        async with self._lock:
            meta = await asyncio.to_thread(self._load)
        return next((r for r in reversed(meta["checkpoints"]) if r["turnId"] == turn.id and "after" not in r), None)

    async def end_turn(self, turn: Turn) -> None:
        """At the end of a checkpointed turn: what it changed (`turn_diff` when anything),
        also for a turn a crash interrupted, whose checkpoint the dead process took."""
        fut = self._taking.pop(turn.id, None)
        if fut is None:
            rec = await self._taken_before_crash(turn)
        elif not fut.done():
            return
        else:
            rec = fut.result()
        if rec is None:
            return
        repo = self.repo()

        def finish() -> tuple[list[Any], str, bool, str]:
            after = repo.snapshot()
            changes = repo.changes(rec["tree"], after)
            diff, truncated = repo.patch(rec["tree"], after) if changes else ("", False)
            return changes, diff, truncated, after

        def record(after: str, files: int) -> None:
            rec["after"] = after
            rec["files"] = files
            meta = self._load()
            meta["baseline"] = after
            repo.save(meta)

        try:
            async with self._lock:
                changes, diff, truncated, after = await asyncio.to_thread(finish)
                if changes:  # emitted first: the record keeps its seq (`diffSeq`), saved once
                    env = self.agent.emit(ev.TurnDiff(
                        turn_id=turn.id, checkpoint_id=rec["checkpointId"], diff=diff, truncated=truncated,
                        files=[ev.DiffFile(path=c.path, change=c.change, additions=c.additions,
                                           deletions=c.deletions) for c in changes]), turn.id)
                    rec["diffSeq"] = env.seq
                await asyncio.to_thread(record, after, len(changes))
        except CheckpointError as exc:
            log.warning("agent %s: no diff for turn %s: %s", self.agent.id, turn.id, exc)

    # --- reading and rewinding -------------------------------------------------------------
    async def list(self) -> a.CheckpointsResult:
        directory = checkpoint_dir(self.base, self.agent.id)
        if directory is None or not os.path.isdir(directory):
            return a.CheckpointsResult(checkpoints=[])
        async with self._lock:
            meta = await asyncio.to_thread(self._load)
        return listing(meta, self.agent.row.created_at)

    async def rewind(self, p: a.RewindParams) -> a.RewindResult:
        agent = self.agent
        code = p.restore in ("code", "both")
        conversation = p.restore in ("conversation", "both")
        directory = checkpoint_dir(self.base, agent.id)
        async with self._lock:
            meta = await asyncio.to_thread(self._load) if directory and os.path.isdir(directory) else {"checkpoints": []}
            rec = next((r for r in meta["checkpoints"] if r["checkpointId"] == p.checkpoint_id), None)
            if rec is None:
                raise NotFound("checkpoint", p.checkpoint_id)
            if agent.has_turns or agent.pending:
                raise AgentBusy(agent.id, "a rewind waits until the agent is idle")
            files: list[a.RewindFile] = []
            conflicts: list[str] = []
            current = ""
            if code:
                status = self.status()
                if not status.enabled and git_available() is None:
                    raise InvalidInput(f"cannot restore files: {status.reason}", "restore", status.reason or "")
                repo = self.repo()
                baseline = meta.get("baseline")

                def plan() -> tuple[str, list[Any], list[str]]:
                    now = repo.snapshot()
                    changes = repo.changes(now, rec["tree"])
                    touched = {c.path for c in changes}
                    changed = repo.changed_paths(baseline, now) if baseline else []
                    return now, changes, [path for path in changed if path in touched]

                try:
                    current, changes, conflicts = await asyncio.to_thread(plan)
                except CheckpointError as exc:
                    raise InvalidInput(f"cannot restore files: {exc}", "checkpointId", str(exc)) from None
                files = [a.RewindFile(path=c.path, change=c.change) for c in changes]
            if p.dry_run or (conflicts and not p.force):
                return a.RewindResult(restored=False, files=files, conflicts=conflicts)
            if code:
                repo = self.repo()

                def restore() -> None:
                    repo.restore(rec["tree"], current)
                    meta["baseline"] = rec["tree"]
                    repo.save(meta)

                await asyncio.to_thread(restore)
            if conversation:
                start, end = rec["messageIndex"], len(agent.messages)
                if start < end and not all(is_rewound(self.rewound, i) for i in range(start, end)):
                    self.rewound.append((start, end))
                    await agent.persist()
            env = agent.emit(ev.Rewound(checkpoint_id=rec["checkpointId"], restore=p.restore,
                                        message_index=rec["messageIndex"]))
        if env.delivered is not None:
            await env.delivered  # the event reaches the client before the response
        return a.RewindResult(restored=True, files=files, conflicts=conflicts)
