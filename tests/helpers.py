"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any


def assert_gapless(events: list[dict[str, Any]], start: int = 1) -> None:
    """Seqs are exactly start, start+1, ... with no gap and no duplicate."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(start, start + len(seqs))), seqs


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"]["type"] for e in events]


async def never_answer(params: dict[str, Any]) -> dict[str, Any]:
    """An approval handler that never replies (the test decides some other way)."""
    import asyncio

    await asyncio.sleep(3600)
    return {"decision": "deny"}
