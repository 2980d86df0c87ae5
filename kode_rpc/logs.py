"""Logging to stderr and a rotating file; never to stdout, which belongs to the protocol."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from .config import log_dir


def setup_logging(level: str) -> str | None:
    """Configure root logging; returns the log file path (None when it cannot be created)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
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
    # pygls logs every message body at INFO: keep it quiet unless we debug
    logging.getLogger("pygls").setLevel(logging.WARNING if root.level > logging.DEBUG else logging.DEBUG)
    return path
