"""Sending captures to PostHog with the ``posthog`` SDK, and learning which it accepted.

The SDK queues events and uploads them from a worker thread. :meth:`PostHogSink.send`
captures one batch, then ``flush()``es with no time limit: it returns once every queued
event has been uploaded or has failed, and the SDK reports each failed upload, with its
events, to ``on_error`` before it marks them done. An event counts as accepted when the
SDK took it (``capture`` returned its uuid), no failure named it, and the SDK's worker
was alive throughout (a dead worker discards its queue without reporting). Retries are
ours (JetStream redelivery with backoff), so the SDK makes one attempt per upload.

Outcomes per event:

- ``accepted``: PostHog answered 200 for its batch — acknowledge;
- ``retry``: network error, timeout, 5xx, 408, 429, 401/403 (a key problem, not the
  event's) — leave it to JetStream and try later;
- ``rejected``: PostHog refused it alone with 400 or 413 — it never will accept it.
  A batch refused so is re-sent one event at a time to find the culprit(s).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Final

from posthog import Posthog
from posthog.request import APIError

from switchboard.analytics.generation import Capture
from switchboard.analytics.settings import AnalyticsSettings
from switchboard.common.logs import get_logger

__all__ = ["Outcome", "PostHogSink"]

log = get_logger(__name__)

_REJECTED_STATUSES: Final = frozenset({400, 413})


class Outcome(StrEnum):
    """What became of one capture."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    REJECTED = "rejected"


def _classify(error: BaseException) -> Outcome:
    if isinstance(error, APIError) and error.status in _REJECTED_STATUSES:
        return Outcome.REJECTED
    return Outcome.RETRY


def _describe(error: BaseException) -> dict[str, Any]:
    status = error.status if isinstance(error, APIError) else None
    # The SDK's exceptions name URLs and statuses, never event contents.
    return {"error": type(error).__name__, "status": status, "detail": str(error)[:300]}


ClientFactory = Callable[..., Posthog]


class PostHogSink:
    """One SDK client for the life of the process; one :meth:`send` at a time."""

    def __init__(
        self, settings: AnalyticsSettings, *, client_factory: ClientFactory = Posthog
    ) -> None:
        self._settings = settings
        self._client_factory = client_factory
        self._failures: dict[str, BaseException] = {}
        self._failures_lock = threading.Lock()
        self._sending = asyncio.Lock()
        self._client = self._new_client()

    def _new_client(self) -> Posthog:
        settings = self._settings
        return self._client_factory(
            settings.posthog_api_key.get_secret_value(),
            host=settings.posthog_host,
            on_error=self._on_error,
            # Batches are ours: the SDK sends when flushed, in one request per batch.
            flush_at=settings.analytics_batch_size,
            flush_interval=5.0,
            max_queue_size=max(10_000, 2 * settings.analytics_batch_size),
            gzip=settings.analytics_gzip,
            max_retries=0,
            timeout=settings.analytics_posthog_timeout,
            thread=1,
            # Pinned: the acceptance rules above are those of the v0 batch endpoint.
            capture_mode="v0",
            disable_geoip=True,
            enable_exception_autocapture=False,
        )

    def _on_error(self, error: BaseException, batch: list[dict[str, Any]]) -> None:
        # Called on the SDK's worker thread.
        with self._failures_lock:
            for message in batch:
                self._failures[str(message.get("uuid"))] = error

    async def send(self, captures: Sequence[Capture]) -> dict[str, Outcome]:
        """Upload ``captures``; the outcome of each, by uuid. Never raises for PostHog's sake."""
        if not captures:
            return {}
        async with self._sending:
            return await asyncio.to_thread(self._send_blocking, captures)

    def _send_blocking(self, captures: Sequence[Capture]) -> dict[str, Outcome]:
        outcomes = self._upload(captures)
        suspects = [c for c in captures if outcomes[c.uuid] is Outcome.REJECTED]
        if len(suspects) > 1:
            # A 400 or 413 names no event: find out which ones PostHog refuses.
            for capture in suspects:
                outcomes.update(self._upload([capture]))
        return outcomes

    def _workers_alive(self) -> bool:
        return any(worker.is_alive() for worker in self._client.consumers or [])

    def _upload(self, captures: Sequence[Capture]) -> dict[str, Outcome]:
        if not self._workers_alive():
            log.warning("analytics.sdk_restarted")
            self._client.shutdown()
            self._client = self._new_client()
        with self._failures_lock:
            self._failures.clear()
        outcomes: dict[str, Outcome] = {}
        for capture in captures:
            taken = self._client.capture(
                capture.event,
                distinct_id=capture.distinct_id,
                properties=capture.properties,
                timestamp=capture.timestamp,
                uuid=capture.uuid,
            )
            if taken != capture.uuid:
                outcomes[capture.uuid] = Outcome.RETRY
        self._client.flush(timeout_seconds=None)
        workers_alive = self._workers_alive()
        with self._failures_lock:
            failures = dict(self._failures)
        for capture in captures:
            error = failures.get(capture.uuid)
            if capture.uuid in outcomes:
                continue
            if error is not None:
                outcomes[capture.uuid] = _classify(error)
            elif not workers_alive:
                outcomes[capture.uuid] = Outcome.RETRY
            else:
                outcomes[capture.uuid] = Outcome.ACCEPTED
        if failures:
            error = next(iter(failures.values()))
            log.warning("analytics.upload_failed", events=len(failures), **_describe(error))
        return outcomes

    async def close(self) -> None:
        """Flush what is queued (nothing, between batches) and stop the SDK's worker."""
        await asyncio.to_thread(self._client.shutdown)
