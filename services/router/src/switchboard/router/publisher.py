"""Usage events to JetStream: in the background, de-duplicated, never in the client's way.

:meth:`UsagePublisher.publish` writes an event to the connection at once while publishing
works (the exchange awaits it just before the terminal frame, so the event travels ahead of
it) and awaits the ack in the background; otherwise it queues the event, as
:meth:`UsagePublisher.record` always does (bounded, ``ROUTER_USAGE_QUEUE_SIZE``). A
worker publishes the queue with up to :data:`WINDOW` publishes awaiting JetStream's ack at
once (one at a time, or 64 at a time, capped the router at a few dozen events/s under heavy
load, well below the requests it served), each event with ``Nats-Msg-Id`` = its request id,
so order does not matter and a retry is never counted twice. A failed publish goes back to
the front of the queue; while publishes fail (and none succeeds meanwhile: a timeout beside
successes is lag, not an outage), the worker sends one at a time with capped exponential
backoff, and any success opens the window again. The stream is (re)created when it is
missing. An event is given up only when the queue overflows (the oldest waiting goes) or the
router stops with events still queued or unacknowledged; each one given up is logged at
error level *with its content* (``usage.dropped``), so it can be replayed from the logs: all
of it but prompt and answer text (``input_messages``, ``output_choices``), which never goes
to a log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from typing import Any

from nats.errors import Error as NatsError
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError
from nats.js.errors import NotFoundError as StreamNotFoundError

from switchboard.common import subjects
from switchboard.common.bus import NATS
from switchboard.common.events import UsageRecorded
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import inject_headers
from switchboard.router.backoff import backoff_delay
from switchboard.router.settings import RouterSettings
from switchboard.router.telemetry import usage_dropped, usage_published, watch_publisher

__all__ = ["WINDOW", "UsagePublisher", "usage_stream_config"]

log = get_logger(__name__)

_MSG_ID = "Nats-Msg-Id"
_RETRY_BASE = 0.2
_RETRY_CAP = 30.0
WINDOW = 512
"""Publishes awaiting JetStream's ack at once, while publishing succeeds. Large, because
under heavy load an ack's round trip is mostly the router's own event-loop lag (a second
and more at 1,000 concurrent streams on two cores): throughput is window / round trip."""
_NEVER_LOGGED: set[str] = {"input_messages", "output_choices"}
"""Prompt and answer text (privacy mode ``full``) stay out of logs, even of dropped events."""


def usage_stream_config(settings: RouterSettings) -> StreamConfig:
    """The usage stream as the settings describe it."""
    return StreamConfig(
        name=subjects.USAGE_STREAM,
        description="Switchboard usage events (one per chat request), for metering and analytics",
        subjects=[subjects.USAGE_STREAM_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.router_usage_max_age,
        max_bytes=settings.router_usage_max_bytes,
        num_replicas=settings.router_usage_replicas,
        duplicate_window=settings.router_usage_duplicate_window,
    )


_Entry = tuple[UsageRecorded, dict[str, str]]


class UsagePublisher:
    """Queues usage events and publishes them to JetStream in the background."""

    def __init__(self, nc: NATS, settings: RouterSettings) -> None:
        self._timeout = settings.router_usage_publish_timeout
        self._js = nc.jetstream(timeout=self._timeout)
        self._config = usage_stream_config(settings)
        self._queue: deque[_Entry] = deque()
        """Events waiting, with the trace context they were recorded in."""
        self._capacity = settings.router_usage_queue_size
        self._in_flight: set[asyncio.Task[None]] = set()
        self._failures = 0
        """Publishes failed since the last success."""
        self._stream_missing = False
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stream_ready = False
        self.dropped = 0
        """Events given up since start."""
        self.published = 0
        """Events JetStream acknowledged since start."""
        watch_publisher(self)

    @property
    def backlog(self) -> int:
        """Events waiting to be published or awaiting their ack."""
        return len(self._queue) + len(self._in_flight)

    @property
    def healthy(self) -> bool:
        """The stream exists and publishing succeeds."""
        return self._stream_ready and not self._failures

    async def start(self) -> None:
        """Create (or update) the stream, then start publishing; never raises."""
        await self._ensure_stream()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="usage-publisher")

    def record(self, event: UsageRecorded) -> None:
        """Queue ``event``; returns at once."""
        self._enqueue((event, inject_headers()))

    async def publish(self, event: UsageRecorded) -> None:
        """Hand ``event`` to the NATS connection now, ahead of anything published on it
        after this returns (the exchange's terminal frame), and await JetStream's ack in
        the background; queue it instead while publishing fails or the window is full.

        A router killed right after an answer's last frame has then still sent that
        answer's event: NATS delivers one connection's messages in order.
        """
        entry = (event, inject_headers())
        if self._task is None or self._failures or self._queue or not self._window_open():
            self._enqueue(entry)
            return
        try:
            ack = await self._js.publish_async(
                subjects.USAGE_RECORDED,
                event.model_dump_json().encode(),
                headers={**entry[1], _MSG_ID: event.event_id},
            )
        except (NatsError, OSError):
            self._enqueue(entry)  # the connection is down: the worker retries
            return
        self._launch(self._attempt(entry, ack))

    def _window_open(self) -> bool:
        return len(self._in_flight) < (1 if self._failures else WINDOW)

    def _enqueue(self, entry: _Entry) -> None:
        self._queue.append(entry)
        if len(self._queue) > self._capacity:
            self._drop(self._queue.popleft()[0], reason="queue_full")
        self._wake.set()

    async def close(self, *, grace: float) -> None:
        """Publish what is queued within ``grace`` s, then give up the rest (logged)."""
        if self._task is not None:
            if self.backlog:
                self._flushed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self._flushed.wait()
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        for task in list(self._in_flight):
            task.cancel()  # its event goes back to the queue
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        while self._queue:
            self._drop(self._queue.popleft()[0], reason="shutdown")

    async def _ensure_stream(self) -> bool:
        try:
            try:
                await self._js.add_stream(self._config)
            except BadRequestError:
                # It exists with another configuration: the settings win.
                await self._js.update_stream(self._config)
        except (NatsError, TimeoutError, OSError) as exc:
            # Not an exception to trace: JetStream is down or disabled, the worker retries.
            log.error(  # noqa: TRY400
                "usage.stream_unavailable", error=type(exc).__name__, detail=str(exc)
            )
            self._stream_ready = False
            return False
        self._stream_ready = True
        log.info("usage.stream_ready", stream=self._config.name)
        return True

    async def _work(self) -> None:
        while True:
            if not self._queue or not self._window_open():
                if not self.backlog:
                    self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._failures:
                wait = backoff_delay(self._failures, base=_RETRY_BASE, cap=_RETRY_CAP)
                await asyncio.sleep(max(wait, _RETRY_BASE / 2))  # never a busy loop
                if self._stream_missing:
                    self._stream_missing = False
                    await self._ensure_stream()
                if not self._queue:
                    continue
            self._launch(self._attempt(self._queue.popleft()))

    def _launch(self, attempt: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(attempt)
        self._in_flight.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _attempt(self, entry: _Entry, sent: asyncio.Future[PubAck] | None = None) -> None:
        """Publish ``entry`` (or await the ack of its ``sent`` publish); on failure it goes
        back to the front of the queue."""
        event = entry[0]
        successes = self.published
        try:
            if sent is None:
                ack = await self._js.publish(
                    subjects.USAGE_RECORDED,
                    event.model_dump_json().encode(),
                    headers={**entry[1], _MSG_ID: event.event_id},
                )
            else:
                ack = await asyncio.wait_for(sent, self._timeout)
            self._published(event, ack)
        except (StreamNotFoundError, NoStreamResponseError) as exc:
            self._queue.appendleft(entry)
            self._failures += 1
            self._stream_missing = True
            log.warning("usage.no_stream", error=type(exc).__name__, backlog=self.backlog)
        except (NatsError, TimeoutError, OSError) as exc:
            self._queue.appendleft(entry)
            if self.published == successes:  # nothing got through meanwhile: an outage
                self._failures += 1
            log.warning(
                "usage.publish_failed",
                error=type(exc).__name__,
                request_id=event.request_id,
                backlog=self.backlog,
                attempt=self._failures,
            )
        except asyncio.CancelledError:
            self._queue.appendleft(entry)  # stopping: given up, and logged, by close()
            raise
        else:
            self._failures = 0
            self._stream_ready = True

    def _published(self, event: UsageRecorded, ack: PubAck) -> None:
        self.published += 1
        usage_published.add(1)
        if ack.duplicate:
            log.info("usage.duplicate", request_id=event.request_id)

    def _drop(self, event: UsageRecorded, *, reason: str) -> None:
        self.dropped += 1
        usage_dropped.add(1)
        log.error(
            "usage.dropped",
            reason=reason,
            request_id=event.request_id,
            usage_event=event.model_dump(mode="json", exclude=_NEVER_LOGGED),
            text_omitted=event.input_messages is not None or event.output_choices is not None,
        )
