"""Incremental framing parsers for Content-Length (LSP base protocol) and ndjson.

A JSON-RPC library that reads only Content-Length and silently drops what it cannot parse; the
contract needs an answer for every bad frame, ndjson, and a 64 MiB body limit
that still finds the request's id in the first 4 KiB. These parsers take bytes
as they arrive and yield what the dispatcher must act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

MAX_BODY = 64 * 1024 * 1024
HEAD_KEEP = 4096
MAX_HEADER = 8192


@dataclass
class Body:
    data: bytes


@dataclass
class TooLarge:
    head: bytes
    """The first 4 KiB of the body, where the id is looked for."""
    size: int


@dataclass
class BadFrame:
    reason: str
    detail: str


Item = Union[Body, TooLarge, BadFrame]


class ContentLengthParser:
    """`Content-Length: N\\r\\n` (other headers ignored) `\\r\\n` then N bytes."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._need: int | None = None
        self._skip = 0
        self._skip_head = bytearray()
        self._skip_size = 0
        self._max = max_body

    def feed(self, data: bytes) -> list[Item]:
        self._buf += data
        out: list[Item] = []
        while True:
            if self._skip:
                take = min(self._skip, len(self._buf))
                if len(self._skip_head) < HEAD_KEEP:
                    self._skip_head += self._buf[: min(take, HEAD_KEEP - len(self._skip_head))]
                del self._buf[:take]
                self._skip -= take
                if self._skip:
                    return out
                out.append(TooLarge(bytes(self._skip_head), self._skip_size))
                self._skip_head = bytearray()
                continue
            if self._need is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEADER:
                        out.append(BadFrame("malformed_header", "header block longer than 8 KiB"))
                        self._buf.clear()
                    return out
                header = bytes(self._buf[:end])
                del self._buf[: end + 4]
                length = _content_length(header)
                if length is None:
                    out.append(BadFrame("malformed_header", f"no valid Content-Length in {header[:200]!r}"))
                    continue
                if length > self._max:
                    self._skip = length
                    self._skip_size = length
                    continue
                self._need = length
            if len(self._buf) < self._need:
                return out
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            out.append(Body(body))


def _content_length(header: bytes) -> int | None:
    length = None
    for line in header.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            if line.strip():
                return None
            continue
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            if length < 0:
                return None
    return length


class NdjsonParser:
    """One JSON value per `\\n`-terminated line (`\\r\\n` accepted, blank lines skipped)."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._max = max_body
        self._overflow: bytearray | None = None
        self._overflow_size = 0

    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:])
                return out
            self._append(data[start:nl])
            start = nl + 1
            if self._overflow is not None:
                out.append(TooLarge(bytes(self._overflow), self._overflow_size))
                self._overflow = None
                self._overflow_size = 0
                continue
            line = bytes(self._buf).rstrip(b"\r")
            self._buf.clear()
            if line.strip():
                out.append(Body(line))

    def _append(self, piece: bytes) -> None:
        if self._overflow is not None:
            self._overflow_size += len(piece)
            return
        self._buf += piece
        if len(self._buf) > self._max:
            self._overflow = bytearray(self._buf[:HEAD_KEEP])
            self._overflow_size = len(self._buf)
            self._buf.clear()


def encode_content_length(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def encode_ndjson(body: bytes) -> bytes:
    return body + b"\n"
