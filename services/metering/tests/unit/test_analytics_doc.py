"""docs/analytics.md holds: every query runs read-only on the real schema and finds rows,
and the table reference lists exactly the columns the migrations create."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from tests.support.clickhouse import LedgerTarget

from switchboard.metering.clickhouse import open_readonly_client
from switchboard.metering.queries import run_sql

from .._support import usage_event, write_events

DOC = Path(__file__).resolve().parents[4] / "docs" / "analytics.md"
_SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
_TABLE_HEADING = re.compile(r"^### `(\w+)`$", re.MULTILINE)
_COLUMN_ROW = re.compile(r"^\| `(\w+)` \| `(.+?)` \| .+ \|$", re.MULTILINE)


def _queries() -> list[str]:
    return _SQL_BLOCK.findall(DOC.read_text())


def _failed_attempt(model: str, provider: str, code: str) -> dict[str, object]:
    return {
        "model": model,
        "provider": provider,
        "status": "error",
        "http_status": 502,
        "error_code": code,
        "duration_ms": 900,
    }


@pytest.fixture
def analyst(ch: Client, ledger_target: LedgerTarget) -> Iterator[Client]:
    """A read-only client on a ledger holding a bit of everything."""
    now = time.time()
    events = [
        usage_event(at=now - 60, end_user="alice", cost_usd=0.02),
        usage_event(at=now - 120, end_user="bob", stream=False, ttft_ms=None),
        usage_event(at=now - 180, key_id="key_beta", key_name="beta", cost_source="catalog"),
        usage_event(
            at=now - 240,
            status="error",
            http_status=502,
            error_type="api_error",
            error_code="upstream_error",
            cost_usd=None,
            cost_source="unknown",
            attempts=[_failed_attempt("openai/gpt-4o-mini", "openrouter", "upstream_error")],
        ),
        usage_event(
            at=now - 300,
            requested_model="auto",
            tier="auto",
            fallbacks=1,
            retries=1,
            attempts=[
                _failed_attempt("m/first", "openrouter", "timeout"),
                {
                    "model": "openai/gpt-4o-mini",
                    "provider": "openrouter",
                    "status": "ok",
                    "http_status": 200,
                    "duration_ms": 300,
                },
            ],
        ),
        usage_event(at=now - 360, cache_hit=True, cost_usd=0.0, cost_saved_usd=0.05, attempts=[]),
        usage_event(at=now - 3 * 86_400, cost_usd=1.5),
    ]
    write_events(ch, events)
    write_events(ch, events[:2])  # copies, as after a redelivery
    ch.insert(
        "usage_rejects",
        [[1, "s", "", "", "bad", "x"]],
        column_names=["stream_sequence", "subject", "key_id", "end_user", "reason", "payload"],
    )
    readonly = open_readonly_client(ledger_target.url, max_rows=1000, max_execution_time=10)
    try:
        yield readonly
    finally:
        readonly.close()


def test_the_page_has_at_least_ten_queries() -> None:
    assert len(_queries()) >= 10


@pytest.mark.parametrize("number", range(1, len(_queries()) + 1))
def test_every_query_runs_and_finds_rows(analyst: Client, number: int) -> None:
    result = run_sql(analyst, _queries()[number - 1], max_rows=1000)
    assert result.rows, f"query {number} found nothing"


def test_the_audit_query_counts_each_event_once(analyst: Client) -> None:
    audit = next(sql for sql in _queries() if "rejected_messages" in sql)
    events, copies, rejected, _ = run_sql(analyst, audit, max_rows=1).rows[0]
    assert (events, copies, rejected) == (7, 2, 1)


def test_the_table_reference_matches_the_schema(ch: Client) -> None:
    text = DOC.read_text()
    headings = list(_TABLE_HEADING.finditer(text))
    assert [h.group(1) for h in headings] == [
        "usage_events",
        "usage_daily_by_key_model",
        "usage_hourly_by_model",
        "usage_rejects",
        "schema_migrations",
    ]
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        section = text[heading.end() : end].split("## ", 1)[0]
        documented = [
            (name, kind.replace("\\|", "|")) for name, kind in _COLUMN_ROW.findall(section)
        ]
        actual = ch.query(
            "SELECT name, type FROM system.columns"
            " WHERE database = currentDatabase() AND table = {table:String} ORDER BY position",
            parameters={"table": heading.group(1)},
        ).result_rows
        assert documented == [tuple(row) for row in actual], heading.group(1)
