"""Settings shared by every service, read from environment variables.

Each service subclasses :class:`ServiceSettings`, builds it once in its entry point and
passes it down; nothing reads the environment anywhere else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["NatsSettings", "ServiceSettings"]


class NatsSettings(BaseSettings):
    """How to reach NATS."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    nats_url: str = Field(default="nats://127.0.0.1:4222")
    """``NATS_URL``: one or more comma-separated server URLs."""
    nats_connect_timeout: float = Field(default=2.0, gt=0)
    """``NATS_CONNECT_TIMEOUT``: seconds to wait for one connection attempt."""
    nats_max_reconnect_attempts: int = Field(default=-1)
    """``NATS_MAX_RECONNECT_ATTEMPTS``: ``-1`` keeps reconnecting for ever."""
    nats_drain_timeout: float = Field(default=10.0, gt=0)
    """``NATS_DRAIN_TIMEOUT``: seconds to finish in-flight work on shutdown."""

    @property
    def servers(self) -> list[str]:
        """The server URLs as a list."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


class ServiceSettings(NatsSettings):
    """Base of every service's settings."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """``LOG_LEVEL``: minimum level written to the JSON log on stderr."""
    ops_host: str = "127.0.0.1"
    """``OPS_HOST``: address of the ops listener (``/health/live``, ``/health/ready``,
    ``/metrics``); ``0.0.0.0`` in a cluster, so that probes and Prometheus reach it."""
    ops_port: int = Field(default=9464, ge=0, le=65535)
    """``OPS_PORT``: port of the ops listener; ``0`` disables it."""
