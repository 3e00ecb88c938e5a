"""Router settings: env var names, defaults, validation."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from switchboard.router import settings as settings_module
from switchboard.router.settings import RouterSettings

ENV = (
    "OPENROUTER_BASE_URL",
    "OPENROUTER_API_KEY",
    "OPENROUTER_HTTP_REFERER",
    "OPENROUTER_APP_TITLE",
    "ROUTER_UPSTREAM_CONNECT_TIMEOUT",
    "ROUTER_UPSTREAM_READ_TIMEOUT",
    "ROUTER_MAX_CONNECTIONS",
    "ROUTER_KEEPALIVE_INTERVAL",
    "ROUTER_MAX_IN_FLIGHT",
    "ROUTER_CATALOG_CACHE",
    "ROUTER_CATALOG_REFRESH_INTERVAL",
    "ROUTER_CATALOG_FETCH_TIMEOUT",
    "ROUTER_USAGE_MAX_AGE",
    "ROUTER_USAGE_MAX_BYTES",
    "ROUTER_USAGE_REPLICAS",
    "ROUTER_USAGE_DUPLICATE_WINDOW",
    "ROUTER_USAGE_QUEUE_SIZE",
    "ROUTER_USAGE_PUBLISH_TIMEOUT",
    "ROUTER_USAGE_PRIVACY_MODE",
    "ROUTER_USAGE_MAX_TEXT_BYTES",
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_DATA_DIR",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No router variable from the developer's shell leaks into these tests."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = RouterSettings()
    assert settings.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert settings.openrouter_api_key is None
    assert settings.openrouter_http_referer is None
    assert settings.openrouter_app_title is None
    assert settings.router_keepalive_interval == 5.0
    assert settings.router_upstream_connect_timeout == 5.0
    assert settings.router_upstream_read_timeout == 120.0
    assert settings.router_max_connections == 256
    assert settings.router_max_in_flight == 200
    assert settings.router_catalog_refresh_interval == 300.0
    assert settings.switchboard_config is None
    assert settings.catalog_cache_path == Path(".switchboard/router/catalog.json")
    assert settings.router_usage_duplicate_window >= 120
    assert settings.router_usage_privacy_mode == "metadata"
    assert settings.router_usage_max_text_bytes == 262_144


def test_read_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENROUTER_BASE_URL", "http://127.0.0.1:8080/api/v1/")
    clean_env.setenv("OPENROUTER_API_KEY", "sk-or-v1-abc")
    clean_env.setenv("OPENROUTER_HTTP_REFERER", "https://example.org")
    clean_env.setenv("OPENROUTER_APP_TITLE", "Switchboard")
    clean_env.setenv("ROUTER_UPSTREAM_CONNECT_TIMEOUT", "1.5")
    clean_env.setenv("ROUTER_UPSTREAM_READ_TIMEOUT", "30")
    clean_env.setenv("ROUTER_MAX_CONNECTIONS", "10")
    clean_env.setenv("ROUTER_KEEPALIVE_INTERVAL", "0.5")
    clean_env.setenv("ROUTER_MAX_IN_FLIGHT", "8")
    clean_env.setenv("ROUTER_CATALOG_REFRESH_INTERVAL", "5")
    clean_env.setenv("SWITCHBOARD_DATA_DIR", "/var/lib/sb")
    clean_env.setenv("SWITCHBOARD_CONFIG", "/etc/sb/routing.yaml")
    clean_env.setenv("ROUTER_USAGE_PRIVACY_MODE", "full")
    clean_env.setenv("ROUTER_USAGE_MAX_TEXT_BYTES", "4096")
    settings = RouterSettings()
    assert settings.openrouter_base_url == "http://127.0.0.1:8080/api/v1"
    assert settings.openrouter_api_key is not None
    assert settings.openrouter_api_key.get_secret_value() == "sk-or-v1-abc"
    assert "sk-or-v1-abc" not in repr(settings)
    assert settings.openrouter_http_referer == "https://example.org"
    assert settings.openrouter_app_title == "Switchboard"
    assert settings.router_upstream_connect_timeout == 1.5
    assert settings.router_upstream_read_timeout == 30
    assert settings.router_max_connections == 10
    assert settings.router_keepalive_interval == 0.5
    assert settings.router_max_in_flight == 8
    assert settings.router_catalog_refresh_interval == 5
    assert settings.catalog_cache_path == Path("/var/lib/sb/router/catalog.json")
    assert settings.switchboard_config == Path("/etc/sb/routing.yaml")
    assert settings.router_usage_privacy_mode == "full"
    assert settings.router_usage_max_text_bytes == 4096


def test_empty_variables_mean_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENROUTER_API_KEY", "")
    clean_env.setenv("OPENROUTER_APP_TITLE", "")
    settings = RouterSettings()
    assert settings.openrouter_api_key is None
    assert settings.openrouter_app_title is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROUTER_MAX_IN_FLIGHT", "0"),
        ("ROUTER_KEEPALIVE_INTERVAL", "0"),
        ("ROUTER_UPSTREAM_READ_TIMEOUT", "-1"),
        ("ROUTER_CATALOG_REFRESH_INTERVAL", "0"),
        ("ROUTER_USAGE_DUPLICATE_WINDOW", "60"),
        ("ROUTER_USAGE_PRIVACY_MODE", "everything"),
        ("ROUTER_USAGE_MAX_TEXT_BYTES", "100"),
        ("ROUTER_USAGE_MAX_TEXT_BYTES", "1048576"),
    ],
)
def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        RouterSettings()


def test_every_field_is_documented_with_its_env_var() -> None:
    source = inspect.getsource(settings_module)
    for name in RouterSettings.model_fields:
        if name.startswith(("openrouter_", "router_", "switchboard_")):
            assert name.upper() in ENV
            assert f'"""``{name.upper()}``:' in source
