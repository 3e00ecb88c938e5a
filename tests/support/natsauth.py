"""nats-server with the production chart's users and subject permissions.

The users and their ``publish``/``subscribe`` allow lists are read from
``deploy/helm/switchboard/ci/production-values.yaml`` (``nats.config.merge.authorization``),
never copied, so a test of them tests what is deployed. Passwords are the test's own (the
chart reads them from a Secret). One more user, ``operator``, with no restriction, is the
test's own way in (to read the ledger, to look at streams); it is not in the chart.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.client import Client as Nats

from tests.support.servers import ManagedProcess, free_port, nats_server_binary, wait_for_port

__all__ = [
    "OPERATOR",
    "PRODUCTION_VALUES",
    "AuthorizedNats",
    "handshake",
    "production_permissions",
    "start_authorized_nats",
]

PRODUCTION_VALUES = (
    Path(__file__).resolve().parents[2] / "deploy/helm/switchboard/ci/production-values.yaml"
)
OPERATOR = "operator"


def production_permissions(values: Path = PRODUCTION_VALUES) -> dict[str, dict[str, Any]]:
    """Each NATS user of the chart's production values → its ``permissions`` block."""
    document = yaml.safe_load(values.read_text())
    users = document["nats"]["config"]["merge"]["authorization"]["users"]
    return {user["user"]: user["permissions"] for user in users}


@dataclass
class AuthorizedNats:
    """A running nats-server with one password per user."""

    server: ManagedProcess
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        """The ``NATS_URL`` a service running as ``user`` is given (credentials inside)."""
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.server.port}"

    async def connect(
        self, user: str, *, errors: list[str] | None = None, password: str | None = None
    ) -> Nats:
        """A client as ``user``; server errors (permission violations) go to ``errors``."""

        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        return await nats.connect(
            f"nats://127.0.0.1:{self.server.port}",
            user=user,
            password=password if password is not None else self.passwords[user],
            error_cb=on_error,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )

    def run(self, user: str, action: Callable[[Nats], Awaitable[Any]]) -> Any:
        """``action`` on a connection as ``user`` of its own (blocking)."""

        async def run() -> Any:
            nc = await self.connect(user)
            try:
                return await action(nc)
            finally:
                await nc.close()

        return asyncio.run(run())


def handshake(port: int, user: str | None, password: str | None) -> str:
    """The server's answer to ``CONNECT`` (with these credentials, if any) and ``PING``:
    ``PONG`` when let in, ``-ERR 'Authorization Violation'`` when not.

    Spoken on a bare socket: a client library that fails to connect leaves its own
    transports for the garbage collector, which warnings-as-errors would report.
    """
    options: dict[str, Any] = {"verbose": False, "pedantic": False, "protocol": 1}
    if user is not None:
        options.update(user=user, **{"pass": password})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        info = reader.readline()
        if not info.startswith(b"INFO "):
            raise AssertionError(info)
        sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        return reader.readline().decode().strip()


def start_authorized_nats(workdir: Path, permissions: dict[str, dict[str, Any]]) -> AuthorizedNats:
    """nats-server (JetStream under ``workdir``) with ``permissions``' users and an
    unrestricted ``operator``; each user gets a random password."""
    passwords = {user: secrets.token_urlsafe(24) for user in [*permissions, OPERATOR]}
    users = [
        {"user": user, "password": passwords[user], "permissions": allowed}
        for user, allowed in permissions.items()
    ]
    users.append({"user": OPERATOR, "password": passwords[OPERATOR]})
    port = free_port()
    # nats-server's configuration format is a superset of JSON.
    config = {
        "listen": f"127.0.0.1:{port}",
        "jetstream": {"store_dir": str(workdir / "jetstream")},
        "authorization": {"users": users},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "nats.conf"
    config_file.write_text(json.dumps(config, indent=2))
    log_path = workdir / "nats.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config_file)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = ManagedProcess("nats", proc, port, log_path)
    try:
        wait_for_port(port, proc=proc)
    except BaseException:
        server.kill()
        raise
    return AuthorizedNats(server, passwords)
