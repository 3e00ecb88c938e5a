"""The sink with the real ``posthog`` SDK against the capture endpoint: what counts as accepted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from posthog import Posthog
from tests.support.posthog_capture import CaptureServer

from switchboard.analytics.generation import Capture, CapturePolicy, build_capture
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.analytics.sink import Outcome, PostHogSink

from ..conftest import POSTHOG_KEY, SettingsFactory, UsageFactory
from ..expected import SDK_PROPERTIES


@pytest.fixture
async def make_sink(
    make_settings: SettingsFactory, capture: CaptureServer
) -> AsyncIterator[Callable[..., PostHogSink]]:
    """Sinks posting to the capture endpoint; closed at teardown."""
    sinks: list[PostHogSink] = []

    def make(*, client_factory: Any = Posthog, **overrides: Any) -> PostHogSink:
        settings: AnalyticsSettings = make_settings(posthog_host=capture.host, **overrides)
        sink = PostHogSink(settings, client_factory=client_factory)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def captures(make_usage: UsageFactory, count: int, **fields: Any) -> list[Capture]:
    made = [build_capture(make_usage(**fields), CapturePolicy()) for _ in range(count)]
    return [c for c in made if c is not None]


async def test_a_batch_is_accepted_in_one_request(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    batch = captures(make_usage, 3, end_user="user-1")
    outcomes = await make_sink().send(batch)
    assert outcomes == {c.uuid: Outcome.ACCEPTED for c in batch}
    [request] = capture.requests
    assert (request.path, request.status, request.api_key, request.compressed) == (
        "/batch/",
        200,
        POSTHOG_KEY,
        True,
    )
    received = {event["uuid"]: event for event in capture.events}
    assert set(received) == {c.uuid for c in batch}
    for sent in batch:
        event = received[sent.uuid]
        assert event["event"] == "$ai_generation"
        assert event["distinct_id"] == "user-1"
        assert set(event["properties"]) == set(sent.properties) | SDK_PROPERTIES
        assert {k: event["properties"][k] for k in sent.properties} == sent.properties
        assert event["timestamp"] == sent.timestamp.isoformat()


async def test_without_gzip(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    batch = captures(make_usage, 1)
    assert await make_sink(analytics_gzip=False).send(batch) == {batch[0].uuid: Outcome.ACCEPTED}
    assert capture.requests[0].compressed is False


async def test_nothing_to_send(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer
) -> None:
    assert await make_sink().send([]) == {}
    assert capture.requests == []


async def test_an_unavailable_posthog_means_retry(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    capture.fail(503)
    batch = captures(make_usage, 2)
    sink = make_sink()
    assert await sink.send(batch) == {c.uuid: Outcome.RETRY for c in batch}
    assert capture.events == []
    # One attempt per upload: retries are JetStream's.
    assert [r.status for r in capture.requests] == [503]
    capture.accept()
    assert await sink.send(batch) == {c.uuid: Outcome.ACCEPTED for c in batch}
    assert len(capture.unique_events()) == 2


@pytest.mark.parametrize("status", [500, 502, 408, 429])
async def test_transient_statuses_mean_retry(
    status: int,
    make_sink: Callable[..., PostHogSink],
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    capture.fail(status)
    batch = captures(make_usage, 1)
    assert await make_sink().send(batch) == {batch[0].uuid: Outcome.RETRY}


async def test_a_refused_connection_means_retry(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    sink = make_sink()
    capture.stop()
    batch = captures(make_usage, 2)
    assert await sink.send(batch) == {c.uuid: Outcome.RETRY for c in batch}
    capture.start()
    assert await sink.send(batch) == {c.uuid: Outcome.ACCEPTED for c in batch}


async def test_a_hanging_posthog_times_out_into_retry(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    capture.hang()
    batch = captures(make_usage, 1)
    started = time.monotonic()
    assert await make_sink(analytics_posthog_timeout=0.5).send(batch) == {
        batch[0].uuid: Outcome.RETRY
    }
    assert 0.4 < time.monotonic() - started < 3
    assert capture.events == []


async def test_a_wrong_project_key_means_retry(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    batch = captures(make_usage, 1)
    assert await make_sink(posthog_api_key="phc_wrong").send(batch) == {
        batch[0].uuid: Outcome.RETRY
    }
    assert capture.requests[0].status == 401


async def test_an_event_posthog_refuses_is_isolated(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    batch = captures(make_usage, 4)
    bad = {batch[1].uuid, batch[3].uuid}
    capture.reject(bad)
    outcomes = await make_sink().send(batch)
    assert outcomes == {
        c.uuid: Outcome.REJECTED if c.uuid in bad else Outcome.ACCEPTED for c in batch
    }
    assert set(capture.unique_events()) == {batch[0].uuid, batch[2].uuid}
    # The batch, then each suspect alone.
    assert [len(r.events) for r in capture.requests] == [4, 1, 1, 1, 1]


async def test_a_lone_refused_event_is_rejected_at_once(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    batch = captures(make_usage, 1)
    capture.reject({batch[0].uuid})
    assert await make_sink().send(batch) == {batch[0].uuid: Outcome.REJECTED}
    assert len(capture.requests) == 1


async def test_an_event_the_sdk_does_not_take_means_retry(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    def refusing_client(*args: Any, **kwargs: Any) -> Posthog:
        return Posthog(*args, **{**kwargs, "disabled": True})

    batch = captures(make_usage, 1)
    assert await make_sink(client_factory=refusing_client).send(batch) == {
        batch[0].uuid: Outcome.RETRY
    }
    assert capture.requests == []


async def test_a_dead_sdk_worker_is_replaced(
    make_sink: Callable[..., PostHogSink], capture: CaptureServer, make_usage: UsageFactory
) -> None:
    sink = make_sink()
    client = sink._client
    for worker in client.consumers or []:
        worker.pause()
        worker.join(5)
    batch = captures(make_usage, 2)
    assert await sink.send(batch) == {c.uuid: Outcome.ACCEPTED for c in batch}
    assert sink._client is not client
    assert len(capture.unique_events()) == 2
