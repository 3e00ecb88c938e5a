"""The usage events the edge publishes itself, where no router will.

Routers publish one :class:`~switchboard.common.events.UsageRecorded` per request they
serve. Two kinds of request never get one from a router, so the edge publishes it:

- a response-cache hit (no router sees it; built by :mod:`switchboard.edge.cache`);
- a request the edge handed to the bus and then gave up on before any router ended it
  with its terminal frame (``t`` or ``e``): no router subscribed (503 ``no_router``), NATS
  down at the edge (503 ``bus_unavailable``), a router silent for ``EDGE_IDLE_TIMEOUT``
  (502 ``router_unresponsive``: it died, or it is stuck), the deadline passed (504
  ``timeout``), or frames the edge cannot follow (502 ``protocol_error``). Built by
  :func:`gave_up_event`.

Both carry ``event_id`` = ``request_id`` and go out with ``Nats-Msg-Id`` = the request id,
so when the router did publish after all (it was merely slow), JetStream keeps the first of
the two within its duplicate window, and metering's ReplacingMergeTree keeps one row
beyond it: a request is never counted twice.

:class:`UsageEvents` publishes in the background, never in the client's way: each event
is retried with capped exponential backoff for up to ``retry_for`` seconds (long enough
to ride out a NATS restart), then given up and logged at error level as
``usage.dropped`` with the whole event (edge events never hold prompt or answer text), so
it can be replayed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from nats.js import JetStreamContext

from switchboard.common import subjects
from switchboard.common.errors import GatewayError
from switchboard.common.events import UsageRecorded
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import meter
from switchboard.common.wire import ChatRequest, CompletionStarted, request_usage_fields

__all__ = ["UsageEvents", "gave_up_event"]

log = get_logger(__name__)

_MSG_ID: Final = "Nats-Msg-Id"
_MAX_ERROR_MESSAGE: Final = 300
_RETRY_BASE: Final = 0.2
_RETRY_CAP: Final = 2.0

_dropped = meter("switchboard.edge").create_counter(
    "switchboard_usage_events_dropped", description="Usage events given up (logged whole)."
)


def gave_up_event(
    envelope: ChatRequest,
    error: GatewayError,
    *,
    started: CompletionStarted | None,
    output: bool,
) -> UsageRecorded:
    """The usage event of a request the edge gave up on before a router ended it.

    ``error`` is what the client got. ``started`` is the router's started frame, if one
    came (it names the model serving); ``output`` says whether any answer came. With no
    answer the cost is 0; once an answer was under way it is unknown (``None``): the
    upstream produced tokens that nobody priced.
    """
    now = time.time()
    return UsageRecorded(
        **request_usage_fields(envelope.request_id, envelope.key, envelope.request),
        served_model=started.served_model if started else None,
        provider=started.provider if started else None,
        status="error",
        http_status=error.status,
        error_type=error.type,
        error_code=error.code,
        error_message=error.message[:_MAX_ERROR_MESSAGE],
        cost_usd=None if output else 0.0,
        cost_source="unknown",
        latency_ms=max(round((now - envelope.received_at) * 1000), 0),
        retries=started.retries if started else 0,
        fallbacks=started.fallbacks if started else 0,
        # The router's copy of this event has the same ``received_at`` (the envelope's),
        # hence the same ledger sorting key: the two collapse into one row.
        received_at=envelope.received_at,
        started_at=envelope.received_at,
        finished_at=now,
    )


class UsageEvents:
    """Publishes the edge's usage events to JetStream in the background."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        publish_timeout: float = 2.0,
        retry_for: float = 30.0,
        max_pending: int = 10_000,
    ) -> None:
        """``retry_for``: seconds an event is retried before it is given up;
        ``max_pending``: events in flight at most (beyond, new ones are given up)."""
        self._js = js
        self._timeout = publish_timeout
        self._retry_for = retry_for
        self._max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        _dropped.add(0)

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by JetStream."""
        return len(self._tasks)

    def publish(self, event: UsageRecorded) -> None:
        """Publish ``event`` in the background (``Nats-Msg-Id`` = its id)."""
        if len(self._tasks) >= self._max_pending:
            _drop(event, reason="too_many_pending")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: UsageRecorded) -> None:
        payload = event.model_dump_json().encode()
        give_up_at = time.monotonic() + self._retry_for
        failures = 0
        try:
            while True:
                try:
                    ack = await self._js.publish(
                        subjects.USAGE_RECORDED,
                        payload,
                        timeout=self._timeout,
                        headers={_MSG_ID: event.event_id},
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is retried, then logged
                    failures += 1
                    if time.monotonic() >= give_up_at:
                        _drop(event, reason="publish_failed", error=type(exc).__name__)
                        return
                    log.warning(
                        "usage.publish_failed",
                        request_id=event.request_id,
                        error=type(exc).__name__,
                        attempt=failures,
                    )
                    await asyncio.sleep(min(_RETRY_CAP, _RETRY_BASE * 2 ** (failures - 1)))
                else:
                    if ack.duplicate:  # a router published this request's event first
                        log.info("usage.duplicate", request_id=event.request_id)
                    return
        except asyncio.CancelledError:
            _drop(event, reason="shutdown")
            raise

    async def stop(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` s for events in flight; give up (log) the rest."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


def _drop(event: UsageRecorded, *, reason: str, error: str | None = None) -> None:
    _dropped.add(1)
    log.error(
        "usage.dropped",
        reason=reason,
        error=error,
        request_id=event.request_id,
        usage_event=event.model_dump(mode="json"),
    )
