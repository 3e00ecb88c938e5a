"""The routing config: defaults, the documented example, and readable errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard.router.config import ConfigError, load_routing

EXAMPLE = Path(__file__).parents[4] / "deploy" / "config" / "routing.example.yaml"


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def load(make_settings: Any, tmp_path: Path, content: Any, **environ: str) -> Any:
    settings = make_settings(switchboard_config=write(tmp_path, content))
    return load_routing(settings, environ)


def test_without_a_file_one_provider_from_the_environment(make_settings: Any) -> None:
    settings = make_settings(openrouter_http_referer="https://x.test", openrouter_app_title="X")
    routing = load_routing(settings, {})
    provider = routing.providers["openrouter"]
    assert provider.base_url == "http://127.0.0.1:9/api/v1"
    assert provider.api_key == "sk-or-v1-test-secret-key"
    assert dict(provider.headers) == {"HTTP-Referer": "https://x.test", "X-Title": "X"}
    assert routing.catalog_provider == "openrouter"
    assert routing.aliases == {}
    assert routing.config.retry.max_retries == 2
    assert routing.model("any/model").routes("openrouter")[0].provider == "openrouter"


def test_the_documented_example_loads(make_settings: Any) -> None:
    settings = make_settings(switchboard_config=EXAMPLE)
    routing = load_routing(settings, {"OPENAI_API_KEY": "sk-openai"})
    assert set(routing.providers) == {"openrouter", "openai", "local"}
    assert routing.providers["openai"].api_key == "sk-openai"
    assert "sk-openai" not in repr(routing.providers["openai"])
    assert routing.aliases["budget"][0] == "meta-llama/llama-3.1-8b-instruct"
    assert "fast" in routing.aliases
    routes = routing.model("openai/gpt-4o-mini").routes("openrouter")
    assert [(r.provider, r.model) for r in routes] == [
        ("openrouter", None),
        ("openai", "gpt-4o-mini"),
    ]
    pricing = routing.model("local/llama-3.1-70b").pricing
    assert pricing is not None
    assert pricing.prompt == Decimal(0)


def test_an_empty_file_means_defaults(make_settings: Any, tmp_path: Path) -> None:
    assert load(make_settings, tmp_path, "").aliases == {}


def test_a_provider_key_env_that_is_not_set(make_settings: Any, tmp_path: Path) -> None:
    content = {"providers": {"x": {"base_url": "http://x/v1", "api_key_env": "X_KEY"}}}
    with pytest.raises(ConfigError, match=r"providers\.x\.api_key_env: environment variable X_KEY"):
        load(make_settings, tmp_path, content)
    assert load(make_settings, tmp_path, content, X_KEY="k").providers["x"].api_key == "k"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tiers: [unclosed", "not valid YAML"),
        ("- a list", "must be a YAML mapping"),
        ({"tiers": {"gold": ["a/b"]}}, "unknown tier(s) ['gold']"),
        ({"aliases": {"premium": ["a/b"]}}, "must not contain '/' nor be a tier or 'auto'"),
        ({"aliases": {"a/b": ["a/b"]}}, "must not contain '/'"),
        ({"aliases": {"fast": []}}, "fast: an alias needs at least one model"),
        ({"aliases": {"fast": ["cheap"], "cheap": ["a/b"]}}, "'cheap' is an alias, not a model"),
        ({"default_provider": "nope"}, "default_provider: unknown provider 'nope'"),
        ({"models": {"a/b": {"providers": ["nope"]}}}, "models.a/b: unknown provider 'nope'"),
        ({"auto": {"tiers": ["gold"]}}, "auto.tiers: unknown tier 'gold'"),
        ({"retry": {"max_retries": -1}}, "retry.max_retries: Input should be greater"),
        ({"breaker": {"cooldown": 0}}, "breaker.cooldown"),
        ({"providers": {"x": {"base_url": "ftp://x"}}}, "providers.x.base_url"),
        ({"providers": {"x": {}}}, "providers.x.base_url: required"),
        ({"providers": {"x": {"api_key": "sk-secret"}}}, "providers.x.api_key: Extra inputs"),
        (
            {
                "providers": {
                    "a": {"base_url": "http://a", "catalog": True},
                    "b": {"base_url": "http://b", "catalog": True},
                }
            },
            "at most one provider may be the catalog",
        ),
        ({"version": 2}, "version: Input should be 1"),
    ],
)
def test_mistakes_are_explained(
    make_settings: Any, tmp_path: Path, content: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(make_settings, tmp_path, content)
    assert message in str(caught.value)


def test_an_unreadable_file(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(switchboard_config=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_routing(settings, {})


def test_the_catalog_provider_can_be_another(make_settings: Any, tmp_path: Path) -> None:
    content = {"providers": {"mirror": {"base_url": "http://m/v1", "catalog": True}}}
    assert load(make_settings, tmp_path, content).catalog_provider == "mirror"
