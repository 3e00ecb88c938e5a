"""Real infrastructure for router integration tests: nats-server, the OpenRouter emulator,
and the router service itself running in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client
from tests.support.openrouter_emulator import EmulatorServer, OpenRouterEmulator
from tests.support.servers import ManagedProcess, start_nats

from switchboard.common.wire import ChatRequest
from switchboard.router.service import RouterService
from switchboard.router.settings import RouterSettings

from ._support import UPSTREAM_KEY, Exchange, wait_for_router


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    """An isolated nats-server (JetStream on) on a free loopback port."""
    server = start_nats(tmp_path, jetstream=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """The OpenRouter emulator, requiring our upstream key, streaming in 4 pieces."""
    with EmulatorServer(OpenRouterEmulator(api_key=UPSTREAM_KEY)) as server:
        yield server


@pytest.fixture
async def nc(nats_server: ManagedProcess) -> AsyncIterator[Client]:
    """The test's own NATS connection, playing the edge."""
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def router_settings(
    nats_server: ManagedProcess, emulator: EmulatorServer, make_settings: Callable[..., Any]
) -> Callable[..., RouterSettings]:
    """Settings for a router on this test's NATS and emulator; keywords override."""

    def make(**overrides: Any) -> RouterSettings:
        values: dict[str, Any] = {
            "nats_url": nats_server.url,
            "openrouter_base_url": emulator.base_url,
            "openrouter_api_key": UPSTREAM_KEY,
            "openrouter_http_referer": "https://switchboard.test",
            "openrouter_app_title": "Switchboard tests",
            "router_keepalive_interval": 0.2,
            "nats_drain_timeout": 2.0,
        }
        settings: RouterSettings = make_settings(**{**values, **overrides})
        return settings

    return make


NO_RETRIES: dict[str, Any] = {"retry": {"max_retries": 0}}
"""The routing config of tests that look at single upstream attempts."""


@pytest.fixture
async def start_router(
    router_settings: Callable[..., RouterSettings],
    nc: Client,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Start a router in-process (``await start_router(config=..., **settings)``); stopped
    at teardown. ``config`` is the routing config (written as YAML; default: no retries).

    Returns once the router answers a ping on the test's own connection (right after
    subscribing, a connection's first publish can still meet "no responders"), with the
    emulator's record of calls cleared (the catalog fetch at start is not a test's call).
    """
    async with AsyncExitStack() as stack:

        async def start(config: dict[str, Any] | None = None, **overrides: Any) -> RouterService:
            path = tmp_path / f"routing-{uuid.uuid4().hex[:6]}.yaml"
            path.write_text(yaml.safe_dump(NO_RETRIES if config is None else config))
            overrides.setdefault("switchboard_config", path)
            service = RouterService(
                router_settings(**overrides), instance_id=f"router-{uuid.uuid4().hex[:6]}"
            )
            await stack.enter_async_context(service.running())
            await wait_for_router(nc)
            emulator.emulator.clear_calls()
            return service

        yield start


@pytest.fixture
async def router(start_router: Callable[..., Any]) -> RouterService:
    """A router with the default test settings."""
    service: RouterService = await start_router()
    return service


@pytest.fixture
def exchange(nc: Client, make_envelope: Callable[..., ChatRequest]) -> Callable[..., Any]:
    """Send one chat request (``await exchange(stream=True, ...)``) and follow its frames."""

    async def send(*, payload: bytes | None = None, **request: Any) -> Exchange:
        return await Exchange(nc, make_envelope(**request)).start(payload)

    return send
