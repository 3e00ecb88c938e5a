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

from switchboard.common.logs import configure_logging
from switchboard.edge.keycli import add_key_commands, run_key_command
from switchboard.edge.settings import EdgeSettings

__all__ = ["main"]


def _serve(settings: EdgeSettings) -> int:
    # Imported here: ``keys`` commands start fast without the web stack.
    import uvicorn  # noqa: PLC0415

    from switchboard.edge.app import create_app  # noqa: PLC0415

    configure_logging("edge", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.edge_host,
        port=settings.edge_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.nats_drain_timeout),
    )
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
