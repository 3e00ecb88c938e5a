"""What the edge holds while it runs: NATS, Redis, the key cache, the gate, the bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from redis.asyncio import Redis

from switchboard.common.bus import NATS, nats_connection
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import flush_telemetry
from switchboard.edge.bus import Bus
from switchboard.edge.cache import ResponseCache
from switchboard.edge.gate import Gate
from switchboard.edge.keycache import KeyCache, KeyEvents
from switchboard.edge.keys import KeyStore
from switchboard.edge.ratelimit import RedisLimiter
from switchboard.edge.redisclient import redis_client
from switchboard.edge.settings import EdgeSettings
from switchboard.edge.usage_events import UsageEvents

__all__ = ["EdgeServices", "HttpRequest", "edge_lifespan", "services_of"]

HttpRequest = Request[Any, Any, State]
"""The request type route handlers receive."""

log = get_logger(__name__)

_SUBSCRIBE_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class EdgeServices:
    """Long-lived clients, created once at start-up, found on ``app.state.services``."""

    settings: EdgeSettings
    nc: NATS
    bus: Bus
    redis: Redis
    keys: KeyStore
    cache: KeyCache
    gate: Gate
    responses: ResponseCache
    """The exact-match response cache (:mod:`switchboard.edge.cache`)."""
    usage: UsageEvents
    """The usage events the edge publishes itself (:mod:`switchboard.edge.usage_events`)."""


def services_of(app: Litestar) -> EdgeServices:
    """The :class:`EdgeServices` of a running app."""
    services: EdgeServices = app.state.services
    return services


@asynccontextmanager
async def edge_lifespan(settings: EdgeSettings, app: Litestar) -> AsyncIterator[None]:
    """Connect on start-up; on shutdown drain NATS so no reply is cut off."""
    redis = redis_client(settings)
    listen_redis = redis_client(settings, listener=True)
    cache = KeyCache(
        ttl=settings.edge_key_cache_ttl,
        negative_ttl=settings.edge_key_negative_ttl,
        size=settings.edge_key_cache_size,
    )
    events = KeyEvents(cache, listen_redis=listen_redis, redis=redis)
    gate = Gate(settings, cache, RedisLimiter(redis, settings))
    keys = KeyStore(redis, invalidation_wait=settings.edge_invalidation_wait)
    events.start()
    gate.start()
    try:
        with contextlib.suppress(TimeoutError):
            # Serve even if Redis is down now; the listener keeps trying.
            await asyncio.wait_for(events.subscribed.wait(), _SUBSCRIBE_WAIT)
        async with nats_connection(settings, name="switchboard-edge") as nc:
            bus = Bus(nc, idle_timeout=settings.edge_idle_timeout)
            await bus.start()
            usage = UsageEvents(nc.jetstream())
            responses = ResponseCache(settings, redis, usage)
            app.state.services = EdgeServices(
                settings, nc, bus, redis, keys, cache, gate, responses, usage
            )
            log.info("edge.started", host=settings.edge_host, port=settings.edge_port)
            try:
                yield
            finally:
                log.info("edge.stopping")
                await usage.stop()
    finally:
        await gate.stop()
        await events.stop()
        await listen_redis.aclose()
        await redis.aclose()
        # uvicorn ends the process with the signal that stopped it right after this.
        flush_telemetry()
