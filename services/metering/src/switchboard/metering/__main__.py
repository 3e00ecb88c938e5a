"""Entry point: ``switchboard-metering`` or ``python -m switchboard.metering``.

SIGTERM or SIGINT stops metering gracefully: no new fetches, the batch in hand is written
and acknowledged (within ``NATS_DRAIN_TIMEOUT`` s while ClickHouse fails; otherwise left
unacknowledged for redelivery), NATS is drained, ClickHouse is closed, exit 0. Exit 1 when
it gave up (a schema it cannot migrate), 2 for invalid settings.
"""

from __future__ import annotations

import sys

from switchboard.common.worker import load_settings, run_process, serve_until_stopped
from switchboard.metering.service import MeteringService
from switchboard.metering.settings import MeteringSettings

__all__ = ["main", "run"]

SERVICE = "metering"


async def run(settings: MeteringSettings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    service = MeteringService(settings)
    await serve_until_stopped(SERVICE, settings, service.readiness, service.run)


def main() -> None:
    """Read settings, configure logging, serve."""
    settings = load_settings(MeteringSettings, SERVICE)
    try:
        run_process(SERVICE, lambda: run(settings))
    except Exception:  # noqa: BLE001 - logged by the service as metering.failed
        sys.exit(1)


if __name__ == "__main__":
    main()
