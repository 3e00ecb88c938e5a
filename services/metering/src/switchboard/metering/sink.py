"""Writing batches of usage events into the ledger.

A batch is written by at most two inserts (events, then rejects). Copies of one event in
the same batch are written once; copies across batches (redeliveries) are collapsed by the
table itself (see ``sql/0001_usage_events.sql``), so writing a batch again after a failure
is always safe: the caller acknowledges the messages only once :meth:`LedgerSink.write`
returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from switchboard.metering.clickhouse import Client
from switchboard.metering.ledger import EVENT_COLUMNS, REJECT_COLUMNS, Reject, Row, decode
from switchboard.metering.migrations import EVENTS_TABLE

__all__ = ["Batch", "LedgerSink"]

REJECTS_TABLE = "usage_rejects"


@dataclass(slots=True)
class Batch:
    """Decoded messages waiting to be written: rows keyed by event id, and rejects."""

    rows: dict[str, Row] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0
    """Messages whose event was already in this batch (written once)."""

    def add(self, data: bytes, *, subject: str, stream_sequence: int) -> None:
        """Decode one message into the batch."""
        decoded = decode(data, subject=subject, stream_sequence=stream_sequence)
        if isinstance(decoded, Reject):
            self.rejects.append(decoded)
            return
        event_id, row = decoded
        if event_id in self.rows:
            self.duplicates += 1
            return
        self.rows[event_id] = row

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejects)


class LedgerSink:
    """Inserts batches through one ClickHouse client (blocking: call it from a thread)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def write(self, batch: Batch) -> None:
        """Insert the batch; raises if ClickHouse did not take all of it."""
        if batch.rows:
            self._client.insert(EVENTS_TABLE, list(batch.rows.values()), column_names=EVENT_COLUMNS)
        if batch.rejects:
            self._client.insert(
                REJECTS_TABLE, [reject.row for reject in batch.rejects], column_names=REJECT_COLUMNS
            )
