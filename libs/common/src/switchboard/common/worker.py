"""Running a service process: settings, logging, telemetry, the ops listener and a
graceful stop on SIGTERM or SIGINT. Every worker's entry point is these three calls."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from switchboard.common.logs import configure_logging, get_logger
from switchboard.common.ops import Readiness, ops_server
from switchboard.common.settings import ServiceSettings
from switchboard.common.telemetry import setup_telemetry

__all__ = ["load_settings", "run_process", "serve_until_stopped"]

log = get_logger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def load_settings[SettingsT: ServiceSettings](
    settings_class: type[SettingsT], service: str
) -> SettingsT:
    """Settings from the environment, logging configured; exit 2 when they are invalid."""
    try:
        settings = settings_class()
    except ValidationError as exc:
        configure_logging(service)
        log.error(  # noqa: TRY400 - the traceback would add nothing to the field errors
            "settings.invalid",
            errors=exc.errors(include_url=False, include_input=False, include_context=False),
        )
        sys.exit(2)
    configure_logging(service, settings.log_level)
    return settings


async def serve_until_stopped(
    service: str,
    settings: ServiceSettings,
    readiness: Readiness,
    serve: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run ``serve(stop)`` beside the ops listener; SIGTERM or SIGINT sets ``stop``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled = service + ".signal"

    def on_signal(signum: signal.Signals) -> None:
        log.info(signalled, signal=signum.name)
        stop.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with ops_server(settings, service, readiness):
            await serve(stop)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def run_process(service: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` in a new event loop with telemetry set up (and flushed at the end)."""
    telemetry = setup_telemetry(service)
    try:
        asyncio.run(main())  # type: ignore[arg-type]
    finally:
        telemetry.shutdown()
