"""The production chart's NATS users, enforced by a real nats-server: every service runs
as its own user with exactly the chart's publish/subscribe allow lists (read from
``ci/production-values.yaml``), serves real traffic — a cache hit included, whose usage
event the edge publishes itself — into an exact ledger and PostHog; and what a user may
not do (read chat requests, forge usage events, delete streams) fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as Nats

from switchboard.common import subjects
from tests.support.clickhouse import embedded_target
from tests.support.metering import metering_pong, sql_over_nats, start_metering
from tests.support.natsauth import (
    OPERATOR,
    AuthorizedNats,
    handshake,
    production_permissions,
    start_authorized_nats,
)
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.posthog_capture import CaptureServer, PostHogCapture
from tests.support.servers import ManagedProcess, start_valkey
from tests.support.services import (
    create_key,
    start_analytics,
    start_edge,
    start_router,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

POSTHOG_KEY = "phc_natsPermissionsProjectKey0123456789"
MODEL = "openai/gpt-4o-mini"
SERVICES = ("edge", "router", "metering", "analytics")


@dataclass
class Deployment:
    """Every service running as its chart user."""

    nats: AuthorizedNats
    processes: dict[str, ManagedProcess]
    capture: CaptureServer
    key: dict[str, str]

    @property
    def edge_url(self) -> str:
        return self.processes["edge"].url

    def sql(self, query: str) -> list[list[Any]]:
        async def ask(nc: Nats) -> list[list[Any]]:
            return await sql_over_nats(nc, query)

        rows: list[list[Any]] = self.nats.run(OPERATOR, ask)
        return rows

    def logs(self) -> str:
        return "".join(process.log() for process in self.processes.values())


def _wait(condition: Any, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """nats-server with the chart's users; router, metering, analytics and edge as them."""
    workdir = tmp_path_factory.mktemp("nats-permissions")
    permissions = production_permissions()
    assert set(permissions) == set(SERVICES)
    bus = start_authorized_nats(workdir / "nats", permissions)
    valkey = start_valkey(workdir / "valkey")
    upstream = EmulatorServer().start()
    capture = CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)).start()
    processes: dict[str, ManagedProcess] = {}
    try:
        processes["router"] = start_router(
            workdir / "router", nats_url=bus.url("router"), upstream=upstream.base_url
        )
        processes["metering"] = start_metering(
            workdir / "metering",
            nats_url=bus.url("metering"),
            clickhouse_url=embedded_target(workdir / "clickhouse").url,
        )
        processes["analytics"] = start_analytics(
            workdir / "analytics",
            nats_url=bus.url("analytics"),
            posthog_host=capture.host,
            posthog_api_key=POSTHOG_KEY,
            ANALYTICS_FETCH_WAIT="0.2",
        )
        processes["edge"] = start_edge(
            workdir / "edge", nats_url=bus.url("edge"), redis_url=valkey.url
        )
        wait_healthy(processes["edge"])

        async def metering_ready(nc: Nats) -> bool:
            pong = await metering_pong(nc)
            return bool(pong and pong["ready"] and pong["consuming"])

        _wait(lambda: bus.run(OPERATOR, metering_ready), "metering consuming")
        _wait(lambda: "analytics.consuming" in processes["analytics"].log(), "analytics")
        yield Deployment(bus, processes, capture, create_key(valkey.url, "nats-users"))
    finally:
        for process in reversed(processes.values()):
            process.stop()
        capture.stop()
        upstream.stop()
        valkey.stop()
        bus.server.stop()


def _chat(deployment: Deployment, **fields: Any) -> httpx.Response:
    return httpx.post(
        f"{deployment.edge_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields},
        headers={"authorization": f"Bearer {deployment.key['key']}"},
        timeout=30,
    )


def test_every_service_works_as_its_own_user(deployment: Deployment) -> None:
    answers = [
        _chat(deployment),
        _chat(deployment, stream=True),
        _chat(deployment, temperature=0, messages=[{"role": "user", "content": "cached"}]),
        _chat(deployment, temperature=0, messages=[{"role": "user", "content": "cached"}]),
    ]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert [a.headers["x-switchboard-cache"] for a in answers] == [
        "bypass",
        "bypass",
        "miss",
        "hit",
    ]
    headers = {"authorization": f"Bearer {deployment.key['key']}"}
    models = httpx.get(f"{deployment.edge_url}/v1/models", headers=headers, timeout=30)
    assert models.status_code == 200, models.text

    request_ids = sorted(a.headers["x-request-id"] for a in answers)
    query = "SELECT request_id, cache_hit FROM usage_events FINAL ORDER BY request_id"
    _wait(lambda: len(deployment.sql(query)) >= 4, "four rows in the ledger")
    rows = deployment.sql(query)
    assert [row[0] for row in rows] == request_ids  # exactly these, once each
    hit = answers[3].headers["x-request-id"]
    assert {row[0] for row in rows if row[1]} == {hit}

    usage = httpx.get(f"{deployment.edge_url}/v1/usage", headers=headers, timeout=30)
    assert usage.status_code == 200, usage.text
    assert (usage.json()["totals"]["requests"], usage.json()["totals"]["cache_hits"]) == (4, 1)
    deployment.capture.wait_for_events(4, timeout=30)
    traces = {e["properties"]["$ai_trace_id"] for e in deployment.capture.unique_events().values()}
    assert traces == set(request_ids)
    assert "permissions violation" not in deployment.logs().lower()


async def _refused(bus: AuthorizedNats, user: str, action: str, subject: str) -> list[str]:
    errors: list[str] = []
    nc = await bus.connect(user, errors=errors)
    try:
        if action == "subscribe":
            await nc.subscribe(subject)
        else:
            await nc.publish(subject, b"{}")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return errors


@pytest.mark.parametrize(
    ("user", "action", "subject"),
    [
        ("edge", "subscribe", subjects.CHAT_REQUEST),  # read other people's prompts
        ("edge", "subscribe", subjects.USAGE_RECORDED),
        ("edge", "publish", f"$JS.API.STREAM.DELETE.{subjects.USAGE_STREAM}"),
        ("analytics", "publish", subjects.USAGE_RECORDED),  # forge usage
        ("analytics", "subscribe", "switchboard.v1.metering.>"),
        ("metering", "publish", subjects.CHAT_REQUEST),  # spend on someone's key
        ("metering", "publish", f"$JS.API.CONSUMER.DELETE.{subjects.USAGE_STREAM}.x"),
        ("router", "publish", subjects.CHAT_REQUEST),
        ("router", "subscribe", "switchboard.v1.metering.>"),
    ],
)
def test_what_a_user_may_not_do_fails(
    deployment: Deployment, user: str, action: str, subject: str
) -> None:
    async def stored(nc: Nats) -> int:
        info = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
        return int(info.state.messages)

    before = deployment.nats.run(OPERATOR, stored)
    errors = asyncio.run(_refused(deployment.nats, user, action, subject))
    assert any("permissions violation" in error.lower() for error in errors), errors
    assert deployment.nats.run(OPERATOR, stored) == before


@pytest.mark.parametrize(
    "credentials", [("edge", "wrong"), ("nobody", "x"), ("edge", ""), (None, None)]
)
def test_wrong_or_no_credentials_are_refused(
    deployment: Deployment, credentials: tuple[str | None, str | None]
) -> None:
    user, password = credentials
    port = deployment.nats.server.port
    assert handshake(port, user, password) == "-ERR 'Authorization Violation'"
    assert handshake(port, "edge", deployment.nats.passwords["edge"]) == "PONG"


def test_no_password_or_key_in_any_log(deployment: Deployment) -> None:
    logs = deployment.logs() + Path(deployment.nats.server.log_path).read_text()
    for secret in (*deployment.nats.passwords.values(), POSTHOG_KEY, deployment.key["key"]):
        assert secret not in logs
