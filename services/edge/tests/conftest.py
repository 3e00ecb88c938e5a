"""Fixtures of the edge's tests: a real valkey-server, emptied before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.support.servers import ManagedProcess, start_valkey

from switchboard.edge.redisclient import redis_client
from switchboard.edge.settings import EdgeSettings

SettingsFactory = Callable[..., EdgeSettings]


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """One valkey-server for the edge's tests."""
    server = start_valkey(tmp_path_factory.mktemp("valkey"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_settings(valkey_server: ManagedProcess) -> SettingsFactory:
    """Edge settings pointed at the test valkey; keyword arguments override fields."""

    def make(**overrides: Any) -> EdgeSettings:
        return EdgeSettings(**{"redis_url": valkey_server.url, **overrides})

    return make


@pytest.fixture
async def redis(make_settings: SettingsFactory) -> AsyncIterator[Redis]:
    """A client of the test valkey, whose data was just flushed."""
    client = redis_client(make_settings())
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()
