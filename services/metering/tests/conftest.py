"""Fixtures shared by metering's unit and integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from tests.support.clickhouse import (
    ClickHouseServer,
    LedgerTarget,
    client_for,
    docker_available,
    embedded_target,
    start_clickhouse_server,
)

from switchboard.metering.migrations import migrate
from switchboard.metering.settings import MeteringSettings

SettingsFactory = Callable[..., MeteringSettings]


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse server container for the session; skips where Docker is absent."""
    if not docker_available():
        pytest.skip("no Docker engine here: the ClickHouse server variant needs one")
    with start_clickhouse_server() as server:
        yield server


@pytest.fixture
def ledger_target(tmp_path: Path) -> LedgerTarget:
    """An empty embedded (chdb) ledger of this test's own."""
    return embedded_target(tmp_path / "clickhouse")


@pytest.fixture(params=["embedded", "server"])
def any_ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerTarget:
    """An empty ledger, embedded (chdb) and, where Docker runs, on a ClickHouse server."""
    if request.param == "embedded":
        return embedded_target(tmp_path / "clickhouse")
    server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
    return server.fresh_database()


@pytest.fixture
def ch(ledger_target: LedgerTarget) -> Iterator[Client]:
    """A client on this test's embedded ledger, migrated."""
    with client_for(ledger_target) as client:
        migrate(client)
        yield client


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Metering settings with test-friendly defaults; keyword arguments override them."""

    def make(**overrides: Any) -> MeteringSettings:
        values: dict[str, Any] = {
            "switchboard_data_dir": tmp_path,
            "nats_url": "nats://127.0.0.1:9",
            "nats_drain_timeout": 2.0,
            "metering_batch_max_wait": 0.05,
            "metering_retry_initial": 0.05,
            "metering_retry_max": 0.2,
            **overrides,
        }
        return MeteringSettings(**values)

    return make
