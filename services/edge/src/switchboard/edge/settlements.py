"""Settling admitted requests in Redis (``finish.lua``): at once, batched, or kept for later.

A request whose end changes what its key's next request may do (a TPM reservation, a
concurrency slot, a budget or token quota) is settled at once, before the client sees the
end of the answer: "the next request is refused" stays exact. Any other request's charge
(the month's tokens and spend of a key without such limits) only has to arrive, so it waits
up to :data:`BATCH_DELAY` for others and goes with them in one ``finish.lua`` call of up to
:data:`BATCH_SIZE` requests. One redis-py call per request cost the edge about 0.25 ms of
CPU, a tenth of what it spends on a whole request (``docs/benchmarks.md``).

A settlement Redis does not take (it is down) is kept, up to :data:`KEPT_LIMIT` (the oldest
goes first, logged), and sent by :meth:`Settlements.flush` once Redis answers. An edge
killed outright loses the batch it was collecting: at most :data:`BATCH_DELAY` of charges
to keys without limits; a stop sends it first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from redis.exceptions import RedisError

from switchboard.common.logs import get_logger
from switchboard.edge.ratelimit import RedisLimiter, Settlement

__all__ = ["BATCH_DELAY", "BATCH_SIZE", "KEPT_LIMIT", "RedisState", "Settlements"]

log = get_logger(__name__)

BATCH_DELAY = 0.05
"""Seconds a deferred settlement waits for others to go with it."""
BATCH_SIZE = 256
"""Settlements per ``finish.lua`` call, at most."""
KEPT_LIMIT = 10_000
"""Settlements kept while Redis is down; older ones are dropped (and logged)."""
_STOP_WAIT = 2.0


class RedisState(Protocol):
    """Whether Redis is worth asking now (the gate keeps one view for all its calls)."""

    @property
    def redis_available(self) -> bool: ...

    def redis_failed(self, exc: BaseException) -> None: ...

    def redis_answered(self) -> None: ...


class Settlements:
    """Sends settlements to Redis: one now, or several later in one call."""

    def __init__(self, limiter: RedisLimiter, state: RedisState) -> None:
        self._limiter = limiter
        self._state = state
        self._batch: list[Settlement] = []
        self._timer: asyncio.TimerHandle | None = None
        self._kept: deque[Settlement] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def kept(self) -> int:
        """Settlements waiting for Redis to come back."""
        return len(self._kept)

    async def now(self, settlement: Settlement) -> None:
        """Send ``settlement`` and return when Redis has it (or it is kept); never raises."""
        await self._send([settlement])

    def soon(self, settlement: Settlement) -> None:
        """Send ``settlement`` in a call of its own, without waiting for it."""
        self._spawn(self._send([settlement]))

    def later(self, settlement: Settlement) -> None:
        """Send ``settlement`` with others within :data:`BATCH_DELAY` seconds."""
        self._batch.append(settlement)
        if len(self._batch) >= BATCH_SIZE:
            self._send_batch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_DELAY, self._send_batch)

    def _send_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if batch:
            self._spawn(self._send(batch))

    def _spawn(self, work: Coroutine[Any, Any, bool]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, settlements: Sequence[Settlement]) -> bool:
        if not self._state.redis_available:
            self._keep(settlements)
            return False
        try:
            await self._limiter.finish_many(settlements)
        except (RedisError, OSError) as exc:
            self._state.redis_failed(exc)
            self._keep(settlements)
            return False
        self._state.redis_answered()
        return True

    def _keep(self, settlements: Sequence[Settlement]) -> None:
        for settlement in settlements:
            if len(self._kept) >= KEPT_LIMIT:
                dropped = self._kept.popleft()
                log.error("quota.settlement_dropped", key_id=dropped.key_id, tokens=dropped.tokens)
            self._kept.append(settlement)

    async def flush(self) -> int:
        """Send kept settlements while Redis answers; returns how many were sent."""
        sent = 0
        while self._kept:
            batch = [self._kept.popleft() for _ in range(min(BATCH_SIZE, len(self._kept)))]
            if not await self._send(batch):  # kept again; charges add up in any order
                break
            sent += len(batch)
        if sent:
            log.info("quota.settlements_sent", count=sent)
        return sent

    async def stop(self) -> None:
        """Send the batch being collected and wait briefly for every call in flight."""
        self._send_batch()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_WAIT)
