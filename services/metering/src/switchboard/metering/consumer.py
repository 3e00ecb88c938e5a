"""The JetStream side of metering: a durable pull consumer feeding the ledger in batches.

Every replica binds the same durable consumer (``METERING_CONSUMER``) on the usage stream,
so each event is delivered to one of them, and again only if it was not acknowledged in
time. A batch is fetched until it holds ``METERING_BATCH_SIZE`` messages or
``METERING_BATCH_MAX_WAIT`` seconds passed since its first message, written, and only then
acknowledged. A failed write is retried with backoff, holding the batch (and telling
JetStream the messages are still in progress) until ClickHouse takes it; a write that
succeeded but whose acknowledgement was lost leads to a redelivery the ledger collapses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from switchboard.common import subjects
from switchboard.common.bus import NATS
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import consumed_spans, meter, watch_consumer
from switchboard.metering.settings import MeteringSettings
from switchboard.metering.sink import Batch

__all__ = ["ConsumerState", "UsageConsumer", "Write", "consumer_config", "sleep_unless"]

log = get_logger(__name__)

_IDLE_FETCH = 0.25
"""Longest wait of one fetch, in seconds: how soon a stop is noticed. An idle replica
sends JetStream a few pull requests a second, which costs nothing to speak of."""
_MIN_FETCH = 0.01
_LINGER = 0.05
"""Seconds to let events gather after a fetch that emptied the backlog, before the next
one. Without it, a trickle (one idle client, a few requests a second) costs a pull request,
a status reply and a wake-up per event; with it, one per 50 ms at most. Never past the
batch's time bound."""

_PENDING_POLL = 5.0
"""Seconds between two reads of the consumer's backlog (``switchboard_consumer_pending``)."""

insert_batch_size = meter("switchboard.metering").create_histogram(
    "switchboard_insert_batch_size",
    description="Usage events written to the ledger by one insert.",
    explicit_bucket_boundaries_advisory=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)

PullSubscription = JetStreamContext.PullSubscription
Write = Callable[[Batch], None]


@dataclass(slots=True)
class ConsumerState:
    """What the consumer is doing, for the readiness ping."""

    bound: bool = False
    events_written: int = 0
    batches_written: int = 0
    last_error: str | None = None


def consumer_config(settings: MeteringSettings) -> ConsumerConfig:
    """The durable consumer every metering replica shares."""
    return ConsumerConfig(
        name=settings.metering_consumer,
        durable_name=settings.metering_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.metering_ack_wait,
        max_deliver=-1,  # an event is retried until it is in the ledger
        max_ack_pending=settings.metering_max_ack_pending,
        filter_subject=subjects.USAGE_RECORDED,
    )


class _Backoff:
    def __init__(self, settings: MeteringSettings) -> None:
        self._initial = settings.metering_retry_initial
        self._max = settings.metering_retry_max
        self.delay = self._initial

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self._max)
        return delay

    def reset(self) -> None:
        self.delay = self._initial


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class UsageConsumer:
    """Moves usage events from JetStream into the ledger until stopped.

    ``write`` inserts a batch (blocking; it runs in a thread) and raises if it did not.
    """

    def __init__(self, nc: NATS, write: Write, settings: MeteringSettings) -> None:
        self._js = nc.jetstream()
        self._write = write
        self._settings = settings
        self.state = ConsumerState()
        self.consumer_name = settings.metering_consumer
        self.pending: int | None = None
        """Events JetStream holds for this consumer (read every few seconds)."""
        self._pending_read_at = -_PENDING_POLL
        watch_consumer(self)

    async def _read_pending(self, psub: PullSubscription) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._pending_read_at < _PENDING_POLL:
            return
        self._pending_read_at = loop_time
        try:
            info = await psub.consumer_info()
        except (NatsError, TimeoutError):
            return
        self.pending = (info.num_pending or 0) + (info.num_ack_pending or 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then write and acknowledge the open batch."""
        while not stop.is_set():
            psub = await self._bind(stop)
            if psub is None:
                return
            try:
                await self._consume(psub, stop)
            finally:
                self.state.bound = False
                with suppress(NatsError):
                    await psub.unsubscribe()

    async def _bind(self, stop: asyncio.Event) -> PullSubscription | None:
        backoff = _Backoff(self._settings)
        name = self._settings.metering_consumer
        while not stop.is_set():
            try:
                # Create, or update to these settings, then bind.
                await self._js.add_consumer(subjects.USAGE_STREAM, consumer_config(self._settings))
                psub = await self._js.pull_subscribe_bind(
                    durable=name, stream=subjects.USAGE_STREAM
                )
            except NotFoundError:
                self.state.last_error = f"stream {subjects.USAGE_STREAM} not found"
                log.info("consumer.waiting_for_stream", stream=subjects.USAGE_STREAM)
            except (NatsError, TimeoutError) as exc:
                self.state.last_error = f"bind failed: {type(exc).__name__}"
                log.warning("consumer.bind_failed", error=type(exc).__name__, detail=str(exc))
            else:
                self.state.bound = True
                self.state.last_error = None
                log.info("consumer.bound", stream=subjects.USAGE_STREAM, consumer=name)
                return psub
            await sleep_unless(stop, backoff.next())
        return None

    async def _consume(self, psub: PullSubscription, stop: asyncio.Event) -> None:
        backoff = _Backoff(self._settings)
        while not stop.is_set():
            await self._read_pending(psub)
            try:
                messages = await self._collect(psub, stop)
            except NotFoundError:
                log.warning("consumer.lost", consumer=self._settings.metering_consumer)
                return  # bind again
            except NatsError as exc:
                log.warning("consumer.fetch_failed", error=type(exc).__name__, detail=str(exc))
                await sleep_unless(stop, backoff.next())
                continue
            backoff.reset()
            if messages:
                await self._commit(messages, stop)

    async def _collect(self, psub: PullSubscription, stop: asyncio.Event) -> list[Msg]:
        """Fetch one batch: until full, or the time bound after its first message passed,
        or ``stop`` (seen within ``_IDLE_FETCH``)."""
        size = self._settings.metering_batch_size
        loop = asyncio.get_running_loop()
        messages: list[Msg] = []
        deadline: float | None = None
        lingered = False  # then one more fetch, even past the bound: what gathered meanwhile
        while len(messages) < size and not stop.is_set():
            timeout = _IDLE_FETCH
            if deadline is not None:
                timeout = min(timeout, deadline - loop.time())
                if timeout <= 0 and not lingered:
                    break
            lingered = False
            wanted = size - len(messages)
            try:
                fetched = await psub.fetch(batch=wanted, timeout=max(timeout, _MIN_FETCH))
            except TimeoutError:  # nats-py raises its own and asyncio's
                continue
            except NatsError:
                if messages:
                    break  # write what we hold; the error shows again on the next fetch
                raise
            messages.extend(fetched)
            if deadline is None and messages:
                deadline = loop.time() + self._settings.metering_batch_max_wait
            left = deadline - loop.time() if deadline is not None else 0
            if len(fetched) < wanted and left > 0:
                await sleep_unless(stop, min(_LINGER, left))
                lingered = True
        return messages

    async def _commit(self, messages: list[Msg], stop: asyncio.Event) -> None:
        """Write the batch (retrying until it is written), then acknowledge every message."""
        batch = Batch()
        for msg in messages:
            batch.add(msg.data, subject=msg.subject, stream_sequence=msg.metadata.sequence.stream)
        backoff = _Backoff(self._settings)
        give_up_at: float | None = None
        started = time.monotonic()
        started_ns = time.time_ns()
        while True:
            try:
                await asyncio.to_thread(self._write, batch)
                break
            except Exception as exc:  # noqa: BLE001 - whatever failed, the batch is retried
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self.state.last_error = error
                delay = backoff.next()
                log.warning(
                    "ledger.write_failed", messages=len(messages), error=error, retry_in=delay
                )
            loop_time = asyncio.get_running_loop().time()
            if stop.is_set():
                give_up_at = give_up_at or loop_time + self._settings.nats_drain_timeout
                if loop_time >= give_up_at:
                    # Not acknowledged: JetStream delivers them again after the restart.
                    log.warning("ledger.batch_abandoned", messages=len(messages))
                    return
                delay = min(delay, give_up_at - loop_time)
            await self._in_progress(messages)
            await asyncio.sleep(delay)
        for msg in messages:
            with suppress(NatsError):
                await msg.ack()
        insert_batch_size.record(len(batch.rows))
        consumed_spans(
            messages, consumer=self.consumer_name, name="metering.record", start_time=started_ns
        )
        self.state.events_written += len(batch.rows)
        self.state.batches_written += 1
        self.state.last_error = None
        log.debug(
            "ledger.batch_written",
            events=len(batch.rows),
            rejects=len(batch.rejects),
            duplicates=batch.duplicates,
            seconds=round(time.monotonic() - started, 3),
        )
        if batch.rejects:
            log.warning("ledger.rejected", count=len(batch.rejects), reason=batch.rejects[0].reason)

    @staticmethod
    async def _in_progress(messages: list[Msg]) -> None:
        """Keep JetStream from redelivering messages we still hold (best effort)."""
        for msg in messages:
            with suppress(NatsError):
                await msg.in_progress()
