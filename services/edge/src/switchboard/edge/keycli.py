"""``switchboard-edge keys …``: the key lifecycle from a shell, straight against Redis.

``switchboard keys …`` runs this with the local stack's ``REDIS_URL``. Output is a table
or ``key: value`` lines for people, or the admin API's JSON with ``--json``. A secret is
printed only by ``create`` and ``rotate``, once, on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from switchboard.edge.durations import parse_duration
from switchboard.edge.keymodels import KeyList, KeyPatch, KeySpec, KeyView
from switchboard.edge.keys import KeyChange, KeyRevokedError, KeyStore
from switchboard.edge.redisclient import redis_client
from switchboard.edge.settings import EdgeSettings

__all__ = ["add_key_commands", "run_key_command"]

_NONE = "none"
_COMMAND_REDIS_TIMEOUT = 10.0
"""Seconds a ``keys`` command waits for Redis (at least)."""
_LIMIT_OPTIONS = (
    ("--owner", "owner", str, "who the key is for"),
    ("--rpm", "rpm", int, "requests per minute"),
    ("--tpm", "tpm", int, "tokens per minute"),
    ("--max-concurrent", "max_concurrent", int, "requests in flight at once"),
    ("--budget", "monthly_budget_usd", float, "USD per UTC calendar month"),
    ("--token-quota", "monthly_token_quota", int, "tokens per UTC calendar month"),
    ("--privacy-mode", "privacy_mode", str, "what LLM analytics may see: off, metadata, full"),
)


class UsageError(Exception):
    """A bad option value; printed, exit status 2."""


def _add_policy_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    clear = f" ('{_NONE}' clears it)" if update else ""
    for flag, dest, _, text in _LIMIT_OPTIONS:
        parser.add_argument(flag, dest=dest, metavar="VALUE", help=text + clear)
    parser.add_argument(
        "--models", metavar="LIST", help="comma-separated model ids or globs (openai/*)" + clear
    )
    parser.add_argument(
        "--tiers",
        metavar="LIST",
        help="comma-separated tiers: premium,standard,budget,auto" + clear,
    )
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d, 12h, 3600s" + clear)
    expiry.add_argument(
        "--expires-at", metavar="TIME", help="ISO 8601 time (UTC if no zone) or Unix time" + clear
    )


def add_key_commands(commands: Any) -> None:
    """Add ``keys create|list|show|update|revoke|rotate`` to an argparse sub-command set."""
    keys = commands.add_parser("keys", help="manage API keys (REDIS_URL)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="mint a key; its secret is printed once")
    create.add_argument("--name", required=True)
    _add_policy_options(create, update=False)
    actions.add_parser("list", help="every key, oldest first")
    show = actions.add_parser("show", help="one key, with this month's usage")
    show.add_argument("key_id")
    update = actions.add_parser("update", help="change a key's metadata or limits")
    update.add_argument("key_id")
    update.add_argument("--name")
    _add_policy_options(update, update=True)
    revoke = actions.add_parser("revoke", help="revoke a key: every secret of it stops working")
    revoke.add_argument("key_id")
    rotate = actions.add_parser("rotate", help="new secret; the old one works for --grace")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace",
        metavar="DURATION",
        help="how long the old secret keeps working (default EDGE_ROTATE_GRACE, 3600s)",
    )
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")


# ----------------------------------------------------------------------------- parsing


def _expiry(args: argparse.Namespace) -> tuple[bool, float | None]:
    """Whether an expiry option was given, and its Unix time (``None``: clear it)."""
    if args.expires_in is not None:
        if args.expires_in == _NONE:
            return True, None
        return True, time.time() + _duration(args.expires_in)
    if args.expires_at is not None:
        if args.expires_at == _NONE:
            return True, None
        try:
            return True, float(args.expires_at)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(args.expires_at)
        except ValueError as exc:
            raise UsageError(f"--expires-at: not a time: {args.expires_at!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return True, moment.timestamp()
    return False, None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _list(text: str) -> list[str]:
    return [] if text == _NONE else [item.strip() for item in text.split(",") if item.strip()]


def _policy_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The policy options that were given, converted; ``none`` becomes ``None``."""
    fields: dict[str, Any] = {}
    for flag, dest, convert, _ in _LIMIT_OPTIONS:
        value = getattr(args, dest)
        if value is None:
            continue
        if value == _NONE:
            fields[dest] = None
            continue
        try:
            fields[dest] = convert(value)
        except ValueError as exc:
            raise UsageError(f"{flag}: not a valid value: {value!r}") from exc
    if args.models is not None:
        fields["allowed_models"] = _list(args.models)
    if args.tiers is not None:
        fields["allowed_tiers"] = _list(args.tiers)
    given, expires_at = _expiry(args)
    if given:
        fields["expires_at"] = expires_at
    return fields


# ----------------------------------------------------------------------------- output


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _details(view: KeyView) -> list[tuple[str, str]]:
    rows = [
        ("id", view.id),
        ("name", view.name),
        ("owner", view.owner or "-"),
        ("state", view.state),
        ("created", _when(view.created_at)),
        ("expires", _when(view.expires_at)),
        ("models", ",".join(view.allowed_models) or "any"),
        ("tiers", ",".join(view.allowed_tiers) or ("any" if not view.allowed_models else "-")),
        ("rpm", _num(view.rpm)),
        ("tpm", _num(view.tpm)),
        ("max concurrent", _num(view.max_concurrent)),
        (
            "monthly budget",
            "-" if view.monthly_budget_usd is None else f"${view.monthly_budget_usd:g}",
        ),
        ("monthly tokens", _num(view.monthly_token_quota)),
        ("privacy mode", view.privacy_mode or "default"),
    ]
    if view.revoked_at is not None:
        rows.append(("revoked", _when(view.revoked_at)))
    if view.rotated_at is not None:
        rows.append(("rotated", _when(view.rotated_at)))
    if view.usage is not None:
        rows.append((f"spent {view.usage.month}", f"${view.usage.cost_usd:.6f}"))
        rows.append((f"tokens {view.usage.month}", str(view.usage.tokens)))
    return rows


def _print_details(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows) + 1
    for name, value in rows:
        print(f"{name + ':':<{width}} {value}")


def _print_table(views: list[KeyView]) -> None:
    header = (
        "ID",
        "NAME",
        "OWNER",
        "STATE",
        "CREATED",
        "EXPIRES",
        "RPM",
        "TPM",
        "CONC",
        "BUDGET",
        "TOKENS/MO",
        "MODELS",
    )
    rows = [header] + [
        (
            view.id,
            view.name,
            view.owner or "-",
            view.state,
            _when(view.created_at),
            _when(view.expires_at),
            _num(view.rpm),
            _num(view.tpm),
            _num(view.max_concurrent),
            "-" if view.monthly_budget_usd is None else f"${view.monthly_budget_usd:g}",
            _num(view.monthly_token_quota),
            ",".join([*view.allowed_models, *view.allowed_tiers]) or "any",
        )
        for view in views
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _emit(model: BaseModel, args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    if args.json:
        print(model.model_dump_json())
    else:
        _print_details(rows)


def _report_propagation(change: KeyChange) -> None:
    if change.confirmed < change.edges:
        print(
            f"warning: {change.edges - change.confirmed} of {change.edges} running edges did "
            "not confirm in time; they apply the change within EDGE_KEY_CACHE_TTL",
            file=sys.stderr,
        )
    else:
        print(f"applied by {change.edges} running edge(s)", file=sys.stderr)


# ----------------------------------------------------------------------------- actions


async def _create(store: KeyStore, _: EdgeSettings, args: argparse.Namespace) -> int:
    created = await store.create(KeySpec(name=args.name, **_policy_fields(args)))
    _emit(created, args, [*_details(created), ("key", created.key)])
    if not args.json:
        print("Store the key now: it is not shown again.", file=sys.stderr)
    return 0


async def _list_keys(store: KeyStore, _: EdgeSettings, args: argparse.Namespace) -> int:
    views = [record.view() for record in await store.list()]
    if args.json:
        print(KeyList(data=views).model_dump_json())
    else:
        _print_table(views)
    return 0


async def _show(store: KeyStore, _: EdgeSettings, args: argparse.Namespace) -> int:
    record = await store.get(args.key_id)
    if record is None:
        print(f"no key with id {args.key_id}", file=sys.stderr)
        return 1
    view = record.view(await store.usage(record.id))
    _emit(view, args, _details(view))
    return 0


async def _modify(store: KeyStore, settings: EdgeSettings, args: argparse.Namespace) -> int:
    change: KeyChange | None
    if args.action == "update":
        fields = _policy_fields(args)
        if args.name is not None:
            fields["name"] = args.name
        change = await store.update(args.key_id, KeyPatch(**fields))
    elif args.action == "revoke":
        change = await store.revoke(args.key_id)
    else:
        grace = settings.edge_rotate_grace if args.grace is None else _duration(args.grace)
        change = await store.rotate(args.key_id, grace)
    if change is None:
        print(f"no key with id {args.key_id}", file=sys.stderr)
        return 1
    if change.created is not None:
        created = change.created
        rows = [*_details(created), ("key", created.key)]
        rows.append(("old secret until", _when(created.previous_secret_expires_at)))
        _emit(created, args, rows)
        if not args.json:
            print("Store the key now: it is not shown again.", file=sys.stderr)
    elif args.action == "revoke" and not args.json:
        print(f"revoked {change.record.id} ({change.record.name})")
    else:
        view = change.record.view()
        _emit(view, args, _details(view))
    _report_propagation(change)
    return 0


_ACTIONS = {
    "create": _create,
    "list": _list_keys,
    "show": _show,
    "update": _modify,
    "revoke": _modify,
    "rotate": _modify,
}


async def run_key_command(settings: EdgeSettings, args: argparse.Namespace) -> int:
    """Run one ``keys`` action against ``REDIS_URL``; returns the exit status."""
    # EDGE_REDIS_TIMEOUT is tuned for the request path; an operator's command may wait
    # longer for a busy Redis rather than fail.
    patient = max(settings.edge_redis_timeout, _COMMAND_REDIS_TIMEOUT)
    redis = redis_client(settings.model_copy(update={"edge_redis_timeout": patient}))
    try:
        store = KeyStore(redis, invalidation_wait=settings.edge_invalidation_wait)
        return await _ACTIONS[args.action](store, settings, args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except KeyRevokedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as exc:
        print(f"error: cannot reach Redis (REDIS_URL): {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
