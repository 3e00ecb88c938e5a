"""Entry point: ``switchboard-analytics`` or ``python -m switchboard.analytics``.

Needs ``POSTHOG_API_KEY`` (exit 2 without it, as for any invalid setting). SIGTERM or
SIGINT stops it gracefully: the batch in hand is sent and settled (acknowledged, or left
to JetStream), no new batch is fetched, the SDK's worker stops, NATS is drained, exit 0.
"""

from __future__ import annotations

from switchboard.analytics.service import AnalyticsService
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.common.worker import load_settings, run_process, serve_until_stopped

__all__ = ["main", "run"]

SERVICE = "analytics"


async def run(settings: AnalyticsSettings) -> None:
    """Consume until SIGTERM or SIGINT, then shut down gracefully."""
    service = AnalyticsService(settings)
    await serve_until_stopped(SERVICE, settings, service.readiness, service.run)


def main() -> None:
    """Read settings, configure logging, consume."""
    settings = load_settings(AnalyticsSettings, SERVICE)
    run_process(SERVICE, lambda: run(settings))


if __name__ == "__main__":
    main()
