"""`kode-rpc doctor`: what a user checks first when an editor says the backend is broken.

Prints version, paths, the configured store (masked URL, reachable, schema version,
latency; never changed by doctor), configured providers
(which environment variable holds a key and whether it is set, never the key)
and whether the data dir is writable. Exits non-zero when something is wrong.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from typing import Any

from . import __version__
from .config import DEFAULT_KEY_ENV, config_dir, config_file, data_dir, load_settings, log_dir


def _writable(path: str) -> tuple[bool, str]:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True):
            pass
        return True, "writable"
    except OSError as exc:
        return False, f"not writable: {exc}"


def _database(path: str) -> dict[str, Any]:
    """The SQLite file, read-only: schema version, integrity, agents."""
    if not os.path.exists(path):
        return {"ok": True, "exists": False, "note": "created on first start"}
    try:
        from .store.sqlite import SCHEMA_VERSION

        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            t0 = time.perf_counter()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            latency = (time.perf_counter() - t0) * 1000.0
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            readable = 0 < version <= SCHEMA_VERSION
            agents = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0] if readable else 0
        finally:
            conn.close()
        ok = check == "ok" and version <= SCHEMA_VERSION
        note = "" if version <= SCHEMA_VERSION else f"schema {version} is newer than this kode-rpc ({SCHEMA_VERSION})"
        return {"ok": ok, "exists": True, "schemaVersion": version, "integrity": check, "agents": agents,
                "sizeBytes": os.path.getsize(path), "latencyMs": round(latency, 3), "note": note}
    except sqlite3.Error as exc:
        return {"ok": False, "exists": True, "note": f"cannot read: {exc}"}


def _json_store(path: str) -> dict[str, Any]:
    """The JSON store folder, read-only: format version, agents, who has it open."""
    from .store.jsonfiles import SCHEMA_VERSION, folder_name

    marker = os.path.join(path, "kode-store.json")
    if not os.path.exists(marker):
        parent = path if os.path.isdir(path) else os.path.dirname(path)
        ok = os.path.isdir(parent) and os.access(parent, os.W_OK)
        return {"ok": ok, "exists": False, "note": "created on first start" if ok else f"{parent} is not writable"}
    try:
        t0 = time.perf_counter()
        with open(marker, encoding="utf-8") as fh:
            version = int(json.load(fh).get("schemaVersion", 0))
        latency = (time.perf_counter() - t0) * 1000.0
        agents_dir = os.path.join(path, "agents")
        names = os.listdir(agents_dir) if os.path.isdir(agents_dir) else []
        agents = sum(1 for n in names if not n.startswith(".") and folder_name(n.split("~", 1)[0]) == n)
        note = "" if version <= SCHEMA_VERSION else f"schema {version} is newer than this kode-rpc ({SCHEMA_VERSION})"
        owner = _json_owner(path)
        if owner and not note:
            note = f"in use by process {owner.get('pid')} on {owner.get('host')}"
        return {"ok": version <= SCHEMA_VERSION, "exists": True, "schemaVersion": version, "agents": agents,
                "latencyMs": round(latency, 3), "note": note}
    except (OSError, ValueError) as exc:
        return {"ok": False, "exists": True, "note": f"cannot read: {exc}"}


def _json_owner(path: str) -> dict[str, Any] | None:
    """The process holding the JSON store's lock, if one does (probed without keeping the lock)."""
    lock = os.path.join(path, "kode-store.lock")
    if not os.path.exists(lock) or sys.platform == "win32":
        return None
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        try:
            with open(lock, encoding="utf-8") as fh:
                return dict(json.loads(fh.read() or "{}"))
        except (OSError, ValueError):
            return {"pid": "?", "host": "?"}
    finally:
        os.close(fd)


def _store(url: str, ddir: str) -> dict[str, Any]:
    """The configured store: reachable, schema version, latency (never changes it)."""
    from .store.url import mask_url, parse_store_url, store_options, store_section

    shown = mask_url(url)
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        return {"ok": False, "type": "unknown", "url": shown, "exists": False, "note": str(exc)}
    if parsed.type == "sqlite":
        return {"type": "sqlite", "url": shown, "path": parsed.path, **_database(parsed.path)}
    if parsed.type == "json":
        return {"type": "json", "url": shown, "path": parsed.path, **_json_store(parsed.path)}
    from .store.postgres import probe

    try:
        timeout = store_options(url, store_section()).connect_timeout_ms / 1000.0
    except ValueError as exc:
        return {"ok": False, "type": "postgres", "url": shown, "exists": False, "note": str(exc)}
    return {"type": "postgres", "url": shown, **probe(parsed.conninfo, timeout)}


def _providers(settings: Any) -> list[dict[str, Any]]:
    out = []
    for name in ("anthropic", "openai"):
        cfg = settings.providers.get(name, {})
        env = cfg.get("apiKeyEnv") or DEFAULT_KEY_ENV[name]
        base = cfg.get("baseUrl") or ("https://api.anthropic.com" if name == "anthropic" else "https://api.openai.com/v1")
        local = name == "openai" and not base.startswith("https://api.openai.com")
        has_key = bool(os.environ.get(env))
        out.append({"name": name, "baseUrl": base, "apiKeyEnv": env, "keySet": has_key,
                    "configured": has_key or local, "model": cfg.get("model")})
    return out


def collect(explicit_data_dir: str | None = None, explicit_store: str | None = None) -> dict[str, Any]:
    from .store.url import resolve_store_url, store_section

    settings = load_settings()
    ddir = data_dir(explicit_data_dir)
    writable, wnote = _writable(ddir)
    db = _store(resolve_store_url(explicit_store, ddir, store_section(settings)), ddir)
    report = {
        "version": __version__,
        "python": sys.version.split()[0],
        "frozen": bool(getattr(sys, "frozen", False)),
        "paths": {"data": ddir, "config": config_dir(), "configFile": config_file(),
                  "configFileExists": os.path.exists(config_file()), "log": log_dir(),
                  "database": db.get("path") or db["url"]},
        "store": {"type": db["type"], "url": db["url"]},
        "dataDirWritable": writable,
        "dataDirNote": wnote,
        "database": db,
        "defaultModel": {"provider": settings.default_model.get("provider"), "model": settings.default_model.get("model"),
                         "source": settings.default_source},
        "providers": [{"name": "echo", "configured": True}, {"name": "scripted", "configured": True}, *_providers(settings)],
        "configErrors": settings.errors,
    }
    report["ok"] = writable and db["ok"] and not settings.errors
    return report


def run_doctor(explicit_data_dir: str | None, as_json: bool, explicit_store: str | None = None) -> int:
    report = collect(explicit_data_dir, explicit_store)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0 if report["ok"] else 1
    mark = {True: "ok ", False: "ERR"}
    p = report["paths"]
    lines = [
        f"kode-rpc {report['version']} (python {report['python']}{', frozen' if report['frozen'] else ''})",
        f"  data dir    {p['data']}  [{report['dataDirNote']}]",
        f"  store       {report['store']['url']}  ({report['store']['type']})",
        f"  config file {p['configFile']}{'' if p['configFileExists'] else '  (none; defaults apply)'}",
        f"  log dir     {p['log']}",
        "",
    ]
    db = report["database"]
    if db.get("exists"):
        facts = [f"schema version {db.get('schemaVersion')}"]
        if "integrity" in db:
            facts.append(f"integrity {db['integrity']}")
        facts.append(f"{db.get('agents')} agents")
        if "sizeBytes" in db:
            facts.append(f"{db['sizeBytes']} bytes")
        if "latencyMs" in db:
            facts.append(f"latency {db['latencyMs']} ms")
        lines.append(f"[{mark[db['ok']]}] {db['type']} store: {', '.join(facts)} {db.get('note', '')}".rstrip())
    else:
        lines.append(f"[{mark[db['ok']]}] {db['type']} store: not created yet ({db['note']})"
                     if db["ok"] else f"[{mark[False]}] {db['type']} store: {db['note']}")
    lines.append(f"[{mark[report['dataDirWritable']]}] data dir {report['dataDirNote']}")
    dm = report["defaultModel"]
    lines.append(f"[ok ] default model: {dm['provider']}{' / ' + dm['model'] if dm['model'] else ''} (from {dm['source']})")
    for prov in report["providers"]:
        if prov["name"] in ("echo", "scripted"):
            lines.append(f"[ok ] provider {prov['name']}: built in, offline")
            continue
        key = f"key in ${prov['apiKeyEnv']}: {'set' if prov['keySet'] else 'not set'}"
        state = "configured" if prov["configured"] else "not configured"
        lines.append(f"[{'ok ' if prov['configured'] else ' - '}] provider {prov['name']}: {state} ({prov['baseUrl']}; {key})")
    for err in report["configErrors"]:
        lines.append(f"[ERR] config: {err}")
    lines.append("")
    lines.append("all good" if report["ok"] else "problems found (see ERR lines)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if report["ok"] else 1

