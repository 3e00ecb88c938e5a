"""The router's settings, read once from environment variables in the entry point."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from switchboard.common.settings import ServiceSettings

__all__ = ["RouterSettings"]


class RouterSettings(ServiceSettings):
    """Everything the router reads from its environment."""

    # An empty variable (``OPENROUTER_API_KEY=``) means "not set", as in a Helm value left blank.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    """``OPENROUTER_BASE_URL``: the OpenAI-compatible upstream API root (no trailing slash)."""
    openrouter_api_key: SecretStr | None = None
    """``OPENROUTER_API_KEY``: sent as ``Authorization: Bearer …`` when set; never logged."""
    openrouter_http_referer: str | None = None
    """``OPENROUTER_HTTP_REFERER``: app attribution, sent as the ``HTTP-Referer`` header."""
    openrouter_app_title: str | None = None
    """``OPENROUTER_APP_TITLE``: app attribution, sent as the ``X-Title`` header."""

    router_upstream_connect_timeout: float = Field(default=5.0, gt=0)
    """``ROUTER_UPSTREAM_CONNECT_TIMEOUT``: seconds to open a connection to the upstream
    (also the longest wait for a free pooled connection)."""
    router_upstream_read_timeout: float = Field(default=120.0, gt=0)
    """``ROUTER_UPSTREAM_READ_TIMEOUT``: longest silence, in seconds, between two bytes of an
    upstream answer (or while sending the request). The request's deadline bounds the
    whole exchange."""
    router_max_connections: int = Field(default=256, ge=1)
    """``ROUTER_MAX_CONNECTIONS``: size of the pooled upstream HTTP connection pool."""
    router_keepalive_interval: float = Field(default=5.0, gt=0)
    """``ROUTER_KEEPALIVE_INTERVAL``: seconds of silence after which a ``k`` frame tells the
    edge that this router is still working on a request."""
    router_max_in_flight: int = Field(default=200, ge=1)
    """``ROUTER_MAX_IN_FLIGHT``: chat completions served at once by this replica; more wait
    for a slot (within their deadline). Keep it below ``ROUTER_MAX_CONNECTIONS``."""
    router_models_cache_ttl: float = Field(default=300.0, ge=0)
    """``ROUTER_MODELS_CACHE_TTL``: seconds the upstream model list is reused; ``0`` asks
    the upstream every time."""

    @field_validator("openrouter_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")
