"""``GET /v1/usage`` against a real metering process over a real NATS: a key sees its own
usage only, the admin token names any key, bad parameters are 400, no metering is 503, and
the route is in the OpenAPI schema. Only this route is mounted: the rest of the edge is
replaced by a stand-in for authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from nats.aio.client import Client as Nats
from pydantic import SecretStr
from tests.support.clickhouse import embedded_target
from tests.support.metering import (
    create_usage_stream,
    eventually,
    metering_pong,
    publish_usage,
    start_metering,
    usage_event,
)
from tests.support.servers import ManagedProcess, start_nats

from switchboard.common import subjects
from switchboard.common.errors import AuthenticationError
from switchboard.common.metering import UsageReport
from switchboard.common.wire import KeyIdentity
from switchboard.edge.errors import exception_handlers
from switchboard.edge.routes.usage import get_usage

ADMIN_TOKEN = "sb-admin-test-token"
KEYS = {"sk-sb-alpha": "key_alpha", "sk-sb-beta": "key_beta"}


class StandInGate:
    """Authenticates the two test keys, as the edge's gate would."""

    def client_ip(self, peer: str | None, headers: Any) -> str:  # noqa: ARG002
        return peer or "unknown"

    async def authenticate(self, authorization: str | None, ip: str) -> KeyIdentity:  # noqa: ARG002
        secret = (authorization or "").removeprefix("Bearer ").strip()
        if secret not in KEYS:
            raise AuthenticationError("Incorrect API key provided.")
        return KeyIdentity(key_id=KEYS[secret], name=KEYS[secret])


@dataclass
class StandInSettings:
    switchboard_admin_token: SecretStr | None


@dataclass
class StandInServices:
    settings: StandInSettings
    gate: StandInGate
    nc: Nats


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """nats-server with JetStream for this module."""
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metering(
    nats_server: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A metering process on chdb, with a few days of usage for two keys in its ledger."""
    workdir = tmp_path_factory.mktemp("metering")
    process = start_metering(
        workdir,
        nats_url=nats_server.url,
        clickhouse_url=embedded_target(workdir / "clickhouse").url,
    )
    try:
        yield process
    finally:
        process.stop()


async def _seed(nc: Nats) -> None:
    if (await nc.jetstream().streams_info()) and await _stored(nc) > 0:
        return
    await create_usage_stream(nc)
    now = datetime.now(UTC)
    events = [usage_event(key_id="key_alpha", at=now.timestamp()) for _ in range(3)]
    events.append(
        usage_event(
            key_id="key_alpha",
            at=(now - timedelta(days=1)).timestamp(),
            served_model="m/other",
            cost_usd=1.0,
        )
    )
    events.append(usage_event(key_id="key_beta", cost_usd=50.0))
    await publish_usage(nc, events)
    await publish_usage(nc, events[:2], msg_id="")  # duplicates reach the ledger, once

    async def written() -> bool:
        pong = await metering_pong(nc)
        return pong is not None and pong["events_written"] >= 5

    await eventually(written, within=30, what="usage written")

    async def settled() -> bool:
        info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, "switchboard-metering")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(settled, within=30, what="all acknowledged")


async def _stored(nc: Nats) -> int:
    info = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
    return int(info.state.messages)


@pytest.fixture
async def client(
    nats_server: ManagedProcess, metering: ManagedProcess
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The usage route alone, on a real NATS connection, with metering answering."""
    nc = await nats.connect(nats_server.url)

    async def ready() -> bool:
        pong = await metering_pong(nc)
        return pong is not None and pong["ready"]

    await eventually(ready, within=30, what="metering ready")
    try:
        await _seed(nc)
    finally:
        await nc.close()
    app = _app(nats_server.url, SecretStr(ADMIN_TOKEN))
    async with AsyncTestClient(app) as test_client:
        yield test_client


def _app(nats_url: str, admin_token: SecretStr | None) -> Litestar:
    """The route alone; like the edge's lifespan, NATS is connected on the app's loop."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        nc = await nats.connect(nats_url)
        app.state.services = StandInServices(StandInSettings(admin_token), StandInGate(), nc)
        try:
            yield
        finally:
            await nc.close()

    return Litestar(
        route_handlers=[get_usage], exception_handlers=exception_handlers(), lifespan=[lifespan]
    )


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_key_reads_its_own_usage(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/v1/usage", headers=_auth("sk-sb-alpha"))
    assert response.status_code == 200, response.text
    report = UsageReport.model_validate(response.json())
    assert report.key_id == "key_alpha"
    assert report.totals.requests == 4  # duplicates counted once
    assert report.totals.cost_usd == pytest.approx(1.0 + 3 * 0.000123)
    assert [m.model for m in report.by_model] == ["m/other", "openai/gpt-4o-mini"]
    assert len(report.by_day) == 2
    assert (report.end_date - report.start_date).days == 29


async def test_a_key_never_sees_another_keys_usage(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get(
        "/v1/usage", params={"key_id": "key_alpha"}, headers=_auth("sk-sb-beta")
    )
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "key_id"
    own = await client.get("/v1/usage", headers=_auth("sk-sb-beta"))
    assert own.json()["totals"]["requests"] == 1
    assert own.json()["totals"]["cost_usd"] == 50.0


async def test_the_admin_token_names_any_key(client: AsyncTestClient[Litestar]) -> None:
    today = datetime.now(UTC).date()
    response = await client.get(
        "/v1/usage",
        params={"key_id": "key_beta", "start_date": str(today), "end_date": str(today)},
        headers=_auth(ADMIN_TOKEN),
    )
    assert response.status_code == 200
    assert response.json()["totals"]["requests"] == 1
    missing = await client.get("/v1/usage", headers=_auth(ADMIN_TOKEN))
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_date": "2025-03-01", "end_date": "2025-02-01"}, "end_date"),
        ({"start_date": "2020-01-01", "end_date": "2025-01-01"}, "start_date"),
        ({"start_date": "1900-01-01", "end_date": "1900-01-02"}, "start_date"),
        ({"end_date": "0001-01-02"}, "end_date"),
    ],
)
async def test_bad_dates_are_400(
    client: AsyncTestClient[Litestar], params: dict[str, str], param: str
) -> None:
    response = await client.get("/v1/usage", params=params, headers=_auth("sk-sb-alpha"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_a_date_that_is_no_date_is_400(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get(
        "/v1/usage", params={"start_date": "yesterday"}, headers=_auth("sk-sb-alpha")
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_no_key_is_401(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/v1/usage", headers=_auth("sk-sb-wrong"))
    assert response.status_code == 401


async def test_documented_in_openapi(client: AsyncTestClient[Litestar]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/v1/usage"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"start_date", "end_date", "key_id"}
    assert "UsageReport" in str(operation["responses"]["200"])


async def test_no_metering_is_503(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "lonely")
    try:
        async with AsyncTestClient(_app(server.url, None)) as test_client:
            response = await test_client.get("/v1/usage", headers=_auth("sk-sb-alpha"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "metering_unavailable"
    finally:
        server.stop()
