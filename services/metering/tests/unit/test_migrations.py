"""Versioned migrations: order, idempotency, changed files, retention (TTL) in the DDL."""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from switchboard.metering.migrations import (
    Migration,
    MigrationError,
    applied_versions,
    apply_retention,
    load_migrations,
    migrate,
    retention_days,
    split_statements,
)

from .._support import scalar


def test_splits_statements_and_drops_comment_lines() -> None:
    sql = "-- one; two\nCREATE TABLE a (x String COMMENT 'a;b')\nENGINE = Memory;\n\nSELECT 1;\n"
    assert split_statements(sql) == [
        "CREATE TABLE a (x String COMMENT 'a;b')\nENGINE = Memory",
        "SELECT 1",
    ]
    with pytest.raises(MigrationError, match="does not end"):
        split_statements("SELECT 1")


def test_the_packaged_migrations_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations][:3] == ["usage_events", "rollups", "usage_rejects"]


def test_refuses_badly_named_or_duplicate_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name"):
        load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share a version"):
        load_migrations(tmp_path)


def test_applies_once_and_records_each_version(ch: Client) -> None:
    versions = [m.version for m in load_migrations()]
    assert sorted(applied_versions(ch)) == versions  # the fixture migrated
    assert migrate(ch) == []  # a second start applies nothing
    assert scalar(ch, "SELECT count() FROM schema_migrations FINAL") == len(versions)
    tables = {row[0] for row in ch.query("SHOW TABLES").result_rows}
    assert {
        "usage_events",
        "usage_daily_by_key_model",
        "usage_hourly_by_model",
        "usage_rejects",
        "schema_migrations",
    } <= tables


def test_applies_only_new_migrations(ch: Client) -> None:
    extra = Migration(99, "extra", "CREATE TABLE IF NOT EXISTS extra (x UInt8)\nENGINE = Memory;\n")
    assert migrate(ch, [*load_migrations(), extra]) == [99]
    assert migrate(ch, [*load_migrations(), extra]) == []


def test_a_changed_applied_migration_stops_the_start(ch: Client) -> None:
    first = load_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(ch, [edited])


def test_every_column_has_a_comment(ch: Client) -> None:
    missing = ch.query(
        "SELECT table, name FROM system.columns WHERE database = currentDatabase()"
        " AND table IN ('usage_events', 'usage_daily_by_key_model', 'usage_hourly_by_model',"
        " 'usage_rejects') AND comment = ''"
    ).result_rows
    assert missing == []


def test_retention_is_applied_changed_and_removed_in_the_ddl(ch: Client) -> None:
    assert retention_days(ch) == 0
    assert apply_retention(ch, 30)
    ddl = scalar(ch, "SELECT create_table_query FROM system.tables WHERE name = 'usage_events'")
    assert "TTL toDateTime(received_at) + toIntervalDay(30)" in ddl
    assert not apply_retention(ch, 30)  # unchanged: no ALTER
    assert apply_retention(ch, 400)
    assert retention_days(ch) == 400
    assert apply_retention(ch, 0)
    assert retention_days(ch) == 0
    with pytest.raises(ValueError, match="0 or more"):
        apply_retention(ch, -1)


def test_retention_needs_the_table(ledger_target: object) -> None:
    from tests.support.clickhouse import LedgerTarget, client_for

    assert isinstance(ledger_target, LedgerTarget)
    with client_for(ledger_target) as client, pytest.raises(MigrationError, match="run the"):
        retention_days(client)
