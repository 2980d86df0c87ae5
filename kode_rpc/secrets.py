"""Secrets the server knows, and the one redaction pass that keeps them off the wire.

A secret is the value (8 characters or longer) of an environment variable whose
name says it holds one (contains KEY, SECRET, TOKEN, PASSWORD or CREDENTIAL, in
any case), of a variable an agent's `apiKeyEnv` names, of such a variable in a
workDir's `.env` file, or an API key a provider read. Tools never get these
variables (`sandbox/env.py`); if a value still turns up (a tool read it from a
file, a server echoed it), `redact` replaces it with `[REDACTED]` before it is
stored, sent or logged. This module is the registry both use, so the rule lives
in one place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MARK = "[REDACTED]"
MIN_LENGTH = 8
"""Shorter values (`1`, `true`, a port) would redact ordinary text and protect nothing."""
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
ALWAYS_REMOVED = frozenset({"KODE_STORE", "DATABASE_URL", "PGPASSFILE"})
"""Not secret by name but carrying credentials (a store URL may hold a password)."""

_values: set[str] = set()
_longest = 0
_escaped: dict[str, str] = {}
"""Each secret as it appears inside a JSON string (quotes, backslashes escaped)."""


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) or name in ALWAYS_REMOVED


def register(value: str | None) -> None:
    """Remember a secret value so no event, stored row or log line can carry it."""
    global _longest
    if not value or len(value) < MIN_LENGTH or value in _values:
        return
    _values.add(value)
    _longest = max(_longest, len(value))
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    if escaped != value:
        _escaped[value] = escaped


def register_env(env: Mapping[str, str], names: Iterable[str] = (), allowed: Iterable[str] = ()) -> None:
    """Register the values of every secret-named variable in `env`, and of `names`;
    `allowed` (`[sandbox] envAllow`) are variables the user shares with tools on purpose."""
    wanted = set(names)
    shared = set(allowed) - wanted
    for name, value in env.items():
        if name in ALWAYS_REMOVED and name not in wanted:
            continue  # a store URL: kept from tools, and only its password is a secret (runtime/host.py)
        if name in wanted or (is_secret_name(name) and name not in shared):
            register(value)


def register_dotenv(work_dir: str) -> None:
    """Register secret-named values of `<work_dir>/.env`: a tool may `cat` it, and the
    model must not see the key the user keeps there."""
    path = os.path.join(work_dir, ".env")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(256 * 1024)
    except OSError:
        return
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[7:].lstrip()
        name, sep, value = line.partition("=")
        if sep and is_secret_name(name.strip()):
            register(value.strip().strip("'\""))


def longest() -> int:
    """Length of the longest secret: how much text a stream must hold back so that a
    secret split across two chunks is still caught."""
    return _longest


def redact(text: str) -> str:
    """`text` with every known secret replaced by `[REDACTED]`."""
    if not _values:
        return text
    for value in _values:
        if value in text:
            text = text.replace(value, MARK)
    return text


def redact_json(text: str) -> str:
    """Like `redact`, for JSON text (also matches a secret in its escaped JSON form)."""
    text = redact(text)
    for escaped in _escaped.values():
        if escaped in text:
            text = text.replace(escaped, MARK)
    return text


def redact_value(value: Any) -> Any:
    """A JSON-like value with secrets redacted in every string (keys included)."""
    if not _values:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    return value
