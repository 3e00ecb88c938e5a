"""Circuit breakers, one per (provider, model), local to each router replica.

State machine::

    closed ──(failure_threshold consecutive failures, or error_rate over window)──▶ open
    open ──(cooldown elapsed, next call)──▶ half_open
    half_open ──(half_open_probes successes)──▶ closed
    half_open ──(any failure)──▶ open

Only failures that say something about the model's health count: connection errors,
timeouts, 429, 5xx and broken streams; a bad request (4xx) or a client that left does not.
Every call let through by :meth:`CircuitBreaker.allow` ends in exactly one of
:meth:`~CircuitBreaker.success`, :meth:`~CircuitBreaker.failure` or
:meth:`~CircuitBreaker.release` (no verdict), so half-open probes are never leaked.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from switchboard.common.logs import get_logger
from switchboard.common.wire import BreakerSnapshot
from switchboard.router.config import BreakerPolicy

__all__ = ["BreakerState", "Breakers", "CircuitBreaker"]

log = get_logger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """The health of one (provider, model) as this replica has seen it."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._name = name
        self._clock = clock
        self._wall_clock = wall_clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._opened_at = 0.0
        self._opened_wall: float | None = None
        self._probes = 0
        self._probe_successes = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down is over reads as half open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self._policy.cooldown:
            return "half_open"
        return self._state

    @property
    def available(self) -> bool:
        """Whether :meth:`allow` would let a call through, without taking a probe."""
        if self.state == "open":
            return False
        if self._state == "half_open":
            return self._probes < self._policy.half_open_probes
        return True

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state != "open":
            return 0.0
        return max(self._policy.cooldown - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """May a call go through now? A half-open breaker lets ``half_open_probes`` through."""
        if self.state == "open":
            return False
        if self._state == "open":  # the cool-down is over: start probing
            self._transition("half_open")
            self._probes = self._probe_successes = 0
        if self._state == "half_open":
            if self._probes >= self._policy.half_open_probes:
                return False
            self._probes += 1
        return True

    def success(self) -> None:
        """The call went well."""
        self._consecutive = 0
        self._record(ok=True)
        if self._state == "half_open":
            self._probe_successes += 1
            if self._probe_successes >= self._policy.half_open_probes:
                self._window.clear()
                self._transition("closed")

    def failure(self) -> None:
        """The call failed in a way that counts against the model's health."""
        self._consecutive += 1
        self._record(ok=False)
        if self._state == "half_open" or self._tripped():
            self._open()

    def release(self) -> None:
        """The call ended without a verdict (client error, cancelled): free its probe."""
        if self._state == "half_open" and self._probes > 0:
            self._probes -= 1

    def snapshot(self, provider: str, model: str) -> BreakerSnapshot:
        """The breaker's state for the health report."""
        self._expire()
        failures = sum(1 for _, ok in self._window if not ok)
        return BreakerSnapshot(
            provider=provider,
            model=model,
            state=self.state,
            consecutive_failures=self._consecutive,
            window_calls=len(self._window),
            window_failures=failures,
            opened_at=self._opened_wall,
            retry_at=(self._wall_clock() + self.retry_in) if self._state == "open" else None,
        )

    def _tripped(self) -> bool:
        policy = self._policy
        if self._consecutive >= policy.failure_threshold:
            return True
        self._expire()
        calls = len(self._window)
        failures = sum(1 for _, ok in self._window if not ok)
        return calls >= policy.min_calls and failures / calls >= policy.error_rate

    def _record(self, *, ok: bool) -> None:
        self._window.append((self._clock(), ok))
        self._expire()

    def _expire(self) -> None:
        horizon = self._clock() - self._policy.window
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()

    def _open(self) -> None:
        self._opened_at, self._opened_wall = self._clock(), self._wall_clock()
        self._probes = self._probe_successes = 0
        self._transition("open")

    def _transition(self, state: BreakerState) -> None:
        if state == self._state:
            return
        emit = log.warning if state == "open" else log.info
        emit("breaker.state", breaker=self._name, previous=self._state, state=state)
        self._state = state


class Breakers:
    """Every breaker of this replica, created on first use."""

    def __init__(self, policy: BreakerPolicy, *, clock: Callable[[], float] = time.monotonic):
        self._policy = policy
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, model: str) -> CircuitBreaker:
        """The breaker of ``model`` at ``provider``."""
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(self._policy, name=f"{provider}:{model}", clock=self._clock)
            self._breakers[key] = breaker
        return breaker

    def available(self, provider: str, model: str) -> bool:
        """Whether a call to ``model`` at ``provider`` would be let through now."""
        breaker = self._breakers.get((provider, model))
        return breaker is None or breaker.available

    def snapshots(self) -> list[BreakerSnapshot]:
        """Every breaker's state, sorted by provider and model."""
        return [
            breaker.snapshot(provider, model)
            for (provider, model), breaker in sorted(self._breakers.items())
        ]
