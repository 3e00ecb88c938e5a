"""From messages to ledger rows: conversion, validation, rejects, batching."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from switchboard.metering.ledger import EVENT_COLUMNS, REJECT_COLUMNS, Reject, decode, event_row
from switchboard.metering.sink import Batch

from .._support import usage_event


def test_row_has_a_value_per_column_in_order() -> None:
    event = usage_event(end_user="user-1", tier="fast", temperature=0.7, max_tokens=64)
    row = dict(zip(EVENT_COLUMNS, event_row(event, 42), strict=True))
    assert row["event_id"] == event.event_id
    assert row["end_user"] == "user-1"
    assert row["tier"] == "fast"
    assert row["cost_usd"] == Decimal("0.0001230000")
    assert row["received_at"] == datetime.fromtimestamp(event.received_at, UTC)
    assert row["attempts"] == [("openai/gpt-4o-mini", "openrouter", "ok", 200, None, 400)]
    assert row["stream_sequence"] == 42
    assert row["temperature"] == 0.7
    assert row["max_tokens"] == 64


def test_missing_optionals_become_empty_or_null() -> None:
    event = usage_event(
        served_model=None,
        provider=None,
        provider_base_url=None,
        cost_usd=None,
        ttft_ms=None,
        cost_source="unknown",
        attempts=[],
    )
    row = dict(zip(EVENT_COLUMNS, event_row(event, 1), strict=True))
    assert row["served_model"] == ""
    assert row["provider"] == ""
    assert row["end_user"] == ""
    assert row["cost_usd"] is None
    assert row["ttft_ms"] is None
    assert row["cost_saved_usd"] is None
    assert row["attempts"] == []


def test_amounts_are_exact_decimals_rounded_half_even() -> None:
    row = dict(zip(EVENT_COLUMNS, event_row(usage_event(cost_usd=0.1 + 0.2), 1), strict=True))
    assert row["cost_usd"] == Decimal("0.3000000000")
    row = dict(zip(EVENT_COLUMNS, event_row(usage_event(cost_usd=1.00000000005), 1), strict=True))
    assert row["cost_usd"] == Decimal("1.0000000000")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("cost_usd", 1e9, "cost_usd"),
        ("prompt_tokens", -1, "prompt_tokens"),
        ("retries", 70_000, "retries"),
        ("http_status", 70_000, "http_status"),
        ("ttft_ms", 2**33, "ttft_ms"),
        ("received_at", 1e20, "received_at"),
    ],
)
def test_values_a_column_cannot_hold_make_a_reject(field: str, value: object, reason: str) -> None:
    payload = orjson.loads(usage_event().model_dump_json())
    payload[field] = value
    decoded = decode(orjson.dumps(payload), subject="s", stream_sequence=7)
    assert isinstance(decoded, Reject)
    assert reason in decoded.reason
    assert decoded.stream_sequence == 7


@pytest.mark.parametrize(("sent", "stored"), [(2**32 - 1, 2**32 - 1), (2**33, 2**32 - 1)])
def test_a_client_chosen_max_tokens_never_makes_a_reject(sent: int, stored: int) -> None:
    """A client chooses max_tokens (any 64-bit number): it must not keep its request out
    of the ledger, so a value beyond the column is capped instead."""
    decoded = decode(
        usage_event(max_tokens=sent).model_dump_json().encode(), subject="s", stream_sequence=1
    )
    assert not isinstance(decoded, Reject)
    assert dict(zip(EVENT_COLUMNS, decoded[1], strict=True))["max_tokens"] == stored


def test_not_json_and_wrong_version_are_rejects() -> None:
    bad = decode(b"not json", subject="s", stream_sequence=1)
    assert isinstance(bad, Reject)
    assert bad.row == [1, "s", "", "", bad.reason, "not json"]
    payload = orjson.loads(usage_event(key_id="key_x", end_user="u").model_dump_json())
    payload["v"] = 2
    future = decode(orjson.dumps(payload), subject="s", stream_sequence=2)
    assert isinstance(future, Reject)
    assert future.reason.startswith("v:")
    assert future.row[2:4] == ["key_x", "u"]
    assert len(future.row) == len(REJECT_COLUMNS)


def test_reject_of_a_non_object_finds_no_owner() -> None:
    reject = decode(b"[1, 2]", subject="s", stream_sequence=3)
    assert isinstance(reject, Reject)
    assert reject.row[2:4] == ["", ""]


def test_batch_keeps_one_copy_of_each_event() -> None:
    event = usage_event()
    other = usage_event()
    batch = Batch()
    for sequence, item in enumerate([event, event, other, event], start=1):
        batch.add(item.model_dump_json().encode(), subject="s", stream_sequence=sequence)
    batch.add(b"{}", subject="s", stream_sequence=9)
    assert list(batch.rows) == [event.event_id, other.event_id]
    assert batch.duplicates == 2
    assert len(batch.rejects) == 1
    assert len(batch) == 3
