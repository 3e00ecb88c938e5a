"""``switchboard-edge``: serve the HTTP API, or manage API keys.

switchboard-edge [serve]
switchboard-edge keys create --name NAME [--json]
switchboard-edge keys revoke KEY_ID [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import uvicorn
from redis.asyncio import Redis

from switchboard.common.logs import configure_logging
from switchboard.edge.app import create_app
from switchboard.edge.keys import KeyStore
from switchboard.edge.settings import EdgeSettings

__all__ = ["main"]


def _serve(settings: EdgeSettings) -> int:
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


async def _keys(settings: EdgeSettings, args: argparse.Namespace) -> int:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        store = KeyStore(redis)
        if args.action == "create":
            created = await store.create(args.name)
            if args.json:
                print(created.model_dump_json())
            else:
                print(f"id:   {created.id}\nname: {created.name}\nkey:  {created.key}")
                print("Store the key now: it is not shown again.", file=sys.stderr)
            return 0
        record = await store.revoke(args.key_id)
        if record is None:
            print(f"no key with id {args.key_id}", file=sys.stderr)
            return 1
        print(record.model_dump_json() if args.json else f"revoked {record.id} ({record.name})")
        return 0
    finally:
        await redis.aclose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard-edge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the HTTP API (the default)")
    keys = commands.add_parser("keys", help="manage API keys (REDIS_URL)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="mint a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the edge process."""
    args = _parser().parse_args(argv)
    settings = EdgeSettings()
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
