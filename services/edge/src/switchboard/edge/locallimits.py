"""Per-key limits inside one edge process: the fallback while Redis is unreachable.

The same algorithms as the Lua scripts (sliding logs for RPM and TPM, a set of in-flight
requests for concurrency), but each edge counts only its own requests: with N edges a key
may get up to N times its limits during an outage. Monthly quotas cannot be checked
without Redis; their charges are kept and sent once Redis is back.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from switchboard.edge.ratelimit import Limits, Verdict, Window

__all__ = ["LocalLimiter"]


@dataclass
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    token_sum: int = 0
    in_flight: set[str] = field(default_factory=set)

    def prune(self, horizon: float) -> None:
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens:
            request_id, (at, amount) = next(iter(self.tokens.items()))
            if at > horizon:
                break
            del self.tokens[request_id]
            self.token_sum -= amount

    @property
    def empty(self) -> bool:
        return not (self.requests or self.tokens or self.in_flight)


class LocalLimiter:
    """RPM, TPM and concurrency of keys, counted in this process."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def admit(self, key_id: str, request_id: str, estimate: int, limits: Limits) -> Verdict:
        """Check and record one request, like ``admit.lua`` in ``id`` mode without quotas."""
        now = self._clock()
        state = self._keys.setdefault(key_id, _KeyState())
        state.prune(now - self._window)
        status, retry = "ok", 0.0
        requests = tokens = None
        if limits.rpm:
            count = len(state.requests)
            reset = state.requests[-1] + self._window - now if state.requests else 0.0
            requests = Window(limits.rpm, limits.rpm - count, reset)
            if count >= limits.rpm:
                status, retry = "rpm", state.requests[0] + self._window - now
        if limits.tpm:
            newest = next(reversed(state.tokens.values()), None)
            reset = newest[0] + self._window - now if newest else 0.0
            tokens = Window(limits.tpm, max(limits.tpm - state.token_sum, 0), reset)
            if status == "ok" and estimate > limits.tpm:
                status, retry = "too_large", self._window
            elif status == "ok" and state.token_sum + estimate > limits.tpm:
                status, retry = "tpm", self._tpm_retry(state, estimate, limits.tpm, now)
        if (
            status == "ok"
            and limits.max_concurrent
            and len(state.in_flight) >= limits.max_concurrent
        ):
            status, retry = "concurrency", 1.0
        if status != "ok":
            return Verdict(status, None, -1, max(retry, 0.001), requests, tokens)
        if limits.rpm and requests is not None:
            state.requests.append(now)
            requests = Window(limits.rpm, requests.remaining - 1, self._window)
        if limits.tpm and tokens is not None:
            state.tokens[request_id] = (now, estimate)
            state.token_sum += estimate
            tokens = Window(limits.tpm, max(tokens.remaining - estimate, 0), self._window)
        if limits.max_concurrent:
            state.in_flight.add(request_id)
        return Verdict("ok", None, -1, 0.0, requests, tokens)

    def _tpm_retry(self, state: _KeyState, estimate: int, tpm: int, now: float) -> float:
        need = state.token_sum + estimate - tpm
        for at, amount in state.tokens.values():
            need -= amount
            if need <= 0:
                return at + self._window - now
        return self._window

    def finish(self, key_id: str, request_id: str, *, actual: int, release: bool) -> None:
        """Reconcile a reservation (``actual`` < 0 keeps it) and free the slot."""
        state = self._keys.get(key_id)
        if state is None:
            return
        if actual >= 0 and request_id in state.tokens:
            at, reserved = state.tokens[request_id]
            state.tokens[request_id] = (at, actual)
            state.token_sum += actual - reserved
        if release:
            state.in_flight.discard(request_id)
        state.prune(self._clock() - self._window)
        if state.empty:
            del self._keys[key_id]
