"""Metering's lifespan: the ledger (ClickHouse), NATS, the consumer, graceful stop."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from switchboard.common import metering as protocol
from switchboard.common.bus import NATS, nats_connection
from switchboard.common.logs import get_logger
from switchboard.common.metering import MeteringPong
from switchboard.common.ops import Components
from switchboard.metering.clickhouse import (
    Client,
    describe,
    is_embedded,
    open_client,
    open_readonly_client,
    unavailable,
)
from switchboard.metering.consumer import UsageConsumer, sleep_unless
from switchboard.metering.handlers import Handlers
from switchboard.metering.migrations import apply_retention, migrate
from switchboard.metering.settings import MeteringSettings
from switchboard.metering.sink import LedgerSink

__all__ = ["MeteringService", "OpenLedger", "open_ledger"]

log = get_logger(__name__)

_PING_TIMEOUT = 2.0


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class OpenLedger:
    """The ClickHouse clients of one process: one writes, one reads, one only reads."""

    writer: Client
    reader: Client
    readonly: Client

    def close(self) -> None:
        """Close every client (the embedded engine is released with the last one)."""
        for client in (self.readonly, self.reader, self.writer):
            with suppress(Exception):
                client.close()


def open_ledger(settings: MeteringSettings) -> OpenLedger:
    """Open the clients, apply the migrations and the retention (blocking)."""
    url = settings.clickhouse_dsn
    connect, query = settings.clickhouse_connect_timeout, settings.clickhouse_query_timeout
    writer = open_client(url, connect_timeout=connect, query_timeout=query)
    opened = [writer]
    try:
        migrate(writer)
        apply_retention(writer, settings.metering_retention_days)
        reader = open_client(url, connect_timeout=connect, query_timeout=query)
        opened.append(reader)
        readonly = open_readonly_client(
            url,
            max_rows=settings.metering_sql_max_rows,
            max_execution_time=settings.metering_sql_timeout,
            connect_timeout=settings.clickhouse_connect_timeout,
        )
    except BaseException:
        for client in opened:
            client.close()
        raise
    return OpenLedger(writer, reader, readonly)


class MeteringService:
    """One metering replica.

    ``async with service.running():`` answers on NATS at once (the ping says when the
    ledger is ready), opens and migrates the ledger (retrying while ClickHouse is
    unreachable) and consumes usage events. On exit it stops fetching, writes and
    acknowledges the batch in hand, drains NATS and closes the ledger.
    """

    def __init__(self, settings: MeteringSettings, *, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or _default_instance_id()
        self.ledger: OpenLedger | None = None
        """Set once the ledger is open and migrated."""
        self.consumer: UsageConsumer | None = None
        self.failure: BaseException | None = None
        """Why the service gave up (a schema it cannot migrate, a bad URL), if it did."""
        self._failed = asyncio.Event()
        self._stop = asyncio.Event()
        self._open_error: str | None = None
        self.nc: NATS | None = None
        """The NATS connection, while running."""

    async def readiness(self) -> Components:
        """Ready: NATS connected, the ledger open (a server answering its ping), the
        consumer bound to the usage stream."""
        nc, ledger, consumer = self.nc, self.ledger, self.consumer
        found: Components = {
            "nats": {"status": "ok" if nc is not None and nc.is_connected else "down"}
        }
        if ledger is None:
            found["clickhouse"] = {"status": "down", "error": self._open_error or "opening"}
        elif is_embedded(self.settings.clickhouse_dsn):
            found["clickhouse"] = {"status": "ok", "mode": "embedded"}
        else:
            try:
                answered = await asyncio.wait_for(
                    asyncio.to_thread(ledger.readonly.ping), _PING_TIMEOUT
                )
            except Exception as exc:  # noqa: BLE001 - any failure means "down", by type
                found["clickhouse"] = {"status": "down", "error": type(exc).__name__}
            else:
                found["clickhouse"] = {"status": "ok" if answered else "down", "mode": "server"}
        state = consumer.state if consumer else None
        found["consumer"] = {
            "status": "ok" if state is not None and state.bound else "down",
            "events_written": state.events_written if state else 0,
            "last_error": state.last_error if state else None,
        }
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or the service fails), then shut down gracefully."""
        async with self.running():
            stopping = asyncio.create_task(stop.wait())
            failing = asyncio.create_task(self._failed.wait())
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            failing.cancel()
        if self.failure is not None:
            raise self.failure

    def pong(self) -> MeteringPong:
        """This replica's readiness."""
        state = self.consumer.state if self.consumer else None
        return MeteringPong(
            instance_id=self.instance_id,
            ready=self.ledger is not None,
            consuming=bool(state and state.bound),
            clickhouse="embedded" if is_embedded(self.settings.clickhouse_dsn) else "server",
            events_written=state.events_written if state else 0,
            last_error=state.last_error if state else self._open_error,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MeteringService]:
        """Serve while the block runs."""
        settings = self.settings
        self._stop.clear()
        async with nats_connection(settings, name=f"switchboard-metering/{self.instance_id}") as nc:
            self.nc = nc
            intake = await self._subscribe(nc)
            work = asyncio.create_task(self._work(nc), name="metering-ledger")
            log.info(
                "metering.started",
                instance_id=self.instance_id,
                clickhouse=describe(settings.clickhouse_dsn),
            )
            try:
                yield self
            finally:
                log.info("metering.stopping")
                self._stop.set()
                await work
                for subscription in intake:
                    with suppress(NatsError):
                        await subscription.drain()  # type: ignore[no-untyped-call]
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        log.info("metering.stopped")

    async def _subscribe(self, nc: NATS) -> list[Subscription]:
        handlers = Handlers(
            nc,
            self,
            max_days=self.settings.metering_usage_max_days,
            sql_max_rows=self.settings.metering_sql_max_rows,
        )
        queue = protocol.METERING_QUEUE
        intake = [
            await nc.subscribe(protocol.METERING_PING, queue=queue, cb=handlers.ping),
            await nc.subscribe(protocol.METERING_USAGE, queue=queue, cb=handlers.usage),
            await nc.subscribe(protocol.METERING_SQL, queue=queue, cb=handlers.sql),
            await nc.subscribe(protocol.METERING_ERASE, queue=queue, cb=handlers.erase),
        ]
        await nc.flush()
        return intake

    async def _work(self, nc: NATS) -> None:
        """Open the ledger (retrying while unreachable), then consume until stopped."""
        try:
            ledger = await self._open(self._stop)
            if ledger is None:
                return
            self.ledger = ledger
            log.info("metering.ready")
            sink = LedgerSink(ledger.writer)
            self.consumer = UsageConsumer(nc, sink.write, self.settings)
            await self.consumer.run(self._stop)
        except Exception as exc:
            log.exception("metering.failed")
            self.failure = exc
            self._failed.set()

    async def _open(self, stop: asyncio.Event) -> OpenLedger | None:
        delay = self.settings.metering_retry_initial
        while not stop.is_set():
            try:
                return await asyncio.to_thread(open_ledger, self.settings)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                self._open_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("clickhouse.unavailable", error=self._open_error, retry_in=delay)
            await sleep_unless(stop, delay)
            delay = min(delay * 2, self.settings.metering_retry_max)
        return None
