"""Small helpers shared by the runtime: ids and timestamps."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, the one timestamp format on the wire."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"
