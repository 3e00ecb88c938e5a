"""What metering answers: usage reports, read-only analyst SQL, erasure.

Every value a caller sends reaches ClickHouse as a query parameter (``{name:Type}``),
never inside the SQL text. All functions block: call them from a thread.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from switchboard.common.metering import (
    DailyUsage,
    EraseResult,
    ModelUsage,
    SqlResult,
    UsageCounters,
    UsageQuery,
    UsageReport,
)
from switchboard.metering.clickhouse import Client
from switchboard.metering.migrations import EVENTS_TABLE
from switchboard.metering.sink import REJECTS_TABLE

__all__ = [
    "ALLOWED_STATEMENTS",
    "NotReadOnlyError",
    "erase",
    "read_only_statement",
    "run_sql",
    "usage_report",
]

_USAGE_SQL = """
SELECT toDate(received_at) AS day, model,
       count() AS requests,
       countIf(status = 'error') AS errors,
       countIf(cache_hit) AS cache_hits,
       sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
       sum(ifNull(cost_usd, toDecimal64(0, 10)))
FROM usage_events FINAL
WHERE key_id = {key_id:String}
  AND toDate(received_at) >= {start_date:Date} AND toDate(received_at) <= {end_date:Date}
GROUP BY GROUPING SETS ((day), (model), ())
SETTINGS group_by_use_nulls = 1
"""
"""The same sums as ``usage_daily_by_key_model`` (a test holds them equal), read from the
ledger directly: only the columns a report needs, over the key's slice of the sorting key
and the months of the range. One pass gives all three parts of the report: per day
(``model`` NULL), per model (``day`` NULL) and the total (both NULL; the ledger never
holds a NULL in either). That is days + models + 1 rows rather than one per day and model,
which Python would add up row by row: a third of the time of a busy key's 90-day report
(``python -m bench.usage``)."""

_COUNTERS = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)


class _Sum:
    """Counters being added up; cost as an exact decimal until the end."""

    __slots__ = ("cost", "counts")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.cost = Decimal(0)

    def add(self, counts: tuple[int, ...], cost: Decimal) -> None:
        for name, value in zip(_COUNTERS, counts, strict=True):
            self.counts[name] += int(value)
        self.cost += cost

    def fields(self) -> dict[str, Any]:
        return {**self.counts, "cost_usd": float(round(self.cost, 10))}


def usage_report(client: Client, query: UsageQuery) -> UsageReport:
    """One key's usage over ``query``'s days: totals, per model, per day."""
    result = client.query(
        _USAGE_SQL,
        parameters={
            "key_id": query.key_id,
            "start_date": query.start_date,
            "end_date": query.end_date,
        },
    )
    totals = _Sum()
    by_model: dict[str, _Sum] = {}
    by_day: dict[date, _Sum] = {}
    for day, model, *rest in result.result_rows:
        sums = _Sum()
        sums.add(tuple(rest[:-1]), Decimal(rest[-1]))
        if day is not None:
            by_day[day] = sums
        elif model is not None:
            by_model[model] = sums
        else:
            totals = sums
    models = sorted(by_model.items(), key=lambda item: (-item[1].cost, item[0]))
    return UsageReport(
        key_id=query.key_id,
        start_date=query.start_date,
        end_date=query.end_date,
        totals=UsageCounters(**totals.fields()),
        by_model=[ModelUsage(model=model, **sums.fields()) for model, sums in models],
        by_day=[DailyUsage(date=day, **sums.fields()) for day, sums in sorted(by_day.items())],
    )


# ---------------------------------------------------------------- read-only analyst SQL

ALLOWED_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC"})
"""The statements ``switchboard sql`` runs (ClickHouse's ``readonly = 1`` backs this up)."""

_WORD = re.compile(r"[A-Za-z_]+")
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z_]+)")


class NotReadOnlyError(ValueError):
    """The SQL is not one read-only statement."""


def _code_only(sql: str) -> str:
    """``sql`` with comments and quoted text blanked out (same length, same positions)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"`":
            end = i + 1
            while end < n and sql[end] != char:
                end += 2 if sql[end] == "\\" else 1
            if end >= n:
                raise NotReadOnlyError("the SQL has an unterminated quote")
            out.append(char + " " * (end - i - 1) + char)
            i = end + 1
        elif sql.startswith("--", i) or char == "#":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise NotReadOnlyError("the SQL has an unterminated comment")
            out.append(" " * (end + 2 - i))
            i = end + 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def read_only_statement(sql: str) -> str:
    """``sql`` as one statement (a trailing ``;`` removed) if it only reads, else raise
    :class:`NotReadOnlyError`: it must be one ``SELECT``, ``WITH``, ``SHOW`` or
    ``DESCRIBE`` statement, without ``INTO OUTFILE`` and without its own ``FORMAT``."""
    code = _code_only(sql)
    semicolon = code.find(";")
    if semicolon >= 0:
        if code[semicolon + 1 :].strip():
            raise NotReadOnlyError("run one statement at a time")
        sql, code = sql[:semicolon], code[:semicolon]
    first = _FIRST_WORD.match(code)
    keyword = first.group(1).upper() if first else ""
    if keyword not in ALLOWED_STATEMENTS:
        allowed = ", ".join(sorted(ALLOWED_STATEMENTS - {"DESC"}))
        raise NotReadOnlyError(f"only {allowed} statements may run here, not {keyword or 'this'}")
    words = [word.upper() for word in _WORD.findall(code)]
    if any(a == "INTO" and b == "OUTFILE" for a, b in itertools.pairwise(words)):
        raise NotReadOnlyError("INTO OUTFILE is not allowed here")
    if "FORMAT" in words:
        raise NotReadOnlyError("leave FORMAT out: the output format is chosen by the command")
    return sql.strip()


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: decimals (exact), UUIDs, addresses … as text."""
    result: Any
    if value is None or isinstance(value, bool | int | str):
        result = value
    elif isinstance(value, float):
        result = value if math.isfinite(value) else None
    elif isinstance(value, datetime | date):
        result = value.isoformat()
    elif isinstance(value, bytes):
        result = value.decode("utf-8", errors="replace")
    elif isinstance(value, list | tuple | set | frozenset):
        result = [_jsonable(item) for item in value]
    elif isinstance(value, dict):
        result = {str(key): _jsonable(item) for key, item in value.items()}
    else:
        result = str(value)
    return result


def run_sql(readonly_client: Client, sql: str, *, max_rows: int) -> SqlResult:
    """Run an analyst's query on a read-only client; at most ``max_rows`` rows."""
    statement = read_only_statement(sql)
    result = readonly_client.query(statement)
    rows = result.result_rows
    return SqlResult(
        columns=list(result.column_names),
        types=[column_type.name for column_type in result.column_types],
        rows=[[_jsonable(value) for value in row] for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


# ---------------------------------------------------------------- erasure

_ERASE_COUNTS = {
    "events": "SELECT count() FROM usage_events FINAL WHERE {column:Identifier} = {value:String}",
    "rows": "SELECT count() FROM usage_events WHERE {column:Identifier} = {value:String}",
    "daily_rollup_rows": (
        "SELECT count() FROM (SELECT DISTINCT toDate(received_at), key_id, model"
        " FROM usage_events FINAL WHERE {column:Identifier} = {value:String})"
    ),
    "hourly_rollup_rows": (
        "SELECT count() FROM (SELECT DISTINCT toStartOfHour(received_at), model"
        " FROM usage_events FINAL WHERE {column:Identifier} = {value:String})"
    ),
    "rejects": "SELECT count() FROM usage_rejects WHERE {column:Identifier} = {value:String}",
}
_ERASE = "ALTER TABLE {table:Identifier} DELETE WHERE {column:Identifier} = {value:String}"


def erase(client: Client, *, key_id: str | None = None, end_user: str | None = None) -> EraseResult:
    """Delete every row of one key (or of one end user) from the ledger and the rejects.

    The rollups are views over the ledger, so they lose the rows in the same step; the
    counts say how many of their rows contained erased events. The deletes are mutations
    that rewrite the parts holding the rows (gone from disk, not just hidden), and return
    when done.
    """
    if key_id is not None and end_user is None:
        column, value = "key_id", key_id
    elif end_user is not None and key_id is None:
        column, value = "end_user", end_user
    else:
        raise ValueError("name exactly one of key_id and end_user")
    parameters = {"column": column, "value": value}
    counts = {
        name: int(client.query(sql, parameters=parameters).result_rows[0][0])
        for name, sql in _ERASE_COUNTS.items()
    }
    for table, count in ((EVENTS_TABLE, counts["rows"]), (REJECTS_TABLE, counts["rejects"])):
        if count:
            client.command(
                _ERASE, parameters={**parameters, "table": table}, settings={"mutations_sync": 2}
            )
    return EraseResult(key_id=key_id, end_user=end_user, **counts)
