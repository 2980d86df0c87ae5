"""Which store: a URL, its options, and the one place that turns it into a `Store`.

    sqlite:///abs/path/kode.db                       SQLite (the default: <data dir>/kode.db)
    postgresql://user@host:5432/db?sslmode=...       PostgreSQL (libpq URI; postgres:// too)
    json:///abs/dir                                  JSON-lines files, one folder per agent

The URL comes from `--store`, else `KODE_STORE`, else `[store] url` in config.toml,
else the default. Store options come from `[store]` (`poolMax`, `idleTimeoutMs`,
`connectTimeoutMs`, `fileStoreBaseDir`), and the same names as URL query
parameters override them; they are taken out of the URL before libpq sees it.

Nothing here imports a database driver: `make_store` imports the backend module of
the URL's scheme only (psycopg is loaded only for a PostgreSQL URL).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .base import Store

__all__ = ["StoreOptions", "StoreUrl", "parse_store_url", "mask_url", "url_password", "default_store_url",
           "resolve_store_url", "store_section", "store_options", "make_store", "open_store", "STORE_TYPES"]

STORE_TYPES = ("sqlite", "postgres", "json")
"""What `initialize` lists as `capabilities.stores`."""

_SCHEMES = {"sqlite": "sqlite", "json": "json", "postgresql": "postgres", "postgres": "postgres"}
_OPTION_KEYS = {"poolMax": "pool_max", "idleTimeoutMs": "idle_timeout_ms", "connectTimeoutMs": "connect_timeout_ms",
                "fileStoreBaseDir": "file_store_base_dir"}
MASK = "***"


@dataclass
class StoreOptions:
    """`[store]` options (camelCase in config.toml and in URL query parameters)."""

    pool_max: int = 20
    idle_timeout_ms: int = 30000
    connect_timeout_ms: int = 5000
    file_store_base_dir: str | None = None
    """Default workspaces and checkpoints live here (default: the data dir)."""

    def merged(self, values: dict[str, Any]) -> StoreOptions:
        """These options with `values` (camelCase keys, strings or numbers) on top; bad values raise ValueError."""
        out = StoreOptions(self.pool_max, self.idle_timeout_ms, self.connect_timeout_ms, self.file_store_base_dir)
        for key, value in values.items():
            attr = _OPTION_KEYS.get(key)
            if attr is None:
                continue
            if attr == "file_store_base_dir":
                out.file_store_base_dir = os.path.abspath(os.path.expanduser(str(value)))
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"store option {key} must be a whole number, not {value!r}") from None
            if number <= 0:
                raise ValueError(f"store option {key} must be positive, not {number}")
            setattr(out, attr, number)
        return out


@dataclass
class StoreUrl:
    """A parsed store URL."""

    type: str
    """`sqlite`, `postgres` or `json`."""
    url: str
    """As given (may hold a password: never log it; use `display`)."""
    path: str = ""
    """sqlite: the database file; json: the folder."""
    conninfo: str = ""
    """postgres: the libpq URI without our own options."""
    options: dict[str, str] = field(default_factory=dict)
    """Our options found in the URL's query (camelCase keys)."""

    @property
    def display(self) -> str:
        return mask_url(self.url)


def parse_store_url(url: str) -> StoreUrl:
    """Split a store URL; ValueError (with the URL masked) when it is not one we know."""
    scheme, sep, rest = url.partition("://")
    kind = _SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(f"unknown store URL {mask_url(url)!r}: use sqlite:///abs/path/kode.db, json:///abs/dir "
                         "or postgresql://user@host/db")
    if kind in ("sqlite", "json"):
        path = rest
        if os.name == "nt" and re.match(r"^/[A-Za-z]:[/\\]", path):
            path = path[1:]  # sqlite:///C:/x
        if not path or not os.path.isabs(path):
            raise ValueError(f"a {scheme}: store URL is {scheme}:// followed by an absolute path, not {url!r}")
        return StoreUrl(kind, url, path=os.path.normpath(path))
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OPTION_KEYS}
    theirs = [(k, v) for k, v in query if k not in _OPTION_KEYS]
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), parts.fragment))
    return StoreUrl(kind, url, conninfo=conninfo, options=ours)


_PASSWORD_QUERY = re.compile(r"(?i)([?&;\s]password=)([^&\s]*)")


def mask_url(url: str) -> str:
    """The URL with any password (in the user info or a `password=` parameter) as `***`."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority_end = len(rest)
        for ch in "/?#":
            pos = rest.find(ch)
            if pos != -1:
                authority_end = min(authority_end, pos)
        authority, tail = rest[:authority_end], rest[authority_end:]
        if "@" in authority:
            userinfo, _, hosts = authority.rpartition("@")
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                authority = f"{user}:{MASK}@{hosts}"
        url = f"{scheme}{sep}{authority}{tail}"
    return _PASSWORD_QUERY.sub(lambda m: m.group(1) + MASK, url)


def url_password(url: str) -> str | None:
    """The password a store URL carries, if any (to register it as a secret for redaction)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password" and value:
                return value
    except ValueError:
        return None
    return None


def default_store_url(data_dir: str) -> str:
    return "sqlite://" + os.path.join(os.path.abspath(data_dir), "kode.db")


def store_section(settings: Any = None) -> dict[str, Any]:
    """The `[store]` table of config.toml (from `settings.store` when the settings carry it)."""
    section = getattr(settings, "store", None)
    if isinstance(section, dict):
        return section
    from ..config import config_file

    path = config_file()
    if not os.path.exists(path):
        return {}
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}  # load_settings reports it
    section = data.get("store")
    return section if isinstance(section, dict) else {}


def resolve_store_url(explicit: str | None, data_dir: str, section: dict[str, Any] | None = None) -> str:
    """`--store`, else `KODE_STORE`, else `[store] url`, else `sqlite://<data dir>/kode.db`."""
    if explicit:
        return explicit
    env = os.environ.get("KODE_STORE")
    if env:
        return env
    if section is None:
        section = store_section()
    configured = section.get("url")
    if isinstance(configured, str) and configured:
        return configured
    return default_store_url(data_dir)


def store_options(url: str, section: dict[str, Any] | None = None) -> StoreOptions:
    """The options in effect for `url`: defaults, then `[store]`, then the URL's query."""
    base = {k: v for k, v in (section or {}).items() if k in _OPTION_KEYS}
    return StoreOptions().merged(base).merged(parse_store_url(url).options)


def make_store(url: str, *, data_dir: str | None = None, section: dict[str, Any] | None = None,
               offline_ok: bool = False) -> Store:
    """A closed store for `url` (await `open()`); options from `section` (`[store]`) and the URL.

    `offline_ok` (PostgreSQL): `open()` succeeds while the database is unreachable
    and the store connects once it is back (a server keeps running; `store copy`
    and `doctor` want the error instead).
    """
    parsed = parse_store_url(url)
    options = store_options(url, section)
    if parsed.type == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(parsed.path)
    if parsed.type == "json":
        from .jsonfiles import JsonStore

        return JsonStore(parsed.path)
    from .postgres import PostgresStore

    return PostgresStore(parsed.conninfo, display_url=parsed.display, pool_max=options.pool_max,
                         idle_timeout_ms=options.idle_timeout_ms, connect_timeout_ms=options.connect_timeout_ms,
                         file_dir=options.file_store_base_dir or data_dir, offline_ok=offline_ok)


async def open_store(url: str, **kwargs: Any) -> Store:
    """`make_store(url, ...)`, opened."""
    store = make_store(url, **kwargs)
    await store.open()
    return store
