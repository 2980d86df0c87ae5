"""The agent rules `store/consistency` checks: one pure function over a read of rows.

Every backend reads a `ConsistencyView` of one agent in one snapshot (a single
read transaction, or under the JSON store's lock) and hands it to `check`; the
rules themselves know nothing of storage. They are:

* the agent exists;
* event seqs are exactly 1..N, and `agents.last_seq` is the highest seq;
* message indices are exactly 0..M-1, and `agents.message_count` is M;
* every `tool_use` has a `tool_result` in a later message, unless its turn has
  not ended or its call is still running or waiting (then the results come
  with the step); a `tool_use` of an ended turn whose call is final, or whose
  call was lost (no tool-call record), is an issue;
* no approval is pending for a call that already reached a final state.

A tool_use of a turn that has not ended is not an inconsistency: its results are
appended together when the step's last call ends, so a call waiting on an
approval (also one re-issued after a crash), a running call, and a call already
sealed or finished beside it all wait for that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConsistencyView", "FINAL_TOOL_STATES", "check"]

FINAL_TOOL_STATES = frozenset({"COMPLETED", "FAILED", "DENIED", "SEALED"})
"""Tool call states after which nothing more happens to the call."""


@dataclass
class ConsistencyView:
    """What `check` needs of one agent, read in one snapshot."""

    last_seq: int
    """`agents.last_seq` as recorded."""
    message_count: int
    """`agents.message_count` as recorded."""
    seqs: list[int] = field(default_factory=list)
    """Every stored event seq, ascending."""
    messages: list[tuple[int, str, Any, str | None]] = field(default_factory=list)
    """`(index, role, content, turn_id)` ascending by index; content is the decoded block
    list, or the stored JSON text (decoded here, so bad JSON is reported)."""
    tool_states: dict[str, str] = field(default_factory=dict)
    """call_id -> state of every tool-call record."""
    open_turns: set[str] = field(default_factory=set)
    """Ids of turns whose status is `queued` or `running`."""
    pending_approvals: list[tuple[str, str]] = field(default_factory=list)
    """`(approval_id, call_id)` of pending approvals, in creation order."""


def check(agent_id: str, view: ConsistencyView | None) -> list[str]:
    """The issues of one agent (empty when consistent); `view` None: the agent is missing."""
    if view is None:
        return [f"agent {agent_id} not found"]
    issues: list[str] = []

    seqs = view.seqs
    gaps = [(i + 1, s) for i, s in enumerate(seqs) if s != i + 1]
    if gaps:
        expected, found = gaps[0]
        issues.append(
            f"event seqs are not 1..{len(seqs)}: expected {expected}, found {found}"
            + (f" ({len(gaps)} misplaced)" if len(gaps) > 1 else "")
        )
    max_seq = seqs[-1] if seqs else 0
    if view.last_seq != max_seq:
        issues.append(f"agents.last_seq is {view.last_seq} but the highest event seq is {max_seq}")

    messages = view.messages
    bad = [(i, m[0]) for i, m in enumerate(messages) if m[0] != i]
    if bad:
        expected, found = bad[0]
        issues.append(f"message indices are not 0..{len(messages) - 1}: expected {expected}, found {found}")
    if view.message_count != len(messages):
        issues.append(f"agents.message_count is {view.message_count} but {len(messages)} messages are stored")

    uses: list[tuple[str, int]] = []
    results: dict[str, int] = {}
    for idx, role, content, _turn in messages:
        if isinstance(content, (str, bytes)):
            try:
                content = json.loads(content)
            except ValueError:
                issues.append(f"message {idx} content is not valid JSON")
                continue
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "tool_use" and role == "assistant":
                uses.append((str(block.get("id")), idx))
            elif kind == "tool_result":
                use_id = block.get("toolUseId", block.get("tool_use_id"))
                if use_id is not None:
                    results[str(use_id)] = max(results.get(str(use_id), -1), idx)
    message_turn = {m[0]: m[3] for m in messages}
    for use_id, idx in uses:
        if results.get(use_id, -1) > idx:
            continue
        state = view.tool_states.get(use_id)
        if state is not None and (state not in FINAL_TOOL_STATES or message_turn.get(idx) in view.open_turns):
            continue  # still running or waiting, or its turn has not ended: results come with the step
        why = "its call was lost (no tool-call record)" if state is None else f"its call is {state}"
        issues.append(f"tool_use {use_id} in message {idx} has no tool_result ({why})")

    for approval_id, call_id in view.pending_approvals:
        state = view.tool_states.get(call_id)
        if state in FINAL_TOOL_STATES:
            issues.append(f"approval {approval_id} is pending but tool call {call_id} is {state}")
    return issues
