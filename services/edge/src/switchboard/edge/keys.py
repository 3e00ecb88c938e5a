"""API keys: created once, stored only as SHA-256 hashes in Redis.

Layout (all values JSON)::

    sb:key:<sha256 of the secret>  →  KeyRecord
    sb:keyid:<key id>              →  <sha256 of the secret>

A key's plaintext is shown once, at creation, and never stored or logged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Literal

from pydantic import BaseModel
from redis.asyncio import Redis

__all__ = ["KEY_PREFIX", "CreatedKey", "KeyRecord", "KeyStore", "hash_secret"]

KEY_PREFIX = "sk-sb-"
"""Every Switchboard key starts with this, so secret scanners can recognise it."""

_RECORD = "sb:key:"
_BY_ID = "sb:keyid:"


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's plaintext: the only form in which it is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRecord(BaseModel):
    """What is known about a key. Never holds the secret."""

    id: str
    name: str
    status: Literal["active", "revoked"] = "active"
    created_at: float
    revoked_at: float | None = None


class CreatedKey(BaseModel):
    """A new key: the plaintext ``key`` is in this object and nowhere else."""

    id: str
    name: str
    key: str
    created_at: float


class KeyStore:
    """Reads and writes key records in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def create(self, name: str) -> CreatedKey:
        """Mint a key with 256 bits of entropy and store its hash."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(id="key_" + secrets.token_hex(8), name=name, created_at=time.time())
        digest = hash_secret(secret)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_RECORD + digest, record.model_dump_json())
            pipe.set(_BY_ID + record.id, digest)
            await pipe.execute()
        return CreatedKey(id=record.id, name=name, key=secret, created_at=record.created_at)

    async def lookup(self, secret: str) -> KeyRecord | None:
        """The record of the key whose plaintext is ``secret``, if any."""
        raw = await self._redis.get(_RECORD + hash_secret(secret))
        return None if raw is None else KeyRecord.model_validate_json(raw)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked; ``None`` when no key has that id."""
        digest = await self._redis.get(_BY_ID + key_id)
        if digest is None:
            return None
        digest_str = digest.decode() if isinstance(digest, bytes) else str(digest)
        raw = await self._redis.get(_RECORD + digest_str)
        if raw is None:
            return None
        record = KeyRecord.model_validate_json(raw)
        if record.status != "revoked":
            record = record.model_copy(update={"status": "revoked", "revoked_at": time.time()})
            await self._redis.set(_RECORD + digest_str, record.model_dump_json())
        return record
