"""Metering as a whole, over NATS: readiness, usage reports, analyst SQL, erasure,
failures at start, graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as Nats
from tests.support.clickhouse import LedgerTarget, client_for
from tests.support.servers import free_port

from switchboard.common import metering as protocol
from switchboard.common import subjects
from switchboard.common.metering import EraseResult, SqlResult, UsageReport
from switchboard.metering.migrations import Migration, load_migrations, migrate
from switchboard.metering.service import MeteringService
from switchboard.metering.settings import MeteringSettings

from .._support import eventually, ledger_counts, publish, usage_event
from .conftest import ping

pytestmark = pytest.mark.usefixtures("stream")


async def ask(nc: Nats, subject: str, body: dict[str, Any] | bytes) -> tuple[int, Any]:
    """(status, decoded body) of one request to metering."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    reply = await nc.request(subject, payload, timeout=10)
    headers = reply.headers or {}
    status = int(headers.get(protocol.ERROR_CODE_HEADER, "200"))
    return status, orjson.loads(reply.data)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def _all_acked(nc: Nats) -> bool:
    info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, "switchboard-metering")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_ping_reports_readiness(nc: Nats, start_metering: Any) -> None:
    service = await start_metering()
    pong = await ping(nc)
    assert pong is not None
    assert (pong.ready, pong.consuming, pong.clickhouse) == (True, True, "embedded")
    assert pong.instance_id == service.instance_id


async def test_usage_report_for_one_key(nc: Nats, start_metering: Any) -> None:
    await start_metering()
    await publish(nc, [usage_event(key_id="key_a") for _ in range(3)])
    await publish(nc, [usage_event(key_id="key_b", cost_usd=5.0)])
    await eventually(lambda: _all_acked(nc), what="written")
    status, body = await ask(
        nc,
        protocol.METERING_USAGE,
        {"key_id": "key_a", "start_date": _today(), "end_date": _today()},
    )
    assert status == 200
    report = UsageReport.model_validate(body)
    assert report.totals.requests == 3
    assert report.totals.cost_usd == pytest.approx(3 * 0.000123)
    assert [d.requests for d in report.by_day] == [3]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"key_id": "k", "start_date": "2025-02-01", "end_date": "2025-01-01"}, "end_date"),
        ({"key_id": "k", "start_date": "2020-01-01", "end_date": "2025-01-01"}, "start_date"),
        ({"key_id": "k", "start_date": "not a date", "end_date": "2025-01-01"}, "start_date"),
        ({"start_date": "2025-01-01", "end_date": "2025-01-01"}, "key_id"),
    ],
)
async def test_usage_refuses_bad_parameters(
    nc: Nats, start_metering: Any, body: dict[str, str], param: str
) -> None:
    await start_metering(wait_consuming=False)
    status, error = await ask(nc, protocol.METERING_USAGE, body)
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param


async def test_sql_runs_read_only(nc: Nats, start_metering: Any) -> None:
    await start_metering()
    await publish(nc, [usage_event() for _ in range(4)])
    await eventually(lambda: _all_acked(nc), what="written")
    status, body = await ask(
        nc,
        protocol.METERING_SQL,
        {"sql": "SELECT key_id, count() AS n FROM usage_events FINAL GROUP BY key_id"},
    )
    assert status == 200
    assert SqlResult.model_validate(body).rows == [["key_alpha", 4]]
    status, error = await ask(nc, protocol.METERING_SQL, {"sql": "DROP TABLE usage_events"})
    assert (status, error["error"]["code"]) == (400, "not_read_only")
    status, error = await ask(nc, protocol.METERING_SQL, {"sql": "SELECT nope FROM nowhere"})
    assert (status, error["error"]["code"]) == (400, "query_failed")
    status, error = await ask(nc, protocol.METERING_SQL, b"{not json")
    assert status == 400


async def test_an_answer_too_big_for_the_bus_is_refused(nc: Nats, start_metering: Any) -> None:
    await start_metering(wait_consuming=False)
    status, error = await ask(
        nc, protocol.METERING_SQL, {"sql": "SELECT repeat('x', 1000) FROM numbers(5000)"}
    )
    assert (status, error["error"]["code"]) == (400, "result_too_large")


async def test_erase_over_nats(nc: Nats, start_metering: Any, ledger_target: LedgerTarget) -> None:
    service = await start_metering()
    await publish(nc, [usage_event(key_id="key_gone"), usage_event(key_id="key_kept")])
    await eventually(lambda: _all_acked(nc), what="written")
    status, body = await ask(nc, protocol.METERING_ERASE, {"key_id": "key_gone"})
    assert status == 200
    assert EraseResult.model_validate(body).events == 1
    status, error = await ask(nc, protocol.METERING_ERASE, {"key_id": "a", "end_user": "b"})
    assert status == 400
    assert "exactly one" in error["error"]["message"]
    assert service.ledger is not None
    assert ledger_counts(service.ledger.reader) == (1, 1)


async def test_unreachable_clickhouse_answers_503_and_acknowledges_nothing(
    nc: Nats, start_metering: Any
) -> None:
    await start_metering(
        wait_consuming=False,
        wait_ready=False,
        clickhouse_url=f"http://metering:hunter2@127.0.0.1:{free_port()}/default",
        clickhouse_connect_timeout=1,
    )

    async def failing() -> bool:
        pong = await ping(nc)
        return pong is not None and pong.last_error is not None

    await eventually(failing, what="a failed open")
    pong = await ping(nc)
    assert pong is not None
    assert (pong.ready, pong.consuming, pong.clickhouse) == (False, False, "server")
    assert "hunter2" not in str(pong.last_error)
    await publish(nc, [usage_event() for _ in range(3)])
    status, error = await ask(
        nc,
        protocol.METERING_USAGE,
        {"key_id": "k", "start_date": _today(), "end_date": _today()},
    )
    assert (status, error["error"]["code"]) == (503, "metering_unavailable")
    stream = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
    assert stream.state.messages == 3  # kept for whoever consumes once ClickHouse is back


async def test_starting_late_catches_up_exactly(
    nc: Nats, start_metering: Any, ledger_target: LedgerTarget
) -> None:
    await publish(nc, [usage_event() for _ in range(25)])  # metering not running yet
    service = await start_metering()
    await eventually(lambda: _all_acked(nc), what="caught up")
    assert service.ledger is not None
    assert ledger_counts(service.ledger.reader) == (25, 25)


async def test_graceful_stop_writes_and_acks_the_open_batch(
    nc: Nats, metering_settings: Callable[..., MeteringSettings], ledger_target: LedgerTarget
) -> None:
    service = MeteringService(metering_settings(metering_batch_max_wait=30))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await eventually(
        lambda: service.consumer is not None and service.consumer.state.bound, what="bound"
    )
    await publish(nc, [usage_event() for _ in range(7)])
    await asyncio.sleep(0.3)  # fetched, waiting for the batch to fill
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await _all_acked(nc)
    with client_for(ledger_target) as client:
        assert ledger_counts(client) == (7, 7)


async def test_a_schema_it_cannot_migrate_stops_the_service(
    nc: Nats, metering_settings: Callable[..., MeteringSettings], ledger_target: LedgerTarget
) -> None:
    with client_for(ledger_target) as client:
        first = load_migrations()[0]
        migrate(client, [Migration(first.version, first.name, first.sql + "-- other\n")])
    service = MeteringService(metering_settings())
    with pytest.raises(Exception, match="changed after it was applied"):
        await asyncio.wait_for(service.run(asyncio.Event()), 10)


async def test_retention_setting_reaches_the_table(nc: Nats, start_metering: Any) -> None:
    service = await start_metering(metering_retention_days=90)
    assert service.ledger is not None
    ddl = service.ledger.reader.query(
        "SELECT create_table_query FROM system.tables WHERE name = 'usage_events'"
    ).result_rows[0][0]
    assert "toIntervalDay(90)" in ddl
