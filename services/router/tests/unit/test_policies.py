"""Backoff and jitter, Retry-After, the circuit breaker state machine, failure verdicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from switchboard.router.backoff import backoff_delay, retry_wait
from switchboard.router.breaker import Breakers, CircuitBreaker
from switchboard.router.config import BreakerPolicy
from switchboard.router.dispatch import Verdict, verdict
from switchboard.router.openrouter.errors import (
    UpstreamBusyError,
    UpstreamDisconnectedError,
    UpstreamHTTPError,
    UpstreamReportedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    retry_after_seconds,
)

# ------------------------------------------------------------------------------- backoff


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 10, 100, 10_000])
def test_full_jitter_stays_within_its_ceiling(retry: int) -> None:
    ceiling = min(8.0, 0.25 * 2 ** min(retry, 64))
    assert backoff_delay(retry, base=0.25, cap=8.0, rng=lambda: 0.0) == 0.0
    assert backoff_delay(retry, base=0.25, cap=8.0, rng=lambda: 0.999999) == pytest.approx(
        ceiling * 0.999999
    )
    samples = [backoff_delay(retry, base=0.25, cap=8.0) for _ in range(200)]
    assert all(0 <= s <= ceiling for s in samples)


def test_full_jitter_spreads_the_waits() -> None:
    samples = {round(backoff_delay(5, base=1, cap=100), 3) for _ in range(50)}
    assert len(samples) > 10
    assert backoff_delay(-3, base=1, cap=100, rng=lambda: 1.0) == 1.0


def test_retry_after_wins_over_backoff() -> None:
    assert retry_wait(0, base=1, cap=5, retry_after=2.5, rng=lambda: 1.0) == 2.5
    assert retry_wait(0, base=1, cap=5, retry_after=-1.0) == 0.0
    assert retry_wait(2, base=1, cap=5, retry_after=None, rng=lambda: 0.5) == 2.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-2", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now=now) == expected


# ------------------------------------------------------------------------ circuit breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **policy: Any) -> CircuitBreaker:
    values = {"failure_threshold": 3, "cooldown": 10, "window": 60, "min_calls": 4, **policy}
    return CircuitBreaker(BreakerPolicy(**values), name="p:m", clock=clock, wall_clock=clock)


def test_opens_after_consecutive_failures_and_recovers_through_a_probe() -> None:
    clock = Clock()
    b = breaker(clock, error_rate=1.0, min_calls=100)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    assert b.allow()
    b.success()  # a success resets the consecutive count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert (b.state, b.available, b.allow()) == ("open", False, False)
    assert b.retry_in == 10
    clock.now += 10
    assert (b.state, b.available) == ("half_open", True)
    assert b.allow()  # the probe
    assert (b.available, b.allow()) == (False, False)  # only one probe at a time
    b.success()
    assert (b.state, b.retry_in) == ("closed", 0.0)


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1)
    b.allow()
    b.failure()
    clock.now += 10
    assert b.allow()
    b.failure()
    assert b.state == "open"
    assert b.retry_in == 10


def test_a_released_probe_frees_its_slot() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, half_open_probes=2)
    b.allow()
    b.failure()
    clock.now += 10
    assert b.allow()
    assert b.allow()
    assert not b.allow()
    b.release()
    assert b.allow()
    b.success()
    assert b.state == "half_open"  # two successes needed
    b.success()
    assert b.state == "closed"
    b.release()  # harmless when closed


def test_opens_on_error_rate_within_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, error_rate=0.5, min_calls=4)
    for ok in (True, False, True):
        b.allow()
        b.success() if ok else b.failure()
    assert b.state == "closed"  # 1 of 3: too few calls
    b.allow()
    b.failure()
    assert b.state == "open"  # 2 of 4


def test_old_calls_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, error_rate=0.5, min_calls=2, window=5)
    b.failure()
    clock.now += 6
    b.success()
    b.success()
    assert b.state == "closed"
    snap = b.snapshot("p", "m")
    assert (snap.window_calls, snap.window_failures, snap.state) == (2, 0, "closed")


def test_breakers_registry_and_snapshots() -> None:
    clock = Clock()
    breakers = Breakers(BreakerPolicy(failure_threshold=1, cooldown=5), clock=clock)
    assert breakers.available("p", "m")
    breakers.get("p", "m").failure()
    assert breakers.get("p", "m") is breakers.get("p", "m")
    assert not breakers.available("p", "m")
    breakers.get("a", "z").success()
    snaps = breakers.snapshots()
    assert [(s.provider, s.model, s.state) for s in snaps] == [
        ("a", "z", "closed"),
        ("p", "m", "open"),
    ]
    assert snaps[1].opened_at is not None
    assert snaps[1].retry_at is not None
    assert snaps[1].consecutive_failures == 1


# ------------------------------------------------------------------------------- verdicts


def http(status: int, body: bytes = b"") -> UpstreamHTTPError:
    return UpstreamHTTPError(status, body=body)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (http(500), (Verdict.RETRY, True)),
        (http(503), (Verdict.RETRY, True)),
        (http(429), (Verdict.RETRY, True)),
        (http(408), (Verdict.RETRY, True)),
        (UpstreamUnreachableError("x"), (Verdict.RETRY, True)),
        (UpstreamTimeoutError("x"), (Verdict.RETRY, True)),
        (UpstreamDisconnectedError("x"), (Verdict.RETRY, True)),
        (UpstreamReportedError("x"), (Verdict.RETRY, True)),
        (UpstreamBusyError("x"), (Verdict.RETRY, False)),
        (http(401), (Verdict.NEXT, False)),
        (http(402), (Verdict.NEXT, False)),
        (http(403), (Verdict.NEXT, False)),
        (http(404), (Verdict.NEXT, False)),
        (http(403, b'{"error": {"metadata": {"reasons": ["x"]}}}'), (Verdict.STOP, False)),
        (http(400), (Verdict.STOP, False)),
        (http(413), (Verdict.STOP, False)),
    ],
)
def test_verdicts(exc: Exception, expected: tuple[Verdict, bool]) -> None:
    assert verdict(exc) == expected  # type: ignore[arg-type]
