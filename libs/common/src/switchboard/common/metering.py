"""Metering's request/reply interface on NATS: subjects and message models, version 1.

Replies are JSON. A failed request is answered with OpenAI's error body
(:class:`~switchboard.common.errors.ErrorBody`) and the headers ``Nats-Service-Error``
(the message) and ``Nats-Service-Error-Code`` (an HTTP status: 400 for a bad request, 503
while the ledger is unavailable, 500 otherwise).

The edge (``GET /v1/usage``), the ``switchboard`` command (``sql``, ``usage erase``) and
metering all read these models from here; the subjects are in
:mod:`switchboard.common.subjects`.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchboard.common.subjects import (
    METERING_ERASE,
    METERING_PING,
    METERING_QUEUE,
    METERING_SQL,
    METERING_USAGE,
)

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "METERING_ERASE",
    "METERING_PING",
    "METERING_QUEUE",
    "METERING_SQL",
    "METERING_USAGE",
    "DailyUsage",
    "EraseRequest",
    "EraseResult",
    "MeteringPong",
    "ModelUsage",
    "SqlRequest",
    "SqlResult",
    "UsageCounters",
    "UsageQuery",
    "UsageReport",
]

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class UsageQuery(_Message):
    """One key's usage over a range of days (UTC), both ends included."""

    v: Literal[1] = 1
    key_id: str = Field(min_length=1, max_length=256)
    start_date: date
    end_date: date


class UsageCounters(_Message):
    """What a set of requests used."""

    requests: int = 0
    """Requests made (each counted once)."""
    errors: int = 0
    """Requests that ended with an error."""
    cache_hits: int = 0
    """Requests answered from the response cache."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    """US dollars; requests of unknown cost add nothing."""


class ModelUsage(UsageCounters):
    """Usage of one model (the model that served, else the one requested)."""

    model: str


class DailyUsage(UsageCounters):
    """Usage of one day (UTC)."""

    date: date


class UsageReport(_Message):
    """``GET /v1/usage``'s body: totals and breakdowns of one key over a range of days."""

    object: Literal["usage.report"] = "usage.report"
    key_id: str
    start_date: date
    end_date: date
    totals: UsageCounters
    by_model: list[ModelUsage]
    """One entry per model used, most expensive first."""
    by_day: list[DailyUsage]
    """One entry per day with requests, oldest first."""


class SqlRequest(_Message):
    """A read-only analyst query."""

    v: Literal[1] = 1
    sql: str = Field(min_length=1, max_length=100_000)


class SqlResult(_Message):
    """An analyst query's answer."""

    columns: list[str]
    types: list[str]
    """ClickHouse type of each column."""
    rows: list[list[Any]]
    """Values as JSON: numbers, strings (dates, times, decimals as text), lists, null."""
    truncated: bool = False
    """True when the answer had more rows than ``METERING_SQL_MAX_ROWS``."""


class EraseRequest(_Message):
    """Erase one API key's, or one end user's, usage."""

    v: Literal[1] = 1
    key_id: str | None = Field(default=None, min_length=1, max_length=256)
    end_user: str | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.key_id is None) == (self.end_user is None):
            raise ValueError("name exactly one of key_id and end_user")
        return self


class EraseResult(_Message):
    """What was erased."""

    key_id: str | None = None
    end_user: str | None = None
    events: int
    """Usage events erased (each counted once)."""
    rows: int
    """Rows deleted from ``usage_events`` (copies of redelivered events included)."""
    daily_rollup_rows: int
    """Rows of ``usage_daily_by_key_model`` that vanished (a view: recomputed)."""
    hourly_rollup_rows: int
    """Rows of ``usage_hourly_by_model`` the erased events contributed to (recomputed)."""
    rejects: int
    """Rows deleted from ``usage_rejects``."""


class MeteringPong(_Message):
    """A metering replica's readiness."""

    instance_id: str
    ready: bool
    """The ledger is open and migrated: queries are answered."""
    consuming: bool
    """Bound to the usage stream's durable consumer."""
    clickhouse: Literal["embedded", "server"]
    events_written: int
    """Usage events this replica wrote since it started."""
    last_error: str | None = None
    """The latest failure to write or bind, if the latest attempt failed."""
