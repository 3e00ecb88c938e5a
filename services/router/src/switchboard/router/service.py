"""The router's lifespan: upstream client, NATS connection, subscriptions, graceful stop."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from switchboard.common import subjects
from switchboard.common.bus import NATS, nats_connection
from switchboard.common.logs import get_logger
from switchboard.router.catalog import ModelCatalog
from switchboard.router.handlers import Handlers
from switchboard.router.inflight import InFlight
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.settings import RouterSettings

__all__ = ["RouterService"]

log = get_logger(__name__)


def _default_instance_id() -> str:
    # The host name is the pod name on Kubernetes; the suffix tells restarts apart.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class RouterService:
    """One router replica.

    ``async with service.running():`` serves until the block ends, then stops taking new
    requests, lets in-flight ones finish (at most ``NATS_DRAIN_TIMEOUT`` s; the rest end
    with a 503 ``e`` frame), drains NATS and closes the upstream connection pool.
    """

    def __init__(self, settings: RouterSettings, *, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or _default_instance_id()
        self.inflight = InFlight(settings.router_max_in_flight)
        """The chat completions being served right now."""

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully."""
        async with self.running():
            await stop.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RouterService]:
        """Serve while the block runs."""
        settings = self.settings
        async with (
            OpenRouterClient.open(settings) as upstream,
            nats_connection(settings, name=f"switchboard-router/{self.instance_id}") as nc,
        ):
            handlers = Handlers(
                nc,
                upstream=upstream,
                inflight=self.inflight,
                catalog=ModelCatalog(upstream.list_models, ttl=settings.router_models_cache_ttl),
                instance_id=self.instance_id,
                keepalive_interval=settings.router_keepalive_interval,
            )
            intake = await self._subscribe(nc, handlers)
            log.info(
                "router.started",
                instance_id=self.instance_id,
                upstream=settings.openrouter_base_url,
                max_in_flight=settings.router_max_in_flight,
            )
            try:
                yield self
            finally:
                await self._stop(intake)

    @staticmethod
    async def _subscribe(nc: NATS, handlers: Handlers) -> list[Subscription]:
        queue = subjects.ROUTER_QUEUE
        intake = [
            await nc.subscribe(subjects.CHAT_REQUEST, queue=queue, cb=handlers.chat_request),
            await nc.subscribe(subjects.MODELS_LIST, queue=queue, cb=handlers.models_list),
            await nc.subscribe(subjects.ROUTER_PING, queue=queue, cb=handlers.ping),
        ]
        # Every replica hears every cancel; only the one serving the request acts on it.
        # It stays subscribed until NATS is drained, so cancels reach draining exchanges.
        await nc.subscribe(subjects.CHAT_CANCEL_WILDCARD, cb=handlers.chat_cancel)
        await nc.flush()
        return intake

    async def _stop(self, intake: list[Subscription]) -> None:
        log.info("router.stopping", in_flight=len(self.inflight))
        for subscription in intake:
            # Requests already delivered to this replica are still taken on and served.
            with suppress(NatsError):
                await subscription.drain()  # type: ignore[no-untyped-call]
        cancelled = await self.inflight.drain(grace=self.settings.nats_drain_timeout)
        log.info("router.stopped", cancelled=cancelled)
