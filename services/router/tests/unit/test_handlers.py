"""Handler edge cases that a real NATS server makes hard to provoke."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.errors import ConnectionClosedError

from switchboard.common.events import UsageRecorded
from switchboard.common.wire import RouterHealth, RouterPong
from switchboard.router.breaker import Breakers
from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import Routing, RoutingConfig
from switchboard.router.handlers import Handlers
from switchboard.router.inflight import InFlight
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import UpstreamUnreachableError


@dataclass
class FakeMsg:
    subject: str
    data: bytes = b""
    reply: str = ""
    fail: bool = False
    responses: list[bytes] = field(default_factory=list)

    async def respond(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionClosedError
        self.responses.append(data)


class FakeUsage:
    def __init__(self) -> None:
        self.events: list[UsageRecorded] = []
        self.backlog = 0
        self.dropped = 0
        self.healthy = True

    def record(self, event: UsageRecorded) -> None:
        self.events.append(event)


def handlers(fake_nats: Any, make_services: Any, *, models: Any = None) -> Handlers:
    async def no_models() -> dict[str, Any]:
        if models is None:
            raise UpstreamUnreachableError("down")
        result: dict[str, Any] = models
        return result

    client = OpenRouterClient(None, _provider(), connect_timeout=1, read_timeout=1)  # type: ignore[arg-type]
    services = make_services(client)
    routing = Routing(
        RoutingConfig.model_validate({"tiers": {"budget": ["vendor/a"]}}),
        {"openrouter": _provider()},
        "openrouter",
    )
    return Handlers(
        fake_nats,
        services=services,
        inflight=InFlight(1),
        catalog=ModelCatalog(no_models, cache_path=None, refresh_interval=60, fetch_timeout=1),
        routing=routing,
        usage=FakeUsage(),  # type: ignore[arg-type]
        instance_id="router-x",
    )


def _provider() -> Any:
    from switchboard.router.config import Provider

    return Provider("openrouter", "http://127.0.0.1:9/api/v1")


async def test_requests_without_a_reply_subject_are_dropped(
    fake_nats: Any, make_services: Any
) -> None:
    h = handlers(fake_nats, make_services)
    await h.chat_request(FakeMsg("switchboard.v1.chat.request", b'{"request_id": "r1"}'))  # type: ignore[arg-type]
    ping = FakeMsg("switchboard.v1.router.ping")
    await h.ping(ping)  # type: ignore[arg-type]
    assert ping.responses == []
    assert fake_nats.published == []


async def test_a_failed_reply_is_logged_not_raised(fake_nats: Any, make_services: Any) -> None:
    h = handlers(fake_nats, make_services, models={"data": [{"id": "vendor/a", "created": 5}]})
    await h.ping(FakeMsg("switchboard.v1.router.ping", reply="inbox", fail=True))  # type: ignore[arg-type]
    models = FakeMsg("switchboard.v1.models.list", reply="inbox")
    await h.models_list(models)  # type: ignore[arg-type]
    listing = orjson.loads(models.responses[0][1:])
    assert listing["data"] == [
        {"id": "vendor/a", "object": "model", "created": 5, "owned_by": "vendor"},
        {"id": "budget", "object": "model", "created": 0, "owned_by": "switchboard"},
        {"id": "auto", "object": "model", "created": 0, "owned_by": "switchboard"},
    ]
    await asyncio.sleep(0)


async def test_models_list_without_catalog_is_an_error(fake_nats: Any, make_services: Any) -> None:
    h = handlers(fake_nats, make_services)
    models = FakeMsg("switchboard.v1.models.list", reply="inbox")
    await h.models_list(models)  # type: ignore[arg-type]
    assert models.responses[0].startswith(b"e")
    assert b"catalog_unavailable" in models.responses[0]


async def test_ping_and_health_report_degraded_without_catalog(
    fake_nats: Any, make_services: Any
) -> None:
    h = handlers(fake_nats, make_services)
    ping = FakeMsg("switchboard.v1.router.ping", reply="inbox")
    await h.ping(ping)  # type: ignore[arg-type]
    assert RouterPong.model_validate_json(ping.responses[0]).status == "degraded"
    health = FakeMsg("switchboard.v1.router.health", reply="inbox")
    await h.health(health)  # type: ignore[arg-type]
    report = RouterHealth.model_validate_json(health.responses[0])
    assert (report.status, report.catalog, report.breakers) == ("degraded", "empty", [])


async def test_bad_envelope_is_answered_and_recorded(fake_nats: Any, make_services: Any) -> None:
    h = handlers(fake_nats, make_services)
    usage: FakeUsage = h._usage  # type: ignore[assignment]
    bad = b'{"v": 1, "request_id": "req_1", "key": {"key_id": "k1"}, "request": {"model": 3}}'
    msg = FakeMsg("switchboard.v1.chat.request", bad, reply="inbox")
    await h.chat_request(msg)  # type: ignore[arg-type]
    assert msg.responses[0].startswith(b"e")
    event = usage.events[0]
    assert (event.request_id, event.key_id, event.status, event.http_status) == (
        "req_1",
        "k1",
        "error",
        500,
    )
    await h.chat_request(FakeMsg("x", b"not json", reply="inbox"))  # type: ignore[arg-type]
    assert len(usage.events) == 1  # no request id, nothing to record


def test_unused_breakers_fixture_is_harmless() -> None:
    assert Breakers(RoutingConfig().breaker).snapshots() == []


def test_models_only_the_config_knows_are_listed_under_their_provider() -> None:
    from switchboard.router.listing import model_list

    async def none() -> dict[str, Any]:
        return {}

    config = RoutingConfig.model_validate(
        {
            "providers": {"local": {"base_url": "http://local/v1"}},
            "models": {"local/llama": {"providers": ["local"]}},
            "aliases": {"local": ["local/llama"]},
        }
    )
    routing = Routing(config, {"openrouter": _provider()}, "openrouter")
    catalog = ModelCatalog(none, cache_path=None, refresh_interval=1, fetch_timeout=1)
    listing = orjson.loads(model_list(catalog, routing))["data"]
    assert listing == [
        {"id": "local/llama", "object": "model", "created": 0, "owned_by": "local"},
        {"id": "local", "object": "model", "created": 0, "owned_by": "switchboard"},
    ]
