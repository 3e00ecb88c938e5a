"""A stack of its own for the key, limit and hardening tests.

These tests configure edges unlike the session stack (small limits, an admin token,
trusted proxies, HTTPS enforcement, a Redis they restart), so each module starts its own
nats-server, valkey-server, OpenRouter emulator, router and edges, and shares nothing
with other modules' state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.openrouter_emulator import EmulatorServer
from tests.support.servers import ManagedProcess, start_nats, start_valkey
from tests.support.services import start_edge, start_router, wait_healthy

ADMIN_TOKEN = "sb-admin-e2e-token-0123456789abcdef"
MODEL = "openai/gpt-4o-mini"
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def chat_body(content: str = "hello", **fields: Any) -> dict[str, Any]:
    """A small chat request."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


@dataclass
class GatedStack:
    """Handles on a module's own stack."""

    workdir: Path
    nats: ManagedProcess
    valkey: ManagedProcess
    upstream: EmulatorServer
    router: ManagedProcess
    edge_env: dict[str, str]
    edges: list[ManagedProcess] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    """Every plaintext key this stack minted, for the log check."""

    def start_edge(self, **env: str) -> ManagedProcess:
        """One more edge on the same NATS and Redis (``env`` adds to the stack's)."""
        workdir = self.workdir / f"edge{len(self.edges)}"
        edge = start_edge(
            workdir, nats_url=self.nats.url, redis_url=self.valkey.url, **{**self.edge_env, **env}
        )
        self.edges.append(edge)
        wait_healthy(edge)
        return edge

    def url(self, edge: int = 0) -> str:
        """Base URL of an edge's OpenAI API."""
        return f"{self.edges[edge].url}/v1"

    def admin(
        self,
        method: str,
        path: str = "",
        *,
        edge: int = 0,
        token: str | None = ADMIN_TOKEN,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A call of the admin API."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        return httpx.request(
            method,
            f"{self.edges[edge].url}/admin/keys{path}",
            headers=all_headers,
            timeout=30,
            **kwargs,
        )

    def create_key(self, **spec: Any) -> dict[str, Any]:
        """A key made with the admin API (``spec`` as its JSON body; ``name`` defaults)."""
        response = self.admin("POST", json={"name": "e2e", **spec})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        self.secrets.append(created["key"])
        return created

    def chat(
        self,
        key: str | None,
        body: dict[str, Any] | None = None,
        *,
        edge: int = 0,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """``POST /v1/chat/completions`` (read whole, also when streamed)."""
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["authorization"] = f"Bearer {key}"
        return httpx.post(
            f"{self.url(edge)}/chat/completions",
            json=body if body is not None else chat_body(),
            headers=all_headers,
            timeout=30,
        )

    def switchboard(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``switchboard …`` (the root CLI) against this stack's Redis, outside any stack."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "switchboard.cli.main",
                "--data-dir",
                str(self.workdir / "no-stack"),
                *args,
            ],
            env={**os.environ, "REDIS_URL": self.valkey.url},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def logs(self) -> str:
        """Everything every edge and the router wrote."""
        return "".join(edge.log() for edge in self.edges) + self.router.log()


@contextmanager
def gated_stack(
    workdir: Path, *, edges: int = 1, persistent_redis: bool = False, **edge_env: str
) -> Iterator[GatedStack]:
    """A whole stack with ``edges`` edges configured by ``edge_env``; stopped at the end."""
    nats = start_nats(workdir / "nats")
    valkey = start_valkey(workdir / "valkey", persistent=persistent_redis)
    upstream = EmulatorServer().start()
    router = start_router(
        workdir / "router",
        nats_url=nats.url,
        upstream=upstream.base_url,
        ROUTER_KEEPALIVE_INTERVAL="0.5",
    )
    env = {"EDGE_IDLE_TIMEOUT": "5", "SWITCHBOARD_ADMIN_TOKEN": ADMIN_TOKEN, **edge_env}
    stack = GatedStack(workdir, nats, valkey, upstream, router, env)
    try:
        for _ in range(edges):
            stack.start_edge()
        yield stack
    finally:
        for edge in stack.edges:
            edge.stop()
        router.stop()
        upstream.stop()
        stack.valkey.stop()
        nats.stop()


def poll(condition: Any, *, timeout: float = 5.0, interval: float = 0.01) -> float:
    """Call ``condition()`` until it is true; return the seconds that took."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error object of ``response``, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def sse_events(response: httpx.Response) -> list[Any]:
    """The JSON events of a read SSE body (``[DONE]`` as the string)."""
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
