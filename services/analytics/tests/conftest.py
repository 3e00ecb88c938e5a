"""Fixtures shared by the analytics service's unit and integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from switchboard.analytics.settings import AnalyticsSettings
from switchboard.common.events import UsageRecorded

UsageFactory = Callable[..., UsageRecorded]
SettingsFactory = Callable[..., AnalyticsSettings]

POSTHOG_KEY = "phc_analyticsTestProjectKey0123456789"


def usage_event(**overrides: Any) -> UsageRecorded:
    """A served, streamed chat request's usage event; keywords override fields."""
    request_id = overrides.pop("request_id", f"req_{uuid.uuid4().hex[:24]}")
    now = time.time()
    values: dict[str, Any] = {
        "event_id": request_id,
        "request_id": request_id,
        "key_id": "key_test",
        "key_name": "tests",
        "requested_model": "fast",
        "served_model": "openai/gpt-4o-mini",
        "provider": "openrouter",
        "provider_base_url": "https://openrouter.ai/api/v1",
        "upstream_provider": "OpenAI",
        "tier": "fast",
        "status": "ok",
        "http_status": 200,
        "prompt_tokens": 30,
        "completion_tokens": 10,
        "total_tokens": 40,
        "cached_tokens": 4,
        "reasoning_tokens": 2,
        "cost_usd": 0.0004,
        "cost_source": "upstream",
        "latency_ms": 1250,
        "ttft_ms": 250,
        "stream": True,
        "retries": 1,
        "fallbacks": 1,
        "temperature": 0.2,
        "max_tokens": 256,
        "received_at": now - 1.3,
        "started_at": now - 1.25,
        "finished_at": now,
        **overrides,
    }
    return UsageRecorded.model_validate(values)


@pytest.fixture
def make_usage() -> UsageFactory:
    """A usage event factory (:func:`usage_event`)."""
    return usage_event


@pytest.fixture
def make_settings() -> SettingsFactory:
    """Analytics settings with test defaults (fast retries); keywords override them."""

    def make(**overrides: Any) -> AnalyticsSettings:
        values: dict[str, Any] = {
            "posthog_api_key": POSTHOG_KEY,
            "posthog_host": "http://127.0.0.1:9",
            "analytics_batch_size": 50,
            "analytics_fetch_wait": 0.2,
            "analytics_ack_wait": 5.0,
            "analytics_retry_initial": 0.1,
            "analytics_retry_max": 0.4,
            "analytics_posthog_timeout": 1.0,
            "nats_drain_timeout": 2.0,
            **overrides,
        }
        return AnalyticsSettings(**values)

    return make
