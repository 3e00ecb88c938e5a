"""The usage publisher's failure handling: retries, stream re-creation, bounded queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

from switchboard.common.events import UsageRecorded
from switchboard.router.publisher import WINDOW, UsagePublisher, usage_stream_config

EventFactory = Callable[[str], UsageRecorded]


class Ack:
    def __init__(self, duplicate: bool) -> None:
        self.duplicate = duplicate


class StubJetStream:
    """Scripted JetStream: each publish takes the next outcome (an exception or None)."""

    def __init__(self, outcomes: list[BaseException | None], *, exists: bool = False) -> None:
        self.outcomes = outcomes
        self.exists = exists
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.added = self.updated = 0
        self.stream_down = False
        self.sent_async = 0

    async def add_stream(self, _config: Any) -> None:
        if self.stream_down:
            raise ServiceUnavailableError
        self.added += 1
        if self.exists:
            raise BadRequestError

    async def update_stream(self, _config: Any) -> None:
        self.updated += 1

    async def publish_async(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Ack]:
        """Sent at once; the ack (or failure) later, as JetStream's async publish."""
        self.sent_async += 1
        return asyncio.ensure_future(self.publish(subject, payload, headers))

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Ack:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        self.published.append((subject, payload, headers))
        return Ack(duplicate=len(self.published) > 1 and headers == self.published[0][2])


class StubNats:
    def __init__(self, js: StubJetStream) -> None:
        self.js = js

    def jetstream(self, **_: Any) -> StubJetStream:
        return self.js


async def test_failures_are_retried_until_published(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = StubJetStream([NatsTimeoutError(), NoStreamResponseError(), None, None])
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.start()
    publisher.record(usage_event("r1"))
    publisher.record(usage_event("r1"))  # a duplicate: JetStream says so, it is not an error
    async with asyncio.timeout(5):
        while publisher.backlog:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await publisher.close(grace=1)
    assert [headers for _, _, headers in js.published] == [{"Nats-Msg-Id": "r1"}] * 2
    assert js.added == 2, "the stream is created again when JetStream says it is missing"
    assert (publisher.published, publisher.dropped, publisher.healthy) == (2, 0, True)


async def test_an_existing_stream_is_updated_to_the_settings(make_settings: Any) -> None:
    js = StubJetStream([], exists=True)
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.start()
    await publisher.close(grace=1)
    assert (js.added, js.updated) == (1, 1)


async def test_overflow_and_shutdown_drop_loudly(
    make_settings: Any, capsys: pytest.CaptureFixture[str], usage_event: EventFactory
) -> None:
    js = StubJetStream([NatsTimeoutError()] * 1000)
    js.stream_down = True
    settings = make_settings(router_usage_queue_size=2)
    publisher = UsagePublisher(StubNats(js), settings)  # type: ignore[arg-type]
    await publisher.start()
    assert not publisher.healthy
    for number in range(3):
        publisher.record(usage_event(f"r{number}"))
    assert (publisher.backlog, publisher.dropped) == (2, 1)
    await publisher.close(grace=0.05)
    assert (publisher.backlog, publisher.dropped) == (0, 3)
    out = capsys.readouterr().out
    assert out.count("usage.dropped") == 3
    assert "queue_full" in out
    assert "shutdown" in out


class GatedJetStream(StubJetStream):
    """Publishes wait at a gate; records how many were awaiting their ack at once."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = asyncio.Event()
        self.waiting = self.most_waiting = 0

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Ack:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().publish(subject, payload, headers)


async def test_publishes_overlap_up_to_the_window(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = GatedJetStream()
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.start()
    for number in range(WINDOW * 2):
        publisher.record(usage_event(f"r{number}"))
    async with asyncio.timeout(5):
        while js.waiting < WINDOW:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert (js.most_waiting, publisher.backlog) == (WINDOW, WINDOW * 2)
    js.gate.set()
    await publisher.close(grace=5)
    assert (publisher.published, publisher.dropped) == (WINDOW * 2, 0)
    assert len({headers["Nats-Msg-Id"] for _, _, headers in js.published}) == WINDOW * 2


async def test_an_overflow_drops_a_waiting_event_never_one_being_published(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = GatedJetStream()
    settings = make_settings(router_usage_queue_size=1)
    publisher = UsagePublisher(StubNats(js), settings)  # type: ignore[arg-type]
    await publisher.start()
    publisher.record(usage_event("sent"))
    async with asyncio.timeout(5):
        while not js.waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # No await between the two: both wait in the queue, which holds one, so the oldest
    # waiting event goes; the one awaiting its ack is not touched.
    publisher.record(usage_event("first"))
    publisher.record(usage_event("second"))
    assert (publisher.dropped, publisher.backlog) == (1, 2)
    js.gate.set()
    await publisher.close(grace=5)
    assert {headers["Nats-Msg-Id"] for _, _, headers in js.published} == {"sent", "second"}


async def test_a_failing_publish_narrows_the_window_to_one(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = StubJetStream([NatsTimeoutError()] * 3)
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.start()
    publisher.record(usage_event("r1"))
    async with asyncio.timeout(5):
        while js.outcomes:  # noqa: ASYNC110 - three failures in a row
            await asyncio.sleep(0.01)
        assert not publisher.healthy
        for number in range(2, 6):
            publisher.record(usage_event(f"r{number}"))
        while publisher.backlog:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert publisher.healthy
    await publisher.close(grace=1)
    assert sorted(headers["Nats-Msg-Id"] for _, _, headers in js.published) == [
        f"r{number}" for number in range(1, 6)
    ]


class LaggingJetStream(StubJetStream):
    """The first publish times out late, after later ones were acknowledged."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = asyncio.Event()
        self.calls = 0

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Ack:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
            raise NatsTimeoutError
        return await super().publish(subject, payload, headers)


async def test_a_timeout_beside_successes_is_lag_not_an_outage(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = LaggingJetStream()
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.start()
    for number in range(3):
        publisher.record(usage_event(f"r{number}"))
    async with asyncio.timeout(5):
        while len(js.published) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        js.gate.set()
        while publisher.backlog:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert publisher.healthy, "no backoff: the window stayed open"
    await publisher.close(grace=1)
    assert sorted(headers["Nats-Msg-Id"] for _, _, headers in js.published) == ["r0", "r1", "r2"]


async def test_publish_sends_at_once_while_publishing_works_else_queues(
    make_settings: Any, usage_event: EventFactory
) -> None:
    js = StubJetStream([NatsTimeoutError(), NatsTimeoutError()])
    publisher = UsagePublisher(StubNats(js), make_settings())  # type: ignore[arg-type]
    await publisher.publish(usage_event("early"))  # not started: queued
    assert (js.sent_async, publisher.backlog) == (0, 1)
    await publisher.start()
    async with asyncio.timeout(5):
        while not publisher.published:  # noqa: ASYNC110 - two failures, then sent
            await asyncio.sleep(0.01)
        await publisher.publish(usage_event("now"))
        while publisher.backlog:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert js.sent_async == 1, "sent on the connection at once, acked in the background"
    await publisher.close(grace=1)
    assert sorted(headers["Nats-Msg-Id"] for _, _, headers in js.published) == ["early", "now"]


def test_stream_config_from_settings(make_settings: Any) -> None:
    config = usage_stream_config(make_settings(router_usage_max_age=60, router_usage_replicas=3))
    assert config.name == "SWITCHBOARD_USAGE"
    assert config.subjects == ["switchboard.v1.usage.>"]
    assert (config.max_age, config.num_replicas, config.duplicate_window) == (60, 3, 300)
