"""Analytics on a real JetStream with the real SDK posting to the capture endpoint:
exactly one ``$ai_generation`` per usage event, through outages, restarts and privacy modes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError
from tests.support.posthog_capture import CaptureServer
from tests.support.servers import ManagedProcess, start_nats

from switchboard.analytics.generation import event_uuid
from switchboard.common import subjects
from switchboard.common.events import UsageRecorded

from ..conftest import UsageFactory
from ..expected import CONTENT, METADATA, SDK_PROPERTIES
from .conftest import Publish, consumer_info, create_usage_stream, eventually

Start = Callable[..., Any]

SECRET_PROMPT = [
    {
        "role": "user",
        "content": "Mail alice@example.com the card 4111 1111 1111 1111, "
        "key sk-sb-ABCDEFGHIJ0123456789",
    }
]
ANSWER = [{"role": "assistant", "content": "Done, call +44 20 7946 0958 if not."}]


async def settled(nc: Client, durable: str = "switchboard-analytics") -> bool:
    """Every event in the stream delivered to the consumer and acknowledged (or terminated)."""
    try:
        info = await consumer_info(nc, durable)
    except NotFoundError:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


def uuids(*events: UsageRecorded) -> set[str]:
    return {event_uuid(event.event_id) for event in events}


async def test_exactly_one_generation_per_usage_event(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    events = [make_usage(end_user=f"user-{i}") for i in range(20)]
    await start_analytics()
    await publish(*events)
    await publish(*events[:5])  # the router re-publishing: JetStream drops them (Nats-Msg-Id)
    await eventually(lambda: settled(nc))
    await asyncio.sleep(0.3)  # nothing else trickles in
    received = capture.events
    assert len(received) == 20
    assert {e["uuid"] for e in received} == uuids(*events)
    by_uuid = {e["uuid"]: e for e in received}
    for event in events:
        sent = by_uuid[event_uuid(event.event_id)]
        assert sent["event"] == "$ai_generation"
        assert sent["distinct_id"] == event.end_user
        assert set(sent["properties"]) == METADATA | SDK_PROPERTIES
        assert sent["properties"]["$ai_trace_id"] == event.request_id
    info = await consumer_info(nc)
    assert info.num_redelivered == 0
    assert info.config.ack_policy == "explicit"


async def test_a_posthog_outage_leaves_events_in_jetstream_until_it_ends(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    capture.fail(503)
    events = [make_usage() for _ in range(10)]
    await start_analytics()
    await publish(*events)
    await asyncio.to_thread(capture.wait_for_requests, 3)  # several failed tries, with backoff
    info = await consumer_info(nc)
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 0  # nothing acknowledged
    assert info.num_ack_pending + info.num_pending == 10
    assert capture.events == []
    await eventually(lambda: _redelivered(nc))  # JetStream hands them out again and again

    capture.accept()
    await eventually(lambda: settled(nc))
    await asyncio.sleep(0.3)
    # Every event once: failed requests ingested nothing, and each event was acked once accepted.
    assert sorted(e["uuid"] for e in capture.events) == sorted(uuids(*events))


async def test_a_stopped_posthog_is_waited_out_too(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    capture.stop()
    events = [make_usage() for _ in range(5)]
    await start_analytics()
    await publish(*events)
    await eventually(lambda: _redelivered(nc))
    assert (await consumer_info(nc)).ack_floor.stream_seq == 0  # type: ignore[union-attr]

    capture.start()
    await eventually(lambda: settled(nc))
    assert sorted(e["uuid"] for e in capture.events) == sorted(uuids(*events))


async def _redelivered(nc: Client) -> bool:
    return (await consumer_info(nc)).num_redelivered > 0


async def test_posthog_taking_events_but_answering_too_late_dedupes_on_uuid(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    # PostHog ingested the batch, the answer never came: analytics must retry, and the
    # retried events carry the same uuids, which PostHog keeps once.
    capture.hang(ingest=True)
    events = [make_usage() for _ in range(3)]
    await start_analytics(analytics_posthog_timeout=0.3)
    await publish(*events)
    await asyncio.to_thread(capture.wait_for_requests, 2)
    capture.accept()
    await eventually(lambda: settled(nc))
    assert len(capture.events) > 3
    assert set(capture.unique_events()) == uuids(*events)


async def test_sigterm_during_an_outage_loses_nothing(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    capture.fail(503)
    events = [make_usage() for _ in range(5)]
    first = await start_analytics()
    await publish(*events)
    await asyncio.to_thread(capture.wait_for_requests, 2)
    started = asyncio.get_running_loop().time()
    await first.stop()
    assert asyncio.get_running_loop().time() - started < 3
    assert (await consumer_info(nc)).ack_floor.stream_seq == 0  # type: ignore[union-attr]

    capture.accept()
    await start_analytics()  # the durable consumer resumes where the first one left off
    await eventually(lambda: settled(nc), timeout=15)
    assert sorted(e["uuid"] for e in capture.events) == sorted(uuids(*events))


async def test_privacy_modes_end_to_end(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    default = make_usage(input_messages=SECRET_PROMPT, output_choices=ANSWER)
    full = make_usage(privacy_mode="full", input_messages=SECRET_PROMPT, output_choices=ANSWER)
    full_no_text = make_usage(privacy_mode="full")
    off = make_usage(privacy_mode="off", input_messages=SECRET_PROMPT)
    await start_analytics()
    await publish(default, full, full_no_text, off)
    await eventually(lambda: settled(nc))  # "off" is acknowledged too: nothing to send
    received = {e["uuid"]: e for e in capture.events}
    assert set(received) == uuids(default, full, full_no_text)

    metadata_only = received[event_uuid(default.event_id)]["properties"]
    assert set(metadata_only) == METADATA | SDK_PROPERTIES
    assert "alice" not in str(metadata_only)
    assert metadata_only["switchboard_privacy_mode"] == "metadata"

    with_text = received[event_uuid(full.event_id)]["properties"]
    assert set(with_text) == METADATA | CONTENT | SDK_PROPERTIES
    assert with_text["$ai_input"] == [
        {"role": "user", "content": "Mail [email] the card [card], key [secret]"}
    ]
    assert with_text["$ai_output_choices"] == [
        {"role": "assistant", "content": "Done, call [phone] if not."}
    ]

    assert (
        set(received[event_uuid(full_no_text.event_id)]["properties"]) == METADATA | SDK_PROPERTIES
    )


async def test_full_by_default_with_a_size_cap_and_hashed_ids(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    event = make_usage(
        end_user="user-7",
        input_messages=[{"role": "user", "content": "x" * 500}],
        output_choices=[{"role": "assistant", "content": "y" * 500}],
    )
    await start_analytics(
        analytics_privacy_mode="full",
        analytics_max_content_chars=100,
        analytics_hash_distinct_id=True,
        analytics_distinct_id_salt="pepper",
    )
    await publish(event)
    [sent] = await asyncio.to_thread(capture.wait_for_events, 1)
    assert sent["distinct_id"] != "user-7" and len(sent["distinct_id"]) == 64
    assert len(sent["properties"]["$ai_input"][0]["content"]) < 100
    assert sent["properties"]["switchboard_content_truncated"] is True


async def test_an_event_posthog_refuses_is_terminated_and_the_rest_flow(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    events = [make_usage() for _ in range(4)]
    capture.reject(uuids(events[2]))
    await start_analytics()
    await publish(*events)
    await eventually(lambda: settled(nc))
    assert set(capture.unique_events()) == uuids(events[0], events[1], events[3])


async def test_garbage_on_the_subject_is_terminated(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    event = make_usage()
    await start_analytics()
    await publish(payload=b"{not a usage event")
    await publish(event)
    await eventually(lambda: settled(nc))
    assert set(capture.unique_events()) == uuids(event)


async def test_analytics_waits_for_the_stream(
    nc: Client,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    await start_analytics()
    await asyncio.sleep(0.5)  # no stream yet: analytics keeps asking
    await create_usage_stream(nc)
    event = make_usage()
    await publish(event)
    await asyncio.to_thread(capture.wait_for_events, 1)
    assert set(capture.unique_events()) == uuids(event)


async def test_metering_and_analytics_are_independent(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    # Metering's durable consumer exists but metering is down.
    metering = ConsumerConfig(
        durable_name="switchboard-metering", filter_subject=subjects.USAGE_RECORDED
    )
    await nc.jetstream().add_consumer(subjects.USAGE_STREAM, metering)
    events = [make_usage() for _ in range(5)]
    await start_analytics()
    await publish(*events)
    await eventually(lambda: settled(nc))
    assert set(capture.unique_events()) == uuids(*events)
    assert (await consumer_info(nc, "switchboard-metering")).num_pending == 5


async def test_replicas_share_the_work(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    events = [make_usage() for _ in range(30)]
    await start_analytics(analytics_batch_size=5)
    await start_analytics(analytics_batch_size=5)
    await publish(*events)
    await eventually(lambda: settled(nc))
    await asyncio.sleep(0.3)
    assert sorted(e["uuid"] for e in capture.events) == sorted(uuids(*events))


async def test_a_changed_configuration_updates_the_consumer(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    first = await start_analytics(analytics_ack_wait=5)
    await eventually(lambda: _consumer_exists(nc))
    await first.stop()
    await start_analytics(analytics_ack_wait=7, analytics_max_ack_pending=50)
    event = make_usage()
    await publish(event)
    await asyncio.to_thread(capture.wait_for_events, 1)
    info = await consumer_info(nc)
    assert (info.config.ack_wait, info.config.max_ack_pending) == (7, 50)


async def test_a_deleted_consumer_is_created_again(
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    await start_analytics()
    await eventually(lambda: _consumer_exists(nc))
    await nc.jetstream().delete_consumer(subjects.USAGE_STREAM, "switchboard-analytics")
    event = make_usage()
    await publish(event)
    await asyncio.to_thread(capture.wait_for_events, 1, 15)
    assert set(capture.unique_events()) == uuids(event)


async def _consumer_exists(nc: Client) -> bool:
    try:
        await consumer_info(nc)
    except NotFoundError:
        return False
    return True


async def test_a_nats_restart_is_survived(
    tmp_path: Path,
    nats_server: ManagedProcess,
    nc: Client,
    usage_stream: str,
    publish: Publish,
    start_analytics: Start,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    before, after = make_usage(), make_usage()
    analytics = await start_analytics()
    await publish(before)
    await asyncio.to_thread(capture.wait_for_events, 1)
    nats_server.stop()
    await asyncio.sleep(0.5)
    restarted = start_nats(tmp_path, port=nats_server.port)  # same port, same JetStream store
    try:
        await eventually(lambda: nc.is_connected, timeout=15)
        await publish(after)
        await asyncio.to_thread(capture.wait_for_events, 2, 20)
        assert set(capture.unique_events()) == uuids(before, after)
        await analytics.stop()
    finally:
        restarted.stop()
