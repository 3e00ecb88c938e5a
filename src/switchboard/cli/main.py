"""``switchboard``: run the local stack and manage it.

switchboard up [--port 8080] [--host 127.0.0.1] [--data-dir DIR]
switchboard keys create --name NAME [--rpm N] [--tpm N] [--max-concurrent N] [--budget USD]
                        [--token-quota N] [--models LIST] [--tiers LIST] [--expires-in 30d] [--json]
switchboard keys list [--json]
switchboard keys show KEY_ID [--json]
switchboard keys update KEY_ID [same options as create; 'none' clears one] [--json]
switchboard keys revoke KEY_ID [--json]
switchboard keys rotate KEY_ID [--grace 3600s] [--json]
switchboard sql "SELECT ..." [--json]
switchboard usage erase --key KEY_ID | --user USER [--json]
switchboard status [--json]

``keys`` runs ``switchboard-edge keys`` (the edge's own entry point) against the running
stack's Redis, or ``REDIS_URL`` when no stack runs here; ``switchboard keys --help`` lists
every option.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from switchboard.cli.sql import add_sql_parser, run_sql
from switchboard.cli.state import StackState, data_dir
from switchboard.cli.status import add_status_parser, run_status
from switchboard.cli.usage import add_usage_parser, run_usage

__all__ = ["main"]


def _up(args: argparse.Namespace) -> int:
    # Imported here so that ``switchboard keys`` starts without the stack's dependencies.
    from switchboard.cli.stack import Stack, StackError  # noqa: PLC0415

    directory = data_dir(args.data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    running = StackState.load(directory)
    if running is not None:
        print(
            f"a stack already runs from {directory} (pid {running.pid}) at {running.base_url}",
            file=sys.stderr,
        )
        return 1
    upstream = os.environ.get("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")
    print(f"starting Switchboard (data in {directory}, upstream {upstream})", flush=True)
    stack = Stack(directory, host=args.host, port=args.port)
    if stack.analytics:
        host = os.environ.get("POSTHOG_HOST") or "https://us.i.posthog.com"
        mode = os.environ.get("ANALYTICS_PRIVACY_MODE") or "metadata"
        print(
            f"analytics: sending LLM analytics to PostHog at {host} (privacy mode {mode})",
            flush=True,
        )
    else:
        print("analytics: off (set POSTHOG_API_KEY to send LLM analytics to PostHog)", flush=True)
    try:
        state = stack.start()
    except (StackError, OSError) as exc:
        stack.stop()
        print(f"could not start: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        stack.stop()
        raise
    state.save(directory)
    print(f"Switchboard is up: {state.base_url}", flush=True)
    print("create a key with: uv run switchboard keys create --name NAME", flush=True)
    try:
        return stack.watch()
    finally:
        StackState.remove(directory)
        print("Switchboard stopped", flush=True)


def _keys(args: argparse.Namespace, rest: list[str]) -> int:
    """Delegate to the edge's own key commands, pointed at the running stack's Redis."""
    env = dict(os.environ)
    state = StackState.load(data_dir(args.data_dir))
    if state is not None:
        env["REDIS_URL"] = state.redis_url
    elif "REDIS_URL" not in env and not {"-h", "--help"} & set(rest):
        print(
            "no running stack found (start one with `switchboard up`) and REDIS_URL is not set",
            file=sys.stderr,
        )
        return 1
    argv = [sys.executable, "-m", "switchboard.edge", "keys", *rest]
    return subprocess.run(argv, env=env, check=False).returncode  # noqa: S603 - fixed program


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Switchboard LLM gateway")
    parser.add_argument("--data-dir", help="state directory (SWITCHBOARD_DATA_DIR, .switchboard)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--port", type=int, default=8080, help="edge port (default 8080)")
    up.add_argument("--host", default="127.0.0.1", help="edge address (default 127.0.0.1)")
    commands.add_parser(
        "keys",
        help="manage API keys: create | list | show | update | revoke | rotate (--help: all)",
        add_help=False,
    )
    add_sql_parser(commands)
    add_usage_parser(commands)
    add_status_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchboard`` command."""
    args, rest = _parser().parse_known_args(argv)
    if args.command == "keys":
        return _keys(args, rest)
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "sql":
        return run_sql(args)
    if args.command == "usage":
        return run_usage(args)
    if args.command == "status":
        return run_status(args)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
