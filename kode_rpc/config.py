"""Where things live and what the defaults are.

Paths come from platformdirs (env overrides for tests, sandboxes and packagers):
`KODE_DATA_DIR`, `KODE_CONFIG_DIR`, `KODE_LOG_DIR`. The default model comes from
`KODE_PROVIDER`/`KODE_MODEL`, else `[default]` in `config.toml` in the config
dir, else `echo`.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from typing import Any

import platformdirs

APP = "kode-rpc"
log = logging.getLogger(__name__)


def data_dir(explicit: str | None = None) -> str:
    return os.path.abspath(explicit or os.environ.get("KODE_DATA_DIR") or platformdirs.user_data_dir(APP, appauthor=False))


def config_dir() -> str:
    return os.path.abspath(os.environ.get("KODE_CONFIG_DIR") or platformdirs.user_config_dir(APP, appauthor=False))


def log_dir() -> str:
    return os.path.abspath(os.environ.get("KODE_LOG_DIR") or platformdirs.user_log_dir(APP, appauthor=False))


def config_file() -> str:
    return os.path.join(config_dir(), "config.toml")


@dataclass
class Settings:
    default_model: dict[str, Any]
    default_source: str
    """Where the default model came from: `env`, the config file's path, or `builtin`."""
    max_agents: int = 50


def load_settings() -> Settings:
    provider = os.environ.get("KODE_PROVIDER")
    model = os.environ.get("KODE_MODEL")
    max_agents = int(os.environ.get("KODE_MAX_AGENTS", "50"))
    if provider:
        cfg: dict[str, Any] = {"provider": provider}
        if model:
            cfg["model"] = model
        return Settings(cfg, "env", max_agents)
    path = config_file()
    if os.path.exists(path):
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
            default = data.get("default", {})
            if default.get("provider"):
                cfg = {"provider": default["provider"]}
                if default.get("model"):
                    cfg["model"] = default["model"]
                return Settings(cfg, path, int(data.get("pool", {}).get("maxAgents", max_agents)))
        except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
            log.warning("ignoring unreadable config %s: %s", path, exc)
    return Settings({"provider": "echo"}, "builtin", max_agents)
