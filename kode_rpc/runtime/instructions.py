"""Project instructions (contract section 15): a workDir's `AGENTS.md` (else `KODE.md`),
appended to the system prompt of each model call.

The file is looked up before every model call; its text is re-read only when its
mtime or size changed. Past 64 KiB it is cut at a whole line and followed by
`[AGENTS.md truncated: N of M bytes]`.
"""

from __future__ import annotations

import os

NAMES = ("AGENTS.md", "KODE.md")
MAX_BYTES = 64 * 1024


def truncate(name: str, data: bytes, limit: int = MAX_BYTES) -> str:
    """The file's text, cut at the last whole line within `limit` bytes when longer."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    cut = data.rfind(b"\n", 0, limit + 1)
    kept = data[: cut + 1] if cut >= 0 else data[:limit]
    text = kept.decode("utf-8", "ignore")
    return f"{text.rstrip(chr(10))}\n[{name} truncated: {len(kept)} of {len(data)} bytes]"


class ProjectInstructions:
    """The instructions of one workDir, cached by (path, mtime, size)."""

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self._key: tuple[str, int, int] | None = None
        self._text: str | None = None

    def text(self) -> str | None:
        """The current instructions (None without a file); stats the file every call."""
        for name in NAMES:
            path = os.path.join(self.work_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not os.path.isfile(path):
                continue
            key = (path, st.st_mtime_ns, st.st_size)
            if key != self._key:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                self._key, self._text = key, truncate(name, data)
            return self._text
        self._key = self._text = None
        return None

    def append_to(self, prompt: str) -> str:
        text = self.text()
        if not text or not text.strip():
            return prompt
        name = os.path.basename(self._key[0]) if self._key else "AGENTS.md"
        return f"{prompt}\n\n# Project instructions ({name})\n\n{text}"
