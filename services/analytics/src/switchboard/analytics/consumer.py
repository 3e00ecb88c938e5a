"""The durable JetStream consumer of usage events, feeding PostHog batch by batch.

Its own durable consumer (``ANALYTICS_CONSUMER``) on the usage stream, apart from
metering's: each keeps its own position, so either can be down without touching the
other. Every delivered event is settled only after PostHog answered for it:

- accepted by PostHog, or privacy mode ``off`` (nothing to send): ``ack``;
- PostHog unavailable (network, timeout, 5xx, 429, a bad API key): ``nak`` with the
  current backoff as redelivery delay, and the next fetch waits as long. Nothing is lost:
  the event waits in JetStream (``max_deliver`` unlimited) until PostHog is back;
- refused by PostHog on its own (400/413), or not a usage event at all: ``term``, logged
  with its event id; no retry can change the answer.

A redelivered event maps to the same PostHog ``uuid``, which PostHog de-duplicates on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from switchboard.analytics.generation import Capture, CapturePolicy
from switchboard.analytics.handlers import decode_usage
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.analytics.sink import Outcome, PostHogSink
from switchboard.common import subjects
from switchboard.common.bus import NATS
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import consumed_spans, meter, watch_consumer

__all__ = ["Backoff", "UsageConsumer", "consumer_config"]

log = get_logger(__name__)

_FLUSH_TIMEOUT = 2  # seconds (nats-py types it as int)
_PENDING_POLL = 5.0
"""Seconds between two reads of the consumer's backlog (``switchboard_consumer_pending``)."""
_LINGER = 0.05
"""Seconds to let events gather after a fetch that emptied the backlog: a trickle (one
idle client) then costs one pull and one PostHog request per 50 ms, not one per event."""

posthog_batches = meter("switchboard.analytics").create_counter(
    "switchboard_posthog_batches",
    description="Batches sent to PostHog, by outcome (accepted, retry, rejected).",
)
_OUTCOMES = ("accepted", "retry", "rejected")


class Backoff:
    """Exponential delays with ±20 % jitter: ``initial``, ``2 * initial`` … up to ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the delay before trying again."""
        self.failures += 1
        base = min(self.maximum, self.initial * 2.0 ** min(self.failures - 1, 32))
        jitter: float = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy
        return min(self.maximum, base * jitter)

    def reset(self) -> None:
        self.failures = 0


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def consumer_config(settings: AnalyticsSettings) -> ConsumerConfig:
    """The durable consumer analytics creates (or updates) on the usage stream."""
    return ConsumerConfig(
        durable_name=settings.analytics_consumer,
        description="Switchboard analytics: usage events to PostHog",
        # A new consumer starts with everything the stream still holds.
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.analytics_ack_wait,
        max_deliver=-1,
        max_ack_pending=settings.analytics_max_ack_pending,
        filter_subject=subjects.USAGE_RECORDED,
    )


class UsageConsumer:
    """Pulls usage events, sends them through the sink, settles each one."""

    def __init__(
        self,
        nc: NATS,
        sink: PostHogSink,
        policy: CapturePolicy,
        settings: AnalyticsSettings,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._sink = sink
        self._policy = policy
        self._settings = settings
        self._backoff = Backoff(settings.analytics_retry_initial, settings.analytics_retry_max)
        self.consumer_name = settings.analytics_consumer
        self.bound = False
        """Bound to the usage stream's durable consumer."""
        self.pending: int | None = None
        """Events JetStream holds for this consumer (read every few seconds)."""
        self.failing_since: float | None = None
        """``time.monotonic()`` of the first PostHog failure since the last success."""
        self._pending_read_at = -_PENDING_POLL
        watch_consumer(self)
        for outcome in _OUTCOMES:
            posthog_batches.add(0, {"outcome": outcome})

    async def _read_pending(self, subscription: JetStreamContext.PullSubscription) -> None:
        now = time.monotonic()
        if now - self._pending_read_at < _PENDING_POLL:
            return
        self._pending_read_at = now
        try:
            info = await subscription.consumer_info()
        except (nats.errors.Error, TimeoutError):
            return
        self.pending = (info.num_pending or 0) + (info.num_ack_pending or 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished and settled first."""
        subscription: JetStreamContext.PullSubscription | None = None
        try:
            while not stop.is_set():
                if subscription is None:
                    subscription = await self._subscribe(stop)
                    self.bound = subscription is not None
                    continue
                await self._read_pending(subscription)
                try:
                    messages = await subscription.fetch(
                        self._settings.analytics_batch_size,
                        timeout=self._settings.analytics_fetch_wait,
                    )
                except TimeoutError:  # nats-py raises its own subclass and asyncio's plain one
                    continue
                except nats.errors.Error as exc:
                    # A disconnect, or the consumer was deleted: bind again after a pause.
                    log.warning("analytics.fetch_failed", error=type(exc).__name__, detail=str(exc))
                    with suppress(nats.errors.Error):
                        await subscription.unsubscribe()
                    subscription = None
                    self.bound = False
                    await _sleep_unless(stop, self._backoff.next_delay())
                    continue
                try:
                    delay = await self.process(messages)
                except nats.errors.Error as exc:
                    # Settling failed (NATS went away): unsettled events come back after
                    # their ack wait and are sent again under the same uuid.
                    log.warning(
                        "analytics.settle_failed", error=type(exc).__name__, detail=str(exc)
                    )
                    delay = self._backoff.next_delay()
                if not delay and len(messages) < self._settings.analytics_batch_size:
                    delay = _LINGER
                if delay:
                    await _sleep_unless(stop, delay)
        finally:
            self.bound = False
            if subscription is not None:
                with suppress(nats.errors.Error):
                    await subscription.unsubscribe()

    async def _subscribe(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        stream, durable = subjects.USAGE_STREAM, self._settings.analytics_consumer
        try:
            await self._js.add_consumer(stream, consumer_config(self._settings))
            subscription = await self._js.pull_subscribe_bind(durable=durable, stream=stream)
        except NotFoundError:
            # The router creates the stream when it starts; wait for it.
            delay = self._backoff.next_delay()
            log.info("analytics.waiting_for_stream", stream=stream, retry_in=round(delay, 2))
        except (nats.errors.Error, TimeoutError) as exc:
            delay = self._backoff.next_delay()
            log.warning("analytics.consumer_unavailable", error=type(exc).__name__, detail=str(exc))
        else:
            self._backoff.reset()
            log.info("analytics.consuming", stream=stream, consumer=durable)
            return subscription
        await _sleep_unless(stop, delay)
        return None

    async def process(self, messages: Sequence[Msg]) -> float:
        """Send and settle one fetched batch; the pause before the next fetch (0: none)."""
        to_send: list[tuple[Msg, Capture]] = []
        to_ack: list[Msg] = []
        for message in messages:
            try:
                decoded = decode_usage(message.data, self._policy)
            except ValueError as exc:
                log.error(  # noqa: TRY400 - the reason is in the message; no traceback to add
                    "analytics.invalid_event", **_identify(message), detail=str(exc)
                )
                await message.term()
                continue
            if decoded.capture is None:
                to_ack.append(message)  # privacy mode off: settled, nothing to send
            else:
                to_send.append((message, decoded.capture))

        skipped = len(to_ack)
        started_ns = time.time_ns()
        outcomes = await self._sink.send([capture for _, capture in to_send])
        retry: list[Msg] = []
        for message, capture in to_send:
            outcome = outcomes[capture.uuid]
            if outcome is Outcome.ACCEPTED:
                to_ack.append(message)
            elif outcome is Outcome.REJECTED:
                log.error(
                    "analytics.event_rejected", event_id=capture.event_id, **_identify(message)
                )
                await message.term()
            else:
                retry.append(message)

        for message in to_ack:
            await message.ack()
        self._count_batch(to_send, outcomes)
        consumed_spans(
            [message for message, _ in to_send] + to_ack[:skipped],
            consumer=self.consumer_name,
            name="analytics.capture",
            start_time=started_ns,
        )
        delay = 0.0
        if retry:
            delay = self._backoff.next_delay()
            for message in retry:
                await message.nak(delay=delay)
            log.warning(
                "analytics.retrying",
                events=len(retry),
                retry_in=round(delay, 2),
                failures=self._backoff.failures,
            )
        else:
            self._backoff.reset()
        # Acks are fire-and-forget publishes: make sure they left before anything else.
        # Briefly: a flush caught by a NATS restart waits for a PONG that never comes.
        await self._nc.flush(timeout=_FLUSH_TIMEOUT)
        log.debug(
            "analytics.batch",
            accepted=len(to_ack) - skipped,
            skipped=skipped,
            retrying=len(retry),
        )
        return delay

    def _count_batch(
        self, sent: Sequence[tuple[Msg, Capture]], outcomes: dict[str, Outcome]
    ) -> None:
        if not sent:
            return
        found = {outcomes.get(capture.uuid) for _, capture in sent}
        if found - {Outcome.ACCEPTED, Outcome.REJECTED}:
            posthog_batches.add(1, {"outcome": "retry"})
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            return
        self.failing_since = None
        outcome = "rejected" if Outcome.REJECTED in found else "accepted"
        posthog_batches.add(1, {"outcome": outcome})


def _identify(message: Msg) -> dict[str, Any]:
    """Where a message sits in the stream, for the log (never its contents)."""
    try:
        metadata = message.metadata
    except (nats.errors.Error, ValueError, AttributeError):
        return {}
    return {"stream_seq": metadata.sequence.stream, "deliveries": metadata.num_delivered}
