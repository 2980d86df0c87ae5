"""Shared fixtures: real server subprocesses on temp data dirs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kode_rpc.client import RpcClient
from kode_rpc.loop import new_loop

from .fakes import FakeServer

pytest_plugins = ["tests.pg"]
"""`KODE_TEST_STORE=postgres|json|sqlite` runs every test's servers on a fresh store of that kind."""

Spawn = Callable[..., Awaitable[RpcClient]]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """In-process async tests run on the loop the server runs on (`kode_rpc.loop`), where
    the SQLite store commits inline; its thread mode is tested on plain asyncio loops."""
    return {"kode": new_loop}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def server_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KODE_DATA_DIR=str(data_dir), KODE_LOG_DIR=str(tmp_path / "logs"),
               KODE_CONFIG_DIR=str(tmp_path / "config"))
    for key in ("KODE_PROVIDER", "KODE_MODEL"):
        env.pop(key, None)
    return env


@pytest.fixture
async def spawn(server_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start servers (initialized unless `init=False`); all are killed at teardown."""
    clients: list[RpcClient] = []
    logs: list[Any] = []

    async def start(*args: str, init: bool = True, framing: str = "content-length", env: dict[str, str] | None = None,
                    **init_params: Any) -> RpcClient:
        log = open(tmp_path / f"server-{len(clients)}.stderr", "wb")
        logs.append(log)
        client = await RpcClient.spawn(*args, env=env or server_env, framing=framing, stderr=log)
        clients.append(client)
        if init:
            await client.initialize(**init_params)
        return client

    yield start
    for client in clients:
        client.kill()
        await client.wait_exit(5)
    for log in logs:
        log.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer().start()
    yield server
    await server.stop()


def scripted(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "scripted", "script": list(steps)}
