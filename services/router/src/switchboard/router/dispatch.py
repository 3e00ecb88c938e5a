"""Retries and fallbacks: try a route's candidates in order until one answers.

For each candidate whose circuit breaker lets it through: call it; on a failure that may
pass (connection, timeout, 408, 429, 5xx, a broken or error stream) retry the same
candidate up to its ``retries`` times with full-jitter backoff (or the upstream's
``Retry-After``, if not longer than ``retry.max_retry_after`` and within the deadline);
then, and at once on a failure of that provider for that model (401, 402, 403, 404), move
on to the next candidate. A failure of the request itself (400, 413, 422, moderation)
ends it. Nothing is retried once a ``c`` or ``r`` frame has been published.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import Enum

from switchboard.common.errors import ServiceUnavailableError
from switchboard.common.wire import CompletionFinished
from switchboard.router.backoff import retry_wait
from switchboard.router.breaker import Breakers
from switchboard.router.config import RetryPolicy
from switchboard.router.ledger import Ledger
from switchboard.router.openrouter.errors import (
    UpstreamBusyError,
    UpstreamCallError,
    UpstreamHTTPError,
    is_moderation,
    retry_after_seconds,
    to_gateway_error,
)
from switchboard.router.routing import Candidate, Route
from switchboard.router.telemetry import attempt_span

__all__ = ["Verdict", "run_chain", "verdict"]


class Verdict(Enum):
    """What a failed attempt means for the rest of the request."""

    RETRY = "retry"
    """Try the same candidate again (then the next one)."""
    NEXT = "next"
    """This candidate cannot serve it; try the next one."""
    STOP = "stop"
    """No candidate can serve the request as sent."""


def verdict(exc: UpstreamCallError) -> tuple[Verdict, bool]:
    """The verdict on ``exc`` and whether it counts against the candidate's breaker."""
    if isinstance(exc, UpstreamBusyError):
        return Verdict.RETRY, False  # our own pool is full; the model is not to blame
    if not isinstance(exc, UpstreamHTTPError):
        return Verdict.RETRY, True
    status = exc.status_code
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY, True
    if status in (401, 402, 404) or (status == 403 and not is_moderation(exc)):
        return Verdict.NEXT, False
    return Verdict.STOP, False


def _no_healthy_model(route: Route, breakers: Breakers) -> ServiceUnavailableError:
    waits = [breakers.get(c.provider.name, c.model).retry_in for c in route.candidates]
    return ServiceUnavailableError(
        f"Every model that could serve `{route.requested_model}` is failing right now "
        "(circuit breakers open); retry shortly.",
        code="no_healthy_model",
        retry_after=round(min(waits), 3) if waits else None,
    )


async def run_chain(
    route: Route,
    attempt: Callable[[Candidate], Awaitable[CompletionFinished]],
    *,
    ledger: Ledger,
    breakers: Breakers,
    policy: RetryPolicy,
    output_started: Callable[[], bool],
    deadline: float,
) -> CompletionFinished:
    """The first successful ``attempt`` along ``route``; raises the last failure.

    ``deadline`` is on the event loop's clock; no retry waits past it.
    """
    loop = asyncio.get_running_loop()
    last: UpstreamCallError | None = None
    for position, candidate in enumerate(route.candidates):
        breaker = breakers.get(candidate.provider.name, candidate.model)
        retry = 0
        while breaker.allow():
            ledger.candidate, ledger.fallbacks = candidate, position
            began = time.monotonic()
            try:
                with attempt_span(candidate, retry=retry, position=position):
                    finished = await attempt(candidate)
            except UpstreamCallError as exc:
                kind, counts = verdict(exc)
                if counts:
                    breaker.failure()
                else:
                    breaker.release()
                status = exc.status_code if isinstance(exc, UpstreamHTTPError) else None
                code = to_gateway_error(exc).code
                ledger.attempt(
                    candidate, began, status="error", http_status=status, error_code=code
                )
                if output_started() or kind is Verdict.STOP:
                    raise
                last = exc
                if kind is Verdict.NEXT or retry >= candidate.retries:
                    break
                header = (
                    exc.headers.get("retry-after") if isinstance(exc, UpstreamHTTPError) else None
                )
                wait = retry_wait(
                    retry,
                    base=policy.base_delay,
                    cap=policy.max_delay,
                    retry_after=retry_after_seconds(header),
                )
                if wait > policy.max_retry_after or loop.time() + wait >= deadline:
                    break
                await asyncio.sleep(wait)
                retry += 1
                ledger.retries += 1
            except BaseException as exc:
                breaker.release()
                cancelled = isinstance(exc, asyncio.CancelledError)
                ledger.attempt(candidate, began, status="cancelled" if cancelled else "error")
                raise
            else:
                breaker.success()
                ledger.attempt(candidate, began, status="ok", http_status=200)
                return finished
    if last is not None:
        raise last
    raise _no_healthy_model(route, breakers)
