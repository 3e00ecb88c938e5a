"""API keys in Redis: minted here, stored only as SHA-256 hashes, changed atomically.

Layout (``docs/keys-and-limits.md`` has the whole of it)::

    sb:secret:<sha256 of a secret>   STRING  key id; a rotated-out secret carries a TTL
    sb:keyrec:<key id>               STRING  KeyRecord JSON (never the secret)
    sb:keyids                        ZSET    key id, scored by creation time
    sb:quota:usd:<key id>:<YYYY-MM>  STRING  USD charged in that month
    sb:quota:tok:<key id>:<YYYY-MM>  STRING  tokens charged in that month

Every change to an existing key is written in one ``MULTI`` together with a ``PUBLISH`` on
``sb:keys:events``; each edge drops the key from its cache and confirms on the reply
channel named in the event, and the change returns once all edges confirmed (or after
``EDGE_INVALIDATION_WAIT``).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import WatchError

from switchboard.edge.keymodels import (
    CreatedKey,
    KeyPatch,
    KeyRecord,
    KeySpec,
    KeyUsage,
    month_of,
)

__all__ = [
    "EVENTS_CHANNEL",
    "KEY_PREFIX",
    "KeyChange",
    "KeyRevokedError",
    "KeyStore",
    "hash_secret",
    "quota_keys",
]

KEY_PREFIX = "sk-sb-"
"""Every Switchboard key starts with this, so secret scanners can recognise it."""

BY_HASH = "sb:secret:"
RECORD = "sb:keyrec:"
INDEX = "sb:keyids"
EVENTS_CHANNEL = "sb:keys:events"
"""Pub/sub channel of key changes: ``{"key_id": ..., "ack": <reply channel> | null}``."""
ACKS = "sb:keys:acks:"

_MGET_BATCH = 500


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's plaintext: the only form in which it is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def quota_keys(key_id: str, month: str) -> tuple[str, str]:
    """The USD and token counters of ``key_id`` in ``month`` (``YYYY-MM``)."""
    return f"sb:quota:usd:{key_id}:{month}", f"sb:quota:tok:{key_id}:{month}"


class KeyRevokedError(ValueError):
    """The operation needs an active key."""


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A change that was written, and how many running edges confirmed it."""

    record: KeyRecord
    edges: int
    """Edges subscribed to key events when the change was published."""
    confirmed: int
    """Edges that confirmed they dropped the key from their cache in time."""
    created: CreatedKey | None = None
    """The new secret, after a rotation."""


class _Acks:
    """A private reply channel on which edges confirm an invalidation."""

    def __init__(self, redis: Redis, wait: float) -> None:
        self.channel = ACKS + secrets.token_hex(12)
        self._pubsub: PubSub | None = redis.pubsub() if wait > 0 else None
        self._wait = wait

    async def __aenter__(self) -> _Acks:
        if self._pubsub is not None:
            await self._pubsub.subscribe(self.channel)
            # The confirmation proves the subscription is live before anything is published.
            await self._pubsub.get_message(timeout=self._wait)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def collect(self, expected: int) -> int:
        """Confirmations received, waiting until ``expected`` or the time is up."""
        if self._pubsub is None:
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        confirmed = 0
        while confirmed < expected and (remaining := deadline - loop.time()) > 0:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=remaining
            )
            if message is not None and message.get("type") == "message":
                confirmed += 1
        return confirmed


class KeyStore:
    """Reads and writes keys in Redis (a client with ``decode_responses=True``)."""

    def __init__(self, redis: Redis, *, invalidation_wait: float = 1.0) -> None:
        self._redis = redis
        self._wait = invalidation_wait

    @staticmethod
    def _mint() -> tuple[str, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        return secret, hash_secret(secret)

    async def create(self, spec: KeySpec) -> CreatedKey:
        """Mint a key with 256 bits of entropy and store its hash."""
        secret, digest = self._mint()
        now = time.time()
        key_id = "key_" + secrets.token_hex(8)
        record = KeyRecord(**spec.model_dump(), id=key_id, created_at=now, secret_hash=digest)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(BY_HASH + digest, record.id)
            pipe.set(RECORD + record.id, record.model_dump_json())
            pipe.zadd(INDEX, {record.id: now})
            await pipe.execute()
        return CreatedKey(**record.view().model_dump(), key=secret)

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``, if there is one."""
        raw = await self._redis.get(RECORD + key_id)
        return None if raw is None else KeyRecord.model_validate_json(raw)

    async def list(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        ids = [str(key_id) for key_id in await self._redis.zrange(INDEX, 0, -1)]
        records: list[KeyRecord] = []
        for start in range(0, len(ids), _MGET_BATCH):
            batch = [RECORD + key_id for key_id in ids[start : start + _MGET_BATCH]]
            records.extend(
                KeyRecord.model_validate_json(raw)
                for raw in await self._redis.mget(batch)
                if raw is not None
            )
        return records

    async def usage(self, key_id: str, month: str | None = None) -> KeyUsage:
        """What ``key_id`` was charged in ``month`` (default: this month)."""
        month = month or month_of(time.time())
        usd, tokens = await self._redis.mget(quota_keys(key_id, month))
        return KeyUsage(month=month, cost_usd=float(usd or 0), tokens=int(tokens or 0))

    async def update(self, key_id: str, patch: KeyPatch) -> KeyChange | None:
        """Apply ``patch``; ``None`` when no key has that id."""
        changes = patch.changes()

        def apply(record: KeyRecord, _: Pipeline) -> KeyRecord:
            data = {**record.model_dump(), **changes, "updated_at": time.time()}
            return KeyRecord.model_validate(data)

        return await self._modify(key_id, apply)

    async def revoke(self, key_id: str) -> KeyChange | None:
        """Mark a key revoked (every secret of it stops working); ``None`` if unknown."""

        def apply(record: KeyRecord, _: Pipeline) -> KeyRecord:
            if record.status == "revoked":
                return record
            return record.model_copy(update={"status": "revoked", "revoked_at": time.time()})

        return await self._modify(key_id, apply)

    async def rotate(self, key_id: str, grace: float) -> KeyChange | None:
        """A new secret for the key; the current one keeps working for ``grace`` seconds.

        Raises :class:`KeyRevokedError` for a revoked key. ``None`` when no key has that id.
        """
        secret, digest = self._mint()
        now = time.time()

        def apply(record: KeyRecord, pipe: Pipeline) -> KeyRecord:
            if record.status == "revoked":
                raise KeyRevokedError(f"key {record.id} is revoked; create a new one")
            pipe.set(BY_HASH + digest, record.id)
            if record.secret_hash:
                if grace > 0:
                    pipe.pexpire(BY_HASH + record.secret_hash, max(1, round(grace * 1000)))
                else:
                    pipe.delete(BY_HASH + record.secret_hash)
            return record.model_copy(update={"secret_hash": digest, "rotated_at": now})

        change = await self._modify(key_id, apply)
        if change is None:
            return None
        created = CreatedKey(
            **change.record.view().model_dump(), key=secret, previous_secret_expires_at=now + grace
        )
        return KeyChange(change.record, change.edges, change.confirmed, created)

    async def _modify(
        self, key_id: str, apply: Callable[[KeyRecord, Pipeline], KeyRecord]
    ) -> KeyChange | None:
        """Read, change and write one record under ``WATCH``, publishing the change."""
        async with _Acks(self._redis, self._wait) as acks, self._redis.pipeline() as pipe:
            event = orjson.dumps({"key_id": key_id, "ack": acks.channel}).decode()
            while True:
                try:
                    await pipe.watch(RECORD + key_id)
                    raw = await pipe.get(RECORD + key_id)
                    if raw is None:
                        return None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    record = apply(KeyRecord.model_validate_json(raw), pipe)
                    pipe.set(RECORD + key_id, record.model_dump_json())
                    pipe.publish(EVENTS_CHANNEL, event)
                    results = await pipe.execute()
                    break
                except WatchError:
                    continue
            edges = int(results[-1])
            return KeyChange(record, edges, await acks.collect(edges))
