"""Where things live, and the user's configuration.

Paths come from platformdirs, with env overrides for tests, sandboxes and
packagers: `KODE_DATA_DIR`, `KODE_CONFIG_DIR`, `KODE_LOG_DIR`. Settings come
from `config.toml` in the config dir, then `KODE_*` environment variables on top.
API keys are never read from the file: only from the environment.

platformdirs and tomllib are imported only when needed (no env override, a config
file that exists): a server spawned with `KODE_*_DIR` set and no config file loads
neither.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

APP = "kode-rpc"
log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "ollama": {"provider": "openai", "baseUrl": "http://localhost:11434/v1"},
    "lmstudio": {"provider": "openai", "baseUrl": "http://localhost:1234/v1"},
    "vllm": {"provider": "openai", "baseUrl": "http://localhost:8000/v1"},
    "llamacpp": {"provider": "openai", "baseUrl": "http://localhost:8080/v1"},
}
"""OpenAI-compatible local servers that need no key: `provider = "ollama"` etc. anywhere a provider is named."""

_MCP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def _platform_dir(kind: str) -> str:
    """platformdirs' `user_<kind>_dir` for this app (imported on first use)."""
    import platformdirs

    return str(getattr(platformdirs, f"user_{kind}_dir")(APP, appauthor=False))


def data_dir(explicit: str | None = None) -> str:
    return os.path.abspath(explicit or os.environ.get("KODE_DATA_DIR") or _platform_dir("data"))


def config_dir() -> str:
    return os.path.abspath(os.environ.get("KODE_CONFIG_DIR") or _platform_dir("config"))


def log_dir() -> str:
    return os.path.abspath(os.environ.get("KODE_LOG_DIR") or _platform_dir("log"))


def config_file() -> str:
    return os.path.join(config_dir(), "config.toml")


@dataclass
class Debug:
    verbose: bool = False
    log_token_usage: bool = False
    log_cache: bool = False
    log_retries: bool = True
    redact_sensitive: bool = True


@dataclass
class Settings:
    default_model: dict[str, Any]
    default_source: str
    """Where the default model came from: `env`, the config file's path, or `builtin`."""
    max_agents: int = 50
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-provider defaults (`baseUrl`, `apiKeyEnv`, `model`, `maxTokens`, `timeoutMs`, ...)."""
    retry: dict[str, Any] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    debug: Debug = field(default_factory=Debug)
    errors: list[str] = field(default_factory=list)
    env_allow: list[str] = field(default_factory=list)
    """`[sandbox] envAllow`: secret-looking variables that tools may see all the same."""
    """Problems found while loading (reported by `kode-rpc doctor`)."""
    mcp_servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`[mcp_servers.<name>]`: MCP servers every agent gets (wire shape, camelCase keys;
    checked when an agent connects: a bad entry is that server's `failed` status)."""
    http_listen: str | None = None
    """`[http] listen = "[HOST:]PORT"`: where `serve --http` listens when the flag is not given
    (None: no HTTP endpoint, the default). Checked by `parse_listen`; a bad value is in `errors`."""

    def key_env_names(self) -> list[str]:
        """Variables the configured providers and default model read keys from."""
        names = {cfg.get("apiKeyEnv") for cfg in self.providers.values()} | {self.default_model.get("apiKeyEnv")}
        return sorted(n for n in names if isinstance(n, str) and n)

    def model_defaults(self, model: dict[str, Any]) -> dict[str, Any]:
        """The agent's model config over the provider's configured defaults."""
        merged = dict(self.providers.get(model.get("provider", ""), {}))
        merged.pop("preset", None)
        merged.update({k: v for k, v in model.items() if v is not None})
        if "retry" not in merged and self.retry:
            merged["retry"] = self.retry
        return merged


def expand_preset(model: dict[str, Any]) -> dict[str, Any]:
    """`{provider: "ollama"}` -> `{provider: "openai", baseUrl: ...}`; other providers unchanged."""
    preset = PRESETS.get(model.get("provider", ""))
    if preset is None:
        return model
    return {**model, **preset, **({"baseUrl": model["baseUrl"]} if model.get("baseUrl") else {})}


def _camel(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        parts = key.split("_")
        out[parts[0] + "".join(p.title() for p in parts[1:])] = value
    return out


def load_settings() -> Settings:
    """Read `config.toml`, then apply `KODE_*` overrides. Never raises: problems go to `errors`."""
    errors: list[str] = []
    data: dict[str, Any] = {}
    path = config_file()
    source = "builtin"
    if os.path.exists(path):
        import tomllib

        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"{path}: {exc}")
            log.warning("ignoring unreadable config %s: %s", path, exc)
    providers: dict[str, dict[str, Any]] = {}
    for name, cfg in (data.get("providers") or {}).items():
        if not isinstance(cfg, dict):
            errors.append(f"[providers.{name}] must be a table")
            continue
        cfg = _camel(cfg)
        if any(k.lower() in ("apikey", "key", "token") for k in cfg):
            errors.append(f"[providers.{name}]: API keys are read only from the environment (use apiKeyEnv); ignored")
            cfg = {k: v for k, v in cfg.items() if k.lower() not in ("apikey", "key", "token")}
        if cfg.get("preset") in PRESETS:
            cfg = {**PRESETS[cfg["preset"]], **cfg}
        providers[name] = cfg
    default = _camel(data.get("default") or {})
    model: dict[str, Any] = {"provider": "echo"}
    if default.get("provider"):
        model = {k: v for k, v in default.items() if k in ("provider", "model", "baseUrl", "apiKeyEnv", "maxTokens", "temperature")}
        source = path
    env_provider = os.environ.get("KODE_PROVIDER")
    if env_provider:
        model = {"provider": env_provider}
        source = "env"
    if os.environ.get("KODE_MODEL"):
        model["model"] = os.environ["KODE_MODEL"]
    if os.environ.get("KODE_BASE_URL"):
        model["baseUrl"] = os.environ["KODE_BASE_URL"]
    model = expand_preset(model)
    retry = _camel(data.get("retry") or {})
    if os.environ.get("KODE_MAX_RETRIES"):
        retry["maxRetries"] = int(os.environ["KODE_MAX_RETRIES"])
    dbg = data.get("debug") or {}
    debug = Debug(
        verbose=bool(dbg.get("verbose", False)),
        log_token_usage=bool(dbg.get("logTokenUsage", dbg.get("log_token_usage", False))),
        log_cache=bool(dbg.get("logCache", dbg.get("log_cache", False))),
        log_retries=bool(dbg.get("logRetries", dbg.get("log_retries", True))),
        redact_sensitive=bool(dbg.get("redactSensitive", dbg.get("redact_sensitive", True))),
    )
    try:
        max_agents = int(os.environ.get("KODE_MAX_AGENTS") or (data.get("pool") or {}).get("maxAgents", 50))
    except ValueError:
        errors.append("maxAgents must be an integer")
        max_agents = 50
    prices = {name: _camel(p) for name, p in (data.get("prices") or {}).items() if isinstance(p, dict)}
    sandbox = _camel(data.get("sandbox") or {})
    env_allow = sandbox.get("envAllow") or []
    if not isinstance(env_allow, list) or not all(isinstance(n, str) for n in env_allow):
        errors.append("[sandbox] envAllow must be a list of variable names")
        env_allow = []
    mcp_servers: dict[str, dict[str, Any]] = {}
    for name, cfg in (data.get("mcp_servers") or {}).items():
        if not isinstance(cfg, dict) or not _MCP_NAME.match(name):
            errors.append(f"[mcp_servers.{name}] must be a table with a name of letters, digits, '_' and '-'")
            continue
        mcp_servers[name] = _camel(cfg)  # top-level keys only: env and header names stay as written
    http = data.get("http") or {}
    http_listen = http.get("listen") if isinstance(http, dict) else None
    if http_listen is not None:
        try:
            parse_listen(http_listen)
        except ValueError as exc:
            errors.append(f"[http] listen: {exc}")
    return Settings(model, source, max_agents, providers, retry, prices, debug, errors, env_allow, mcp_servers,
                    http_listen)


def http_listen(flag: str | None, settings: Settings) -> tuple[str, int] | None:
    """Where the HTTP endpoint listens: `--http`, else `[http] listen`, else nowhere (None).
    Raises ValueError for a value that is not `[HOST:]PORT`: the server then exits 1 rather
    than run without the health check its process manager expects."""
    value = flag if flag is not None else settings.http_listen
    return None if value is None else parse_listen(value)


def parse_listen(value: object) -> tuple[str, int]:
    """`[HOST:]PORT` (`--http`, `[http] listen`) -> (host, port). The host defaults to 127.0.0.1:
    the endpoint is for a process manager on the same machine unless someone says otherwise.
    An IPv6 host is written in brackets (`[::1]:9464`); port 0 picks a free port."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `listen = 9464` in TOML
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected [HOST:]PORT, got {value!r}")
    text = value.strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"expected [IPV6]:PORT, got {value!r}")
        host, port = text[1:end], text[end + 2:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
        if ":" in host:
            raise ValueError(f"an IPv6 host goes in brackets ([::1]:PORT), got {value!r}")
    if not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected [HOST:]PORT with a port from 0 to 65535, got {value!r}")
    return host, int(port)
