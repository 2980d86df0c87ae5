"""The runtime as a process runs it: store, event log, metrics, pool and service, opened
and closed together. Every face (`server/app.py`, `acp/app.py`) starts one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .. import secrets
from ..config import Settings, config_dir, load_settings
from ..store.base import Store
from ..store.url import make_store, resolve_store_url, store_options, store_section, url_password
from ..tools.base import builtin_tools
from .agent import Services
from .events import EventLog
from .metrics import Metrics
from .pool import AgentPool, PoolSettings
from .service import RuntimeService

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    events: EventLog
    metrics: Metrics
    pool: AgentPool
    service: RuntimeService
    data_dir: str

    async def close(self) -> None:
        """Stop every agent (turns interrupted, approvals kept pending), then the store."""
        await self.pool.shutdown()

    async def close_store(self) -> None:
        await self.store.close()


async def open_runtime(data_dir: str, max_agents: int | None = None, store_url: str | None = None) -> Runtime:
    """Raises StoreError (a newer schema, a JSON folder in use) or ValueError (a bad store URL)."""
    os.makedirs(data_dir, exist_ok=True)
    settings = load_settings()
    secrets.register_env(os.environ, settings.key_env_names(), settings.env_allow)
    section = store_section(settings)
    url = resolve_store_url(store_url, data_dir, section)  # --store, KODE_STORE, [store] url, the default
    secrets.register(url_password(url))  # a store password is redacted like a key
    file_dir = store_options(url, section).file_store_base_dir or data_dir  # workspaces, checkpoints
    # offline_ok: an unreachable PostgreSQL is not fatal; requests get store_unavailable until it is back.
    store = make_store(url, data_dir=file_dir, section=section, offline_ok=True)
    await store.open()
    log.info("store: %s", store.display_url)
    events = EventLog(store)
    metrics = Metrics()
    events.taps.append(metrics.tap)
    svc = Services(store, events, builtin_tools(), settings)
    svc.checkpoint_dir = os.path.join(file_dir, "checkpoints")
    pool = AgentPool(svc, PoolSettings(file_dir, max_agents=max_agents or settings.max_agents,
                                       default_model=settings.default_model,
                                       templates_dir=os.path.join(config_dir(), "templates")))
    pool.start()
    return Runtime(settings, store, events, metrics, pool, RuntimeService(pool), data_dir)
