"""Clients for a URL: embedded or server, read-only clients, failures classified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from tests.support.clickhouse import LedgerTarget
from tests.support.servers import free_port

from switchboard.metering.clickhouse import (
    ClickHouseUnavailableError,
    describe,
    is_embedded,
    open_client,
    open_readonly_client,
    unavailable,
)


def test_tells_embedded_from_server_urls() -> None:
    assert is_embedded("chdb:///var/lib/ledger")
    assert not is_embedded("http://localhost:8123/default")
    assert not is_embedded("https://u:p@h:8443/db")


def test_describe_hides_the_password() -> None:
    assert describe("https://metering:s3cret@ch.internal:8443/ledger") == (
        "https://metering:***@ch.internal:8443/ledger"
    )
    assert describe("http://metering:pw@ch/ledger") == "http://metering:***@ch/ledger"
    assert describe("chdb:///data/clickhouse") == "chdb:///data/clickhouse"


def test_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="CLICKHOUSE_URL must start with"):
        open_client("postgres://localhost/db")


def test_an_unreachable_server_is_unavailable() -> None:
    url = f"http://default:@127.0.0.1:{free_port()}/default"
    with pytest.raises(ClickHouseUnavailableError, match=r"127\.0\.0\.1") as caught:
        open_client(url, connect_timeout=0.5, query_timeout=1)
    assert unavailable(caught.value)


def test_classifies_failures() -> None:
    assert unavailable(OperationalError("connection refused"))
    assert unavailable(ConnectionResetError())
    assert not unavailable(DatabaseError("Code: 60. Unknown table"))
    assert not unavailable(ValueError("bad"))


def test_readonly_client_reads_and_cannot_write(ledger_target: LedgerTarget) -> None:
    writer = open_client(ledger_target.url)
    readonly = open_readonly_client(ledger_target.url, max_rows=3, max_execution_time=5)
    try:
        writer.command("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
        writer.command("INSERT INTO t SELECT number FROM numbers(10)")
        assert readonly.query("SELECT count() FROM t").result_rows == [(10,)]
        with pytest.raises(DatabaseError, match="readonly"):
            readonly.command("INSERT INTO t VALUES (1)")
        with pytest.raises(DatabaseError, match="readonly"):
            readonly.command("DROP TABLE t")
        with pytest.raises(DatabaseError, match="readonly"):
            readonly.query("SELECT * FROM file('/etc/hostname', 'LineAsString')")
        # The writer's own session is untouched by the read-only one.
        writer.command("INSERT INTO t VALUES (99)")
        assert writer.query("SELECT count() FROM t").result_rows == [(11,)]
    finally:
        readonly.close()
        writer.close()


def test_embedded_without_chdb_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import clickhouse_connect

    def missing(**_: object) -> None:
        raise ImportError("The chdb backend requires the chdb package")

    monkeypatch.setattr(clickhouse_connect, "get_client", missing)
    with pytest.raises(RuntimeError, match=r"switchboard-metering\[embedded\]"):
        open_client(f"chdb://{tmp_path}/ledger")


def test_an_embedded_ledger_open_elsewhere_is_unavailable(
    ledger_target: LedgerTarget, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import clickhouse_connect, sys, time;"
            f"c = clickhouse_connect.get_client(dsn={ledger_target.url!r}); c.command('SELECT 1');"
            "print('open', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"open"
        with pytest.raises(ClickHouseUnavailableError, match="open in another"):
            open_client(ledger_target.url)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_other_embedded_failures_propagate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ProgrammingError

    def broken(**_: object) -> None:
        raise ProgrammingError("something else")

    monkeypatch.setattr(clickhouse_connect, "get_client", broken)
    with pytest.raises(ProgrammingError, match="something else"):
        open_client(f"chdb://{tmp_path}/ledger")
