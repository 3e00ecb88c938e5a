"""Entry point: ``switchboard-metering`` or ``python -m switchboard.metering``.

SIGTERM or SIGINT stops metering gracefully: no new fetches, the batch in hand is written
and acknowledged (within ``NATS_DRAIN_TIMEOUT`` s while ClickHouse fails; otherwise left
unacknowledged for redelivery), NATS is drained, ClickHouse is closed, exit 0. Exit 1 when
it gave up (a schema it cannot migrate), 2 for invalid settings.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import ValidationError

from switchboard.common.logs import configure_logging, get_logger
from switchboard.common.ops import ops_server
from switchboard.common.telemetry import setup_telemetry
from switchboard.metering.service import MeteringService
from switchboard.metering.settings import MeteringSettings

__all__ = ["main", "run"]

SERVICE = "metering"

log = get_logger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run(settings: MeteringSettings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("metering.signal", signal=signum.name)
        stop.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    service = MeteringService(settings)
    try:
        async with ops_server(settings, SERVICE, service.readiness):
            await service.run(stop)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main() -> None:
    """Read settings, configure logging, serve."""
    try:
        settings = MeteringSettings()
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
    except Exception:  # noqa: BLE001 - logged by the service as metering.failed
        sys.exit(1)
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
