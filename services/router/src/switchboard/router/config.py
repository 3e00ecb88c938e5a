"""The routing config: one YAML file (``SWITCHBOARD_CONFIG``), validated once at start.

It names the providers (OpenRouter plus any OpenAI-compatible API), the tier aliases
(``premium``, ``standard``, ``budget``) and custom aliases as ordered model chains,
per-model overrides, and the retry, circuit-breaker and ``auto`` policies. See
``deploy/config/routing.example.yaml`` for every field. API keys never appear in it:
a provider names the environment variable that holds its key.

Without a file, the router has one provider, ``openrouter``, from the ``OPENROUTER_*``
variables, no aliases and the default policies. A provider called ``openrouter`` always
exists; the file may override its fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Self

import yaml  # type: ignore[import-untyped]  # the stubs (types-PyYAML) are not a dependency
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from switchboard.router.settings import RouterSettings

__all__ = [
    "AUTO",
    "TIERS",
    "AutoPolicy",
    "BreakerPolicy",
    "ConfigError",
    "ModelConfig",
    "Provider",
    "RetryPolicy",
    "Routing",
    "RoutingConfig",
    "load_routing",
]

AUTO = "auto"
"""The model name that asks the router to pick the cheapest fitting healthy model."""
TIERS = ("premium", "standard", "budget")
DEFAULT_PROVIDER = "openrouter"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ConfigError(Exception):
    """The routing config cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    """An OpenAI-compatible API the router may call."""

    base_url: str | None = Field(default=None, pattern=r"^https?://")
    """API root, e.g. ``http://vllm:8000/v1``; for ``openrouter``: ``OPENROUTER_BASE_URL``."""
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """Name of the environment variable holding the key (sent as a Bearer token)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra, non-secret request headers."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds of silence after which a call fails (``ROUTER_UPSTREAM_READ_TIMEOUT``)."""
    catalog: bool = False
    """Its ``GET /models`` is the model catalog (default: the ``openrouter`` provider)."""


class Pricing(_Strict):
    """USD per token (per request for ``request``), for models the catalog does not price."""

    prompt: Decimal = Field(ge=0)
    completion: Decimal = Field(ge=0)
    input_cache_read: Decimal | None = Field(default=None, ge=0)
    internal_reasoning: Decimal | None = Field(default=None, ge=0)
    request: Decimal = Field(default=Decimal(0), ge=0)


class ProviderRoute(_Strict):
    """One way to reach a model: a provider, and the model's name there."""

    provider: str
    model: str | None = None
    """The model's id at that provider; default: the model's own id."""


class ModelConfig(_Strict):
    """Overrides for one model id."""

    providers: list[str | ProviderRoute] | None = None
    """Where to call it, in order (default: the default provider)."""
    fallbacks: list[str] = Field(default_factory=list)
    """Models to try when this one fails, when it was asked for by name."""
    timeout: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    context_length: int | None = Field(default=None, ge=1)
    supports_tools: bool | None = None
    pricing: Pricing | None = None

    def routes(self, default_provider: str) -> list[ProviderRoute]:
        """The provider routes, in order."""
        if not self.providers:
            return [ProviderRoute(provider=default_provider)]
        return [ProviderRoute(provider=p) if isinstance(p, str) else p for p in self.providers]


class RetryPolicy(_Strict):
    """Retries of one model at one provider, while nothing has reached the client."""

    max_retries: int = Field(default=2, ge=0, le=10)
    base_delay: float = Field(default=0.25, ge=0)
    """Seconds; the n-th retry waits a random time in ``[0, min(max_delay, base·2ⁿ)]``."""
    max_delay: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(default=30.0, ge=0)
    """A longer ``Retry-After`` moves on to the next model instead of waiting."""


class BreakerPolicy(_Strict):
    """When a (provider, model) circuit breaker opens and how it recovers."""

    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open it."""
    error_rate: float = Field(default=0.5, gt=0, le=1)
    """Share of failed calls within ``window`` that opens it …"""
    window: float = Field(default=60.0, gt=0)
    min_calls: int = Field(default=20, ge=1)
    """… once the window holds at least this many calls."""
    cooldown: float = Field(default=30.0, gt=0)
    """Seconds an open breaker waits before it lets probes through."""
    half_open_probes: int = Field(default=1, ge=1)
    """Calls let through while half open; all must succeed to close it."""


class AutoPolicy(_Strict):
    """How ``model: auto`` chooses."""

    tiers: list[str] = Field(default_factory=lambda: list(TIERS))
    """Tiers whose models ``auto`` may pick (intersected with a restricted key's tiers)."""
    chars_per_token: float = Field(default=4.0, gt=0)
    """Prompt tokens are estimated as characters / this."""
    completion_tokens: int = Field(default=512, ge=1)
    """Expected answer length for the price comparison when ``max_tokens`` is not sent."""


class RoutingConfig(_Strict):
    """The whole file."""

    version: Literal[1] = 1
    default_provider: str = DEFAULT_PROVIDER
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    tiers: dict[str, list[str]] = Field(default_factory=dict)
    """``premium``, ``standard``, ``budget`` → model chains."""
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    auto: AutoPolicy = AutoPolicy()

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, tiers: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(tiers) - set(TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; tiers are {list(TIERS)} (use aliases)")
        return tiers

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in aliases:
            if name in (*TIERS, AUTO) or "/" in name or not name:
                raise ValueError(f"alias {name!r} must not contain '/' nor be a tier or 'auto'")
        return aliases

    @model_validator(mode="after")
    def _references(self) -> Self:
        providers = {DEFAULT_PROVIDER, *self.providers}
        problems: list[str] = []
        if self.default_provider not in providers:
            problems.append(f"default_provider: unknown provider {self.default_provider!r}")
        chains = {**self.tiers, **self.aliases}
        for name, chain in chains.items():
            if not chain:
                problems.append(f"{name}: an alias needs at least one model")
            problems += [f"{name}: {m!r} is an alias, not a model" for m in chain if m in chains]
        for model, spec in self.models.items():
            for route in spec.routes(self.default_provider):
                if route.provider not in providers:
                    problems.append(f"models.{model}: unknown provider {route.provider!r}")
        problems += [
            f"auto.tiers: unknown tier {tier!r}" for tier in self.auto.tiers if tier not in TIERS
        ]
        if sum(p.catalog for p in self.providers.values()) > 1:
            problems.append("providers: at most one provider may be the catalog")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider ready to call."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """The validated config with its providers resolved (keys read from the environment)."""

    config: RoutingConfig
    providers: Mapping[str, Provider]
    catalog_provider: str

    @property
    def aliases(self) -> dict[str, list[str]]:
        """Tier aliases and custom aliases → model chains."""
        return {**self.config.tiers, **self.config.aliases}

    def model(self, model_id: str) -> ModelConfig:
        """The overrides of ``model_id`` (empty when it has none)."""
        return self.config.models.get(model_id) or _NO_OVERRIDES


_NO_OVERRIDES = ModelConfig()
"""A model's overrides when it has none (frozen, so one serves every lookup)."""


def _resolve(
    name: str, spec: ProviderConfig, settings: RouterSettings, environ: Mapping[str, str]
) -> Provider:
    base_url, api_key, headers = spec.base_url, None, dict(spec.headers)
    if name == DEFAULT_PROVIDER:
        base_url = base_url or settings.openrouter_base_url
        secret = settings.openrouter_api_key
        api_key = secret.get_secret_value() if secret else None
        if settings.openrouter_http_referer:
            headers.setdefault("HTTP-Referer", settings.openrouter_http_referer)
        if settings.openrouter_app_title:
            headers.setdefault("X-Title", settings.openrouter_app_title)
    if base_url is None:
        raise ConfigError(f"providers.{name}.base_url: required")
    if spec.api_key_env:
        api_key = environ.get(spec.api_key_env) or None
        if api_key is None:
            raise ConfigError(
                f"providers.{name}.api_key_env: environment variable {spec.api_key_env} is not set"
            )
    return Provider(name, base_url.rstrip("/"), api_key, headers, spec.timeout)


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _explain(path: Path | None, exc: ValidationError) -> ConfigError:
    where = f"{path}: " if path else ""
    lines = [
        f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return ConfigError(f"{where}invalid routing config:\n  " + "\n  ".join(lines))


def load_routing(settings: RouterSettings, environ: Mapping[str, str] | None = None) -> Routing:
    """The routing config from ``SWITCHBOARD_CONFIG`` (or the defaults); raises
    :class:`ConfigError` with a readable message."""
    environ = os.environ if environ is None else environ
    path = settings.switchboard_config
    raw = _read(path) if path is not None else None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the routing config must be a YAML mapping")
    try:
        config = RoutingConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    specs = {DEFAULT_PROVIDER: ProviderConfig(), **config.providers}
    providers = {name: _resolve(name, spec, settings, environ) for name, spec in specs.items()}
    flagged = [name for name, spec in specs.items() if spec.catalog]
    return Routing(config, providers, flagged[0] if flagged else DEFAULT_PROVIDER)
