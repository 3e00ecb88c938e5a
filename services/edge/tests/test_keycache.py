"""The key cache (with a hand-driven clock) and its invalidation over real Redis pub/sub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from tests.support.servers import free_port, start_valkey

from switchboard.edge.keycache import KeyCache, KeyEvents
from switchboard.edge.keymodels import KeyPatch, KeyRecord, KeySpec
from switchboard.edge.keys import EVENTS_CHANNEL, KeyStore
from switchboard.edge.redisclient import redis_client

from .conftest import SettingsFactory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(key_id: str = "key_1") -> KeyRecord:
    return KeyRecord(id=key_id, name="n", created_at=time.time())


def _cache(clock: Clock, size: int = 10) -> KeyCache:
    return KeyCache(ttl=30, negative_ttl=5, size=size, clock=clock)


def test_fresh_then_stale_then_dropped_on_invalidation() -> None:
    clock = Clock()
    cache = _cache(clock)
    entry = cache.put("h1", _record())
    cache.put("h2", _record())  # a second secret of the same key (rotation)
    assert cache.get("h1") is entry
    assert cache.is_fresh(entry)
    clock.now += 31
    assert cache.get("h1") is entry  # stale entries stay (usable while Redis is down)
    assert not cache.is_fresh(entry)
    assert cache.invalidate("key_1") == 2
    assert cache.get("h1") is None
    assert cache.get("h2") is None
    assert cache.invalidate("key_1") == 0


def test_rotated_out_secret_ends_with_its_grace() -> None:
    clock = Clock()
    cache = _cache(clock)
    cache.put("old", _record(), secret_ttl_ms=2000)
    clock.now += 1.9
    assert cache.get("old") is not None
    clock.now += 0.2
    assert cache.get("old") is None
    assert len(cache) == 0


def test_unknown_secrets_are_remembered_briefly_and_bounded() -> None:
    clock = Clock()
    cache = _cache(clock, size=2)
    for digest in ("a", "b", "c"):
        cache.put_unknown(digest)
    assert not cache.is_unknown("a")  # evicted: the oldest of three with room for two
    assert cache.is_unknown("b")
    assert cache.is_unknown("c")
    clock.now += 6
    assert not cache.is_unknown("c")
    cache.put_unknown("d")
    cache.put("d", _record())  # found after all
    assert not cache.is_unknown("d")
    disabled = KeyCache(ttl=30, negative_ttl=0, size=2, clock=clock)
    disabled.put_unknown("x")
    assert not disabled.is_unknown("x")


def test_lru_bound_and_mark_all_stale() -> None:
    clock = Clock()
    cache = _cache(clock, size=2)
    cache.put("a", _record("key_a"))
    cache.put("b", _record("key_b"))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", _record("key_c"))
    assert cache.get("b") is None
    assert len(cache) == 2
    cache.put_unknown("z")
    cache.mark_all_stale()
    entry = cache.get("a")
    assert entry is not None
    assert not cache.is_fresh(entry)
    assert not cache.is_unknown("z")


@pytest.fixture
async def events(
    redis: Redis, make_settings: SettingsFactory
) -> AsyncIterator[tuple[KeyCache, KeyEvents]]:
    """A cache and a running listener on the test valkey."""
    cache = KeyCache(ttl=300, negative_ttl=5, size=100)
    listen = redis_client(make_settings(), listener=True)
    listener = KeyEvents(cache, listen_redis=listen, redis=redis)
    listener.start()
    await asyncio.wait_for(listener.subscribed.wait(), 5)
    try:
        yield cache, listener
    finally:
        await listener.stop()
        await listener.stop()
        await listen.aclose()


async def test_update_reaches_the_cache_and_is_confirmed(
    redis: Redis, events: tuple[KeyCache, KeyEvents]
) -> None:
    cache, _ = events
    store = KeyStore(redis, invalidation_wait=2)
    created = await store.create(KeySpec(name="k"))
    record = await store.get(created.id)
    assert record is not None
    cache.put("digest", record)
    started = time.monotonic()
    change = await store.update(created.id, KeyPatch(rpm=5))
    assert change is not None
    assert (change.edges, change.confirmed) == (1, 1)
    assert time.monotonic() - started < 1
    assert cache.get("digest") is None


async def test_bad_events_are_ignored(redis: Redis, events: tuple[KeyCache, KeyEvents]) -> None:
    cache, listener = events
    cache.put("digest", _record())
    for payload in ("not json", "[]", '{"nokey": 1}'):
        await redis.publish(EVENTS_CHANNEL, payload)
    await redis.publish(EVENTS_CHANNEL, '{"key_id": "key_1", "ack": null}')
    for _ in range(50):
        if cache.get("digest") is None:
            break
        await asyncio.sleep(0.02)
    assert cache.get("digest") is None
    assert listener.subscribed.is_set()


async def test_listener_survives_a_redis_restart_and_marks_everything_stale(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    port = free_port()
    server = start_valkey(tmp_path, port=port)
    settings = make_settings(redis_url=server.url)
    cache = KeyCache(ttl=300, negative_ttl=5, size=10)
    redis = redis_client(settings)
    listen = redis_client(settings, listener=True)
    listener = KeyEvents(cache, listen_redis=listen, redis=redis)
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        entry = cache.put("digest", _record())
        server.kill()
        for _ in range(100):
            if not listener.subscribed.is_set():
                break
            await asyncio.sleep(0.02)
        assert not listener.subscribed.is_set()
        server = start_valkey(tmp_path, port=port)
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        assert not cache.is_fresh(entry)  # events published meanwhile were lost
        # and it hears events again
        await redis.publish(EVENTS_CHANNEL, '{"key_id": "key_1"}')
        for _ in range(50):
            if cache.get("digest") is None:
                break
            await asyncio.sleep(0.02)
        assert cache.get("digest") is None
    finally:
        await listener.stop()
        await listen.aclose()
        await redis.aclose()
        server.stop()
