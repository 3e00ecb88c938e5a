"""Writing batches: one row per event whatever the deliveries, rollups exact."""

from __future__ import annotations

from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from switchboard.metering.sink import Batch, LedgerSink

from .._support import ledger_counts, scalar, usage_event, write_events


def test_a_batch_written_twice_counts_once(ch: Client) -> None:
    events = [usage_event(prompt_tokens=i, cost_usd=0.001 * i) for i in range(1, 21)]
    write_events(ch, events)
    write_events(ch, events[:10])  # a redelivery of half of them
    events_once, rows = ledger_counts(ch)
    assert (events_once, rows) == (20, 30)
    assert scalar(ch, "SELECT sum(prompt_tokens) FROM usage_events FINAL") == sum(range(1, 21))
    daily = ch.query(
        "SELECT requests, prompt_tokens, cost_usd FROM usage_daily_by_key_model"
    ).result_rows
    assert daily == [(20, sum(range(1, 21)), Decimal("0.21"))]
    hourly = scalar(ch, "SELECT sum(requests) FROM usage_hourly_by_model")
    assert hourly == 20


def test_merges_collapse_the_copies_for_good(ch: Client) -> None:
    events = [usage_event() for _ in range(5)]
    write_events(ch, events)
    write_events(ch, events)
    ch.command("OPTIMIZE TABLE usage_events FINAL")
    assert ledger_counts(ch) == (5, 5)


def test_rejects_are_kept_whole(ch: Client) -> None:
    batch = Batch()
    batch.add(b'{"key_id": "key_z", "oops": true}', subject="subj", stream_sequence=5)
    batch.add(b'{"key_id": "key_z", "oops": true}', subject="subj", stream_sequence=5)
    LedgerSink(ch).write(batch)
    rows = ch.query("SELECT stream_sequence, key_id, payload FROM usage_rejects FINAL").result_rows
    assert rows == [(5, "key_z", '{"key_id": "key_z", "oops": true}')]
    assert ledger_counts(ch) == (0, 0)


def test_a_failed_insert_raises(ch: Client) -> None:
    ch.command("RENAME TABLE usage_events TO usage_events_away")
    with pytest.raises(DatabaseError):
        write_events(ch, [usage_event()])
