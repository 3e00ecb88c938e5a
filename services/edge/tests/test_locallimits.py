"""The in-process fallback limiter, with a hand-driven clock."""

from __future__ import annotations

import pytest

from switchboard.edge.locallimits import LocalLimiter
from switchboard.edge.ratelimit import Limits, Window


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_rpm_sliding_window(clock: Clock) -> None:
    limiter = LocalLimiter(60, clock=clock)
    limits = Limits(rpm=2)
    first = limiter.admit("k", "r1", 0, limits)
    assert first.requests == Window(2, 1, 60)
    clock.now += 10
    assert limiter.admit("k", "r2", 0, limits).admitted
    refused = limiter.admit("k", "r3", 0, limits)
    assert refused.status == "rpm"
    assert refused.retry_after == pytest.approx(50)
    assert refused.requests == Window(2, 0, 60)
    clock.now += 50
    assert limiter.admit("k", "r4", 0, limits).admitted


def test_tpm_reservations_and_reconciliation(clock: Clock) -> None:
    limiter = LocalLimiter(60, clock=clock)
    limits = Limits(tpm=100)
    assert limiter.admit("k", "big", 200, limits).status == "too_large"
    first = limiter.admit("k", "r1", 60, limits)
    assert first.tokens == Window(100, 40, 60)
    clock.now += 5
    refused = limiter.admit("k", "r2", 60, limits)
    assert refused.status == "tpm"
    assert refused.retry_after == pytest.approx(55)
    limiter.finish("k", "r1", actual=10, release=False)
    second = limiter.admit("k", "r2", 60, limits)
    assert second.tokens == Window(100, 30, 60)
    limiter.finish("k", "r2", actual=-1, release=False)  # keeps the reservation
    refused = limiter.admit("k", "r3", 60, limits)
    assert refused.status == "tpm"
    clock.now += 61
    assert limiter.admit("k", "r3", 60, limits).admitted


def test_tpm_retry_when_nothing_single_frees_enough(clock: Clock) -> None:
    limiter = LocalLimiter(60, clock=clock)
    limits = Limits(tpm=100)
    assert limiter.admit("k", "r1", 50, limits).admitted
    limiter.finish("k", "r1", actual=500, release=False)  # reported far more than reserved
    refused = limiter.admit("k", "r2", 90, limits)
    assert refused.status == "tpm"
    assert refused.retry_after == pytest.approx(60)


def test_concurrency_and_cleanup(clock: Clock) -> None:
    limiter = LocalLimiter(60, clock=clock)
    limits = Limits(max_concurrent=1)
    assert limiter.admit("k", "r1", 0, limits).admitted
    refused = limiter.admit("k", "r2", 0, limits)
    assert (refused.status, refused.retry_after) == ("concurrency", 1.0)
    limiter.finish("k", "r1", actual=-1, release=True)
    assert limiter.admit("k", "r3", 0, limits).admitted
    limiter.finish("k", "r3", actual=-1, release=True)
    assert limiter._keys == {}  # nothing left to remember
    limiter.finish("unknown", "r", actual=5, release=True)
