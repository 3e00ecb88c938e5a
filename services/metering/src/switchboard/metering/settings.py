"""Metering's settings, read once from environment variables in the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from switchboard.common.settings import ServiceSettings

__all__ = ["MeteringSettings"]


class MeteringSettings(ServiceSettings):
    """Everything metering reads from its environment."""

    # An empty variable (``CLICKHOUSE_URL=``) means "not set", as in a Helm value left blank.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    clickhouse_url: SecretStr | None = None
    """``CLICKHOUSE_URL``: the ledger's ClickHouse. ``chdb:///abs/path`` runs ClickHouse
    in this process on that directory (one process at a time); ``http(s)://user:password@
    host:8123/database`` is a server. Unset: ``chdb://`` under ``SWITCHBOARD_DATA_DIR``.
    Secret, since a server URL carries its password."""
    switchboard_data_dir: Path = Path(".switchboard")
    """``SWITCHBOARD_DATA_DIR``: where local state lives; the embedded ledger defaults to
    ``<dir>/clickhouse``."""
    clickhouse_connect_timeout: float = Field(default=5.0, gt=0)
    """``CLICKHOUSE_CONNECT_TIMEOUT``: seconds to connect to a ClickHouse server."""
    clickhouse_query_timeout: float = Field(default=60.0, gt=0)
    """``CLICKHOUSE_QUERY_TIMEOUT``: seconds one insert or query may take on a server."""

    metering_batch_size: int = Field(default=1000, ge=1, le=100_000)
    """``METERING_BATCH_SIZE``: most usage events written by one insert."""
    metering_batch_max_wait: float = Field(default=1.0, gt=0, le=60)
    """``METERING_BATCH_MAX_WAIT``: seconds a batch waits to fill once it holds one event;
    then it is written however small. Bounds how stale the ledger is."""
    metering_max_ack_pending: int = Field(default=10_000, ge=1)
    """``METERING_MAX_ACK_PENDING``: events delivered to metering and not acknowledged yet,
    at most (JetStream stops delivering beyond it). At least ``METERING_BATCH_SIZE``."""
    metering_ack_wait: float = Field(default=60.0, ge=1)
    """``METERING_ACK_WAIT``: seconds JetStream waits for an acknowledgement before it
    delivers an event again (the copy is then collapsed in the ledger, never counted
    twice). Keep it above the time one insert takes."""
    metering_consumer: str = Field(default="switchboard-metering", pattern=r"^[A-Za-z0-9_-]+$")
    """``METERING_CONSUMER``: name of the durable JetStream consumer; every replica shares
    it, so each event goes to one of them."""
    metering_retry_initial: float = Field(default=0.5, gt=0)
    """``METERING_RETRY_INITIAL``: seconds before the first retry of a failed insert (and of
    binding to the usage stream); doubled after each failure."""
    metering_retry_max: float = Field(default=30.0, gt=0)
    """``METERING_RETRY_MAX``: longest wait between two retries."""
    metering_retention_days: int = Field(default=0, ge=0, le=36_500)
    """``METERING_RETENTION_DAYS``: days a raw usage event is kept (ClickHouse TTL on
    ``usage_events``, by ``received_at``); ``0`` keeps them for ever. Applied at start."""

    metering_usage_max_days: int = Field(default=366, ge=1, le=3660)
    """``METERING_USAGE_MAX_DAYS``: longest date range (days, both ends included) one
    ``/v1/usage`` request may ask for."""
    metering_sql_max_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    """``METERING_SQL_MAX_ROWS``: rows ``switchboard sql`` returns at most (the answer says
    when it was cut)."""
    metering_sql_timeout: float = Field(default=30.0, gt=0)
    """``METERING_SQL_TIMEOUT``: seconds an analyst query may run."""

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse URL to use (the embedded default resolved to an absolute path)."""
        if self.clickhouse_url is not None:
            return self.clickhouse_url.get_secret_value()
        return f"chdb://{(self.switchboard_data_dir / 'clickhouse').resolve()}"

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.metering_max_ack_pending < self.metering_batch_size:
            raise ValueError("METERING_MAX_ACK_PENDING must be at least METERING_BATCH_SIZE")
        if self.metering_retry_max < self.metering_retry_initial:
            raise ValueError("METERING_RETRY_MAX must be at least METERING_RETRY_INITIAL")
        return self
