"""A throwaway PostgreSQL cluster for the tests, and the switch that runs any test on any store.

`pg_server` (session scope) runs `initdb` and `postgres` in a temp dir, listening on
a unix socket in that dir and on a free 127.0.0.1 port, and removes it all at the
end. PostgreSQL refuses to run as root, so as root the cluster runs as the
`postgres` user (`runuser`), or as a user created for it. Binaries come from
`KODE_PG_BINDIR`, `/usr/lib/postgresql/<15..>/bin`, or `PATH`. Without them the
tests that need the cluster are skipped, except under CI (`CI=true`), where that
is a failure.

TCP connections need a password (scram-sha-256) so tests can check that it is
never shown; the unix socket trusts the local user.

Running the whole suite on another store: `KODE_TEST_STORE=postgres` (or `json`,
or `sqlite`) with this module loaded as a plugin (`conftest.py` lists it in
`pytest_plugins`, or `-p tests.pg`) gives every test its own empty store (a fresh
database, or a fresh folder) as `[store] url` in its config dir, so every server a
test spawns uses it. Tests that open `kode.db` themselves are skipped then.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

SUPERUSER = "kode"
PASSWORD = "kode-pg-secret-9f3b2c"
"""The superuser's password: tests assert it never appears in output or logs."""


def pg_bindir() -> str | None:
    candidates = [os.environ.get("KODE_PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for d in candidates:
        if d and os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "postgres")):
            return d
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "kodepg"], check=False, capture_output=True)
    pwd.getpwnam("kodepg")  # raises when it could not be made
    return "kodepg"


class PgServer:
    """One cluster: `url(db)` for TCP with the password, `socket_url(db)` over the unix socket."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="kode-pg-"))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.started = 0.0

    # --- commands ------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["runuser", "-u", self.user, "--", *args]

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                               + (self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""))
        return out

    def init(self) -> None:
        self.sockdir.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for p in (self.root, self.sockdir, pwfile):
                os.chown(p, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o700)
        self._run(os.path.join(self.bindir, "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        pwfile.unlink()

    def start(self) -> None:
        opts = (f"-k {self.sockdir} -p {self.port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        t0 = time.perf_counter()
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", opts, "start")
        self.started = time.perf_counter() - t0

    def stop(self, mode: str = "fast") -> None:
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    # --- access --------------------------------------------------------------------
    def url(self, db: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def socket_url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{db}?host={quote(str(self.sockdir))}&port={self.port}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER, "-d", db, "-c", sql],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr}")
        return out.stdout.strip()

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name


def start_pg() -> PgServer | str:
    """A running cluster, or why there is none."""
    bindir = pg_bindir()
    if bindir is None:
        return "no PostgreSQL binaries (set KODE_PG_BINDIR, or apt-get install postgresql)"
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
    except Exception as exc:
        server.destroy()
        return f"PostgreSQL did not start: {exc}"
    return server


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's cluster; skipped without PostgreSQL, a failure under CI."""
    server = start_pg()
    if isinstance(server, str):
        if _in_ci():
            pytest.fail(f"CI needs PostgreSQL for the store tests: {server}", pytrace=False)
        pytest.skip(server)
    try:
        yield server
    finally:
        server.destroy()


# ------------------------------------------------------------- any test on any store

_SQLITE_ONLY_MARKS = ("kode.db", "SQLiteStore", "sqlite3.connect")


def _sqlite_only(item: pytest.Item) -> bool:
    fn = getattr(item, "function", None)
    if fn is None:
        return False
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return any(mark in source for mark in _SQLITE_ONLY_MARKS)


_STORE_OWN = ("test_store.py", "test_store_contract.py", "test_store_copy.py")
"""Suites that choose their stores themselves: left alone."""
_TWO_SERVERS_AT_ONCE = {
    "test_two_servers_cannot_run_the_same_agent": "runs two servers on one store at once",
    "test_fuzz_initialize": "keeps several servers on one store at once",
}
"""A JSON store folder belongs to one process (a second server exits 1 naming the owner), so these
cannot run on it; the lock itself is tested in test_store_contract.py."""
_SQLITE_PINNED = {
    "test_golden.py": "pins results of a server on the default SQLite store (initialize.store, store/metrics)",
    "test_start_and_offline_turns_import_no_network_or_retry_stack": "checks what a server on the default SQLite "
                                                                     "store imports at start-up (PostgreSQL loads psycopg)",
}
"""Files or test functions that are about the default store."""


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    kind = os.environ.get("KODE_TEST_STORE", "")
    if kind in ("", "sqlite"):
        return
    for item in items:
        name = os.path.basename(str(getattr(item, "path", "")))
        if name in _STORE_OWN:
            continue
        if kind == "json" and item.name.split("[")[0] in _TWO_SERVERS_AT_ONCE:
            reason = _TWO_SERVERS_AT_ONCE[item.name.split("[")[0]]
            item.add_marker(pytest.mark.skip(reason=f"{reason}: a JSON store is one process per folder"))
        elif name in _SQLITE_PINNED or item.name.split("[")[0] in _SQLITE_PINNED:
            why = _SQLITE_PINNED.get(name) or _SQLITE_PINNED[item.name.split("[")[0]]
            item.add_marker(pytest.mark.skip(reason=f"{why} (KODE_TEST_STORE={kind})"))
        elif _sqlite_only(item):
            item.add_marker(pytest.mark.skip(reason=f"opens the SQLite file itself (KODE_TEST_STORE={kind})"))


@pytest.fixture(autouse=True)
def _store_under_test(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """With KODE_TEST_STORE set, give the test a fresh store: `[store] url` in the config.toml of
    the test's config dir (`KODE_CONFIG_DIR`, see conftest.py), which every server it spawns reads.

    Not `KODE_STORE`: the server treats that variable's value as a secret (tools never see it)
    and holds back tool output that could contain it, which changes what streaming tests see.
    PostgreSQL is reached over the cluster's unix socket, without a password, for the same reason.
    A test that manages its own config dir runs on the default SQLite store.
    """
    kind = os.environ.get("KODE_TEST_STORE", "")
    if kind in ("", "sqlite") or os.path.basename(str(request.node.path)) in _STORE_OWN:
        return
    if kind == "json":
        url = f"json://{tmp_path_factory.mktemp('json-store')}"
    elif kind in ("postgres", "postgresql"):
        server: PgServer = request.getfixturevalue("pg_server")
        url = server.socket_url(server.create_database("e2e"))
    else:
        raise pytest.UsageError(f"KODE_TEST_STORE must be sqlite, json or postgres, not {kind!r}")
    fn = getattr(request.node, "function", None)
    try:
        if fn is not None and '"config"' in inspect.getsource(fn):
            return  # the test writes its own config dir: it runs on the default store
    except (OSError, TypeError):
        pass
    tmp_path: Path = request.getfixturevalue("tmp_path")
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text(f"[store]\nurl = {json.dumps(url)}\n", encoding="utf-8")
