"""The analytics service's lifespan: NATS connection, PostHog SDK, consumer, graceful stop."""

from __future__ import annotations

import asyncio
import socket
import uuid

from switchboard.analytics.consumer import UsageConsumer
from switchboard.analytics.generation import CapturePolicy
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.analytics.sink import PostHogSink
from switchboard.common.bus import nats_connection
from switchboard.common.logs import get_logger

__all__ = ["AnalyticsService"]

log = get_logger(__name__)


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
                consumer = UsageConsumer(nc, sink, CapturePolicy.from_settings(settings), settings)
                await consumer.run(stop)
                log.info("analytics.stopping")
        finally:
            await sink.close()
        log.info("analytics.stopped")
