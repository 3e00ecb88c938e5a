"""The stack under test: real nats-server, valkey-server, router and edge processes, and
the OpenRouter emulator on a real socket. Started once per session; each test gets a
clean emulator (no faults, no recorded calls)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.support.openrouter_emulator import EmulatorServer
from tests.support.servers import ManagedProcess, start_nats, start_valkey
from tests.support.services import create_key, start_edge, start_router, wait_healthy

UPSTREAM_SECRET = "sk-or-test-upstream-secret"
ROUTING_CONFIG = """
# No retries and breakers that never open: the error tests look at single upstream
# attempts, and one session-wide router must not carry a test's failures into the next.
retry: {max_retries: 0}
breaker: {failure_threshold: 1000000, min_calls: 1000000}
tiers:
  standard: [anthropic/claude-3.5-haiku, openai/gpt-4o-mini]
  budget: [meta-llama/llama-3.1-8b-instruct]
"""


@dataclass
class Stack:
    """Handles on every part of the running stack."""

    workdir: Path
    nats: ManagedProcess
    valkey: ManagedProcess
    upstream: EmulatorServer
    router: ManagedProcess
    edge: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"{self.edge.url}/v1"

    def logs(self) -> str:
        return self.edge.log() + self.router.log()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One full stack for the session, stopped (gracefully) at the end."""
    workdir = tmp_path_factory.mktemp("stack")
    nats = start_nats(workdir / "nats")
    valkey = start_valkey(workdir / "valkey")
    upstream = EmulatorServer().start()
    routing = workdir / "routing.yaml"
    routing.write_text(ROUTING_CONFIG)
    router = start_router(
        workdir,
        nats_url=nats.url,
        upstream=upstream.base_url,
        ROUTER_KEEPALIVE_INTERVAL="0.5",
        SWITCHBOARD_CONFIG=str(routing),
        ROUTER_CATALOG_CACHE=str(workdir / "router-catalog.json"),
    )
    edge = start_edge(workdir, nats_url=nats.url, redis_url=valkey.url, EDGE_IDLE_TIMEOUT="3")
    running = Stack(workdir, nats, valkey, upstream, router, edge)
    try:
        wait_healthy(edge)
        yield running
    finally:
        edge.stop()
        router.stop()
        upstream.stop()
        valkey.stop()
        nats.stop()


@pytest.fixture
def upstream(stack: Stack) -> Iterator[EmulatorServer]:
    """The emulator, with no faults and no recorded calls."""
    stack.upstream.clear()
    yield stack.upstream
    stack.upstream.clear()


@pytest.fixture(scope="session")
def api_key(stack: Stack) -> dict[str, str]:
    """A key minted by the edge's own command (``id`` and plaintext ``key``)."""
    return create_key(stack.valkey.url)


@pytest.fixture
def client(stack: Stack, api_key: dict[str, str], upstream: EmulatorServer) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the edge; no retries, so every error shows."""
    return openai.OpenAI(base_url=stack.base_url, api_key=api_key["key"], max_retries=0, timeout=30)
