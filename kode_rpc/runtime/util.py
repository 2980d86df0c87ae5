"""Small helpers shared by the runtime: ids and timestamps."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone


_second: tuple[int, str] = (-1, "")
"""The last whole second `now_iso` formatted, and its text up to the seconds."""


def now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, the one timestamp format on the wire.
    A turn stamps a dozen events and rows: the date part is formatted once per second."""
    global _second
    whole, ms = divmod(time.time_ns() // 1_000_000, 1000)
    second, text = _second
    if whole != second:
        text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)
    return f"{text}.{ms:03d}Z"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"
