"""The analytics service's lifespan: NATS connection, PostHog SDK, consumer, graceful stop."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

from switchboard.analytics.consumer import UsageConsumer
from switchboard.analytics.generation import CapturePolicy
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.analytics.sink import PostHogSink
from switchboard.common.bus import NATS, nats_connection
from switchboard.common.logs import get_logger
from switchboard.common.ops import Components

__all__ = ["AnalyticsService"]

log = get_logger(__name__)

DEGRADED_AFTER = 60.0
"""Seconds of failing PostHog uploads after which readiness reports ``degraded``."""


def _default_instance_id() -> str:
    # The host name is the pod name on Kubernetes; the suffix tells restarts apart.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class AnalyticsService:
    """One analytics replica; replicas share the durable consumer and so the work.

    :meth:`run` consumes until ``stop`` is set, then finishes and settles the batch in
    hand, stops the SDK's worker and drains NATS.
    """

    def __init__(self, settings: AnalyticsSettings, *, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or _default_instance_id()
        self.nc: NATS | None = None
        """The NATS connection, while running."""
        self.consumer: UsageConsumer | None = None
        """The usage consumer, while running."""

    async def readiness(self) -> Components:
        """Ready: NATS connected and the consumer bound. PostHog failing for longer than
        ``DEGRADED_AFTER`` s makes it degraded (still ready: events wait in JetStream)."""
        nc, consumer = self.nc, self.consumer
        found: Components = {
            "nats": {"status": "ok" if nc is not None and nc.is_connected else "down"},
            "consumer": {"status": "ok" if consumer is not None and consumer.bound else "down"},
        }
        failing_since = consumer.failing_since if consumer else None
        failing_for = time.monotonic() - failing_since if failing_since is not None else 0.0
        found["posthog"] = {
            "status": "degraded" if failing_for > DEGRADED_AFTER else "ok",
            "failing_for": round(failing_for, 1),
        }
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down gracefully."""
        settings = self.settings
        sink = PostHogSink(settings)
        try:
            async with nats_connection(
                settings, name=f"switchboard-analytics/{self.instance_id}"
            ) as nc:
                log.info(
                    "analytics.started",
                    message=f"sending LLM analytics to PostHog at {settings.posthog_host}",
                    instance_id=self.instance_id,
                    posthog_host=settings.posthog_host,
                    privacy_mode=settings.analytics_privacy_mode,
                    hash_distinct_id=settings.analytics_hash_distinct_id,
                    consumer=settings.analytics_consumer,
                )
                self.nc = nc
                consumer = UsageConsumer(nc, sink, CapturePolicy.from_settings(settings), settings)
                self.consumer = consumer
                await consumer.run(stop)
                log.info("analytics.stopping")
        finally:
            await sink.close()
        log.info("analytics.stopped")
