"""Guards every test in the repository shares."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import pytest

# Services started by tests run no ops listener unless the test gives them an OPS_PORT:
# they would all take the default port 9464.
os.environ.setdefault("OPS_PORT", "0")

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and self.family in (socket.AF_INET, socket.AF_INET6):
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise PermissionError(f"tests may only connect to loopback, not {host!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that would reach a real OpenRouter, PostHog or any other remote host."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
