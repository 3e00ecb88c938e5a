"""Usage events through JetStream into the ledger: exact under duplicates, redelivery,
restarts and ClickHouse failures; batches bounded by size and time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from nats.aio.client import Client as Nats
from nats.js.client import JetStreamContext
from tests.support.clickhouse import LedgerTarget, client_for

from switchboard.common import subjects
from switchboard.metering.consumer import UsageConsumer
from switchboard.metering.migrations import migrate
from switchboard.metering.settings import MeteringSettings
from switchboard.metering.sink import Batch, LedgerSink

from .._support import eventually, ledger_counts, publish, publish_raw, scalar, usage_event

pytestmark = pytest.mark.usefixtures("stream")


@pytest.fixture
def ledger_target(any_ledger_target: LedgerTarget) -> LedgerTarget:
    """These run on chdb and, where Docker runs, on a ClickHouse server too."""
    return any_ledger_target


@pytest.fixture
def ledger(ledger_target: LedgerTarget) -> Iterator[Client]:
    """The test's view of the (migrated) ledger."""
    with client_for(ledger_target) as client:
        migrate(client)
        yield client


async def _consumer_info(nc: Nats, name: str = "switchboard-metering") -> Any:
    return await nc.jetstream().consumer_info(subjects.USAGE_STREAM, name)


async def _all_acked(nc: Nats, name: str = "switchboard-metering") -> bool:
    info = await _consumer_info(nc, name)
    return info.num_pending == 0 and info.num_ack_pending == 0


class RecordingSink:
    """The real sink, recording batch sizes; can fail a number of writes, before or after
    the real insert (the latter plays a crash between insert and acknowledgement)."""

    def __init__(self, client: Client) -> None:
        self.sink = LedgerSink(client)
        self.sizes: list[int] = []
        self.fail_before = 0
        self.fail_after = 0

    def write(self, batch: Batch) -> None:
        if self.fail_before:
            self.fail_before -= 1
            raise ConnectionError("ClickHouse is down")
        self.sink.write(batch)
        self.sizes.append(len(batch))
        if self.fail_after:
            self.fail_after -= 1
            raise ConnectionError("lost the connection after the insert")


@pytest.fixture
async def run_consumer(
    nc: Nats, ledger: Client, metering_settings: Callable[..., MeteringSettings]
) -> Any:
    """Run a consumer on the real sink (``await run_consumer(**settings)`` → (sink, stop))."""
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    async def start(**overrides: Any) -> tuple[RecordingSink, asyncio.Event, UsageConsumer]:
        sink = RecordingSink(ledger)
        consumer = UsageConsumer(nc, sink.write, metering_settings(**overrides))
        stop = asyncio.Event()
        tasks.append((asyncio.create_task(consumer.run(stop)), stop))
        await eventually(lambda: consumer.state.bound, what="consumer bound")
        return sink, stop, consumer

    yield start
    for task, stop in tasks:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_burst_is_written_exactly_in_bounded_batches(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    sink, _, consumer = await run_consumer(metering_batch_size=50, metering_batch_max_wait=0.5)
    events = [usage_event(prompt_tokens=i) for i in range(230)]
    assert await publish(nc, events) == 230
    await eventually(lambda: ledger_counts(ledger)[0] == 230, what="230 events")
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    assert ledger_counts(ledger) == (230, 230)
    assert max(sink.sizes) <= 50
    assert sum(sink.sizes) == 230
    assert scalar(ledger, "SELECT sum(prompt_tokens) FROM usage_events FINAL") == sum(range(230))
    assert consumer.state.events_written == 230


async def test_a_lone_event_waits_at_most_the_time_bound(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    sink, _, _ = await run_consumer(metering_batch_size=1000, metering_batch_max_wait=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await publish(nc, [usage_event()])
    await eventually(lambda: ledger_counts(ledger)[0] == 1, every=0.02, what="the event")
    assert loop.time() - started < 2.0
    assert sink.sizes == [1]


async def test_a_trickle_is_fetched_in_few_pulls(
    nc: Nats, ledger: Client, run_consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One idle client sends events a few milliseconds apart; fetching each one on its own
    # costs a pull request, a status reply and a wake-up per event.
    fetched: list[int] = []
    fetch = JetStreamContext.PullSubscription.fetch

    async def counting_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        messages = await fetch(self, *args, **kwargs)
        fetched.append(len(messages))
        return messages

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", counting_fetch)
    await run_consumer(metering_batch_size=1000, metering_batch_max_wait=1.0)
    for i in range(20):
        await publish(nc, [usage_event(prompt_tokens=i)])
        await asyncio.sleep(0.01)
    await eventually(lambda: ledger_counts(ledger)[0] == 20, what="20 events")
    assert sum(fetched) == 20
    # 20 events over ≥ 200 ms: about one fetch per 50 ms, not one per event.
    assert len([n for n in fetched if n]) <= 8, fetched


async def test_duplicate_publications_count_once(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    await run_consumer()
    events = [usage_event() for _ in range(20)]
    assert await publish(nc, events) == 20
    # The same Nats-Msg-Id again: JetStream drops them.
    assert await publish(nc, events) == 0
    await eventually(lambda: _all_acked(nc), what="first copies acknowledged")
    # Re-published without the id (as after the duplicate window): stored, written, collapsed.
    assert await publish(nc, events[:8], msg_id="") == 8
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    await eventually(lambda: ledger_counts(ledger) == (20, 28), what="copies written")
    assert scalar(ledger, "SELECT sum(requests) FROM usage_daily_by_key_model") == 20
    assert scalar(ledger, "SELECT sum(requests) FROM usage_hourly_by_model") == 20


async def test_copies_within_one_batch_are_written_once(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    event = usage_event()
    await publish(nc, [event, event, event], msg_id="")
    await run_consumer(metering_batch_max_wait=0.5)
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    assert ledger_counts(ledger) == (1, 1)


async def test_a_crash_between_insert_and_ack_is_redelivered_and_collapsed(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    sink, _, _ = await run_consumer()
    sink.fail_after = 1
    events = [usage_event() for _ in range(10)]
    await publish(nc, events)
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    events_once, rows = ledger_counts(ledger)
    assert events_once == 10
    assert rows > 10  # the first batch was inserted twice
    assert scalar(ledger, "SELECT sum(requests) FROM usage_daily_by_key_model") == 10


async def test_clickhouse_down_then_back_acks_nothing_until_written(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    ledger.command("RENAME TABLE usage_events TO usage_events_offline")
    _, _, consumer = await run_consumer(metering_retry_initial=0.05, metering_retry_max=0.1)
    events = [usage_event() for _ in range(15)]
    await publish(nc, events)
    await eventually(lambda: consumer.state.last_error is not None, what="a failed write")
    await asyncio.sleep(0.3)  # several retries
    info = await _consumer_info(nc)
    assert info.num_ack_pending == 15  # delivered, none acknowledged
    assert info.ack_floor.stream_seq == 0
    ledger.command("RENAME TABLE usage_events_offline TO usage_events")
    await eventually(lambda: _all_acked(nc), what="acknowledged after recovery")
    assert ledger_counts(ledger)[0] == 15
    assert consumer.state.last_error is None


async def test_stopping_mid_traffic_then_restarting_is_exact(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    _, stop, _ = await run_consumer(metering_batch_size=10, metering_ack_wait=1)
    first = [usage_event() for _ in range(40)]
    await publish(nc, first)
    await eventually(lambda: ledger_counts(ledger)[0] > 0, what="some events")
    stop.set()  # metering stops while events keep coming
    second = [usage_event() for _ in range(40)]
    await publish(nc, second)
    await asyncio.sleep(0.2)
    await run_consumer(metering_batch_size=10, metering_ack_wait=1)
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    assert ledger_counts(ledger)[0] == 80


async def test_an_abandoned_batch_is_redelivered_to_the_next_replica(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    sink, stop, _ = await run_consumer(metering_ack_wait=1, nats_drain_timeout=0.2)
    sink.fail_before = 10_000  # ClickHouse never takes this replica's batch
    events = [usage_event() for _ in range(5)]
    await publish(nc, events)
    await eventually(lambda: sink.fail_before < 10_000, what="a write attempt")
    stop.set()  # it gives up after the drain timeout, acknowledging nothing
    await asyncio.sleep(0.5)
    assert ledger_counts(ledger)[0] == 0
    await run_consumer(metering_ack_wait=1)
    await eventually(lambda: _all_acked(nc), within=20, what="redelivered and acknowledged")
    assert ledger_counts(ledger) == (5, 5)


async def test_bad_messages_are_set_aside_and_acknowledged(
    nc: Nats, ledger: Client, run_consumer: Any
) -> None:
    await run_consumer()
    await publish_raw(nc, b"not an event")
    await publish(nc, [usage_event()])
    await eventually(lambda: _all_acked(nc), what="all acknowledged")
    assert ledger_counts(ledger)[0] == 1
    assert scalar(ledger, "SELECT count() FROM usage_rejects FINAL") == 1


async def test_waits_for_the_stream_then_binds(
    nc: Nats, ledger: Client, metering_settings: Callable[..., MeteringSettings]
) -> None:
    await nc.jetstream().delete_stream(subjects.USAGE_STREAM)
    consumer = UsageConsumer(nc, LedgerSink(ledger).write, metering_settings())
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await eventually(lambda: consumer.state.last_error is not None, what="waiting")
    assert not consumer.state.bound
    from .._support import create_usage_stream

    await create_usage_stream(nc)
    await eventually(lambda: consumer.state.bound, what="bound")
    await publish(nc, [usage_event()])
    await eventually(lambda: ledger_counts(ledger)[0] == 1, what="the event")
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_applies_its_settings_to_an_existing_consumer(nc: Nats, run_consumer: Any) -> None:
    _, stop, _ = await run_consumer(metering_max_ack_pending=2000)
    stop.set()
    await asyncio.sleep(0.1)
    await run_consumer(metering_max_ack_pending=3000, metering_ack_wait=45)
    info = await _consumer_info(nc)
    assert info.config.max_ack_pending == 3000
    assert info.config.ack_wait == 45
    assert info.config.filter_subject == subjects.USAGE_RECORDED
