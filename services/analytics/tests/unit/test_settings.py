"""Analytics settings: PostHog's variable names, defaults, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from switchboard.analytics.settings import DEFAULT_POSTHOG_HOST, AnalyticsSettings

ENV = (
    "POSTHOG_API_KEY",
    "POSTHOG_HOST",
    "ANALYTICS_PRIVACY_MODE",
    "ANALYTICS_MAX_CONTENT_CHARS",
    "ANALYTICS_HASH_DISTINCT_ID",
    "ANALYTICS_DISTINCT_ID_SALT",
    "ANALYTICS_CONSUMER",
    "ANALYTICS_BATCH_SIZE",
    "ANALYTICS_FETCH_WAIT",
    "ANALYTICS_ACK_WAIT",
    "ANALYTICS_MAX_ACK_PENDING",
    "ANALYTICS_RETRY_INITIAL",
    "ANALYTICS_RETRY_MAX",
    "ANALYTICS_POSTHOG_TIMEOUT",
    "ANALYTICS_GZIP",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No analytics variable from the developer's shell leaks into these tests."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_api_key_is_required(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="posthog_api_key"):
        AnalyticsSettings()
    env.setenv("POSTHOG_API_KEY", "")  # empty counts as unset
    with pytest.raises(ValidationError, match="posthog_api_key"):
        AnalyticsSettings()


def test_defaults(env: pytest.MonkeyPatch) -> None:
    env.setenv("POSTHOG_API_KEY", "phc_abc")
    settings = AnalyticsSettings()
    assert settings.posthog_api_key.get_secret_value() == "phc_abc"
    assert "phc_abc" not in repr(settings)
    assert settings.posthog_host == DEFAULT_POSTHOG_HOST == "https://us.i.posthog.com"
    assert settings.analytics_privacy_mode == "metadata"
    assert settings.analytics_consumer == "switchboard-analytics"
    assert settings.analytics_hash_distinct_id is False
    assert settings.analytics_gzip is True


def test_every_variable_is_read(env: pytest.MonkeyPatch) -> None:
    values = {
        "POSTHOG_API_KEY": "phc_abc",
        "POSTHOG_HOST": "https://eu.i.posthog.com/",
        "ANALYTICS_PRIVACY_MODE": "full",
        "ANALYTICS_MAX_CONTENT_CHARS": "1000",
        "ANALYTICS_HASH_DISTINCT_ID": "true",
        "ANALYTICS_DISTINCT_ID_SALT": "pepper",
        "ANALYTICS_CONSUMER": "analytics-eu",
        "ANALYTICS_BATCH_SIZE": "10",
        "ANALYTICS_FETCH_WAIT": "2",
        "ANALYTICS_ACK_WAIT": "120",
        "ANALYTICS_MAX_ACK_PENDING": "50",
        "ANALYTICS_RETRY_INITIAL": "2",
        "ANALYTICS_RETRY_MAX": "30",
        "ANALYTICS_POSTHOG_TIMEOUT": "20",
        "ANALYTICS_GZIP": "false",
    }
    for name, value in values.items():
        env.setenv(name, value)
    settings = AnalyticsSettings()
    assert settings.posthog_host == "https://eu.i.posthog.com"
    assert settings.analytics_privacy_mode == "full"
    assert settings.analytics_max_content_chars == 1000
    assert settings.analytics_hash_distinct_id is True
    assert settings.analytics_distinct_id_salt is not None
    assert settings.analytics_distinct_id_salt.get_secret_value() == "pepper"
    assert settings.analytics_consumer == "analytics-eu"
    assert settings.analytics_batch_size == 10
    assert settings.analytics_fetch_wait == 2
    assert settings.analytics_ack_wait == 120
    assert settings.analytics_max_ack_pending == 50
    assert (settings.analytics_retry_initial, settings.analytics_retry_max) == (2, 30)
    assert settings.analytics_posthog_timeout == 20
    assert settings.analytics_gzip is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"analytics_hash_distinct_id": True}, "ANALYTICS_DISTINCT_ID_SALT"),
        ({"analytics_retry_initial": 5, "analytics_retry_max": 1}, "ANALYTICS_RETRY_MAX"),
        ({"analytics_ack_wait": 30, "analytics_posthog_timeout": 10}, "ANALYTICS_ACK_WAIT"),
        ({"posthog_host": "us.i.posthog.com"}, "POSTHOG_HOST"),
        ({"analytics_privacy_mode": "some"}, "analytics_privacy_mode"),
        ({"analytics_consumer": "a.b"}, "analytics_consumer"),
        ({"analytics_batch_size": 0}, "analytics_batch_size"),
    ],
)
def test_invalid_combinations(
    env: pytest.MonkeyPatch, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        AnalyticsSettings(posthog_api_key="phc_abc", **overrides)  # type: ignore[arg-type]
