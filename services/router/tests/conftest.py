"""Fixtures shared by the router's unit and integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from switchboard.common.events import UsageRecorded
from switchboard.common.wire import ChatRequest, Frame, KeyIdentity, decode_frame
from switchboard.router.breaker import Breakers
from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import Routing, RoutingConfig
from switchboard.router.exchange import ChatServices
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import UpstreamUnreachableError
from switchboard.router.routing import Planner
from switchboard.router.settings import RouterSettings

SettingsFactory = Callable[..., RouterSettings]
EnvelopeFactory = Callable[..., ChatRequest]


class FakeNats:
    """Stands in for a NATS connection where only ``publish`` is used; records frames."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append((subject, payload))

    @property
    def frames(self) -> list[Frame]:
        return [decode_frame(payload) for _, payload in self.published]

    @property
    def kinds(self) -> str:
        """The frame kinds in order, e.g. ``"ccct"``."""
        return "".join(frame.kind.value.decode() for frame in self.frames)


def _usage_event(request_id: str) -> UsageRecorded:
    now = time.time()
    return UsageRecorded(
        event_id=request_id,
        request_id=request_id,
        key_id="k",
        requested_model="m",
        status="ok",
        http_status=200,
        latency_ms=1,
        received_at=now,
        started_at=now,
        finished_at=now,
    )


@pytest.fixture
def usage_event() -> Callable[[str], UsageRecorded]:
    """A minimal usage event (status ok) with the given request id."""
    return _usage_event


@pytest.fixture
def fake_nats() -> FakeNats:
    """A publish-only NATS stand-in that records every frame."""
    return FakeNats()


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Router settings with test-friendly defaults; keyword arguments override them."""

    def make(**overrides: Any) -> RouterSettings:
        values: dict[str, Any] = {
            "router_catalog_cache": tmp_path / "catalog.json",
            "switchboard_config": None,
            "openrouter_base_url": "http://127.0.0.1:9/api/v1",
            "openrouter_api_key": "sk-or-v1-test-secret-key",
            "router_keepalive_interval": 5.0,
            "router_upstream_connect_timeout": 2.0,
            "router_upstream_read_timeout": 5.0,
            **overrides,
        }
        return RouterSettings(**values)

    return make


@pytest.fixture
def make_envelope() -> EnvelopeFactory:
    """A chat request envelope; ``request`` fields and envelope fields as keywords."""

    def make(
        *,
        stream: bool | None = None,
        deadline_in: float = 30.0,
        request_id: str | None = None,
        **request: Any,
    ) -> ChatRequest:
        body: dict[str, Any] = {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "Hello there"}],
            **request,
        }
        if stream is not None:
            body["stream"] = stream
        now = time.time()
        return ChatRequest.model_validate(
            {
                "request_id": request_id or f"req{uuid.uuid4().hex}",
                "key": KeyIdentity(key_id="key_test", name="tests"),
                "received_at": now,
                "deadline": now + deadline_in,
                "request": body,
            }
        )

    return make


ServicesFactory = Callable[..., ChatServices]


@pytest.fixture
def make_services() -> ServicesFactory:
    """The :class:`ChatServices` of one exchange around ``client`` (the default provider).

    No retries and no catalog unless given: each upstream call is one attempt, as the
    exchange tests expect; ``recorded`` collects the usage events.
    """

    def make(
        client: OpenRouterClient,
        *,
        slot: Any = None,
        keepalive_interval: float = 5.0,
        config: dict[str, Any] | None = None,
        catalog: ModelCatalog | None = None,
        recorded: list[UsageRecorded] | None = None,
    ) -> ChatServices:
        raw = {"retry": {"max_retries": 0}, **(config or {})}
        routing = Routing(
            RoutingConfig.model_validate(raw),
            {"openrouter": client.provider},
            "openrouter",
        )
        breakers = Breakers(routing.config.breaker)

        async def no_models() -> dict[str, Any]:
            raise UpstreamUnreachableError("no catalog in this test")

        catalog = catalog or ModelCatalog(
            no_models, cache_path=None, refresh_interval=60, fetch_timeout=1
        )
        sink = recorded if recorded is not None else []

        async def record_usage(event: UsageRecorded) -> None:
            sink.append(event)

        return ChatServices(
            planner=Planner(routing, catalog, breakers),
            clients={"openrouter": client},
            breakers=breakers,
            retry=routing.config.retry,
            record_usage=record_usage,
            slot=slot or asyncio.Semaphore(1),
            keepalive_interval=keepalive_interval,
        )

    return make
