"""Router settings: env var names, defaults, validation."""

from __future__ import annotations

import inspect

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
    "ROUTER_MODELS_CACHE_TTL",
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
    assert settings.router_models_cache_ttl == 300.0


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
    clean_env.setenv("ROUTER_MODELS_CACHE_TTL", "0")
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
    assert settings.router_models_cache_ttl == 0


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
        ("ROUTER_MODELS_CACHE_TTL", "-1"),
    ],
)
def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        RouterSettings()


def test_every_field_is_documented_with_its_env_var() -> None:
    source = inspect.getsource(settings_module)
    for name in RouterSettings.model_fields:
        if name.startswith(("openrouter_", "router_")):
            assert name.upper() in ENV
            assert f'"""``{name.upper()}``:' in source
