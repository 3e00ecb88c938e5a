"""What the edge holds while it runs: NATS, Redis, the key store, the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from redis.asyncio import Redis

from switchboard.common.bus import NATS, nats_connection
from switchboard.common.logs import get_logger
from switchboard.edge.bus import Bus
from switchboard.edge.keys import KeyStore
from switchboard.edge.settings import EdgeSettings

__all__ = ["EdgeServices", "HttpRequest", "edge_lifespan", "services_of"]

HttpRequest = Request[Any, Any, State]
"""The request type route handlers receive."""

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeServices:
    """Long-lived clients, created once at start-up, found on ``app.state.services``."""

    settings: EdgeSettings
    nc: NATS
    bus: Bus
    redis: Redis
    keys: KeyStore


def services_of(app: Litestar) -> EdgeServices:
    """The :class:`EdgeServices` of a running app."""
    services: EdgeServices = app.state.services
    return services


@asynccontextmanager
async def edge_lifespan(settings: EdgeSettings, app: Litestar) -> AsyncIterator[None]:
    """Connect on start-up; on shutdown drain NATS so no reply is cut off."""
    redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
    )
    try:
        async with nats_connection(settings, name="switchboard-edge") as nc:
            bus = Bus(nc, idle_timeout=settings.edge_idle_timeout)
            await bus.start()
            app.state.services = EdgeServices(settings, nc, bus, redis, KeyStore(redis))
            log.info("edge.started", host=settings.edge_host, port=settings.edge_port)
            yield
            log.info("edge.stopping")
    finally:
        await redis.aclose()
