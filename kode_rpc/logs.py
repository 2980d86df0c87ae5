"""Logging to stderr and a rotating file; never to stdout, which belongs to the protocol."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

from . import secrets
from .config import log_dir

_PATTERNS = [
    re.compile(r"(?i)(authorization\s*[:=]\s*(?:bearer\s+)?)[^\s'\",]+"),
    re.compile(r"(?i)(x-api-key\s*[:=]\s*)[^\s'\",]+"),
    re.compile(r"()\bsk-[A-Za-z0-9_\-]{16,}"),
]


def register_secret(value: str) -> None:
    """Remember a secret (an API key just read) so no log line, event or stored row can carry it."""
    secrets.register(value)


def redact(text: str) -> str:
    """Known secret values, and anything shaped like a credential header or key, redacted."""
    text = secrets.redact(text)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return text


class RedactingFormatter(logging.Formatter):
    """Redacts at the handler: covers messages, arguments and tracebacks alike."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str, redact_sensitive: bool = True) -> str | None:
    """Configure root logging; returns the log file path (None when it cannot be created)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    fmt_cls = RedactingFormatter if redact_sensitive else logging.Formatter
    fmt = fmt_cls("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    root.addHandler(err)
    path: str | None = None
    try:
        directory = log_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "kode-rpc.log")
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError as exc:
        logging.getLogger(__name__).warning("no log file: %s", exc)
        path = None
    return path
