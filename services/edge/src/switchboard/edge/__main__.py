"""``switchboard-edge``: serve the HTTP API, or manage API keys.

switchboard-edge [serve]
switchboard-edge keys create --name NAME [--rpm N --tpm N --budget USD ...] [--json]
switchboard-edge keys list|show KEY_ID|update KEY_ID ...|revoke KEY_ID|rotate KEY_ID [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from functools import partial

from switchboard.common.logs import configure_logging
from switchboard.edge.keycli import add_key_commands, run_key_command
from switchboard.edge.settings import EdgeSettings

__all__ = ["main"]


async def _run(settings: EdgeSettings) -> None:
    """The API (uvicorn) and the ops listener, in one event loop."""
    # Imported here: ``keys`` commands start fast without the web stack.
    import uvicorn  # noqa: PLC0415

    from switchboard.common.ops import ops_server  # noqa: PLC0415
    from switchboard.edge.app import create_app  # noqa: PLC0415
    from switchboard.edge.httpserver import guarded_protocol  # noqa: PLC0415
    from switchboard.edge.observe import observed  # noqa: PLC0415
    from switchboard.edge.routes.health import readiness  # noqa: PLC0415

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            observed(app),
            host=settings.edge_host,
            port=settings.edge_port,
            http=guarded_protocol(settings),
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            # Forwarding headers are ours to judge (EDGE_TRUSTED_PROXIES): uvicorn's own
            # handling would believe any loopback peer's X-Forwarded-For and -Proto.
            proxy_headers=False,
            timeout_graceful_shutdown=int(settings.nats_drain_timeout),
        )
    )
    async with ops_server(settings, "edge", partial(readiness, app)):
        await server.serve()


def _serve(settings: EdgeSettings) -> int:
    import uvloop  # noqa: PLC0415

    from switchboard.common.telemetry import setup_telemetry  # noqa: PLC0415

    configure_logging("edge", settings.log_level)
    telemetry = setup_telemetry("edge")
    try:
        asyncio.run(_run(settings), loop_factory=uvloop.new_event_loop)
    finally:
        telemetry.shutdown()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard-edge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the HTTP API (the default)")
    add_key_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the edge process."""
    args = _parser().parse_args(argv)
    settings = EdgeSettings()
    if args.command == "keys":
        return asyncio.run(run_key_command(settings, args))
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
