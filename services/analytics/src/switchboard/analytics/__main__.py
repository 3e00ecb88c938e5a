"""Entry point: ``switchboard-analytics`` or ``python -m switchboard.analytics``.

Needs ``POSTHOG_API_KEY`` (exit 2 without it, as for any invalid setting). SIGTERM or
SIGINT stops it gracefully: the batch in hand is sent and settled (acknowledged, or left
to JetStream), no new batch is fetched, the SDK's worker stops, NATS is drained, exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import ValidationError

from switchboard.analytics.service import AnalyticsService
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.common.logs import configure_logging, get_logger
from switchboard.common.ops import ops_server
from switchboard.common.telemetry import setup_telemetry

__all__ = ["main", "run"]

SERVICE = "analytics"

log = get_logger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run(settings: AnalyticsSettings) -> None:
    """Consume until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("analytics.signal", signal=signum.name)
        stop.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    service = AnalyticsService(settings)
    try:
        async with ops_server(settings, SERVICE, service.readiness):
            await service.run(stop)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main() -> None:
    """Read settings, configure logging, consume."""
    try:
        settings = AnalyticsSettings()
    except ValidationError as exc:
        configure_logging(SERVICE)
        log.error(  # noqa: TRY400 - the traceback would add nothing to the field errors
            "settings.invalid",
            errors=exc.errors(include_url=False, include_input=False, include_context=False),
        )
        sys.exit(2)
    configure_logging(SERVICE, settings.log_level)
    telemetry = setup_telemetry(SERVICE)
    try:
        asyncio.run(run(settings))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
