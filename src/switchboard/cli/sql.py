"""``switchboard sql "SELECT …" [--json]``: read-only analyst queries on the usage ledger.

With the local stack (ClickHouse embedded in metering, which alone may open it) the query
goes to metering over NATS. When ``CLICKHOUSE_URL`` names a server (``http(s)://…``) it
goes straight to that server, with ClickHouse's ``readonly = 1`` on the query.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from datetime import date, datetime
from typing import Any

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

from switchboard.cli.metering import (
    METERING_SQL,
    MeteringCallError,
    ask_metering,
    metering_nats_url,
)

__all__ = ["add_sql_parser", "format_table", "run_sql"]

_ALLOWED = {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC"}
_LEADING = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_MAX_ROWS = 10_000


def add_sql_parser(commands: Any) -> None:
    """Register ``sql`` on the ``switchboard`` command's subparsers."""
    parser = commands.add_parser(
        "sql",
        help="run a read-only SQL query on the usage ledger (see docs/analytics.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", help="one SELECT, WITH, SHOW or DESCRIBE statement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")


def _first_keyword(sql: str) -> str:
    rest = sql[_LEADING.match(sql).end() :]  # type: ignore[union-attr]  # always matches
    word = re.match(r"[A-Za-z_]+", rest)
    return word.group(0).upper() if word else ""


def _jsonable(value: Any) -> Any:
    """Values as metering sends them: decimals, UUIDs, times … as text."""
    result: Any = value
    if isinstance(value, float):
        result = value if math.isfinite(value) else None
    elif isinstance(value, datetime | date):
        result = value.isoformat()
    elif isinstance(value, list | tuple):
        result = [_jsonable(item) for item in value]
    elif isinstance(value, dict):
        result = {str(key): _jsonable(item) for key, item in value.items()}
    elif isinstance(value, bytes):
        result = value.decode("utf-8", errors="replace")
    elif not (value is None or isinstance(value, bool | int | str)):
        result = str(value)
    return result


def _query_server(url: str, sql: str, timeout: float) -> dict[str, Any]:
    import clickhouse_connect  # noqa: PLC0415 - only needed against a server

    keyword = _first_keyword(sql)
    if keyword not in _ALLOWED:
        raise MeteringCallError(
            f"only SELECT, WITH, SHOW and DESCRIBE statements may run here, not {keyword or 'this'}"
        )
    limit = max(1, math.ceil(timeout))
    try:
        client = clickhouse_connect.get_client(
            dsn=url,
            secure=url.startswith("https://"),
            autogenerate_session_id=False,
            connect_timeout=min(limit, 10),
            send_receive_timeout=limit,
            settings={
                "readonly": 1,
                "max_result_rows": _MAX_ROWS + 1,
                "result_overflow_mode": "break",
                "max_execution_time": limit,
            },
        )
        try:
            result = client.query(sql.strip().removesuffix(";"))
        finally:
            client.close()
    except ClickHouseError as exc:
        raise MeteringCallError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
    rows = result.result_rows
    return {
        "columns": list(result.column_names),
        "types": [column_type.name for column_type in result.column_types],
        "rows": [[_jsonable(value) for value in row] for row in rows[:_MAX_ROWS]],
        "truncated": len(rows) > _MAX_ROWS,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def format_table(answer: dict[str, Any]) -> str:
    """The answer as an aligned text table, with a row count."""
    columns: list[str] = answer["columns"]
    rows = [[_cell(value) for value in row] for row in answer["rows"]]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]
    lines = [
        "  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * width for width in widths),
    ]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    count = len(rows)
    footer = f"({count} row{'s' if count != 1 else ''}"
    footer += ", cut: add a LIMIT or narrow the query)" if answer.get("truncated") else ")"
    return "\n".join([*lines, footer]) if columns else footer


def run_sql(args: argparse.Namespace) -> int:
    """``switchboard sql``: print the answer; exit 1 with the reason on failure."""
    url = os.environ.get("CLICKHOUSE_URL", "")
    try:
        if url.startswith(("http://", "https://")):
            answer = _query_server(url, args.query, args.timeout)
        else:
            nats_url = metering_nats_url(getattr(args, "data_dir", None))
            answer = ask_metering(nats_url, METERING_SQL, {"sql": args.query}, timeout=args.timeout)
    except MeteringCallError as exc:
        print(f"switchboard sql: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(answer))
    return 0
