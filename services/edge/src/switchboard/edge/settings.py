"""Edge settings, read once from the environment in the entry point."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from switchboard.common.settings import ServiceSettings

__all__ = ["CacheScope", "EdgeSettings", "Network", "RedisFailurePolicy"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RedisFailurePolicy = Literal["cached", "closed"]
CacheScope = Literal["key", "shared"]


class EdgeSettings(ServiceSettings):
    """Everything the edge can be told. Env var names are the field names, upper-cased."""

    edge_host: str = "127.0.0.1"
    """``EDGE_HOST``: address the HTTP API binds."""
    edge_port: int = Field(default=8080, ge=0, le=65535)
    """``EDGE_PORT``: port the HTTP API binds."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``REDIS_URL``: API keys, rate-limit windows and quotas (see docs/keys-and-limits.md)."""
    edge_request_timeout: float = Field(default=600.0, gt=0)
    """``EDGE_REQUEST_TIMEOUT``: seconds a chat completion may take end to end (its deadline)."""
    edge_idle_timeout: float = Field(default=20.0, gt=0)
    """``EDGE_IDLE_TIMEOUT``: seconds without any frame (routers send keepalives) before the
    edge gives up on a router that died mid-request."""
    edge_max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """``EDGE_MAX_BODY_BYTES``: larger request bodies are refused with 413."""
    edge_max_content_chars: int = Field(default=32_000, gt=0)
    """``EDGE_MAX_CONTENT_CHARS``: characters of message text a conversation may hold; more is
    refused with 400 ``context_length_exceeded``."""
    edge_max_messages: int = Field(default=2048, gt=0)
    """``EDGE_MAX_MESSAGES``: messages one request may hold; more is 400
    ``array_above_max_length`` (OpenAI's own limit is 2048)."""
    edge_max_tools: int = Field(default=128, gt=0)
    """``EDGE_MAX_TOOLS``: tools one request may declare; more is 400 ``array_above_max_length``
    (OpenAI's own limit is 128)."""
    edge_header_timeout: float = Field(default=10.0, gt=0)
    """``EDGE_HEADER_TIMEOUT``: seconds a client has to send a request's line and headers,
    from the connection's start (or, kept alive, the request's first byte); then ``408`` and
    the connection is closed (slow clients, slowloris)."""
    edge_body_timeout: float = Field(default=60.0, gt=0)
    """``EDGE_BODY_TIMEOUT``: seconds a client has to send a request's whole body once its
    headers arrived; then ``408`` and the connection is closed."""
    edge_max_header_bytes: int = Field(default=64 * 1024, gt=0)
    """``EDGE_MAX_HEADER_BYTES``: bytes of request line and headers a request may have; more
    is refused with ``431``."""
    edge_health_timeout: float = Field(default=1.0, gt=0)
    """``EDGE_HEALTH_TIMEOUT``: seconds each dependency check of ``/health`` may take."""

    edge_metrics_on_api_port: bool = False
    """``EDGE_METRICS_ON_API_PORT``: also serve ``/metrics`` on the API port (it is always on
    the ops port, ``OPS_PORT``). Off by default: the API port is often public."""

    # --- keys and the key cache
    switchboard_admin_token: SecretStr | None = None
    """``SWITCHBOARD_ADMIN_TOKEN``: bearer token of the admin API (``/admin/keys``). Unset, the
    admin API answers 404 as if it did not exist. Never logged."""
    edge_key_cache_ttl: float = Field(default=30.0, gt=0)
    """``EDGE_KEY_CACHE_TTL``: seconds a key record is served from the in-process cache before
    it is read again. Changes reach every edge at once through Redis pub/sub; this bounds
    staleness if an event is ever lost."""
    edge_key_cache_size: int = Field(default=10_000, gt=0)
    """``EDGE_KEY_CACHE_SIZE``: key records (and, separately, unknown keys) the cache holds;
    the least recently used go first."""
    edge_key_negative_ttl: float = Field(default=5.0, ge=0)
    """``EDGE_KEY_NEGATIVE_TTL``: seconds an unknown key is remembered as unknown, so that a
    flood of bad keys does not read Redis for each one (failures are still counted)."""
    edge_rotate_grace: float = Field(default=3600.0, ge=0)
    """``EDGE_ROTATE_GRACE``: default seconds a rotated-out secret keeps working
    (``keys rotate --grace``)."""
    edge_invalidation_wait: float = Field(default=1.0, ge=0)
    """``EDGE_INVALIDATION_WAIT``: seconds ``keys update|revoke|rotate`` waits for every
    running edge to confirm it dropped the key from its cache."""

    # --- rate limits and quotas
    edge_rate_window: float = Field(default=60.0, gt=0)
    """``EDGE_RATE_WINDOW``: length in seconds of the sliding window of every per-minute limit
    (RPM, TPM, the per-IP limits). Change it only in tests."""
    edge_default_rpm: int = Field(default=0, ge=0)
    """``EDGE_DEFAULT_RPM``: requests per minute of keys that set none; 0 is unlimited."""
    edge_default_tpm: int = Field(default=0, ge=0)
    """``EDGE_DEFAULT_TPM``: tokens per minute of keys that set none; 0 is unlimited."""
    edge_default_max_concurrent: int = Field(default=0, ge=0)
    """``EDGE_DEFAULT_MAX_CONCURRENT``: in-flight requests of keys that set none; 0 is
    unlimited."""
    edge_estimated_completion_tokens: int = Field(default=1024, ge=0)
    """``EDGE_ESTIMATED_COMPLETION_TOKENS``: completion tokens reserved against a TPM limit
    when a request sets no ``max_tokens``/``max_completion_tokens`` (reconciled afterwards)."""
    edge_concurrency_lease: float = Field(default=30.0, gt=0)
    """``EDGE_CONCURRENCY_LEASE``: seconds a concurrency slot outlives its edge: leases are
    renewed while the request runs, so a crashed edge frees its slots after this long."""
    edge_ip_rpm: int = Field(default=0, ge=0)
    """``EDGE_IP_RPM``: chat requests per minute one client IP may make, whatever the key;
    0 is off."""
    edge_auth_failures_per_minute: int = Field(default=30, ge=0)
    """``EDGE_AUTH_FAILURES_PER_MINUTE``: failed authentications one client IP may make in a
    minute; after that every request from it gets 429 until the minute is over. 0 is off."""

    # --- network and Redis failure
    edge_trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = ()
    """``EDGE_TRUSTED_PROXIES``: comma-separated CIDRs of reverse proxies whose
    ``Forwarded``/``X-Forwarded-For``/``X-Forwarded-Proto`` headers are believed. Empty: the
    TCP peer is the client."""
    edge_require_https: bool = False
    """``EDGE_REQUIRE_HTTPS``: refuse plain-HTTP requests (except ``/health*``) with 403
    ``https_required``; behind a trusted proxy its ``X-Forwarded-Proto`` decides."""
    edge_redis_failure_policy: RedisFailurePolicy = "cached"
    """``EDGE_REDIS_FAILURE_POLICY``: while Redis is unreachable, ``cached`` serves keys this
    edge has cached under in-process limits (unknown keys get 503); ``closed`` refuses every
    request with 503."""
    edge_redis_timeout: float = Field(default=1.0, gt=0)
    """``EDGE_REDIS_TIMEOUT``: seconds to connect to Redis or wait for one reply."""
    edge_redis_max_connections: int = Field(default=64, gt=0)
    """``EDGE_REDIS_MAX_CONNECTIONS``: pooled Redis connections per edge process; requests
    beyond that wait for a free one."""

    # --- response cache
    edge_cache_ttl: float = Field(default=3600.0, ge=0)
    """``EDGE_CACHE_TTL``: seconds a deterministic answer (``temperature`` 0 or a ``seed``,
    one choice) is kept in Redis and served again without calling a model; 0 turns the
    response cache off."""
    edge_cache_scope: CacheScope = "key"
    """``EDGE_CACHE_SCOPE``: ``key`` keeps each API key's cached answers to itself;
    ``shared`` lets every key be served answers cached for another."""

    @field_validator("switchboard_admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("edge_trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in value.split(",")
                if part.strip()
            )
        return value
