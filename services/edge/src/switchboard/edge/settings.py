"""Edge settings, read once from the environment in the entry point."""

from __future__ import annotations

from pydantic import Field

from switchboard.common.settings import ServiceSettings

__all__ = ["EdgeSettings"]


class EdgeSettings(ServiceSettings):
    """Everything the edge can be told. Env var names are the field names, upper-cased."""

    edge_host: str = "127.0.0.1"
    """``EDGE_HOST``: address the HTTP API binds."""
    edge_port: int = Field(default=8080, ge=0, le=65535)
    """``EDGE_PORT``: port the HTTP API binds."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``REDIS_URL``: where API key hashes live."""
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
    edge_health_timeout: float = Field(default=1.0, gt=0)
    """``EDGE_HEALTH_TIMEOUT``: seconds each dependency check of ``/health`` may take."""
