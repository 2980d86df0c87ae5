"""`kode-rpc doctor`: what a user checks first when an editor says the backend is broken.

Prints version, paths, database health and schema version, configured providers
(which environment variable holds a key and whether it is set, never the key)
and whether the data dir is writable. Exits non-zero when something is wrong.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
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
    if not os.path.exists(path):
        return {"ok": True, "exists": False, "note": "created on first start"}
    try:
        from .store.sqlite import SCHEMA_VERSION

        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            readable = 0 < version <= SCHEMA_VERSION
            agents = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0] if readable else 0
        finally:
            conn.close()
        ok = check == "ok" and version <= SCHEMA_VERSION
        note = "" if version <= SCHEMA_VERSION else f"schema {version} is newer than this kode-rpc ({SCHEMA_VERSION})"
        return {"ok": ok, "exists": True, "schemaVersion": version, "integrity": check, "agents": agents,
                "sizeBytes": os.path.getsize(path), "note": note}
    except sqlite3.Error as exc:
        return {"ok": False, "exists": True, "note": f"cannot read: {exc}"}


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


def collect(explicit_data_dir: str | None = None) -> dict[str, Any]:
    settings = load_settings()
    ddir = data_dir(explicit_data_dir)
    writable, wnote = _writable(ddir)
    db = _database(os.path.join(ddir, "kode.db"))
    report = {
        "version": __version__,
        "python": sys.version.split()[0],
        "frozen": bool(getattr(sys, "frozen", False)),
        "paths": {"data": ddir, "config": config_dir(), "configFile": config_file(),
                  "configFileExists": os.path.exists(config_file()), "log": log_dir(),
                  "database": os.path.join(ddir, "kode.db")},
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


def run_doctor(explicit_data_dir: str | None, as_json: bool) -> int:
    report = collect(explicit_data_dir)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0 if report["ok"] else 1
    mark = {True: "ok ", False: "ERR"}
    p = report["paths"]
    lines = [
        f"kode-rpc {report['version']} (python {report['python']}{', frozen' if report['frozen'] else ''})",
        f"  data dir    {p['data']}  [{report['dataDirNote']}]",
        f"  database    {p['database']}",
        f"  config file {p['configFile']}{'' if p['configFileExists'] else '  (none; defaults apply)'}",
        f"  log dir     {p['log']}",
        "",
    ]
    db = report["database"]
    if db.get("exists"):
        lines.append(f"[{mark[db['ok']]}] database: schema version {db.get('schemaVersion')}, integrity "
                     f"{db.get('integrity')}, {db.get('agents')} agents, {db.get('sizeBytes')} bytes {db.get('note', '')}".rstrip())
    else:
        lines.append(f"[{mark[True]}] database: not created yet ({db['note']})")
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

