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
from switchboard.common.ops import Components
from switchboard.router.breaker import Breakers
from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import Routing, load_routing
from switchboard.router.exchange import ChatServices
from switchboard.router.handlers import Handlers
from switchboard.router.inflight import InFlight
from switchboard.router.openrouter.client import OpenRouterClient, open_pool
from switchboard.router.publisher import UsagePublisher
from switchboard.router.routing import Planner
from switchboard.router.settings import RouterSettings
from switchboard.router.telemetry import watch_breakers
from switchboard.router.transcript import TextPolicy

__all__ = ["RouterService"]

log = get_logger(__name__)


def _default_instance_id() -> str:
    # The host name is the pod name on Kubernetes; the suffix tells restarts apart.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class RouterService:
    """One router replica.

    ``async with service.running():`` serves until the block ends, then stops taking new
    requests, lets in-flight ones finish (at most ``NATS_DRAIN_TIMEOUT`` s; the rest end
    with a 503 ``e`` frame), publishes the usage events still queued (within the same
    grace), drains NATS and closes the upstream connection pool.
    """

    def __init__(
        self,
        settings: RouterSettings,
        *,
        routing: Routing | None = None,
        instance_id: str | None = None,
    ) -> None:
        """``routing`` defaults to :func:`load_routing` (raises :class:`ConfigError`)."""
        self.settings = settings
        self.routing = routing or load_routing(settings)
        self.instance_id = instance_id or _default_instance_id()
        self.inflight = InFlight(settings.router_max_in_flight)
        """The chat completions being served right now."""
        self.breakers = Breakers(self.routing.config.breaker)
        """The circuit breakers of this replica."""
        self.catalog: ModelCatalog | None = None
        """The model catalog, while running."""
        self.usage: UsagePublisher | None = None
        """The usage event publisher, while running."""
        self.nc: NATS | None = None
        """The NATS connection, while running."""
        watch_breakers(self.breakers)

    async def readiness(self) -> Components:
        """Ready: NATS connected and a model catalog (a stale or cached one: degraded)."""
        nc, catalog, usage = self.nc, self.catalog, self.usage
        found: Components = {
            "nats": {"status": "ok" if nc is not None and nc.is_connected else "down"}
        }
        if catalog is None or not catalog.loaded:
            found["catalog"] = {"status": "down", "catalog": "empty"}
        else:
            found["catalog"] = {
                "status": "ok" if catalog.status == "fresh" else "degraded",
                "catalog": catalog.status,
                "models": len(catalog.models),
            }
        if usage is not None:
            found["usage"] = {
                "status": "ok" if usage.healthy else "degraded",
                "backlog": usage.backlog,
                "dropped": usage.dropped,
            }
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully."""
        async with self.running():
            await stop.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RouterService]:
        """Serve while the block runs."""
        settings, routing = self.settings, self.routing
        async with (
            open_pool(settings) as pool,
            nats_connection(settings, name=f"switchboard-router/{self.instance_id}") as nc,
        ):
            self.nc = nc
            clients = {
                name: OpenRouterClient(
                    pool,
                    provider,
                    connect_timeout=settings.router_upstream_connect_timeout,
                    read_timeout=settings.router_upstream_read_timeout,
                )
                for name, provider in routing.providers.items()
            }
            catalog = self.catalog = ModelCatalog(
                clients[routing.catalog_provider].list_models,
                cache_path=settings.catalog_cache_path,
                refresh_interval=settings.router_catalog_refresh_interval,
                fetch_timeout=settings.router_catalog_fetch_timeout,
            )
            usage = self.usage = UsagePublisher(nc, settings)
            await asyncio.gather(catalog.start(), usage.start())
            services = ChatServices(
                planner=Planner(routing, catalog, self.breakers),
                clients=clients,
                breakers=self.breakers,
                retry=routing.config.retry,
                record_usage=usage.publish,
                slot=self.inflight.slot,
                keepalive_interval=settings.router_keepalive_interval,
                usage_text=TextPolicy(
                    settings.router_usage_privacy_mode, settings.router_usage_max_text_bytes
                ),
            )
            handlers = Handlers(
                nc,
                services=services,
                inflight=self.inflight,
                catalog=catalog,
                routing=routing,
                usage=usage,
                instance_id=self.instance_id,
            )
            intake = await self._subscribe(nc, handlers)
            log.info(
                "router.started",
                instance_id=self.instance_id,
                providers={name: p.base_url for name, p in routing.providers.items()},
                catalog=catalog.status,
                aliases=sorted(routing.aliases),
                max_in_flight=settings.router_max_in_flight,
                usage_privacy_mode=settings.router_usage_privacy_mode,
            )
            try:
                yield self
            finally:
                await self._stop(intake)
                await catalog.stop()
                await usage.close(grace=settings.nats_drain_timeout)

    @staticmethod
    async def _subscribe(nc: NATS, handlers: Handlers) -> list[Subscription]:
        queue = subjects.ROUTER_QUEUE
        intake = [
            await nc.subscribe(subjects.CHAT_REQUEST, queue=queue, cb=handlers.chat_request),
            await nc.subscribe(subjects.MODELS_LIST, queue=queue, cb=handlers.models_list),
            await nc.subscribe(subjects.ROUTER_PING, queue=queue, cb=handlers.ping),
            await nc.subscribe(subjects.ROUTER_HEALTH, queue=queue, cb=handlers.health),
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
