"""Agent templates (contract section 15): the defaults an `agent/create` overrides field by field.

They come from three places, later ones winning by `id`: the built-ins below, the
user's `<config dir>/templates/*.toml`, and a workspace's `.kode/templates/*.toml`
(the `workspaceFolders` of `initialize`, and the `workDir` of the agent being
created). A file that is not TOML, lacks `id` or has a wrongly typed field is
reported in `errors` and skipped. Directories are read afresh on every use (a few
small files), so an edit is seen by the next `agent/create` at once; `watch()` only
tells when the listing changed (for the `templates/changed` notification).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..protocol.agents import ContextConfig, McpServerConfig, McpServerName, ModelConfig, PermissionConfig
from ..protocol.base import WireModel

log = logging.getLogger(__name__)

Source = Literal["builtin", "user", "workspace"]


@dataclass(frozen=True)
class Template:
    id: str
    version: str
    description: str
    system_prompt: str
    tools: list[str] | str = "*"
    permission: dict[str, Any] = field(default_factory=lambda: {"mode": "readonly"})
    max_steps: int = 50
    model: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    mcp_servers: dict[str, Any] | None = None
    source: Source = "builtin"
    path: str | None = None


_CODER_PROMPT = (
    "You are a careful coding agent working inside {workDir}. Use the tools to read, "
    "search, edit files and run commands there. Keep changes minimal and explain them."
)

TEMPLATES: dict[str, Template] = {
    t.id: t
    for t in [
        Template(
            id="default",
            version="1",
            description="All built-in tools; read-only tools run freely, anything that changes files or runs commands asks first.",
            system_prompt=_CODER_PROMPT,
        ),
        Template(
            id="auto",
            version="1",
            description="All built-in tools without asking (the sandbox boundary still applies).",
            system_prompt=_CODER_PROMPT,
            permission={"mode": "auto"},
        ),
        Template(
            id="reader",
            version="1",
            description="Read and search only: fs_read, fs_glob, fs_grep, todo_read, todo_write.",
            system_prompt="You answer questions about the files in {workDir}; you cannot change anything.",
            tools=["fs_read", "fs_glob", "fs_grep", "todo_read", "todo_write"],
            permission={"mode": "readonly"},
        ),
    ]
}
"""The built-ins."""


class TemplateFile(WireModel):
    """What a template file may hold (the `AgentConfig` fields; camelCase or snake_case keys)."""

    id: str = Field(min_length=1)
    version: str = "1"
    description: str = ""
    system_prompt: str | None = None
    tools: list[str] | Literal["*"] | None = None
    permission: PermissionConfig | None = None
    model: ModelConfig | None = None
    max_steps: int | None = Field(default=None, gt=0)
    context: ContextConfig | None = None
    mcp_servers: dict[McpServerName, McpServerConfig | None] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@dataclass
class TemplateError:
    path: str
    message: str


def template_dirs_of(folder: str) -> str:
    return os.path.join(folder, ".kode", "templates")


def load_file(path: str, source: Source) -> Template:
    """One template file; raises ValueError with a readable message."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not TOML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if "id" not in data:
        raise ValueError("no `id`")
    try:
        tf = TemplateFile.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(x) for x in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("; ".join(parts)) from None
    base = TEMPLATES["default"]
    return Template(
        id=tf.id,
        version=tf.version,
        description=tf.description,
        system_prompt=tf.system_prompt if tf.system_prompt is not None else base.system_prompt,
        tools=tf.tools if tf.tools is not None else base.tools,
        permission=tf.permission.wire() if tf.permission is not None else dict(base.permission),
        max_steps=tf.max_steps or base.max_steps,
        model=tf.model.wire() if tf.model is not None else None,
        context=tf.context.wire() if tf.context is not None else None,
        mcp_servers=({k: (v.wire() if v is not None else None) for k, v in tf.mcp_servers.items()}
                     if tf.mcp_servers is not None else None),
        source=source,
        path=os.path.abspath(path),
    )


def load_dir(directory: str, source: Source) -> tuple[list[Template], list[TemplateError]]:
    """The `*.toml` templates of a directory (none when it does not exist), by file name."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
    except OSError:
        return [], []
    found: list[Template] = []
    errors: list[TemplateError] = []
    for name in names:
        path = os.path.abspath(os.path.join(directory, name))
        if not os.path.isfile(path):
            continue
        try:
            found.append(load_file(path, source))
        except ValueError as exc:
            errors.append(TemplateError(path, str(exc)))
    return found, errors


class TemplateRegistry:
    """Built-ins + user dir + workspace folders; `for_work_dir` adds an agent's workDir."""

    def __init__(self, user_dir: str | None) -> None:
        self.user_dir = user_dir
        self.workspaces: list[str] = []

    def set_workspaces(self, folders: list[str]) -> None:
        self.workspaces = [os.path.abspath(f) for f in folders]

    def dirs(self, work_dir: str | None = None) -> list[tuple[str, Source]]:
        out: list[tuple[str, Source]] = []
        if self.user_dir:
            out.append((self.user_dir, "user"))
        folders = list(self.workspaces)
        if work_dir is not None and os.path.abspath(work_dir) not in folders:
            folders.append(os.path.abspath(work_dir))
        out.extend((template_dirs_of(f), "workspace") for f in folders)
        return out

    def load(self, work_dir: str | None = None) -> tuple[dict[str, Template], list[TemplateError]]:
        """The winning template per id, and the files that were skipped."""
        templates = dict(TEMPLATES)
        errors: list[TemplateError] = []
        for directory, source in self.dirs(work_dir):
            found, errs = load_dir(directory, source)
            errors.extend(errs)
            for t in found:
                templates[t.id] = t
        return templates, errors

    def get(self, template_id: str, work_dir: str | None = None) -> Template | None:
        return self.load(work_dir)[0].get(template_id)

    def _signature(self) -> tuple[Any, ...]:
        sig: list[Any] = []
        for directory, _ in self.dirs():
            try:
                for name in sorted(os.listdir(directory)):
                    if name.endswith(".toml"):
                        try:
                            st = os.stat(os.path.join(directory, name))
                            sig.append((directory, name, st.st_mtime_ns, st.st_size))
                        except OSError:
                            pass
            except OSError:
                sig.append((directory, None))
        return tuple(sig)

    async def watch(self, on_change: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `on_change` whenever a template file under the watched dirs changes.

        watchfiles wakes us on a change in the existing dirs (latency ~ `step`); a
        timeout every half second also notices dirs that appear or disappear."""
        import watchfiles

        signature = self._signature()
        while not stop.is_set():
            existing = [d for d, _ in self.dirs() if os.path.isdir(d)]
            if not existing:
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            else:
                try:
                    async for _ in watchfiles.awatch(*existing, step=50, debounce=200, rust_timeout=500,
                                                     yield_on_timeout=True, stop_event=stop,
                                                     recursive=False):
                        if set(existing) != {d for d, _ in self.dirs() if os.path.isdir(d)}:
                            break
                        if (sig := self._signature()) != signature:
                            signature = sig
                            on_change()
                except Exception:  # a dir removed under the watcher, inotify limits, ...
                    log.debug("template watch restarts", exc_info=True)
                    await asyncio.sleep(0.5)
            if (sig := self._signature()) != signature:
                signature = sig
                on_change()
