"""`kode-rpc doctor` reports problems with a non-zero exit and never prints a secret."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kode_rpc", "doctor", *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_healthy_report_hides_keys(server_env: dict[str, str]) -> None:
    env = dict(server_env, ANTHROPIC_API_KEY="sk-ant-super-secret-key-1234567890")
    out = doctor(env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sk-ant-super-secret" not in out.stdout + out.stderr
    assert "provider anthropic: configured" in out.stdout and "$ANTHROPIC_API_KEY: set" in out.stdout
    report = json.loads(doctor(env, "--json").stdout)
    assert report["ok"] is True and report["paths"]["data"] == server_env["KODE_DATA_DIR"]
    assert {p["name"] for p in report["providers"]} >= {"echo", "anthropic", "openai"}


def test_unwritable_data_dir_fails(server_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    out = doctor(dict(server_env, KODE_DATA_DIR=str(blocker / "data")))
    assert out.returncode == 1 and "not writable" in out.stdout


def test_newer_schema_and_key_in_config_fail(server_env: dict[str, str], data_dir: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(data_dir / "kode.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    out = doctor(server_env)
    assert out.returncode == 1 and "newer than this kode-rpc" in out.stdout
    (data_dir / "kode.db").unlink()
    cfg = tmp_path / "config"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.toml").write_text('[providers.openai]\napiKey = "sk-in-file-should-not-be-used-000000"\n')
    out = doctor(dict(server_env, KODE_CONFIG_DIR=str(cfg)))
    assert out.returncode == 1 and "only from the environment" in out.stdout
    assert "sk-in-file" not in out.stdout
