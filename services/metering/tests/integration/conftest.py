"""Real infrastructure for metering's integration tests: nats-server with JetStream, the
usage stream as the router creates it, and metering running in-process on chdb."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from tests.support.clickhouse import LedgerTarget
from tests.support.servers import ManagedProcess, start_nats

from switchboard.common import metering as protocol
from switchboard.common.metering import MeteringPong
from switchboard.metering.service import MeteringService
from switchboard.metering.settings import MeteringSettings

from .._support import create_usage_stream, eventually


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    """An isolated nats-server with JetStream on a free loopback port."""
    server = start_nats(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: ManagedProcess) -> AsyncIterator[Client]:
    """The test's own NATS connection, playing the router (and the edge)."""
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def stream(nc: Client) -> None:
    """The usage stream, created as the router does."""
    await create_usage_stream(nc)


@pytest.fixture
def metering_settings(
    nats_server: ManagedProcess,
    ledger_target: LedgerTarget,
    make_settings: Callable[..., MeteringSettings],
) -> Callable[..., MeteringSettings]:
    """Settings for metering on this test's NATS and ledger; keywords override."""

    def make(**overrides: Any) -> MeteringSettings:
        values: dict[str, Any] = {
            "nats_url": nats_server.url,
            "clickhouse_url": ledger_target.url,
            "metering_ack_wait": 30,
            **overrides,
        }
        return make_settings(**values)

    return make


async def ping(nc: Client) -> MeteringPong | None:
    """Metering's readiness, or None when no replica answers."""
    try:
        reply = await nc.request(protocol.METERING_PING, b"", timeout=0.5)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    return MeteringPong.model_validate_json(reply.data)


@pytest.fixture
async def start_metering(
    metering_settings: Callable[..., MeteringSettings], nc: Client
) -> AsyncIterator[Callable[..., Any]]:
    """Start metering in-process (``await start_metering(**settings)``); stopped at teardown.

    Returns once a replica answers its ping, ready (unless ``wait_ready=False``) and
    consuming (unless ``wait_consuming=False``).
    """
    async with AsyncExitStack() as stack:

        async def start(
            *, wait_consuming: bool = True, wait_ready: bool = True, **overrides: Any
        ) -> MeteringService:
            service = MeteringService(
                metering_settings(**overrides), instance_id=f"metering-{uuid.uuid4().hex[:6]}"
            )
            await stack.enter_async_context(service.running())

            async def ready() -> bool:
                pong = await ping(nc)
                if pong is None:
                    return False
                return (pong.ready or not wait_ready) and (pong.consuming or not wait_consuming)

            await eventually(ready, what="metering ready")
            return service

        yield start
