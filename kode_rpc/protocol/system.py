"""Lifecycle (`initialize`), pool, templates, store and metrics methods (sections 2 and 7)."""

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .agents import os_path
from .base import WireModel


class ClientInfo(WireModel):
    name: str
    version: str | None = None


class ClientCapabilities(WireModel):
    approvals: bool = True


class InitializeParams(WireModel):
    protocol_version: int
    client_info: ClientInfo | None = None
    process_id: int | None = Field(default=None, ge=0, le=2**32 - 1)
    workspace_folders: list[str] | None = None
    """Absolute paths; `file://` URIs (what LSP clients send) are accepted and converted."""
    capabilities: ClientCapabilities = Field(default_factory=ClientCapabilities)

    @field_validator("workspace_folders")
    @classmethod
    def _absolute_folders(cls, value: list[str] | None) -> list[str] | None:
        import os.path
        from urllib.parse import unquote, urlsplit

        out = []
        for folder in value or []:
            if folder.startswith("file://"):
                parts = urlsplit(folder)
                folder = unquote(parts.path)
                if os.name == "nt" and folder.startswith("/") and folder[2:3] == ":":
                    folder = folder[1:]
            if not os.path.isabs(folder):
                raise ValueError(f"workspace folders must be absolute paths or file:// URIs: {folder}")
            out.append(os_path(folder, "workspace folders"))
        return out if value is not None else None


class ServerInfo(WireModel):
    name: Literal["kode-rpc"] = "kode-rpc"
    version: str


class StoreInfo(WireModel):
    type: Literal["sqlite", "postgres", "json"]
    url: str
    """The store URL with any password masked as `***`."""


class ServerCapabilities(WireModel):
    providers: list[str]
    tools: list[str]
    stores: list[str]
    framings: list[str] = Field(default_factory=lambda: ["content-length", "ndjson"])
    acp: bool = False


class InitializeResult(WireModel):
    protocol_version: int = 1
    server_info: ServerInfo
    capabilities: ServerCapabilities
    data_dir: str
    store: StoreInfo | None = None


class PoolStats(WireModel):
    active: int
    max_agents: int
    working: int
    hibernated: int


class TemplateInfo(WireModel):
    id: str
    version: str
    description: str
    source: Literal["builtin", "user", "workspace"] = "builtin"
    path: str | None = None


class TemplateError(WireModel):
    path: str
    message: str


class TemplatesResult(WireModel):
    templates: list[TemplateInfo]
    errors: list[TemplateError] = Field(default_factory=list)


class TemplatesChanged(TemplatesResult):
    """Params of the `templates/changed` notification: the new `templates/list` result."""


class DatabaseHealth(WireModel):
    connected: bool
    latency_ms: float
    error: str | None = None
    """Why the database is not connected (never a password)."""


class FileSystemHealth(WireModel):
    writable: bool


class StoreHealth(WireModel):
    healthy: bool
    database: DatabaseHealth
    file_system: FileSystemHealth
    checked_at: str


class ConsistencyParams(WireModel):
    agent_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class ConsistencyResult(WireModel):
    consistent: bool
    issues: list[str]


class Operations(WireModel):
    saves: int
    loads: int
    queries: int
    deletes: int


class Performance(WireModel):
    avg_latency_ms: float
    max_latency_ms: float
    min_latency_ms: float


class Storage(WireModel):
    total_agents: int
    total_messages: int
    db_size_bytes: int


class StoreMetrics(WireModel):
    operations: Operations
    performance: Performance
    storage: Storage
    collected_at: str


class PrometheusResult(WireModel):
    content_type: str
    text: str


class CancelParams(WireModel):
    id: int | str


class Empty(WireModel):
    """Params of methods that take none (absent params and `[]` mean `{}`)."""
