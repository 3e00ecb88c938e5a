"""Usage reports, the read-only SQL guard and runner, erasure: on the real schema."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from tests.support.clickhouse import LedgerTarget

from switchboard.common.metering import UsageQuery
from switchboard.metering.clickhouse import open_readonly_client
from switchboard.metering.queries import (
    NotReadOnlyError,
    erase,
    read_only_statement,
    run_sql,
    usage_report,
)

from .._support import ledger_counts, scalar, usage_event, write_events


def _today() -> date:
    return datetime.now(UTC).date()


def _noon(day: date) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def seeded(ch: Client) -> Client:
    """Two keys over three days, several models, errors, cache hits, unknown costs."""
    today = _today()
    events = [
        usage_event(key_id="key_a", at=_noon(today), cost_usd=0.5),
        usage_event(key_id="key_a", at=_noon(today), cost_usd=0.25, served_model="m/big"),
        usage_event(
            key_id="key_a",
            at=_noon(today - timedelta(days=1)),
            status="error",
            http_status=502,
            error_code="upstream_error",
            prompt_tokens=3,
            completion_tokens=0,
            total_tokens=3,
            cost_usd=None,
            cost_source="unknown",
        ),
        usage_event(
            key_id="key_a",
            at=_noon(today - timedelta(days=1)),
            cache_hit=True,
            cost_usd=0.0,
            cost_saved_usd=0.1,
        ),
        usage_event(key_id="key_a", at=_noon(today - timedelta(days=40)), cost_usd=9.0),
        usage_event(key_id="key_b", at=_noon(today), cost_usd=100.0, end_user="someone"),
    ]
    write_events(ch, events)
    write_events(ch, events[:3])  # redelivered copies never count
    return ch


def test_report_totals_and_breakdowns(seeded: Client) -> None:
    today = _today()
    report = usage_report(
        seeded, UsageQuery(key_id="key_a", start_date=today - timedelta(days=6), end_date=today)
    )
    assert report.totals.requests == 4
    assert report.totals.errors == 1
    assert report.totals.cache_hits == 1
    assert report.totals.prompt_tokens == 10 + 10 + 3 + 10
    assert report.totals.completion_tokens == 15
    assert report.totals.cost_usd == pytest.approx(0.75)
    assert [m.model for m in report.by_model] == ["openai/gpt-4o-mini", "m/big"]
    assert [m.requests for m in report.by_model] == [3, 1]
    assert [(d.date, d.requests) for d in report.by_day] == [
        (today - timedelta(days=1), 2),
        (today, 2),
    ]
    assert report.by_day[0].errors == 1
    assert report.model_dump()["object"] == "usage.report"


def test_report_never_shows_another_keys_usage(seeded: Client) -> None:
    today = _today()
    report = usage_report(seeded, UsageQuery(key_id="key_b", start_date=today, end_date=today))
    assert report.totals.requests == 1
    assert report.totals.cost_usd == 100.0
    nobody = usage_report(seeded, UsageQuery(key_id="key_c", start_date=today, end_date=today))
    assert nobody.totals.requests == 0
    assert nobody.by_model == []
    assert nobody.by_day == []


def test_report_range_is_inclusive_by_utc_day(seeded: Client) -> None:
    day = _today() - timedelta(days=40)
    report = usage_report(seeded, UsageQuery(key_id="key_a", start_date=day, end_date=day))
    assert report.totals.requests == 1
    assert report.totals.cost_usd == 9.0


# ------------------------------------------------------------------ the SQL guard


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select 1;  ",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SHOW TABLES",
        "DESCRIBE TABLE usage_events",
        "desc usage_events",
        "-- a comment; with a semicolon\nSELECT 'a;b' AS `c;d` /* ; */",
        "SELECT 'it''s; fine', \"col\" FROM t -- trailing; comment",
        "SELECT 'format' AS word",
    ],
)
def test_guard_lets_reads_through(sql: str) -> None:
    assert read_only_statement(sql).rstrip(";").strip()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO usage_events VALUES (1)", "not INSERT"),
        ("DROP TABLE usage_events", "not DROP"),
        ("ALTER TABLE usage_events DELETE WHERE 1", "not ALTER"),
        ("SET readonly = 0", "not SET"),
        ("SELECT 1; DROP TABLE usage_events", "one statement"),
        ("/* hi */ OPTIMIZE TABLE usage_events", "not OPTIMIZE"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
        ("SELECT 1 FORMAT JSON", "FORMAT"),
        ("SELECT 'unterminated", "unterminated quote"),
        ("SELECT 1 /* open", "unterminated comment"),
        ("", "not this"),
        ("123", "not this"),
    ],
)
def test_guard_refuses_anything_else(sql: str, message: str) -> None:
    with pytest.raises(NotReadOnlyError, match=message):
        read_only_statement(sql)


def test_runs_analyst_sql_read_only_as_json(seeded: Client, ledger_target: LedgerTarget) -> None:
    readonly = open_readonly_client(ledger_target.url, max_rows=100, max_execution_time=5)
    try:
        result = run_sql(
            readonly,
            "SELECT key_id, count() AS requests, sum(cost_usd) AS cost, max(received_at) AS last,"
            " [1, 2] AS arr, map('a', 1) AS m, toUUID('00000000-0000-0000-0000-000000000001') AS u,"
            " nan AS n, toDate('2025-01-02') AS d, 'é' AS s, toFixedString('ab', 2) AS fs"
            " FROM usage_events FINAL GROUP BY key_id ORDER BY key_id",
            max_rows=100,
        )
        assert result.columns[:3] == ["key_id", "requests", "cost"]
        assert result.types[1] == "UInt64"
        first = result.rows[0]
        assert first[:3] == ["key_a", 5, "9.7500000000"]
        assert first[3].startswith(str(_today().year - 1)[:2])  # an ISO timestamp
        assert first[4:] == [
            [1, 2],
            {"a": 1},
            "00000000-0000-0000-0000-000000000001",
            None,
            "2025-01-02",
            "é",
            "ab",
        ]
        assert not result.truncated
        with pytest.raises(DatabaseError, match="readonly"):
            run_sql(
                readonly, "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')", max_rows=1
            )
    finally:
        readonly.close()


def test_cuts_long_answers(ch: Client, ledger_target: LedgerTarget) -> None:
    readonly = open_readonly_client(ledger_target.url, max_rows=5, max_execution_time=5)
    try:
        result = run_sql(readonly, "SELECT number FROM numbers(100000)", max_rows=5)
        assert result.rows == [[0], [1], [2], [3], [4]]
        assert result.truncated
        exact = run_sql(readonly, "SELECT number FROM numbers(5)", max_rows=5)
        assert not exact.truncated
    finally:
        readonly.close()


# ------------------------------------------------------------------ erasure


def test_erases_a_key_everywhere(seeded: Client) -> None:
    seeded.insert(
        "usage_rejects",
        [[99, "s", "key_a", "", "bad", "{}"]],
        column_names=["stream_sequence", "subject", "key_id", "end_user", "reason", "payload"],
    )
    result = erase(seeded, key_id="key_a")
    assert result.events == 5
    assert result.rows == 8  # three of them had a redelivered copy
    assert result.daily_rollup_rows == 4  # today x 2 models, yesterday, 40 days ago
    assert result.hourly_rollup_rows == 4
    assert result.rejects == 1
    assert scalar(seeded, "SELECT count() FROM usage_events WHERE key_id = 'key_a'") == 0
    assert (
        scalar(seeded, "SELECT count() FROM usage_daily_by_key_model WHERE key_id = 'key_a'") == 0
    )
    assert scalar(seeded, "SELECT count() FROM usage_rejects WHERE key_id = 'key_a'") == 0
    assert ledger_counts(seeded) == (1, 1)  # key_b untouched
    again = erase(seeded, key_id="key_a")
    assert (again.events, again.rows, again.rejects) == (0, 0, 0)


def test_erases_one_end_user(seeded: Client) -> None:
    result = erase(seeded, end_user="someone")
    assert (result.events, result.rows, result.key_id, result.end_user) == (1, 1, None, "someone")
    assert scalar(seeded, "SELECT count() FROM usage_events WHERE end_user = 'someone'") == 0
    assert ledger_counts(seeded)[0] == 5


def test_erase_needs_exactly_one_name(ch: Client) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        erase(ch)
    with pytest.raises(ValueError, match="exactly one"):
        erase(ch, key_id="a", end_user="b")


def test_report_time_over_many_rows_is_small(ch: Client) -> None:
    """A smoke check of the indexed path (the real benchmark lives elsewhere)."""
    now = time.time()
    ch.command(
        "INSERT INTO usage_events (event_id, request_id, event_version, key_id, requested_model,"
        " status, http_status, prompt_tokens, completion_tokens, total_tokens, cost_usd,"
        " latency_ms, received_at, started_at, finished_at)"
        " SELECT concat('e', toString(number)), concat('e', toString(number)), 1,"
        " concat('key_', toString(number % 50)), 'm', 'ok', 200, 10, 5, 15, 0.001, 100,"
        " toDateTime64({now:Float64} - number * 3, 3), toDateTime64({now:Float64} - number * 3, 3),"
        " toDateTime64({now:Float64} - number * 3, 3) FROM numbers(200000)",
        parameters={"now": now},
    )
    query = UsageQuery(key_id="key_7", start_date=_today() - timedelta(days=30), end_date=_today())
    usage_report(ch, query)  # warm
    started = time.perf_counter()
    report = usage_report(ch, query)
    elapsed = time.perf_counter() - started
    assert report.totals.requests == 4000
    assert elapsed < 1.0


def test_report_agrees_with_the_daily_rollup(seeded: Client) -> None:
    today = _today()
    start = today - timedelta(days=60)
    report = usage_report(seeded, UsageQuery(key_id="key_a", start_date=start, end_date=today))
    requests, tokens, cost = seeded.query(
        "SELECT sum(requests), sum(prompt_tokens), sum(cost_usd) FROM usage_daily_by_key_model"
        " WHERE key_id = 'key_a' AND day BETWEEN {start:Date} AND {end:Date}",
        parameters={"start": start, "end": today},
    ).result_rows[0]
    assert (report.totals.requests, report.totals.prompt_tokens) == (requests, tokens)
    assert report.totals.cost_usd == float(cost)
