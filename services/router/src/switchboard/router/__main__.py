"""Entry point: ``switchboard-router`` or ``python -m switchboard.router``.

SIGTERM or SIGINT stops the router gracefully: no new requests, in-flight ones finish
(up to ``NATS_DRAIN_TIMEOUT`` s), NATS is drained, the upstream pool is closed, exit 0.
"""

from __future__ import annotations

import sys

from switchboard.common.logs import get_logger
from switchboard.common.worker import load_settings, run_process, serve_until_stopped
from switchboard.router.config import ConfigError, Routing, load_routing
from switchboard.router.service import RouterService
from switchboard.router.settings import RouterSettings

__all__ = ["main", "run"]

SERVICE = "router"

log = get_logger(__name__)


async def run(settings: RouterSettings, routing: Routing | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    service = RouterService(settings, routing=routing)
    await serve_until_stopped(SERVICE, settings, service.readiness, service.run)


def main() -> None:
    """Read settings and the routing configuration, configure logging, serve."""
    settings = load_settings(RouterSettings, SERVICE)
    try:
        routing = load_routing(settings)
    except ConfigError as exc:
        log.error(  # noqa: TRY400 - the message says it all; a traceback would not help
            "config.invalid", path=str(settings.switchboard_config), error=str(exc)
        )
        print(f"switchboard-router: {exc}", file=sys.stderr)
        sys.exit(2)
    run_process(SERVICE, lambda: run(settings, routing))


if __name__ == "__main__":
    main()
