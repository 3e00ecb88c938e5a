"""The edge's own usage events against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig
from tests.support.servers import start_nats

from switchboard.common import subjects
from switchboard.common.bus import NATS, nats_connection
from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import GatewayTimeoutError, UpstreamError
from switchboard.common.events import UsageRecorded
from switchboard.common.settings import NatsSettings
from switchboard.common.wire import ChatRequest, CompletionStarted, KeyIdentity
from switchboard.edge.usage_events import UsageEvents, gave_up_event


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[NATS]:
    """A connection to a fresh nats-server with JetStream (no usage stream yet)."""
    server = start_nats(tmp_path)
    try:
        async with nats_connection(NatsSettings(nats_url=server.url), name="test") as conn:
            yield conn
    finally:
        server.stop()


async def _create_stream(nc: NATS) -> None:
    await nc.jetstream().add_stream(
        StreamConfig(name=subjects.USAGE_STREAM, subjects=[subjects.USAGE_STREAM_SUBJECTS])
    )


async def _stored(nc: NATS) -> list[tuple[UsageRecorded, str | None]]:
    """Every event in the stream, with its ``Nats-Msg-Id``."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.USAGE_STREAM)
    stored = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.USAGE_STREAM, seq)
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        stored.append((UsageRecorded.model_validate_json(msg.data or b""), msg_id))
    return stored


def _envelope(**request: object) -> ChatRequest:
    now = time.time()
    return ChatRequest(
        request_id="req_" + "a" * 24,
        key=KeyIdentity(key_id="key_1", name="one", owner="team-a", privacy_mode="full"),
        received_at=now - 1.5,
        deadline=now + 60,
        request=ChatCompletionRequest.model_validate(
            {"model": "standard", "messages": [{"role": "user", "content": "secret"}], **request}
        ),
    )


async def _drain(events: UsageEvents, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while events.pending:
        assert time.monotonic() < deadline, "events still pending"
        await asyncio.sleep(0.01)


def test_a_request_no_router_answered_is_an_error_at_no_cost() -> None:
    envelope = _envelope(stream=True, user="end-user", temperature=0.2, max_tokens=9)
    event = gave_up_event(
        envelope,
        UpstreamError("The router stopped responding.", code="router_unresponsive"),
        started=None,
        output=False,
    )
    assert (event.event_id, event.request_id) == (envelope.request_id, envelope.request_id)
    assert (event.key_id, event.key_owner, event.privacy_mode) == ("key_1", "team-a", "full")
    assert (event.status, event.http_status, event.error_type, event.error_code) == (
        "error",
        502,
        "api_error",
        "router_unresponsive",
    )
    assert (event.requested_model, event.served_model, event.provider) == ("standard", None, None)
    assert (event.cost_usd, event.cost_source, event.prompt_tokens) == (0.0, "unknown", 0)
    # The router's copy would carry the same received_at: one ledger sorting key for both.
    assert event.received_at == envelope.received_at
    assert event.latency_ms >= 1500
    assert (event.stream, event.end_user, event.temperature, event.max_tokens) == (
        True,
        "end-user",
        0.2,
        9,
    )
    assert event.input_messages is None and event.output_choices is None  # never any text


def test_an_answer_under_way_names_its_model_and_has_an_unknown_cost() -> None:
    started = CompletionStarted(
        request_id="req_" + "a" * 24,
        served_model="openai/gpt-4o-mini",
        provider="openrouter",
        fallbacks=1,
        retries=2,
    )
    event = gave_up_event(
        _envelope(), GatewayTimeoutError("The deadline passed."), started=started, output=True
    )
    assert (event.served_model, event.provider, event.fallbacks, event.retries) == (
        "openai/gpt-4o-mini",
        "openrouter",
        1,
        2,
    )
    assert (event.http_status, event.error_code, event.cost_usd) == (504, "timeout", None)


async def test_events_are_stored_once_with_their_request_id_as_msg_id(nc: NATS) -> None:
    await _create_stream(nc)
    events = UsageEvents(nc.jetstream())
    event = gave_up_event(
        _envelope(), UpstreamError("gone", code="router_unresponsive"), started=None, output=False
    )
    events.publish(event)
    events.publish(event)  # a second publication of one request: JetStream drops it
    await _drain(events)
    [(stored, msg_id)] = await _stored(nc)
    assert stored == event
    assert msg_id == event.request_id


async def test_a_failed_publish_is_retried_until_jetstream_takes_it(nc: NATS) -> None:
    events = UsageEvents(nc.jetstream(), publish_timeout=0.2)
    event = gave_up_event(
        _envelope(), UpstreamError("gone", code="no_router"), started=None, output=False
    )
    events.publish(event)  # no stream yet: every attempt fails
    await asyncio.sleep(0.5)
    assert events.pending == 1
    await _create_stream(nc)
    await _drain(events)
    assert [stored for stored, _ in await _stored(nc)] == [event]


async def test_events_are_given_up_after_retry_for_and_at_stop(nc: NATS) -> None:
    event = gave_up_event(
        _envelope(), UpstreamError("gone", code="no_router"), started=None, output=False
    )
    events = UsageEvents(nc.jetstream(), publish_timeout=0.1, retry_for=0.3)
    events.publish(event)
    await _drain(events)  # given up (logged as usage.dropped), not stuck
    stopping = UsageEvents(nc.jetstream(), publish_timeout=0.1, retry_for=60, max_pending=1)
    stopping.publish(event)
    stopping.publish(event)  # over max_pending: given up at once
    assert stopping.pending == 1
    await stopping.stop(timeout=0.2)
    assert stopping.pending == 0
