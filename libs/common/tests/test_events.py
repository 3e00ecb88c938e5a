"""The usage event schema and the wire additions of the routing issue."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from switchboard.common import subjects
from switchboard.common.events import AttemptRecord, UsageRecorded
from switchboard.common.wire import (
    ChatRequest,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    FrameKind,
    KeyIdentity,
    decode_frame,
    encode_frame,
)


def test_usage_event_round_trips_and_ignores_unknown_fields() -> None:
    event = UsageRecorded(
        event_id="req_1",
        request_id="req_1",
        key_id="key_1",
        requested_model="standard",
        served_model="openai/gpt-4o-mini",
        tier="standard",
        status="ok",
        http_status=200,
        latency_ms=12,
        attempts=[AttemptRecord(model="m", provider="openrouter", status="ok", duration_ms=3)],
        received_at=1.0,
        started_at=1.5,
        finished_at=2.0,
    )
    data = orjson.loads(event.model_dump_json())
    assert data["v"] == 1
    assert (data["cache_hit"], data["cost_saved_usd"], data["cost_source"]) == (
        False,
        None,
        "unknown",
    )
    data["a_field_from_the_future"] = True
    assert UsageRecorded.model_validate(data) == event


def test_started_frame_and_new_terminal_fields() -> None:
    started = CompletionStarted(request_id="r", served_model="m", provider="p", fallbacks=1)
    frame = decode_frame(encode_frame(FrameKind.STARTED, started))
    assert frame.kind is FrameKind.STARTED
    assert CompletionStarted.model_validate_json(frame.body) == started
    # An old edge's view of the terminal frames: the new fields are optional.
    assert (
        CompletionFinished.model_validate_json(
            b'{"v":1,"request_id":"r","served_model":"m","provider":"p"}'
        ).fallbacks
        == 0
    )
    failed = CompletionFailed.model_validate_json(
        b'{"v":1,"status":502,"error":{"message":"x","type":"api_error"}}'
    )
    assert (failed.model, failed.fallbacks, failed.retries) == (None, 0, 0)


def test_key_restrictions_and_started_capability_are_optional() -> None:
    assert not KeyIdentity(key_id="k").restricted
    assert KeyIdentity(key_id="k", allowed_tiers=[]).restricted
    assert KeyIdentity(key_id="k", allowed_models=["openai/*"]).restricted
    envelope = ChatRequest.model_validate(
        {
            "request_id": "r",
            "key": {"key_id": "k"},
            "received_at": 1,
            "deadline": 2,
            "request": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
        }
    )
    assert envelope.accepts_started is False
    assert "accepts_started" not in orjson.loads(envelope.encode())


def test_usage_subjects() -> None:
    assert subjects.USAGE_RECORDED.startswith(subjects.USAGE_STREAM_SUBJECTS[:-1])
    assert subjects.ROUTER_HEALTH == "switchboard.v1.router.health"


def test_analytics_fields_are_optional_and_validated() -> None:
    old = {
        "v": 1,
        "event_id": "r",
        "request_id": "r",
        "key_id": "k",
        "requested_model": "m",
        "status": "ok",
        "http_status": 200,
        "latency_ms": 1,
        "received_at": 1.0,
        "started_at": 1.0,
        "finished_at": 2.0,
    }
    event = UsageRecorded.model_validate(old)
    assert (event.key_owner, event.privacy_mode, event.input_cost_usd, event.output_cost_usd) == (
        None,
        None,
        None,
        None,
    )
    assert (event.input_messages, event.output_choices, event.text_truncated) == (
        None,
        None,
        False,
    )
    full = UsageRecorded.model_validate(
        {
            **old,
            "key_owner": "team-1",
            "privacy_mode": "full",
            "input_cost_usd": 0.1,
            "output_cost_usd": 0.2,
            "input_messages": [{"role": "user", "content": "hi"}],
            "output_choices": [{"role": "assistant", "content": "hello"}],
            "text_truncated": True,
        }
    )
    assert UsageRecorded.model_validate_json(full.model_dump_json()) == full
    with pytest.raises(ValidationError):
        UsageRecorded.model_validate({**old, "privacy_mode": "everything"})


def test_key_owner_and_privacy_mode_are_optional_on_the_wire() -> None:
    key = KeyIdentity(key_id="k")
    assert (key.owner, key.privacy_mode) == (None, None)
    assert set(orjson.loads(key.model_dump_json(exclude_unset=True))) == {"v", "key_id"}
    key = KeyIdentity.model_validate({"key_id": "k", "owner": "o", "privacy_mode": "metadata"})
    assert (key.owner, key.privacy_mode) == ("o", "metadata")
    with pytest.raises(ValidationError):
        KeyIdentity.model_validate({"key_id": "k", "privacy_mode": "all"})
