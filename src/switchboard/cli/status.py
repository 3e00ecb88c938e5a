"""``switchboard status [--json]``: every service of the running local stack, its pid, ports
and readiness (each service's own ``GET /health/ready`` on its ops port).

Exit 0 when every service is ready, 1 when one is not, 2 when no stack runs here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from switchboard.cli.state import StackState, data_dir, pid_alive

__all__ = ["add_status_parser", "collect_status", "run_status"]

_TIMEOUT = 3.0


def add_status_parser(commands: Any) -> None:
    """Register ``status`` on the ``switchboard`` command's subparsers."""
    parser = commands.add_parser(
        "status",
        help="the running stack's services: pid, ports, readiness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _readiness(client: httpx.Client, port: int) -> tuple[str, dict[str, Any] | None]:
    try:
        response = client.get(f"http://127.0.0.1:{port}/health/ready")
    except httpx.HTTPError as exc:
        return "unreachable", {"error": type(exc).__name__}
    try:
        report: dict[str, Any] = response.json()
    except ValueError:
        return f"http {response.status_code}", None
    return str(report.get("status", response.status_code)), report.get("components")


def collect_status(state: StackState) -> list[dict[str, Any]]:
    """One row per service of ``state``: name, pid, alive, ports, status, ready, components."""
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=_TIMEOUT) as client:
        for name, pid in state.services.items():
            ports = state.ports.get(name, {})
            alive = pid_alive(pid)
            components: dict[str, Any] | None = None
            if not alive:
                status = "exited"
            elif "ops" in ports:
                status, components = _readiness(client, ports["ops"])
            else:
                status = "running"  # nats, valkey: no ops listener; alive is all we know
            rows.append(
                {
                    "name": name,
                    "pid": pid,
                    "alive": alive,
                    "ports": ports,
                    "status": status,
                    "ready": alive and status in ("ok", "degraded", "running"),
                    "components": components,
                }
            )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("SERVICE", "PID", "API", "OPS/METRICS", "STATUS")
    lines = [header]
    for row in rows:
        ports = row["ports"]
        api = ports.get("api") or ports.get("client")
        lines.append(
            (
                row["name"],
                str(row["pid"]),
                str(api) if api else "-",
                str(ports["ops"]) if "ops" in ports else "-",
                row["status"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def run_status(args: argparse.Namespace) -> int:
    """Print the status of the stack running from the data dir."""
    directory = data_dir(args.data_dir)
    state = StackState.load(directory)
    if state is None:
        message = f"no stack runs from {directory} (start one with `switchboard up`)"
        if args.json:
            print(json.dumps({"running": False, "data_dir": str(directory), "services": []}))
        else:
            print(message)
        return 2
    rows = collect_status(state)
    ready = all(row["ready"] for row in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "running": True,
                    "ready": ready,
                    "pid": state.pid,
                    "base_url": state.base_url,
                    "services": rows,
                },
                indent=2,
            )
        )
    else:
        print(f"Switchboard at {state.base_url} (supervisor pid {state.pid})")
        print(_table(rows))
    return 0 if ready else 1
