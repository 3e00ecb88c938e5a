"""Connecting to NATS: reconnect for ever while running, drain on the way out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.errors import NoServersError

from switchboard.common.logs import get_logger
from switchboard.common.settings import NatsSettings

__all__ = ["NATS", "connect_nats", "nats_connection"]

log = get_logger(__name__)


async def connect_nats(
    settings: NatsSettings, *, name: str, first_connect_wait: float = 30.0
) -> NATS:
    """Connect to NATS, waiting up to ``first_connect_wait`` s for a first connection.

    Once connected the client reconnects by itself (``NATS_MAX_RECONNECT_ATTEMPTS``, for
    ever by default), so a NATS restart costs in-flight requests, not the process.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=type(exc).__name__, detail=str(exc))

    async def on_disconnected() -> None:
        log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected")

    nc = NATS()
    connecting = nc.connect(
        servers=settings.servers,
        name=name,
        connect_timeout=settings.nats_connect_timeout,  # type: ignore[arg-type]
        reconnect_time_wait=0.5,  # type: ignore[arg-type]
        max_reconnect_attempts=settings.nats_max_reconnect_attempts,
        drain_timeout=settings.nats_drain_timeout,  # type: ignore[arg-type]
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    try:
        await asyncio.wait_for(connecting, first_connect_wait)
    except TimeoutError:
        await nc.close()
        raise NoServersError from None
    return nc


@asynccontextmanager
async def nats_connection(
    settings: NatsSettings, *, name: str, first_connect_wait: float = 30.0
) -> AsyncIterator[NATS]:
    """A connection for the lifetime of a service; drained (not dropped) on exit."""
    nc = await connect_nats(settings, name=name, first_connect_wait=first_connect_wait)
    try:
        yield nc
    finally:
        if nc.is_connected:
            await nc.drain()
        else:
            await nc.close()
