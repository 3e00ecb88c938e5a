"""The in-process key cache, and the listener that keeps it honest.

Hot keys are authenticated without Redis: records are cached by the SHA-256 of the secret.
An entry is *fresh* for ``EDGE_KEY_CACHE_TTL`` seconds; after that the next request reads
it again (in the same round trip that applies its limits). A stale entry is still used
while Redis is unreachable (``EDGE_REDIS_FAILURE_POLICY=cached``).

Every change of a key is published on ``sb:keys:events``; :class:`KeyEvents` drops the
key's entries at once and confirms on the event's reply channel. Whenever the listener
(re)subscribes, every entry is marked stale, since events published while it was not
subscribed are lost. Unknown secrets are remembered briefly (bounded), so that a flood of
bad keys does not read Redis for each attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from switchboard.common.logs import get_logger
from switchboard.edge.keymodels import KeyRecord
from switchboard.edge.keys import EVENTS_CHANNEL

__all__ = ["CachedKey", "KeyCache", "KeyEvents"]

log = get_logger(__name__)

_RESUBSCRIBE_DELAY = 0.2


@dataclass(slots=True)
class CachedKey:
    """A key record as this process knows it."""

    record: KeyRecord
    fresh_until: float
    """Monotonic time after which the record is read again."""
    secret_expires: float | None
    """Monotonic time at which this secret stops working (a rotated-out secret)."""


class KeyCache:
    """Key records by secret hash (LRU, bounded), plus recently seen unknown hashes."""

    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, CachedKey] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._by_id: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> CachedKey | None:
        """The entry for a secret hash, fresh or stale; ``None`` if absent or past grace."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.secret_expires is not None and entry.secret_expires <= self._clock():
            self._drop(digest)
            return None
        self._entries.move_to_end(digest)
        return entry

    def is_fresh(self, entry: CachedKey) -> bool:
        """True while ``entry`` may be used without asking Redis."""
        return entry.fresh_until > self._clock()

    def put(self, digest: str, record: KeyRecord, secret_ttl_ms: int = -1) -> CachedKey:
        """Remember ``record`` for ``digest``; ``secret_ttl_ms`` ≥ 0 ends its grace."""
        now = self._clock()
        self._drop(digest)
        self._unknown.pop(digest, None)
        entry = CachedKey(
            record, now + self._ttl, now + secret_ttl_ms / 1000 if secret_ttl_ms >= 0 else None
        )
        self._entries[digest] = entry
        self._by_id.setdefault(record.id, set()).add(digest)
        while len(self._entries) > self._size:
            self._drop(next(iter(self._entries)))
        return entry

    def is_unknown(self, digest: str) -> bool:
        """True when ``digest`` was recently found to belong to no key."""
        until = self._unknown.get(digest)
        if until is None:
            return False
        if until <= self._clock():
            del self._unknown[digest]
            return False
        return True

    def put_unknown(self, digest: str) -> None:
        """Remember for a while that ``digest`` belongs to no key."""
        if self._negative_ttl <= 0:
            return
        self._unknown.pop(digest, None)
        self._unknown[digest] = self._clock() + self._negative_ttl
        while len(self._unknown) > self._size:
            self._unknown.popitem(last=False)

    def invalidate(self, key_id: str) -> int:
        """Forget every secret of ``key_id``; returns how many entries went."""
        digests = self._by_id.pop(key_id, set())
        for digest in digests:
            self._entries.pop(digest, None)
        return len(digests)

    def mark_all_stale(self) -> None:
        """Make every entry be read again on next use (events may have been missed)."""
        for entry in self._entries.values():
            entry.fresh_until = 0.0
        self._unknown.clear()

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            digests = self._by_id.get(entry.record.id)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self._by_id[entry.record.id]


class KeyEvents:
    """Listens on ``sb:keys:events`` and invalidates the cache, for the process's lifetime.

    ``listen_redis`` must be a client of its own (``decode_responses=True``, no retries): a
    pub/sub connection error is how a Redis restart is noticed. Confirmations are published
    with ``redis``.
    """

    def __init__(self, cache: KeyCache, *, listen_redis: Redis, redis: Redis) -> None:
        self._cache = cache
        self._listen_redis = listen_redis
        self._redis = redis
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Run the listener in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="key-events")

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            pubsub = self._listen_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                self._cache.mark_all_stale()
                if not self.subscribed.is_set():
                    log.info("keys.events_subscribed")
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self.handle(message["data"])
            except (RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("keys.events_disconnected", error=type(exc).__name__)
                self.subscribed.clear()
                await asyncio.sleep(_RESUBSCRIBE_DELAY)
            finally:
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    def handle(self, data: str | bytes) -> None:
        """Apply one event: drop the key, then confirm on its reply channel."""
        try:
            event = orjson.loads(data)
            key_id = event["key_id"]
            ack = event.get("ack")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("keys.bad_event")
            return
        dropped = self._cache.invalidate(str(key_id))
        log.debug("keys.invalidated", key_id=key_id, entries=dropped)
        if isinstance(ack, str) and ack:
            task = asyncio.get_running_loop().create_task(self._confirm(ack))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)

    async def _confirm(self, channel: str) -> None:
        try:
            await self._redis.publish(channel, "1")
        except (RedisError, OSError) as exc:
            log.warning("keys.ack_failed", error=type(exc).__name__)
