"""ClickHouse for tests: the embedded engine (chdb) always, a server only where Docker runs.

Every test gets a ledger of its own: a fresh chdb data directory, or a fresh database on
one ClickHouse server container shared by the session. chdb opens one data directory per
process at a time (and one process per directory), so a test closes every client it
opened before the next test opens another directory; :func:`client_for` does.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import clickhouse_connect
from clickhouse_connect.driver.client import Client

__all__ = [
    "CLICKHOUSE_SERVER_IMAGE",
    "ClickHouseServer",
    "LedgerTarget",
    "client_for",
    "docker_available",
    "embedded_target",
    "start_clickhouse_server",
]

CLICKHOUSE_SERVER_IMAGE = "clickhouse/clickhouse-server:25.8"
"""The server image tests use when Docker is available (a current LTS)."""

Kind = Literal["embedded", "server"]


@dataclass(frozen=True)
class LedgerTarget:
    """Where one test's ledger lives: the URL to give ``CLICKHOUSE_URL``."""

    kind: Kind
    url: str

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"


def embedded_target(directory: Path) -> LedgerTarget:
    """A chdb ledger in ``directory`` (created on first use)."""
    return LedgerTarget("embedded", f"chdb://{directory.resolve()}")


@contextlib.contextmanager
def client_for(target: LedgerTarget, **settings: Any) -> Iterator[Client]:
    """A client on ``target`` (closed at the end), for a test to look at the ledger."""
    if target.embedded:
        client = clickhouse_connect.get_client(dsn=target.url)
    else:
        client = clickhouse_connect.get_client(
            dsn=target.url, autogenerate_session_id=False, settings=settings
        )
    try:
        yield client
    finally:
        client.close()


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers here (never on machines without one)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        probe = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


@dataclass
class ClickHouseServer:
    """A ClickHouse server container; :meth:`fresh_database` isolates one test."""

    container: Any
    host: str
    port: int
    username: str
    password: str

    def url(self, database: str) -> str:
        return f"http://{self.username}:{self.password}@{self.host}:{self.port}/{database}"

    def fresh_database(self) -> LedgerTarget:
        database = f"t_{uuid.uuid4().hex[:12]}"
        admin = clickhouse_connect.get_client(dsn=self.url("default"))
        try:
            admin.command(f"CREATE DATABASE {database}")
        finally:
            admin.close()
        return LedgerTarget("server", self.url(database))


@contextlib.contextmanager
def start_clickhouse_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse server in Docker (testcontainers); only call when Docker is available."""
    from testcontainers.community.clickhouse import ClickHouseContainer

    container = ClickHouseContainer(
        CLICKHOUSE_SERVER_IMAGE, username="switchboard", password="switchboard-test"
    )
    with container:
        yield ClickHouseServer(
            container,
            host=container.get_container_host_ip(),
            port=int(container.get_exposed_port(8123)),
            username="switchboard",
            password="switchboard-test",
        )
