"""Decoding usage messages: valid, off, and payloads no retry can fix."""

from __future__ import annotations

import pytest

from switchboard.analytics.generation import CapturePolicy, event_uuid
from switchboard.analytics.handlers import decode_usage

from ..conftest import UsageFactory


def test_a_usage_event_becomes_a_capture(make_usage: UsageFactory) -> None:
    usage = make_usage()
    decoded = decode_usage(usage.model_dump_json().encode(), CapturePolicy())
    assert decoded.event_id == usage.event_id
    assert decoded.capture is not None
    assert decoded.capture.uuid == event_uuid(usage.event_id)


def test_unknown_fields_are_ignored(make_usage: UsageFactory) -> None:
    payload = make_usage().model_dump_json()[:-1] + ', "added_later": {"x": 1}}'
    assert decode_usage(payload.encode(), CapturePolicy()).capture is not None


def test_privacy_off_decodes_to_no_capture(make_usage: UsageFactory) -> None:
    usage = make_usage(privacy_mode="off")
    decoded = decode_usage(usage.model_dump_json().encode(), CapturePolicy())
    assert (decoded.event_id, decoded.capture) == (usage.event_id, None)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not a JSON object"),
        (b'{"v": 1}', "event_id"),
        (b"[]", "not a JSON object"),
    ],
)
def test_garbage_is_a_value_error(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_usage(payload, CapturePolicy())


def test_an_unknown_version_is_a_value_error(make_usage: UsageFactory) -> None:
    payload = make_usage().model_dump_json().replace('"v":1', '"v":2')
    with pytest.raises(ValueError, match="v"):
        decode_usage(payload.encode(), CapturePolicy())
