"""`kode-rpc store copy FROM TO [--agent ID]...`: agents from one store into another.

Each agent is read in one consistent read (`export_agent`: its row, every event
with its seq, messages, tool calls with their audit trail, approvals, turns,
todos, usage in the row's runtime) and written in one transaction at the target
(`import_agent`), so a copied agent resumes with the same seqs. An agent that
exists at the target is skipped (`skipped <id> (exists)`), never merged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from .base import AgentExists, Store

__all__ = ["CopyReport", "copy_agents", "run_copy"]


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    events: int = 0


async def _all_ids(store: Store) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = await store.list_agents(None, 500, cursor)
        ids += [r.agent_id for r in rows]
        if cursor is None:
            return ids


async def copy_agents(source: Store, target: Store, agent_ids: list[str] | None = None,
                      say: Callable[[str], None] = print) -> CopyReport:
    """Copy `agent_ids` (all when None) from `source` to `target` (both open)."""
    report = CopyReport()
    for agent_id in (agent_ids if agent_ids else await _all_ids(source)):
        if await target.get_agent(agent_id) is not None:
            report.skipped.append(agent_id)
            say(f"skipped {agent_id} (exists)")
            continue
        dump = await source.export_agent(agent_id)
        if dump is None:
            report.missing.append(agent_id)
            say(f"missing {agent_id} (not in the source store)")
            continue
        try:
            await target.import_agent(dump)
        except AgentExists:  # created at the target meanwhile
            report.skipped.append(agent_id)
            say(f"skipped {agent_id} (exists)")
            continue
        report.copied.append(agent_id)
        report.events += len(dump.events)
        say(f"copied {agent_id} ({len(dump.events)} events, {len(dump.messages)} messages, "
            f"{len(dump.tool_calls)} tool calls, last seq {dump.row.last_seq})")
    return report


def run_copy(source_url: str, target_url: str, agent_ids: list[str] | None) -> int:
    """The CLI command: 0 when every requested agent was copied or skipped, 1 otherwise."""
    import logging

    from ..loop import run as run_loop
    from .base import StoreError
    from .url import make_store, mask_url, store_section

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def main() -> int:
        section = store_section()
        try:
            source = make_store(source_url, section=section)
            target = make_store(target_url, section=section)
        except (ValueError, StoreError) as exc:
            sys.stderr.write(f"kode-rpc store copy: {exc}\n")
            return 2
        opened: list[Store] = []
        try:
            for store, url in ((source, source_url), (target, target_url)):
                try:
                    await store.open()
                except StoreError as exc:
                    sys.stderr.write(f"kode-rpc store copy: cannot open {mask_url(url)}: {exc}\n")
                    return 1
                opened.append(store)
            report = await copy_agents(source, target, agent_ids, _say)
        finally:
            for store in opened:
                await store.close()
        sys.stderr.write(f"{len(report.copied)} copied ({report.events} events), {len(report.skipped)} skipped"
                         + (f", {len(report.missing)} not found" if report.missing else "") + "\n")
        return 1 if report.missing else 0

    return run_loop(main())


def _say(line: str) -> None:
    """One line of the command's report on stdout (`store copy` is a CLI, not the server)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
