"""ClickHouse clients for one URL, embedded (chdb) or a server, behind one API.

``chdb:///path`` opens ClickHouse inside this process (clickhouse-connect's chdb backend);
``http(s)://user:password@host:port/database`` talks to a server. Everything above this
module runs the same code on both. Failures to reach ClickHouse surface as
:class:`ClickHouseUnavailableError`; errors ClickHouse reports about a statement stay
clickhouse-connect's ``DatabaseError``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    OperationalError,
    ProgrammingError,
)

__all__ = [
    "ClickHouseUnavailableError",
    "Client",
    "DatabaseError",
    "describe",
    "is_embedded",
    "open_client",
    "open_readonly_client",
    "unavailable",
]

EMBEDDED_SCHEME = "chdb"
_SERVER_SCHEMES = ("http", "https")
_CANNOT_OPEN = "Unable to open the chdb engine"


class ClickHouseUnavailableError(Exception):
    """ClickHouse cannot be reached (or opened) right now; the work can be retried."""


def is_embedded(url: str) -> bool:
    """True for a ``chdb://`` URL (ClickHouse in this process)."""
    return urlsplit(url).scheme == EMBEDDED_SCHEME


def describe(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means ClickHouse could not be reached, rather than a bad statement."""
    if isinstance(exc, ClickHouseUnavailableError | OperationalError | OSError):
        return True
    return isinstance(exc, ClickHouseError) and not isinstance(exc, DatabaseError)


def _check_scheme(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme != EMBEDDED_SCHEME and scheme not in _SERVER_SCHEMES:
        raise ValueError(
            f"CLICKHOUSE_URL must start with chdb://, http:// or https://, not {scheme or '?'}://"
        )
    return scheme


def open_client(
    url: str,
    *,
    connect_timeout: float = 5.0,
    query_timeout: float = 60.0,
    settings: dict[str, Any] | None = None,
) -> Client:
    """A client for ``url``; ``settings`` apply to every query of a server client.

    A server client keeps no session, so one client serves concurrent calls; the embedded
    engine serialises calls on its own handle.
    """
    scheme = _check_scheme(url)
    if scheme == EMBEDDED_SCHEME:
        return _open_embedded(url)
    try:
        return clickhouse_connect.get_client(
            dsn=url,
            secure=scheme == "https",
            # clickhouse-connect takes whole seconds
            connect_timeout=max(1, math.ceil(connect_timeout)),
            send_receive_timeout=max(1, math.ceil(query_timeout)),
            autogenerate_session_id=False,
            settings=settings or {},
        )
    except (ClickHouseError, OSError) as exc:
        if isinstance(exc, DatabaseError) and not unavailable(exc):
            raise
        message = f"cannot open ClickHouse at {describe(url)}: {exc}"
        raise ClickHouseUnavailableError(message) from exc


def _open_embedded(url: str) -> Client:
    Path(urlsplit(url).path).mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(dsn=url)
    except ImportError as exc:
        raise RuntimeError(
            "CLICKHOUSE_URL is chdb:// but chdb is not installed: install "
            "switchboard-metering[embedded], or point CLICKHOUSE_URL at a ClickHouse server"
        ) from exc
    except ProgrammingError as exc:
        if _CANNOT_OPEN in str(exc):
            # Mostly another process holding the directory (a metering still shutting
            # down, say); worth retrying, and the reason is logged each time.
            raise ClickHouseUnavailableError(
                f"cannot open the embedded ledger {describe(url)} (is it open in another "
                f"process?): {exc}"
            ) from exc
        raise


def open_readonly_client(
    url: str,
    *,
    max_rows: int,
    max_execution_time: float,
    connect_timeout: float = 5.0,
) -> Client:
    """A client that can only read (ClickHouse's ``readonly = 1``), for analyst queries.

    ``readonly = 1`` also forbids changing settings, so the limits are set first. A server
    gets them with every query; the embedded engine gets them once, for this client's own
    handle (its session), which no other client shares.
    """
    limits: dict[str, Any] = {
        "max_execution_time": max(1, round(max_execution_time)),
        "max_result_rows": max_rows + 1,
        "result_overflow_mode": "break",
    }
    if not is_embedded(url):
        return open_client(
            url,
            connect_timeout=connect_timeout,
            query_timeout=max_execution_time + connect_timeout,
            settings={**limits, "readonly": 1},
        )
    client = open_client(url)
    try:
        # Our own numbers and words, never a caller's: SET takes no query parameters.
        client.command(f"SET max_execution_time = {int(limits['max_execution_time'])}")
        client.command(f"SET max_result_rows = {int(limits['max_result_rows'])}")
        client.command("SET result_overflow_mode = 'break'")
        client.command("SET readonly = 1")
    except BaseException:
        client.close()
        raise
    return client
