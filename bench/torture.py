#!/usr/bin/env python3
"""kill -9 torture: the crash-durability promises of the contract under SIGKILL at random moments.

    python bench/torture.py --kills 200 [--seed N] [--agents 3] [--data-dir DIR] [--verbose]

Each round ("life") starts a real `kode-rpc serve` on the same data dir and:

1. resumes every agent with `agent/resume {since: 0}` and checks the replay against
   everything the client received in earlier lives (an event the client received is
   acknowledged): no acknowledged event lost or changed, seqs 1..N without gaps, never
   reused by a later live event;
2. waits until the agent is quiet and checks `agent/status` against what the events say:
   pending approvals mean `PAUSED` at `AWAITING_APPROVAL` with those approval ids, and
   were re-issued as `approval/request`; no pending approval and no open turn mean
   `READY`; `store/consistency` is consistent with no issues;
3. answers the pending approvals and runs one more turn to `done` (`agent/complete`
   returns `ok`); every acknowledged `agent/send` must have ended with exactly one `done`;
   Every `agent/decide` the server acknowledged is still decided (not pending again, its
   `permission_decided` stored with the same decision); every acknowledged
   `agent/create` still exists;
4. starts new work on 2-3 agents (scripted provider: `bash_run`, `fs_write`, text chunks
   with delays; one agent in permission mode `approval`, one asking only for `fs_write`),
   sometimes creating another agent meanwhile, with a client that answers approvals at
   once, late, with deny, with `agent/decide`, or never;
5. SIGKILLs the server 0-400 ms after a random trigger (sends acknowledged, the k-th new
   event, the first approval request). In about one life in five the kill lands during
   step 1-3 instead (0-600 ms after spawn: a crash during crash recovery).

Prints the tally as JSON (with the first examples of each problem) and exits 1 when any
problem counter is not zero. `tests/test_torture.py` runs the same driver with a few kills.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kode_rpc.client import RpcClient, RpcError  # noqa: E402

PROBLEMS = ("lost_events", "changed_events", "reused_seqs", "seq_gaps", "consistency_issues", "wrong_states",
            "approvals_not_reissued", "unresumable_agents", "lost_agents", "lost_turns", "duplicate_done",
            "lost_decisions", "server_errors")
MODES = ("auto", "approval", "mixed")
MAX_EXAMPLES = 6


@dataclass
class Tally:
    seed: int = 0
    kills: int = 0
    kills_during_recovery: int = 0
    lives: int = 0
    agents_created: int = 0
    resumes: int = 0
    events_verified: int = 0
    approvals_pending_at_resume: int = 0
    decisions_checked: int = 0
    lost_events: int = 0
    changed_events: int = 0
    reused_seqs: int = 0
    seq_gaps: int = 0
    consistency_issues: int = 0
    wrong_states: int = 0
    approvals_not_reissued: int = 0
    unresumable_agents: int = 0
    lost_agents: int = 0
    lost_turns: int = 0
    duplicate_done: int = 0
    lost_decisions: int = 0
    server_errors: int = 0
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, kind: str, n: int, example: str) -> None:
        if n <= 0:
            return
        setattr(self, kind, getattr(self, kind) + n)
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"life {self.lives}: {example}")

    def problems(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in PROBLEMS}

    def ok(self) -> bool:
        return not any(self.problems().values())


@dataclass
class Track:
    """What the client knows about one agent across lives."""

    agent_id: str
    mode: str
    work_dir: Path
    known: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Every event the client received (acknowledged), by seq, without the `replay` flag."""
    acked_turns: set[str] = field(default_factory=set)
    acked_decisions: dict[str, str] = field(default_factory=dict)
    """approvalId -> decision of every `agent/decide` the server acknowledged, not yet checked."""
    lives: int = 0
    retire_after: int = 4

    def done_turns(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for env in self.known.values():
            if env["event"]["type"] == "done" and env.get("turnId"):
                out[env["turnId"]] = out.get(env["turnId"], 0) + 1
        return out


def strip(env: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k != "replay"}


def pending_by_events(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Approvals asked for and not decided, by the event stream (seq order)."""
    pending: dict[str, dict[str, Any]] = {}
    for env in sorted(events, key=lambda e: e["seq"]):
        ev = env["event"]
        if ev["type"] == "permission_required":
            pending[ev["approvalId"]] = env
        elif ev["type"] == "permission_decided" and ev.get("approvalId"):
            pending.pop(ev["approvalId"], None)
    return pending


def script_for(rng: random.Random, mode: str, turns: int = 40) -> list[dict[str, Any]]:
    """Model steps for `turns` turns: each turn 0-2 tool steps, then a text step."""
    steps: list[dict[str, Any]] = []
    k = 0
    for _ in range(turns):
        for _ in range(rng.choice([0, 1, 1, 2])):
            k += 1
            calls = []
            for _ in range(rng.choice([1, 1, 2])):
                if rng.random() < 0.5:
                    calls.append({"name": "bash_run", "input": {"cmd": rng.choice(["sleep 0.05; echo hi", "echo hi", "sleep 0.1; echo done"])}})
                else:
                    calls.append({"name": "fs_write", "input": {"path": f"f{k}.txt", "content": f"content {k}\n" * rng.randint(1, 5)}})
            step: dict[str, Any] = {"toolCalls": calls}
            if rng.random() < 0.5:
                step["text"] = f"calling tools for step {k}"
            if rng.random() < 0.3:
                step["delayMs"] = rng.randint(0, 60)
            steps.append(step)
        if rng.random() < 0.5:
            steps.append({"chunks": [f"chunk{i} " for i in range(rng.randint(1, 8))], "delayMs": rng.randint(0, 80)})
        else:
            steps.append({"text": " ".join(f"word{i}" for i in range(rng.randint(1, 12))), "delayMs": rng.randint(0, 40)})
    return steps


def permission_for(mode: str) -> dict[str, Any]:
    if mode == "approval":
        return {"mode": "approval"}
    if mode == "mixed":
        return {"mode": "auto", "requireApprovalTools": ["fs_write"]}
    return {"mode": "auto"}


class Killed(Exception):
    """The server was SIGKILLed on purpose while a check was talking to it."""


class ApprovalDesk:
    """The client's `approval/request` handler. Per agent: `hold` (answer allow once
    released), `allow`, or `random` (allow now, allow late, deny, answer with
    `agent/decide` instead, or never answer)."""

    def __init__(self, rng: random.Random, client: RpcClient) -> None:
        self.rng = rng
        self.client = client
        self.decisions: dict[str, dict[str, str]] = {}
        """agentId -> approvalId -> decision, for each acknowledged `agent/decide`."""
        self.mode: dict[str, str] = {}
        self.release: dict[str, asyncio.Event] = {}
        self.life_over = asyncio.Event()
        self.requests: list[dict[str, Any]] = []
        self.first_request = asyncio.Event()
        self.killed = False

    async def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(params)
        self.first_request.set()
        agent = params.get("agentId", "")
        mode = self.mode.get(agent, "allow")
        if mode == "hold":
            ev = self.release.setdefault(agent, asyncio.Event())
            await _first(ev.wait(), self.life_over.wait())
            return {"decision": "allow"}
        if mode == "random":
            r = self.rng.random()
            if r < 0.3:
                return {"decision": "allow"}
            if r < 0.42:
                return {"decision": "deny", "note": "torture says no"}
            if r < 0.55:
                await _first(asyncio.sleep(self.rng.uniform(0, 0.3)), self.life_over.wait())
                return {"decision": "allow"}
            if r < 0.77:  # answer with agent/decide; its acknowledgement must survive a crash
                decision = self.rng.choice(["allow", "deny"])
                try:
                    res = await self.client.request("agent/decide", {"agentId": agent, "approvalId": params["approvalId"],
                                                                     "decision": decision}, timeout=10)
                    if res.get("accepted"):
                        self.decisions.setdefault(agent, {})[params["approvalId"]] = decision
                except (RpcError, asyncio.TimeoutError, ConnectionError):
                    pass
                return {"decision": decision}  # a late reply: ignored
            await self.life_over.wait()  # never answered while this server lives
            return {"decision": "deny"}
        return {"decision": "allow"}


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class Torture:
    def __init__(self, root: Path, seed: int, agents: int = 3, verbose: bool = False) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.tally = Tally(seed=seed)
        self.n_agents = agents
        self.verbose = verbose
        self.tracks: list[Track] = []
        self.counter = 0
        self.data = root / "data"
        self.logs = root / "stderr"
        for d in (self.data, self.logs, root / "logs", root / "config", root / "work"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, KODE_DATA_DIR=str(self.data), KODE_LOG_DIR=str(root / "logs"),
                        KODE_CONFIG_DIR=str(root / "config"))
        for key in ("KODE_PROVIDER", "KODE_MODEL", "KODE_MAX_AGENTS", "KODE_STORE"):
            self.env.pop(key, None)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[life {self.tally.lives}] {msg}", file=sys.stderr, flush=True)

    # --- one life -----------------------------------------------------------------------
    async def life(self) -> None:
        self.tally.lives += 1
        stderr_path = self.logs / f"life-{self.tally.lives}.stderr"
        with open(stderr_path, "wb") as err:
            client = await RpcClient.spawn(env=self.env, stderr=err)
        desk = ApprovalDesk(self.rng, client)
        client.on_approval = desk
        # sometimes the kill lands during recovery itself (resume, sealing, re-issued approvals)
        early: asyncio.Task[None] | None = None
        if self.tracks and self.rng.random() < 0.2:
            early = asyncio.create_task(self.kill_later(client, desk, self.rng.uniform(0, 0.6)))
        try:
            await self.call(client, desk, "initialize", {"protocolVersion": 1, "clientInfo": {"name": "torture"}}, timeout=30)
            # 1-3: verify every agent that lived before, in parallel
            survivors = [t for t in self.tracks]
            for t in survivors:
                desk.mode[t.agent_id] = "hold"
            await asyncio.gather(*(self.verify_or_killed(client, desk, t) for t in survivors))
            if early is not None:
                early.cancel()
            if desk.killed:
                return
            # retire old agents, create new ones, so replays stay short
            for t in list(self.tracks):
                if t.lives >= t.retire_after or len(t.known) > 600:
                    try:
                        await client.request("agent/delete", {"agentId": t.agent_id}, timeout=30)
                    except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
                        self.log(f"delete {t.agent_id}: {exc!r}")
                    self.tracks.remove(t)
            while len(self.tracks) < self.n_agents:
                await self.create(client)
            # 4: new work, 5: kill
            await self.work_and_kill(client, desk)
        except Killed:
            pass
        finally:
            if early is not None:
                early.cancel()
            desk.life_over.set()
            if not desk.killed:
                client.kill()
            await client.wait_exit(10)
            self.absorb(client)
            for t in self.tracks:
                t.acked_decisions.update(desk.decisions.get(t.agent_id, {}))
        text = stderr_path.read_text(errors="replace")
        tracebacks = text.count("Traceback")
        if tracebacks:
            idx = text.index("Traceback")
            self.tally.problem("server_errors", tracebacks, f"stderr {stderr_path.name}: {text[idx: idx + 1500]}")
        else:
            stderr_path.unlink(missing_ok=True)

    async def kill_later(self, client: RpcClient, desk: ApprovalDesk, delay: float) -> None:
        await asyncio.sleep(delay)
        if not desk.killed:
            self.log(f"kill during recovery, {delay * 1000:.0f} ms after spawn")
            client.kill()
            desk.killed = True
            self.tally.kills += 1
            self.tally.kills_during_recovery += 1

    async def verify_or_killed(self, client: RpcClient, desk: ApprovalDesk, t: Track) -> None:
        try:
            await self.verify(client, desk, t)
        except Killed:
            pass

    async def call(self, client: RpcClient, desk: ApprovalDesk, method: str, params: dict[str, Any], timeout: float) -> Any:
        """A request whose failure because we killed the server is not a finding."""
        try:
            return await client.request(method, params, timeout=timeout)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            await asyncio.sleep(0.05)
            if desk.killed:
                raise Killed() from exc
            raise

    async def create(self, client: RpcClient) -> None:
        used = {t.mode for t in self.tracks}
        mode = next((m for m in MODES if m not in used), self.rng.choice(MODES))
        self.counter += 1
        agent_id = f"t{self.counter}-{mode}"
        work = self.root / "work" / agent_id
        work.mkdir(parents=True, exist_ok=True)
        track = Track(agent_id, mode, work, retire_after=self.rng.randint(3, 7))
        await client.request("agent/create", {
            "agentId": agent_id, "sandbox": {"workDir": str(work)}, "permission": permission_for(mode),
            "model": {"provider": "scripted", "script": script_for(self.rng, mode)}}, timeout=30)
        self.tracks.append(track)
        self.tally.agents_created += 1

    async def verify(self, client: RpcClient, desk: ApprovalDesk, t: Track) -> None:
        aid = t.agent_id
        t.lives += 1
        try:
            res = await self.call(client, desk, "agent/resume", {"agentId": aid, "since": 0}, timeout=30)
        except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
            if isinstance(exc, RpcError) and exc.code == -32002:
                self.tally.problem("lost_agents", 1, f"{aid}: an acknowledged agent/create is gone: {exc!r}")
                self.tracks.remove(t)
            else:
                self.tally.problem("unresumable_agents", 1, f"{aid}: agent/resume failed: {exc!r}")
            return
        self.tally.resumes += 1
        resumed_at = time.monotonic()
        replay = [e for e in client.events_of(aid) if e.get("replay")]
        seqs = [e["seq"] for e in replay]
        if res.get("replayed") != len(replay):
            self.tally.problem("seq_gaps", 1, f"{aid}: resume says replayed={res.get('replayed')}, client got {len(replay)}")
        if seqs != list(range(1, len(seqs) + 1)):
            dup = len(seqs) - len(set(seqs))
            self.tally.problem("seq_gaps", 1, f"{aid}: replay seqs are not 1..N: {_runs(seqs)}")
            if dup:
                self.tally.problem("reused_seqs", dup, f"{aid}: {dup} duplicate seqs in one replay")
        by_seq = {e["seq"]: strip(e) for e in replay}
        lost = [s for s in t.known if s not in by_seq]
        changed = [s for s in t.known if s in by_seq and by_seq[s] != t.known[s]]
        self.tally.events_verified += len(t.known)
        if lost:
            self.tally.problem("lost_events", len(lost), f"{aid}: acknowledged seqs missing from the since-0 replay: "
                                                         f"{_runs(sorted(lost))} (replay has {_runs(seqs)})")
        if changed:
            s = changed[0]
            self.tally.problem("changed_events", len(changed), f"{aid}: seq {s} was {json.dumps(t.known[s])[:300]} "
                                                               f"and is now {json.dumps(by_seq[s])[:300]}")

        # wait until quiet: every acknowledged turn done, or waiting on an approval with nothing moving
        def state() -> tuple[set[str], dict[str, dict[str, Any]], int]:
            evs = list(t.known.values()) + [strip(e) for e in client.events_of(aid)]
            dones = {e.get("turnId") for e in evs if e["event"]["type"] == "done"}
            started = {e["turnId"] for e in evs if e.get("turnId")}  # includes sends whose reply the kill ate
            return (t.acked_turns | started) - dones, pending_by_events(evs), len(client.events_of(aid))

        deadline = time.monotonic() + 10
        last_n, last_change = -1, time.monotonic()
        while True:
            open_turns, pending, n = state()
            now = time.monotonic()
            if n != last_n:
                last_n, last_change = n, now
            quiet = now - last_change >= 0.3
            if (not open_turns and not pending and quiet) or (pending and quiet) or now > deadline or desk.killed:
                break
            await asyncio.sleep(0.05)
        try:
            status = await self.call(client, desk, "agent/status", {"agentId": aid}, timeout=10)
        except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
            self.tally.problem("unresumable_agents", 1, f"{aid}: agent/status failed: {exc!r}")
            return
        open_turns, pending, _ = state()
        status_pending = {p["approvalId"] for p in status.get("pendingApprovals") or []}
        self.tally.approvals_pending_at_resume += len(pending)
        what = (f"state={status.get('state')} breakpoint={status.get('breakpoint')} pendingApprovals={sorted(status_pending)}; "
                f"events say pending={sorted(pending)} open turns={sorted(open_turns)}")
        story = (f"; last events before the kill: {_story(sorted(t.known.values(), key=lambda e: e['seq'])[-8:])}"
                 f"; live after resume: {_story([e for e in client.events_of(aid) if not e.get('replay')][:12])}")
        if pending or status_pending:
            if status.get("state") != "PAUSED" or status.get("breakpoint") != "AWAITING_APPROVAL" or status_pending != set(pending):
                self.tally.problem("wrong_states", 1, f"{aid} ({t.mode}) after resume with a pending approval: {what} "
                                                      f"(expected PAUSED / AWAITING_APPROVAL with the pending ids){story}")
        elif not open_turns:
            if status.get("state") != "READY" or status.get("breakpoint") != "READY":
                self.tally.problem("wrong_states", 1, f"{aid} ({t.mode}) idle after resume: {what} (expected READY / READY){story}")
        else:
            self.log(f"{aid}: still busy after 10 s: {what}")
        # pending approvals are re-issued (after the resume response) with the same ids
        want = set(pending) | status_pending
        while want and time.monotonic() - resumed_at < 3:
            if want <= {r.get("approvalId") for r in desk.requests if r.get("agentId") == aid}:
                break
            await asyncio.sleep(0.05)
        if desk.killed:
            raise Killed()
        asked = {r.get("approvalId") for r in desk.requests if r.get("agentId") == aid}
        missing = want - asked
        # acknowledged agent/decide answers survive: not pending again, and their permission_decided is stored
        evs = list(t.known.values()) + [strip(e) for e in client.events_of(aid)]
        decided = {e["event"].get("approvalId"): e["event"].get("decision") for e in evs
                   if e["event"]["type"] == "permission_decided"}
        for approval_id, decision in sorted(t.acked_decisions.items()):
            self.tally.decisions_checked += 1
            if approval_id in pending or approval_id in status_pending:
                self.tally.problem("lost_decisions", 1, f"{aid}: acknowledged agent/decide {approval_id}={decision} "
                                                        f"is pending again after the crash")
            elif decided.get(approval_id) != decision:
                self.tally.problem("lost_decisions", 1, f"{aid}: acknowledged agent/decide {approval_id}={decision}: "
                                                        f"stored permission_decided says {decided.get(approval_id)!r}")
        t.acked_decisions.clear()
        if missing:
            self.tally.problem("approvals_not_reissued", len(missing), f"{aid}: pending {sorted(missing)} not re-issued as approval/request")
        await self.consistency(client, desk, aid, "after resume")
        # answer everything, then one more turn must reach done
        desk.mode[aid] = "allow"
        desk.release.setdefault(aid, asyncio.Event()).set()
        for approval_id in sorted(missing):
            try:
                await self.call(client, desk, "agent/decide", {"agentId": aid, "approvalId": approval_id, "decision": "allow"}, timeout=10)
            except RpcError as exc:
                if exc.code not in (-32011, -32002):
                    self.tally.problem("unresumable_agents", 1, f"{aid}: agent/decide {approval_id}: {exc!r}")
            except (asyncio.TimeoutError, ConnectionError) as exc:
                self.tally.problem("unresumable_agents", 1, f"{aid}: agent/decide {approval_id}: {exc!r}")
        try:
            res = await self.call(client, desk, "agent/complete", {"agentId": aid, "text": f"after crash {self.tally.kills}"}, timeout=45)
            if res.get("status") != "ok":
                self.tally.problem("unresumable_agents", 1, f"{aid}: the turn after resume ended {res}")
            else:
                t.acked_turns.add(res["turnId"])
        except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
            if desk.killed:
                raise Killed() from exc
            st = None
            try:
                st = await client.request("agent/status", {"agentId": aid}, timeout=5)
                st = {k: st.get(k) for k in ("state", "breakpoint", "pendingApprovals", "lastSeq")}
            except Exception:
                pass
            self.tally.problem("unresumable_agents", 1, f"{aid} ({t.mode}): agent/complete after resume: {exc!r}; status {st}")
            return
        # every acknowledged send ended with exactly one done
        evs = list(t.known.values()) + [strip(e) for e in client.events_of(aid)]
        dones: dict[str, set[int]] = {}
        for e in evs:
            if e["event"]["type"] == "done" and e.get("turnId"):
                dones.setdefault(e["turnId"], set()).add(e["seq"])
        never = sorted(t.acked_turns - set(dones))
        if never:
            self.tally.problem("lost_turns", len(never), f"{aid}: acknowledged turns without a done: {never}")
        twice = {k: sorted(v) for k, v in dones.items() if len(v) > 1}
        if twice:
            self.tally.problem("duplicate_done", len(twice), f"{aid}: turns with more than one done: {twice}")
        t.acked_turns -= set(dones)  # finished; keep only the open ones
        await self.consistency(client, desk, aid, "after the next turn")

    async def consistency(self, client: RpcClient, desk: ApprovalDesk, aid: str, when: str) -> None:
        try:
            cons = await self.call(client, desk, "store/consistency", {"agentId": aid}, timeout=15)
        except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
            self.tally.problem("consistency_issues", 1, f"{aid} {when}: store/consistency failed: {exc!r}")
            return
        issues = cons.get("issues") or []
        if not cons.get("consistent") or issues:
            self.tally.problem("consistency_issues", max(1, len(issues)), f"{aid} {when}: {issues}")

    async def work_and_kill(self, client: RpcClient, desk: ApprovalDesk) -> None:
        rng = self.rng
        busy = rng.sample(self.tracks, k=min(len(self.tracks), rng.choice([2, 3])))
        for t in self.tracks:
            desk.mode[t.agent_id] = "random"
        desk.first_request.clear()
        start_events = len(client.events)
        trigger = rng.choice(["sent", "events", "events", "approval"])
        k = rng.randint(1, 60)

        async def send(t: Track) -> None:
            for _ in range(rng.choice([1, 1, 2])):
                try:
                    res = await client.request("agent/send", {"agentId": t.agent_id, "text": f"work {self.tally.lives}"}, timeout=30)
                    t.acked_turns.add(res["turnId"])
                except (RpcError, asyncio.TimeoutError, ConnectionError) as exc:
                    if isinstance(exc, RpcError) and exc.code == -32603:
                        self.tally.problem("server_errors", 1, f"agent/send {t.agent_id}: {exc!r}")
                    return

        async def extra() -> None:
            before = len(self.tracks)
            try:
                await self.create(client)
            except (RpcError, asyncio.TimeoutError, ConnectionError):
                return
            if len(self.tracks) > before:
                await send(self.tracks[-1])

        jobs = [send(t) for t in busy]
        if rng.random() < 0.3:
            jobs.append(extra())
        sends = asyncio.gather(*jobs)
        try:
            if trigger == "sent":
                await sends
            elif trigger == "events":
                await client.wait_for(lambda: len(client.events) - start_events >= k, timeout=5)
            else:
                await asyncio.wait_for(desk.first_request.wait(), timeout=3)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        delay = rng.uniform(0, 0.4)
        await asyncio.sleep(delay)
        self.log(f"kill after trigger={trigger} k={k} +{delay * 1000:.0f} ms; {len(client.events) - start_events} new events")
        client.kill()
        desk.killed = True
        self.tally.kills += 1
        await asyncio.gather(sends, return_exceptions=True)

    def absorb(self, client: RpcClient) -> None:
        """After the kill: everything the client received in this life is acknowledged.
        Live events must follow the replay without a gap and never reuse a known seq."""
        for t in self.tracks:
            evs = client.events_of(t.agent_id)
            live = [e for e in evs if not e.get("replay")]
            replay_max = max((e["seq"] for e in evs if e.get("replay")), default=0)
            seqs = [e["seq"] for e in live]
            if seqs and seqs != list(range(replay_max + 1, replay_max + 1 + len(seqs))):
                self.tally.problem("seq_gaps", 1, f"{t.agent_id}: live seqs after replay up to {replay_max}: {_runs(seqs)}")
            for e in live:
                s = strip(e)
                old = t.known.get(e["seq"])
                if old is not None and old != s:
                    self.tally.problem("reused_seqs", 1, f"{t.agent_id}: seq {e['seq']} reused: was {json.dumps(old)[:200]} "
                                                         f"now {json.dumps(s)[:200]}")
            for e in evs:
                t.known.setdefault(e["seq"], strip(e))

    async def run(self, kills: int) -> Tally:
        t0 = time.monotonic()
        while self.tally.kills < kills:
            await self.life()
        # a last life: verify what the last kill left behind, then shut down cleanly
        self.tally.lives += 1
        with open(self.logs / "final.stderr", "wb") as err:
            client = await RpcClient.spawn(env=self.env, stderr=err)
        desk = ApprovalDesk(self.rng, client)
        client.on_approval = desk
        try:
            await client.initialize(clientInfo={"name": "torture"})
            for t in self.tracks:
                desk.mode[t.agent_id] = "hold"
            await asyncio.gather(*(self.verify(client, desk, t) for t in self.tracks))
            code = await client.close()
            if code != 0:
                self.tally.problem("server_errors", 1, f"graceful shutdown after the torture exited with {code}")
        finally:
            desk.life_over.set()
            if client.proc.returncode is None:
                client.kill()
            await client.wait_exit(10)
        self.absorb(client)
        self.tally.seconds = round(time.monotonic() - t0, 1)
        return self.tally


def _story(events: list[dict[str, Any]]) -> str:
    """A compact line per event: seq, type and the interesting field."""
    out = []
    for e in events:
        ev = e["event"]
        extra = ev.get("state") or ev.get("current") or (ev.get("call") or {}).get("state") or ev.get("decision") or ev.get("reason") or ""
        name = (ev.get("call") or {}).get("name", "")
        out.append(f"{e['seq']}:{ev['type']}{'(' + name + ')' if name else ''}{'=' + str(extra) if extra else ''}")
    return " ".join(out)


def _runs(seqs: list[int]) -> str:
    """1,2,3,5,6 -> '1-3,5-6' (bounded)."""
    if not seqs:
        return "[]"
    parts, start, prev = [], seqs[0], seqs[0]
    for s in seqs[1:] + [None]:  # type: ignore[list-item]
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
        if s is not None:
            start = prev = s
    text = ",".join(parts)
    return text if len(text) < 300 else text[:300] + "..."


async def run_torture(kills: int, seed: int | None = None, root: Path | None = None, agents: int = 3,
                      verbose: bool = False) -> Tally:
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    cleanup = root is None
    root = Path(tempfile.mkdtemp(prefix="kode-torture-")) if root is None else root
    try:
        return await Torture(root, seed, agents, verbose).run(kills)
    finally:
        if cleanup:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=None, help="work here and keep it (default: a temp dir, removed)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    tally = asyncio.run(run_torture(args.kills, args.seed, args.data_dir, args.agents, args.verbose))
    print(json.dumps(asdict(tally), indent=2))
    return 0 if tally.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
