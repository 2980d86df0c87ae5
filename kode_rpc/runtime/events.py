"""The event log: assigns per-agent `seq`, stores each event, then delivers it.

Order of the spine: emit -> seq assigned -> row enqueued to the store -> commit ->
subscribers receive. Nothing is delivered that is not stored, and delivery follows
commit order, which is seq order. Streaming deltas (`text_chunk`, `think_chunk`,
`tool:output`) are held for the rest of the loop tick so that consecutive ones of
the same stream merge into one event; any other event flushes them first. While a
batch of deltas is being committed, newer deltas keep merging, so a fast stream
turns into fewer, larger events instead of a growing queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import secrets
from ..protocol.base import WireModel
from ..protocol.events import Chunk, channel_of
from ..store.base import EventRow, Store
from .util import now_iso

log = logging.getLogger(__name__)

MERGEABLE = frozenset({"text_chunk", "think_chunk", "tool:output"})
MAX_MERGED_DELTA = 64 * 1024


@dataclass
class Envelope:
    agent_id: str
    seq: int
    ts: str
    channel: str
    turn_id: str | None
    event: dict[str, Any]
    json: str = ""
    delivered: asyncio.Future[None] | None = field(default=None, repr=False)

    def encode(self) -> str:
        body: dict[str, Any] = {"agentId": self.agent_id, "seq": self.seq, "ts": self.ts, "channel": self.channel}
        if self.turn_id is not None:
            body["turnId"] = self.turn_id
        body["event"] = self.event
        try:
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from outside (a provider, a tool): escape it
            text = json.dumps(body, ensure_ascii=True, separators=(",", ":"))
        # The one redaction pass on the way into the log: nothing stored or sent carries a secret.
        self.json = secrets.redact_json(text)
        return self.json


Subscriber = Callable[[Envelope], None]


class EventLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._seq: dict[str, int] = {}
        self._subs: dict[str, list[Subscriber]] = {}
        self._held: list[Envelope] = []
        self._flush_scheduled = False
        self._deltas_in_flight = 0
        self.taps: list[Subscriber] = []
        """Called with every delivered event of every agent (metrics)."""

    # --- agents ------------------------------------------------------------
    def register(self, agent_id: str, last_seq: int) -> None:
        self._seq[agent_id] = last_seq

    def unregister(self, agent_id: str) -> None:
        self.flush()
        self._seq.pop(agent_id, None)

    def last_seq(self, agent_id: str) -> int:
        return self._seq[agent_id]

    # --- subscribers ---------------------------------------------------------
    def subscribe(self, agent_id: str, subscriber: Subscriber) -> None:
        subs = self._subs.setdefault(agent_id, [])
        if subscriber not in subs:
            subs.append(subscriber)

    def unsubscribe(self, agent_id: str, subscriber: Subscriber) -> None:
        subs = self._subs.get(agent_id)
        if subs and subscriber in subs:
            subs.remove(subscriber)

    # --- emitting --------------------------------------------------------------
    def emit(self, agent_id: str, model: WireModel | Chunk, turn_id: str | None = None) -> Envelope:
        """Store and deliver an event built from its wire model (`protocol/events.py`);
        `await envelope.delivered` to wait until it is durable."""
        event = model.wire()
        etype = event["type"]
        if etype in MERGEABLE:
            held = self._merge(agent_id, turn_id, etype, event.get("step"), event.get("callId"), event.get("stream"),
                               event["delta"], bool(event.get("truncated")))
            if held is not None:
                return held
        seq = self._seq[agent_id] + 1
        self._seq[agent_id] = seq
        env = Envelope(agent_id, seq, now_iso(), channel_of(etype), turn_id, event)
        env.delivered = asyncio.get_running_loop().create_future()
        if etype in MERGEABLE:
            self._held.append(env)
            if not self._flush_scheduled and not self._deltas_in_flight:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            self.flush()
            self._write([env])
        return env

    def merge_delta(self, agent_id: str, etype: str, step: int, delta: str, turn_id: str | None) -> bool:
        """The streaming hot path: add a `text_chunk`/`think_chunk` delta to the held event
        of the same stream without building the chunk model; False when there is none
        (then `emit` the chunk)."""
        return self._merge(agent_id, turn_id, etype, step, None, None, delta) is not None

    def _merge(self, agent_id: str, turn_id: str | None, etype: str, step: int | None, call_id: str | None,
               stream: str | None, delta: str, truncated: bool = False) -> Envelope | None:
        """Merge a delta into the last held event of the same stream (agent, turn, type,
        step, call, output stream) while it stays under MAX_MERGED_DELTA; that envelope,
        or None. Fields, not an event dict: this runs once per streamed chunk."""
        if not self._held:
            return None
        last = self._held[-1]
        prev = last.event
        if (last.agent_id != agent_id or last.turn_id != turn_id or prev["type"] != etype
                or prev.get("step") != step or prev.get("callId") != call_id or prev.get("stream") != stream
                or len(prev["delta"]) + len(delta) > MAX_MERGED_DELTA):
            return None
        prev["delta"] += delta
        if truncated:
            prev["truncated"] = True
        return last

    def flush(self) -> None:
        """Write held deltas now (before any other event, so seq order is kept)."""
        self._flush_scheduled = False
        if self._held:
            held, self._held = self._held, []
            self._deltas_in_flight += 1
            self._write(held, deltas=True)

    def _write(self, envs: list[Envelope], deltas: bool = False) -> None:
        rows = [EventRow(e.agent_id, e.seq, e.ts, e.channel, e.turn_id, e.event["type"], e.encode()) for e in envs]
        fut = self._store.append_events(rows)
        fut.add_done_callback(lambda f: self._written(envs, f, deltas))

    def _written(self, envs: list[Envelope], fut: asyncio.Future[None], deltas: bool = False) -> None:
        if deltas:
            # While deltas are being committed, newer ones merge in `_held`; they go out
            # as soon as that commit lands (backpressure without dropping anything).
            self._deltas_in_flight -= 1
            if self._held and not self._deltas_in_flight and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        if fut.cancelled() or fut.exception() is not None:
            err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            log.error("events %s..%s of %s were not stored and are not sent: %s",
                      envs[0].seq, envs[-1].seq, envs[0].agent_id, err)
            for env in envs:
                if env.delivered and not env.delivered.done():
                    env.delivered.set_exception(err)  # type: ignore[arg-type]
                    env.delivered.exception()  # mark retrieved: most emitters never await it
            return
        for env in envs:
            for sub in [*self.taps, *self._subs.get(env.agent_id, ())]:
                try:
                    sub(env)
                except Exception:  # a broken subscriber must not stop delivery to others
                    log.exception("event subscriber failed")
            if env.delivered and not env.delivered.done():
                env.delivered.set_result(None)
