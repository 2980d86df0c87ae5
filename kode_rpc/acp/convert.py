"""ACP's prompt content and MCP server list in kode's shapes."""

from __future__ import annotations

import re
from typing import Any

from ..runtime.errors import InvalidInput


def _get(block: Any, name: str, default: Any = None) -> Any:
    if isinstance(block, dict):
        return block.get(name, block.get("".join(w.title() if i else w for i, w in enumerate(name.split("_"))), default))
    return getattr(block, name, default)


def content_of(prompt: list[Any]) -> list[dict[str, Any]]:
    """ACP prompt blocks as kode content blocks: text and images as they are, a linked
    or embedded file as text the model can read, audio and binary files noted."""
    out: list[dict[str, Any]] = []
    for block in prompt:
        kind = _get(block, "type")
        if kind == "text":
            out.append({"type": "text", "text": _get(block, "text", "")})
        elif kind == "image":
            out.append({"type": "image", "mediaType": _get(block, "mime_type", "image/png"), "data": _get(block, "data", "")})
        elif kind == "resource_link":
            out.append({"type": "text", "text": f"[{_get(block, 'name') or _get(block, 'uri')}]({_get(block, 'uri')})"})
        elif kind == "resource":
            res = _get(block, "resource")
            uri = _get(res, "uri", "")
            text = _get(res, "text")
            mime = _get(res, "mime_type") or ""
            if text is not None:
                out.append({"type": "text", "text": f'<file uri="{uri}">\n{text}\n</file>'})
            elif mime.startswith("image/") and _get(res, "blob"):
                out.append({"type": "image", "mediaType": mime, "data": _get(res, "blob")})
            else:
                out.append({"type": "text", "text": f'<file uri="{uri}" mimeType="{mime}">(binary, not shown)</file>'})
        elif kind == "audio":
            out.append({"type": "text", "text": "(an audio clip was attached; this agent cannot hear it)"})
    if not out:
        raise InvalidInput("the prompt has no content", "prompt", "at least one content block")
    return out


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def mcp_servers_of(servers: list[Any]) -> dict[str, Any]:
    """ACP's `mcpServers` array as the `.mcp.json` map `AgentConfig.mcpServers` holds."""
    out: dict[str, Any] = {}
    for server in servers:
        name = _get(server, "name")
        if not isinstance(name, str) or not name:
            raise InvalidInput("an MCP server needs a name", "mcpServers", "name is required")
        name = _UNSAFE_NAME.sub("_", name)[:64]  # editors allow any name; ours become tool names
        kind = _get(server, "type")
        if kind in ("http", "sse"):
            out[name] = {"type": kind, "url": _get(server, "url"),
                         "headers": {_get(h, "name"): _get(h, "value") for h in _get(server, "headers") or []}}
        else:
            out[name] = {"command": _get(server, "command"), "args": list(_get(server, "args") or []),
                         "env": {_get(v, "name"): _get(v, "value") for v in _get(server, "env") or []}}
    return out
