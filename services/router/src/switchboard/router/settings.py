"""The router's settings, read once from environment variables in the entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from switchboard.common.events import PrivacyMode
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

    switchboard_config: Path | None = None
    """``SWITCHBOARD_CONFIG``: the routing config (YAML: providers, tiers, aliases, per-model
    overrides, retry and circuit-breaker policy). Unset: one provider from the
    ``OPENROUTER_*`` variables, no aliases, default policies."""
    switchboard_data_dir: Path = Path(".switchboard")
    """``SWITCHBOARD_DATA_DIR``: where local state lives; the catalog copy defaults to
    ``<dir>/router/catalog.json``."""
    router_catalog_cache: Path | None = None
    """``ROUTER_CATALOG_CACHE``: file keeping the last good model catalog, so that the router
    starts during an upstream outage (default ``$SWITCHBOARD_DATA_DIR/router/catalog.json``)."""
    router_catalog_refresh_interval: float = Field(default=300.0, gt=0)
    """``ROUTER_CATALOG_REFRESH_INTERVAL``: seconds between catalog refreshes from the
    upstream's ``GET /models`` (after a failed refresh: sooner, with backoff)."""
    router_catalog_fetch_timeout: float = Field(default=10.0, gt=0)
    """``ROUTER_CATALOG_FETCH_TIMEOUT``: seconds one catalog fetch may take; at start the
    router waits at most this long before it serves with the persisted copy (or none)."""

    router_usage_max_age: float = Field(default=30 * 86400.0, ge=0)
    """``ROUTER_USAGE_MAX_AGE``: seconds the usage stream keeps an event (``0``: for ever)."""
    router_usage_max_bytes: int = Field(default=-1, ge=-1)
    """``ROUTER_USAGE_MAX_BYTES``: size cap of the usage stream, oldest events dropped first
    (``-1``: none)."""
    router_usage_replicas: int = Field(default=1, ge=1, le=5)
    """``ROUTER_USAGE_REPLICAS``: copies JetStream keeps of the usage stream (cluster size)."""
    router_usage_duplicate_window: float = Field(default=300.0, ge=120)
    """``ROUTER_USAGE_DUPLICATE_WINDOW``: seconds JetStream remembers a ``Nats-Msg-Id`` to
    drop a re-published usage event (at least 120)."""
    router_usage_queue_size: int = Field(default=10_000, ge=1)
    """``ROUTER_USAGE_QUEUE_SIZE``: usage events kept in memory while JetStream is
    unavailable; beyond it the oldest is dropped and logged whole (``usage.dropped``)."""
    router_usage_publish_timeout: float = Field(default=2.0, gt=0)
    """``ROUTER_USAGE_PUBLISH_TIMEOUT``: seconds to wait for JetStream's ack of one event
    before it is retried (with backoff, in the background)."""
    router_usage_privacy_mode: PrivacyMode = "metadata"
    """``ROUTER_USAGE_PRIVACY_MODE``: ``off``, ``metadata`` or ``full``; only in ``full`` do
    usage events carry the prompt and answer text (``input_messages``, ``output_choices``),
    for analytics. A key's own privacy mode overrides it. ``off`` and ``metadata`` put no
    text on the bus (events are published either way: metering needs them)."""
    router_usage_max_text_bytes: int = Field(default=262_144, ge=1024, le=786_432)
    """``ROUTER_USAGE_MAX_TEXT_BYTES``: largest serialized ``input_messages`` +
    ``output_choices`` one usage event carries (JetStream refuses messages over 1 MiB);
    beyond it strings are shortened in proportion, then the oldest messages dropped, and
    the event says ``text_truncated``."""

    @property
    def catalog_cache_path(self) -> Path:
        """Where the last good catalog is persisted."""
        return self.router_catalog_cache or self.switchboard_data_dir / "router" / "catalog.json"

    @field_validator("openrouter_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")
