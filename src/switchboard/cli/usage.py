"""``switchboard usage erase --key ID | --user USER [--json]``: erase usage (GDPR/CCPA).

Asks metering (over NATS: the running stack's, else ``NATS_URL``) to delete every row of
one API key, or of one end user (the ``user`` field of requests), from the usage ledger
and its rollups, and prints how many rows went.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from switchboard.cli.metering import (
    METERING_ERASE,
    MeteringCallError,
    ask_metering,
    metering_nats_url,
)

__all__ = ["add_usage_parser", "run_usage"]


def add_usage_parser(commands: Any) -> None:
    """Register ``usage erase`` on the ``switchboard`` command's subparsers."""
    usage = commands.add_parser("usage", help="the usage ledger: erase --key ID | --user USER")
    actions = usage.add_subparsers(dest="usage_command", required=True)
    erase = actions.add_parser(
        "erase",
        help="delete one key's or one end user's usage (GDPR/CCPA erasure)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", dest="key_id", help="API key id (key_…)")
    who.add_argument("--user", dest="end_user", help="end-user id, as sent in `user`")
    erase.add_argument("--json", action="store_true", help="print JSON")
    erase.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")


def _summary(answer: dict[str, Any]) -> str:
    who = f"key {answer['key_id']}" if answer.get("key_id") else f"end user {answer['end_user']}"
    return (
        f"erased {who}: {answer['events']} events ({answer['rows']} rows with copies) from "
        f"usage_events, {answer['rejects']} from usage_rejects; rollup rows affected: "
        f"{answer['daily_rollup_rows']} daily, {answer['hourly_rollup_rows']} hourly"
    )


def run_usage(args: argparse.Namespace) -> int:
    """``switchboard usage erase``: print what was erased; exit 1 with the reason on failure."""
    body = {"key_id": args.key_id} if args.key_id else {"end_user": args.end_user}
    try:
        url = metering_nats_url(getattr(args, "data_dir", None))
        answer = ask_metering(url, METERING_ERASE, body, timeout=args.timeout)
    except MeteringCallError as exc:
        print(f"switchboard usage erase: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(answer).decode() if args.json else _summary(answer))
    return 0
