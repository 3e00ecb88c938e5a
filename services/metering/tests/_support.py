"""Helpers for metering's tests: usage events, publishing them, reading the ledger."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from clickhouse_connect.driver.client import Client
from nats.aio.client import Client as Nats
from tests.support.metering import (
    create_usage_stream,
    eventually,
    publish_usage,
    sql_over_nats,
    usage_event,
)

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from switchboard.metering.sink import Batch, LedgerSink

__all__ = [
    "create_usage_stream",
    "eventually",
    "ledger_counts",
    "publish",
    "publish_raw",
    "scalar",
    "sql_over_nats",
    "usage_event",
    "write_events",
]

publish = publish_usage


async def publish_raw(nc: Nats, payload: bytes) -> None:
    """Publish a message that is not (necessarily) a valid event."""
    await nc.jetstream().publish(subjects.USAGE_RECORDED, payload)


def scalar(client: Client, sql: str, **parameters: Any) -> Any:
    """The single value a query returns."""
    return client.query(sql, parameters=parameters).result_rows[0][0]


def ledger_counts(client: Client) -> tuple[int, int]:
    """(events counted once, physical rows) in ``usage_events``."""
    return (
        int(scalar(client, "SELECT count() FROM usage_events FINAL")),
        int(scalar(client, "SELECT count() FROM usage_events")),
    )


def write_events(
    client: Client, events: Iterable[UsageRecorded], *, first_sequence: int = 1
) -> None:
    """Write events straight into the ledger, one batch (as the consumer would)."""
    batch = Batch()
    for sequence, event in enumerate(events, start=first_sequence):
        batch.add(event.model_dump_json().encode(), subject="s", stream_sequence=sequence)
    LedgerSink(client).write(batch)
