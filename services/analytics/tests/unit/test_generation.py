"""Usage event → ``$ai_generation``: the exact property set per privacy mode, identity, costs."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from switchboard.analytics.generation import (
    AI_GENERATION,
    EVENT_UUID_NAMESPACE,
    Capture,
    CapturePolicy,
    build_capture,
    distinct_id_of,
    event_uuid,
)
from switchboard.analytics.privacy import TRUNCATION_MARK

from ..conftest import SettingsFactory, UsageFactory
from ..expected import CONTENT, METADATA

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {
        "role": "user",
        "content": "I am alice@example.com, card 4111 1111 1111 1111, "
        "key sk-sb-ABCDEFGHIJKLMNOP1234",
    },
]
CHOICES = [{"role": "assistant", "content": "Call me at +1 415 555 2671."}]


def capture_of(usage: Any, policy: CapturePolicy | None = None) -> Capture:
    capture = build_capture(usage, policy or CapturePolicy())
    assert capture is not None
    return capture


class TestMetadataMode:
    def test_the_exact_property_set_of_a_served_request(self, make_usage: UsageFactory) -> None:
        usage = make_usage()
        capture = capture_of(usage)
        assert set(capture.properties) == METADATA
        assert capture.event == AI_GENERATION == "$ai_generation"
        assert capture.properties == {
            "$ai_trace_id": usage.request_id,
            "$ai_span_id": capture.uuid,
            "$ai_model": "openai/gpt-4o-mini",
            "$ai_provider": "openrouter",
            "$ai_input_tokens": 30,
            "$ai_output_tokens": 10,
            "$ai_cache_read_input_tokens": 4,
            "$ai_reasoning_tokens": 2,
            "$ai_latency": 1.25,
            "$ai_time_to_first_token": 0.25,
            "$ai_http_status": 200,
            "$ai_base_url": "https://openrouter.ai/api/v1",
            "$ai_is_error": False,
            "$ai_stream": True,
            "$ai_temperature": 0.2,
            "$ai_max_tokens": 256,
            "$ai_input_cost_usd": 0.0003,
            "$ai_output_cost_usd": 0.0001,
            "$ai_total_cost_usd": 0.0004,
            "switchboard_key_id": "key_test",
            "switchboard_key_name": "tests",
            "switchboard_tier": "fast",
            "switchboard_requested_model": "fast",
            "switchboard_upstream_provider": "OpenAI",
            "switchboard_status": "ok",
            "switchboard_error_type": None,
            "switchboard_retries": 1,
            "switchboard_fallbacks": 1,
            "switchboard_cache_hit": False,
            "switchboard_cost_saved_usd": None,
            "switchboard_cost_source": "upstream",
            "switchboard_privacy_mode": "metadata",
            "switchboard_distinct_id_source": "key_id",
        }

    def test_unknown_values_are_left_out_not_sent_as_null(self, make_usage: UsageFactory) -> None:
        usage = make_usage(
            served_model=None,
            provider=None,
            provider_base_url=None,
            ttft_ms=None,
            temperature=None,
            max_tokens=None,
            cost_usd=None,
            cost_source="unknown",
            stream=False,
        )
        capture = capture_of(usage)
        missing = {
            "$ai_provider",
            "$ai_base_url",
            "$ai_time_to_first_token",
            "$ai_temperature",
            "$ai_max_tokens",
            "$ai_input_cost_usd",
            "$ai_output_cost_usd",
            "$ai_total_cost_usd",
        }
        assert set(capture.properties) == METADATA - missing
        # No served model (failed before routing): the model asked for.
        assert capture.properties["$ai_model"] == "fast"
        assert capture.properties["$ai_stream"] is False

    def test_text_in_the_event_never_leaves_in_metadata_mode(
        self, make_usage: UsageFactory
    ) -> None:
        usage = make_usage(input_messages=MESSAGES, output_choices=CHOICES)
        capture = capture_of(usage)
        assert set(capture.properties) == METADATA
        serialized = json.dumps(capture.properties)
        assert "alice" not in serialized and "You are helpful" not in serialized

    def test_an_error(self, make_usage: UsageFactory) -> None:
        usage = make_usage(
            status="error",
            http_status=502,
            error_type="api_error",
            error_code="upstream_error",
            error_message="Upstream said: contact ops@example.com",
            completion_tokens=0,
        )
        properties = capture_of(usage).properties
        assert properties["$ai_is_error"] is True
        assert properties["$ai_http_status"] == 502
        assert properties["$ai_error"] == "upstream_error: Upstream said: contact [email]"
        assert properties["switchboard_error_type"] == "api_error"
        assert set(properties) == METADATA | {"$ai_error"}

    def test_an_error_without_a_message(self, make_usage: UsageFactory) -> None:
        usage = make_usage(status="error", http_status=504, error_type="api_error")
        assert capture_of(usage).properties["$ai_error"] == "api_error"
        usage = make_usage(status="error", http_status=500)
        assert capture_of(usage).properties["$ai_error"] == "error"

    def test_a_cancelled_request(self, make_usage: UsageFactory) -> None:
        properties = capture_of(make_usage(status="cancelled", http_status=499)).properties
        assert properties["$ai_is_error"] is True
        assert properties["$ai_error"] == "cancelled"
        assert properties["switchboard_status"] == "cancelled"

    def test_a_cache_hit(self, make_usage: UsageFactory) -> None:
        properties = capture_of(
            make_usage(cache_hit=True, cost_saved_usd=0.002, cost_usd=0.0)
        ).properties
        assert properties["switchboard_cache_hit"] is True
        assert properties["switchboard_cost_saved_usd"] == 0.002
        assert properties["$ai_total_cost_usd"] == 0.0


class TestCosts:
    def test_a_known_split_is_used(self, make_usage: UsageFactory) -> None:
        usage = make_usage(cost_usd=0.001, input_cost_usd=0.0002, output_cost_usd=0.0008)
        properties = capture_of(usage).properties
        assert properties["$ai_input_cost_usd"] == 0.0002
        assert properties["$ai_output_cost_usd"] == 0.0008
        assert properties["$ai_total_cost_usd"] == 0.001

    def test_without_a_split_the_total_is_shared_by_tokens(self, make_usage: UsageFactory) -> None:
        usage = make_usage(cost_usd=0.001, prompt_tokens=75, completion_tokens=25)
        properties = capture_of(usage).properties
        assert properties["$ai_input_cost_usd"] == pytest.approx(0.00075)
        assert properties["$ai_output_cost_usd"] == pytest.approx(0.00025)
        assert properties["$ai_total_cost_usd"] == 0.001

    def test_without_tokens_the_total_counts_as_input(self, make_usage: UsageFactory) -> None:
        usage = make_usage(cost_usd=0.001, prompt_tokens=0, completion_tokens=0)
        properties = capture_of(usage).properties
        assert (properties["$ai_input_cost_usd"], properties["$ai_output_cost_usd"]) == (0.001, 0.0)

    def test_costs_are_rounded_to_ten_decimals(self, make_usage: UsageFactory) -> None:
        usage = make_usage(cost_usd=1 / 3, prompt_tokens=1, completion_tokens=2)
        properties = capture_of(usage).properties
        assert properties["$ai_total_cost_usd"] == 0.3333333333
        assert properties["$ai_input_cost_usd"] == 0.1111111111


class TestFullMode:
    def test_the_exact_property_set_with_redacted_text(self, make_usage: UsageFactory) -> None:
        usage = make_usage(privacy_mode="full", input_messages=MESSAGES, output_choices=CHOICES)
        capture = capture_of(usage)
        assert set(capture.properties) == METADATA | CONTENT
        assert capture.properties["$ai_input"] == [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "I am [email], card [card], key [secret]"},
        ]
        assert capture.properties["$ai_output_choices"] == [
            {"role": "assistant", "content": "Call me at [phone]."}
        ]
        assert capture.properties["switchboard_content_truncated"] is False
        assert capture.properties["switchboard_privacy_mode"] == "full"

    def test_full_by_default_setting(self, make_usage: UsageFactory) -> None:
        usage = make_usage(input_messages=MESSAGES, output_choices=CHOICES)
        capture = capture_of(usage, CapturePolicy(default_mode="full"))
        assert set(capture.properties) == METADATA | CONTENT

    def test_without_text_in_the_event_it_is_metadata_only(self, make_usage: UsageFactory) -> None:
        capture = capture_of(make_usage(privacy_mode="full"))
        assert set(capture.properties) == METADATA

    def test_only_the_part_the_event_carries_is_sent(self, make_usage: UsageFactory) -> None:
        capture = capture_of(make_usage(privacy_mode="full", input_messages=MESSAGES))
        assert set(capture.properties) == METADATA | {"$ai_input", "switchboard_content_truncated"}

    def test_the_size_cap_applies(self, make_usage: UsageFactory) -> None:
        usage = make_usage(
            privacy_mode="full",
            input_messages=[{"role": "user", "content": "word " * 1000}],
            output_choices=[{"role": "assistant", "content": "answer " * 1000}],
        )
        capture = capture_of(usage, CapturePolicy(max_content_chars=200))
        assert capture.properties["$ai_output_choices"][0]["content"].endswith(TRUNCATION_MARK)
        assert capture.properties["$ai_input"][0]["content"].endswith(TRUNCATION_MARK)
        kept = (
            capture.properties["$ai_input"][0]["content"]
            + capture.properties["$ai_output_choices"][0]["content"]
        )
        assert len(kept) == 200 + 2 * len(TRUNCATION_MARK)
        assert capture.properties["switchboard_content_truncated"] is True

    def test_text_the_router_already_cut_counts_as_truncated(
        self, make_usage: UsageFactory
    ) -> None:
        usage = make_usage(privacy_mode="full", input_messages=MESSAGES, text_truncated=True)
        assert capture_of(usage).properties["switchboard_content_truncated"] is True

    def test_text_that_would_exceed_the_sdk_limit_is_dropped(
        self, make_usage: UsageFactory
    ) -> None:
        # Control characters are escaped six-fold in JSON: capped text can still swell.
        usage = make_usage(
            privacy_mode="full", input_messages=[{"role": "user", "content": "\x01" * 200_000}]
        )
        capture = capture_of(usage, CapturePolicy(max_content_chars=262_144))
        assert "$ai_input" not in capture.properties
        assert capture.properties["switchboard_content_truncated"] is True


class TestOff:
    def test_off_by_default_sends_nothing(self, make_usage: UsageFactory) -> None:
        assert build_capture(make_usage(), CapturePolicy(default_mode="off")) is None

    def test_off_for_one_key(self, make_usage: UsageFactory) -> None:
        assert (
            build_capture(make_usage(privacy_mode="off"), CapturePolicy(default_mode="full"))
            is None
        )

    def test_a_key_can_opt_back_in(self, make_usage: UsageFactory) -> None:
        capture = build_capture(
            make_usage(privacy_mode="metadata"), CapturePolicy(default_mode="off")
        )
        assert capture is not None
        assert set(capture.properties) == METADATA


class TestIdentity:
    def test_the_openai_user_field_comes_first(self, make_usage: UsageFactory) -> None:
        usage = make_usage(end_user="user-42", key_owner="team-a")
        assert distinct_id_of(usage, None) == ("user-42", "user")

    def test_then_the_key_owner(self, make_usage: UsageFactory) -> None:
        assert distinct_id_of(make_usage(key_owner="team-a"), None) == ("team-a", "key_owner")
        assert distinct_id_of(make_usage(end_user="  ", key_owner="team-a"), None) == (
            "team-a",
            "key_owner",
        )

    def test_then_the_key_id(self, make_usage: UsageFactory) -> None:
        assert distinct_id_of(make_usage(key_owner=""), None) == ("key_test", "key_id")

    def test_hashing_is_hmac_sha256_with_the_salt(self, make_usage: UsageFactory) -> None:
        usage = make_usage(end_user="user-42")
        expected = hmac.new(b"pepper", b"user-42", hashlib.sha256).hexdigest()
        assert distinct_id_of(usage, b"pepper") == (expected, "user")
        capture = capture_of(usage, CapturePolicy(distinct_id_salt=b"pepper"))
        assert capture.distinct_id == expected
        assert "user-42" not in json.dumps(capture.properties)

    def test_another_salt_gives_another_id(self, make_usage: UsageFactory) -> None:
        usage = make_usage(key_owner="team-a")
        assert distinct_id_of(usage, b"one")[0] != distinct_id_of(usage, b"two")[0]

    def test_the_policy_hashes_only_when_told_to(self, make_settings: SettingsFactory) -> None:
        assert (
            CapturePolicy.from_settings(
                make_settings(analytics_distinct_id_salt="s")
            ).distinct_id_salt
            is None
        )
        policy = CapturePolicy.from_settings(
            make_settings(analytics_hash_distinct_id=True, analytics_distinct_id_salt="s")
        )
        assert policy.distinct_id_salt == b"s"

    def test_the_policy_from_settings(self, make_settings: SettingsFactory) -> None:
        policy = CapturePolicy.from_settings(
            make_settings(analytics_privacy_mode="full", analytics_max_content_chars=77)
        )
        assert (policy.default_mode, policy.max_content_chars) == ("full", 77)


class TestEventIdentity:
    def test_the_uuid_is_derived_from_the_event_id(self, make_usage: UsageFactory) -> None:
        usage = make_usage(request_id="req_0123456789abcdef01234567")
        capture = capture_of(usage)
        assert capture.uuid == str(uuid.uuid5(EVENT_UUID_NAMESPACE, "req_0123456789abcdef01234567"))
        assert capture.uuid == event_uuid(usage.event_id) == capture_of(usage).uuid
        assert capture.event_id == usage.event_id

    def test_the_uuid_never_changes(self) -> None:
        # PostHog de-duplicates on it: a new mapping would duplicate redelivered events.
        assert event_uuid("req_0123456789abcdef01234567") == "1cd573a9-9011-5f54-b520-64bf01444323"

    def test_the_timestamp_is_when_the_edge_received_the_request(
        self, make_usage: UsageFactory
    ) -> None:
        usage = make_usage(received_at=1_700_000_000.5)
        assert capture_of(usage).timestamp == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
