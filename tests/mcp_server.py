"""A small MCP server for the MCP tests (FastMCP from the official `mcp` SDK).

`python tests/mcp_server.py` serves on stdio; `python tests/mcp_server.py --http PORT`
serves streamable HTTP on 127.0.0.1:PORT (path `/mcp`). With `MCP_PID_FILE` set it
writes its pid there at start, so a test can look for it in /proc; with `MCP_START_LOG`
set it appends a line there at each start.

Tools: `echo` (read-only), `write_note` (writes `note.txt` in its cwd or `MCP_NOTE_DIR`),
`image` (a 1x1 PNG), `fail` (isError), `hang` (never answers; logs its cancellation), `env_value` (whether a
variable is set and its length, never its value), `leak_env` (its value: kode-rpc
must redact it), `die` (the process exits at once).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys

from mcp.server.fastmcp import FastMCP, Image
from mcp.types import ToolAnnotations

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

port = int(sys.argv[sys.argv.index("--http") + 1]) if "--http" in sys.argv else 0
mcp = FastMCP("kode-test", host="127.0.0.1", port=port or 8000, log_level="WARNING")


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo(text: str) -> str:
    """Repeat the text."""
    return f"echo: {text}"


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=False))
def write_note(text: str) -> str:
    """Write a note to note.txt."""
    path = os.path.join(os.environ.get("MCP_NOTE_DIR") or os.getcwd(), "note.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return f"wrote {len(text)} characters"


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def image() -> list:
    """A tiny picture and a caption."""
    return ["a red pixel", Image(data=PNG_1X1, format="png")]


@mcp.tool()
def fail(reason: str = "it broke") -> str:
    """Always fails."""
    raise ValueError(reason)


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def hang() -> str:
    """Never answers. A cancelled call (`notifications/cancelled`) is logged as one line in
    `MCP_CANCEL_FILE` when that is set."""
    try:
        await asyncio.sleep(3600)
    except BaseException:
        if os.environ.get("MCP_CANCEL_FILE"):
            with open(os.environ["MCP_CANCEL_FILE"], "a", encoding="utf-8") as fh:
                fh.write("cancelled\n")
        raise
    return "unreachable"


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def env_value(name: str) -> str:
    """Whether an environment variable is set (and its length), never its value."""
    value = os.environ.get(name)
    return f"{name} is unset" if value is None else f"{name} is set ({len(value)} characters)"


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def leak_env(name: str) -> str:
    """A careless tool that returns a variable's value (kode-rpc must redact it)."""
    return f"the value is {os.environ.get(name)}"


@mcp.tool()
def die() -> str:
    """The server process exits at once."""
    os._exit(3)


if __name__ == "__main__":
    pid_file = os.environ.get("MCP_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as fh:
            fh.write(str(os.getpid()))
    if os.environ.get("MCP_START_LOG"):  # one line per start: tells a reconnect from none
        with open(os.environ["MCP_START_LOG"], "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    mcp.run(transport="streamable-http" if port else "stdio")
