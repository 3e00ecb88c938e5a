"""Entry point: ``switchboard-router`` or ``python -m switchboard.router``.

SIGTERM or SIGINT stops the router gracefully: no new requests, in-flight ones finish
(up to ``NATS_DRAIN_TIMEOUT`` s), NATS is drained, the upstream pool is closed, exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import ValidationError

from switchboard.common.logs import configure_logging, get_logger
from switchboard.common.ops import ops_server
from switchboard.common.telemetry import setup_telemetry
from switchboard.router.config import ConfigError, Routing, load_routing
from switchboard.router.service import RouterService
from switchboard.router.settings import RouterSettings

__all__ = ["main", "run"]

SERVICE = "router"

log = get_logger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run(settings: RouterSettings, routing: Routing | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("router.signal", signal=signum.name)
        stop.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    service = RouterService(settings, routing=routing)
    try:
        async with ops_server(settings, SERVICE, service.readiness):
            await service.run(stop)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main() -> None:
    """Read settings, configure logging, serve."""
    try:
        settings = RouterSettings()
    except ValidationError as exc:
        configure_logging(SERVICE)
        log.error(  # noqa: TRY400 - the traceback would add nothing to the field errors
            "settings.invalid",
            errors=exc.errors(include_url=False, include_input=False, include_context=False),
        )
        sys.exit(2)
    configure_logging(SERVICE, settings.log_level)
    try:
        routing = load_routing(settings)
    except ConfigError as exc:
        log.error(  # noqa: TRY400 - the message says it all; a traceback would not help
            "config.invalid", path=str(settings.switchboard_config), error=str(exc)
        )
        print(f"switchboard-router: {exc}", file=sys.stderr)
        sys.exit(2)
    telemetry = setup_telemetry(SERVICE)
    try:
        asyncio.run(run(settings, routing))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
