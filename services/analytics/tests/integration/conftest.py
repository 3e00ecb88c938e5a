"""Real infrastructure for analytics integration tests: nats-server with JetStream, the
PostHog capture endpoint the real SDK posts to, and the analytics service in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerInfo, StreamConfig
from tests.support.posthog_capture import CaptureServer, PostHogCapture
from tests.support.servers import ManagedProcess, start_nats

from switchboard.analytics.service import AnalyticsService
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.common import subjects
from switchboard.common.events import UsageRecorded

from ..conftest import POSTHOG_KEY, SettingsFactory


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    """The PostHog capture endpoint on loopback, requiring the test project key."""
    with CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)) as server:
        yield server


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    """An isolated nats-server with JetStream on a free loopback port."""
    server = start_nats(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: ManagedProcess) -> AsyncIterator[Client]:
    """The test's own NATS connection, playing the router (and metering)."""
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


async def create_usage_stream(nc: Client) -> None:
    """The usage stream as the router creates it."""
    await nc.jetstream().add_stream(
        StreamConfig(
            name=subjects.USAGE_STREAM,
            subjects=[subjects.USAGE_STREAM_SUBJECTS],
            duplicate_window=120.0,
        )
    )


@pytest.fixture
async def usage_stream(nc: Client) -> str:
    """The usage stream, created."""
    await create_usage_stream(nc)
    return subjects.USAGE_STREAM


Publish = Callable[..., Any]


@pytest.fixture
def publish(nc: Client) -> Publish:
    """Publish usage events as the router does (``Nats-Msg-Id`` = the event id)."""

    async def publish_(
        *events: UsageRecorded, payload: bytes | None = None, msg_id: str | None = None
    ) -> None:
        js = nc.jetstream()
        if payload is not None:
            await js.publish(
                subjects.USAGE_RECORDED, payload, headers={"Nats-Msg-Id": msg_id or "raw"}
            )
        for event in events:
            data = event.model_dump_json(exclude_none=True).encode()
            await js.publish(subjects.USAGE_RECORDED, data, headers={"Nats-Msg-Id": event.event_id})

    return publish_


@pytest.fixture
def analytics_settings(
    make_settings: SettingsFactory, nats_server: ManagedProcess, capture: CaptureServer
) -> Callable[..., AnalyticsSettings]:
    """Settings for analytics on this test's NATS and capture endpoint; keywords override."""

    def make(**overrides: Any) -> AnalyticsSettings:
        return make_settings(
            **{"nats_url": nats_server.url, "posthog_host": capture.host, **overrides}
        )

    return make


class RunningAnalytics:
    """An analytics service running in a task, stopped like SIGTERM would."""

    def __init__(self, service: AnalyticsService) -> None:
        self.service = service
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop_event))

    async def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@pytest.fixture
async def start_analytics(
    analytics_settings: Callable[..., AnalyticsSettings],
) -> AsyncIterator[Callable[..., Any]]:
    """Start analytics in-process (``await start_analytics(**settings)``); stopped at teardown."""
    async with AsyncExitStack() as stack:
        running: list[RunningAnalytics] = []

        async def start(**overrides: Any) -> RunningAnalytics:
            service = AnalyticsService(
                analytics_settings(**overrides), instance_id="analytics-test"
            )
            instance = RunningAnalytics(service)
            running.append(instance)
            return instance

        async def stop_all() -> None:
            for instance in running:
                if not instance.task.done():
                    await instance.stop()
                instance.task.result()  # a crashed service fails the test

        stack.push_async_callback(stop_all)
        yield start


async def consumer_info(nc: Client, durable: str = "switchboard-analytics") -> ConsumerInfo:
    """The durable consumer's state (pending, ack floor, redeliveries)."""
    return await nc.jetstream().consumer_info(subjects.USAGE_STREAM, durable)


async def eventually(
    check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
