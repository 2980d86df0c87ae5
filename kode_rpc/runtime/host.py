"""The runtime as a process runs it: store, event log, metrics, pool and service, opened
and closed together. Every face (`server/app.py`, `acp/app.py`) starts one."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import secrets
from ..config import Settings, config_dir, load_settings
from ..store.base import Store
from ..tools.base import builtin_tools
from .agent import Services
from .events import EventLog
from .metrics import Metrics
from .pool import AgentPool, PoolSettings
from .service import RuntimeService


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


async def open_runtime(data_dir: str, max_agents: int | None = None) -> Runtime:
    os.makedirs(data_dir, exist_ok=True)
    settings = load_settings()
    secrets.register_env(os.environ, settings.key_env_names(), settings.env_allow)
    from ..store.sqlite import SQLiteStore

    store = SQLiteStore(os.path.join(data_dir, "kode.db"))
    await store.open()
    events = EventLog(store)
    metrics = Metrics()
    events.taps.append(metrics.tap)
    svc = Services(store, events, builtin_tools(), settings)
    svc.checkpoint_dir = os.path.join(data_dir, "checkpoints")
    pool = AgentPool(svc, PoolSettings(data_dir, max_agents=max_agents or settings.max_agents,
                                       default_model=settings.default_model,
                                       templates_dir=os.path.join(config_dir(), "templates")))
    pool.start()
    return Runtime(settings, store, events, metrics, pool, RuntimeService(pool), data_dir)
