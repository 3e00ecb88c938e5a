"""Versioned schema migrations, applied at start, and the raw events' retention.

Migrations are the files ``sql/NNNN_name.sql`` of this package, applied in version order.
Each applied version is recorded in ``schema_migrations`` with the file's checksum, so a
start applies only what is new, and refuses to run against a schema whose recorded
migration no longer matches its file. Every statement is idempotent (``IF NOT EXISTS``):
two replicas starting at once, or a start interrupted half way, converge on one schema.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from switchboard.common.logs import get_logger
from switchboard.metering.clickhouse import Client

__all__ = [
    "EVENTS_TABLE",
    "Migration",
    "MigrationError",
    "applied_versions",
    "apply_retention",
    "load_migrations",
    "migrate",
    "retention_days",
    "split_statements",
]

log = get_logger(__name__)

EVENTS_TABLE = "usage_events"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_TTL = re.compile(r"\bTTL toDateTime\(received_at\) \+ toIntervalDay\((?P<days>\d+)\)")

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32 COMMENT 'Number of the migration file (sql/NNNN_name.sql).',
    name String COMMENT 'Name part of the file.',
    checksum String COMMENT 'SHA-256 of the file as applied.',
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When it was applied (UTC).'
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
COMMENT 'Schema migrations applied by metering at start.'
"""


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are (a bad file, or a changed one)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        """The statements of the file, in order."""
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file: ``--`` comment lines dropped, each statement
    ending with ``;`` at the end of a line."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().removesuffix(";").strip()
            if statement:
                statements.append(statement)
            current = []
    if "\n".join(current).strip():
        raise MigrationError("a migration's last statement does not end with ';'")
    return statements


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: this package's ``sql/``), by version."""
    directory = directory or files("switchboard.metering") / "sql"
    migrations: list[Migration] = []
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        migrations.append(Migration(int(match["version"]), match["name"], entry.read_text()))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return migrations


def applied_versions(client: Client) -> dict[int, str]:
    """Version → checksum of every migration recorded as applied."""
    client.command(_CREATE_MIGRATIONS_TABLE)
    result = client.query(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version"
    )
    return {int(version): str(checksum) for version, checksum in result.result_rows}


def migrate(client: Client, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not applied yet; the versions applied now, in order."""
    migrations = load_migrations() if migrations is None else migrations
    done = applied_versions(client)
    applied: list[int] = []
    for migration in migrations:
        recorded = done.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was "
                    "applied; add a new migration instead of editing an applied one"
                )
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        log.info("migration.applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied


def retention_days(client: Client) -> int:
    """The TTL of the raw events in days, as the table has it now; ``0`` for none."""
    result = client.query(
        "SELECT create_table_query FROM system.tables"
        " WHERE database = currentDatabase() AND name = {table:String}",
        parameters={"table": EVENTS_TABLE},
    )
    if not result.result_rows:
        raise MigrationError(f"table {EVENTS_TABLE} does not exist: run the migrations first")
    match = _TTL.search(str(result.result_rows[0][0]))
    return int(match["days"]) if match else 0


def apply_retention(client: Client, days: int) -> bool:
    """Make the raw events' TTL ``days`` (``0``: keep for ever); True when it changed.

    A new TTL applies to rows already stored too (ClickHouse materialises it).
    """
    days = int(days)  # DDL takes no query parameters; an int cannot carry anything else
    if days < 0:
        raise ValueError("retention days must be 0 or more")
    current = retention_days(client)
    if current == days:
        return False
    if days == 0:
        client.command(f"ALTER TABLE {EVENTS_TABLE} REMOVE TTL")
    else:
        client.command(
            f"ALTER TABLE {EVENTS_TABLE} MODIFY TTL toDateTime(received_at) + toIntervalDay({days})"
        )
    log.info("retention.changed", table=EVENTS_TABLE, days=days, previous=current)
    return True
