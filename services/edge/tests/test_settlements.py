"""Settlements against a real valkey-server: at once, batched, kept while Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from switchboard.edge import settlements as settlements_module
from switchboard.edge.ratelimit import Limits, RedisLimiter, Settlement
from switchboard.edge.settlements import BATCH_SIZE, Settlements

from .conftest import SettingsFactory

MONTH = "2030-02"


class _State:
    """The gate's view of Redis, recorded."""

    def __init__(self) -> None:
        self.redis_available = True
        self.failures: list[str] = []
        self.answers = 0

    def redis_failed(self, exc: BaseException) -> None:
        self.failures.append(type(exc).__name__)
        self.redis_available = False

    def redis_answered(self) -> None:
        self.answers += 1


class _Counting(RedisLimiter):
    """The real limiter, counting its ``finish.lua`` calls and the settlements in each."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[int] = []
        self.broken = False

    async def finish_many(self, settlements: Sequence[Settlement]) -> None:
        if self.broken:
            raise RedisConnectionError("down")
        self.calls.append(len(settlements))
        await super().finish_many(settlements)


def _charge(key_id: str, n: int, *, tokens: int = 10, cost: float = 0.5) -> Settlement:
    return Settlement(key_id, f"req_{n}", -1, -1, tokens, cost, MONTH, release=False)


@pytest.fixture
def limiter(redis: Redis, make_settings: SettingsFactory) -> _Counting:
    return _Counting(redis, make_settings())


async def _spend(redis: Redis, key_id: str) -> tuple[int, float]:
    tokens = await redis.get(f"sb:quota:tok:{key_id}:{MONTH}")
    usd = await redis.get(f"sb:quota:usd:{key_id}:{MONTH}")
    return int(tokens or 0), float(usd or 0)


async def test_one_call_settles_many_requests_of_many_keys(
    redis: Redis, limiter: _Counting
) -> None:
    limits = Limits(tpm=1000, max_concurrent=2)
    for n, key in enumerate(("key_m1", "key_m2")):
        verdict = await limiter.admit(
            "id", key, ip="", request_id=f"held_{n}", estimate=300, limits=limits, month=MONTH
        )
        assert verdict.admitted
    await limiter.finish_many(
        [
            Settlement("key_m1", "held_0", 300, 40, 40, 0.25, MONTH, release=True),
            Settlement("key_m2", "held_1", 300, 0, 0, 0.0, MONTH, release=True),
            _charge("key_m1", 7, tokens=5, cost=0.125),
        ]
    )
    assert await redis.get("sb:rl:toksum:key_m1") == "40"  # the reservation became 40
    assert await redis.zrange("sb:rl:tok:key_m1", 0, -1) == ["held_0:40"]
    assert await redis.get("sb:rl:toksum:key_m2") == "0"  # returned whole
    assert await redis.zcard("sb:rl:conc:key_m1") == await redis.zcard("sb:rl:conc:key_m2") == 0
    assert await _spend(redis, "key_m1") == (45, 0.375)
    assert await _spend(redis, "key_m2") == (0, 0.0)
    assert limiter.calls == [3]


async def test_later_batches_within_the_delay(redis: Redis, limiter: _Counting) -> None:
    state = _State()
    sent = Settlements(limiter, state)
    for n in range(20):
        sent.later(_charge("key_b1", n))
    assert limiter.calls == []  # nothing yet: the batch waits for more
    await asyncio.sleep(settlements_module.BATCH_DELAY * 3)
    assert limiter.calls == [20]
    assert await _spend(redis, "key_b1") == (200, 10.0)
    assert state.answers == 1
    await sent.stop()


async def test_a_full_batch_goes_at_once(redis: Redis, limiter: _Counting) -> None:
    sent = Settlements(limiter, _State())
    for n in range(BATCH_SIZE + 3):
        sent.later(_charge("key_b2", n, tokens=1, cost=0.0))
    await asyncio.sleep(0.01)  # well within the delay
    assert limiter.calls == [BATCH_SIZE]
    await sent.stop()  # the rest goes with the stop
    assert limiter.calls == [BATCH_SIZE, 3]
    assert await _spend(redis, "key_b2") == (BATCH_SIZE + 3, 0.0)


async def test_now_and_soon_go_alone(redis: Redis, limiter: _Counting) -> None:
    sent = Settlements(limiter, _State())
    sent.later(_charge("key_b3", 1))
    await sent.now(_charge("key_b3", 2))
    assert limiter.calls == [1]
    assert await _spend(redis, "key_b3") == (10, 0.5)
    sent.soon(_charge("key_b3", 3))
    await sent.stop()
    assert sorted(limiter.calls) == [1, 1, 1]
    assert await _spend(redis, "key_b3") == (30, 1.5)


async def test_kept_while_redis_is_down_then_flushed_in_batches(
    redis: Redis, limiter: _Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settlements_module, "BATCH_SIZE", 4)
    state = _State()
    sent = Settlements(limiter, state)
    limiter.broken = True
    await sent.now(_charge("key_d", 0))
    assert state.failures == ["ConnectionError"]
    assert sent.kept == 1
    for n in range(1, 10):  # Redis is left alone now: kept without a call
        await sent.now(_charge("key_d", n))
    assert sent.kept == 10
    assert await sent.flush() == 0  # still down
    assert sent.kept == 10

    limiter.broken = False
    state.redis_available = True
    assert await sent.flush() == 10
    assert sent.kept == 0
    assert limiter.calls == [4, 4, 2]
    assert await _spend(redis, "key_d") == (100, 5.0)
    await sent.stop()


async def test_keeping_is_bounded(limiter: _Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settlements_module, "KEPT_LIMIT", 3)
    state = _State()
    state.redis_available = False
    sent = Settlements(limiter, state)
    for n in range(5):
        await sent.now(_charge("key_k", n))
    assert sent.kept == 3  # the two oldest were dropped (logged)
    assert limiter.calls == []
    await sent.stop()


def test_what_changes_nothing_is_not_sent() -> None:
    assert not Settlement("k", "r", -1, -1, 0, 0.0, MONTH, release=False).changes_anything
    assert not Settlement("k", "r", 100, 100, 0, 0.0, MONTH, release=False).changes_anything
    assert not Settlement("k", "r", 100, -1, 0, 0.0, MONTH, release=False).changes_anything
    assert Settlement("k", "r", 100, 0, 0, 0.0, MONTH, release=False).changes_anything
    assert Settlement("k", "r", -1, -1, 1, 0.0, MONTH, release=False).changes_anything
    assert Settlement("k", "r", -1, -1, 0, 1e-9, MONTH, release=False).changes_anything
    assert Settlement("k", "r", -1, -1, 0, 0.0, MONTH, release=True).changes_anything
