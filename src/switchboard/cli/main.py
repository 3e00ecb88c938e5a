"""``switchboard``: run the local stack and manage it.

switchboard up [--port 8080] [--host 127.0.0.1] [--data-dir DIR]
switchboard keys create --name NAME [--json]
switchboard keys revoke KEY_ID [--json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from switchboard.cli.stack import Stack, StackError
from switchboard.cli.state import StackState, data_dir

__all__ = ["main"]


def _up(args: argparse.Namespace) -> int:
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
    elif "REDIS_URL" not in env:
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
        "keys", help="manage API keys: create --name N | revoke ID [--json]", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchboard`` command."""
    args, rest = _parser().parse_known_args(argv)
    if args.command == "keys":
        return _keys(args, rest)
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
