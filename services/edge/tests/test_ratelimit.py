"""The Lua scripts against a real valkey-server: exactness, windows, reconciliation, quotas."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from switchboard.edge.keymodels import KeySpec
from switchboard.edge.keys import KeyStore, hash_secret
from switchboard.edge.ratelimit import (
    Limits,
    RedisLimiter,
    Settlement,
    Window,
    month_ttl,
    rate_limit_headers,
)

from .conftest import SettingsFactory

MONTH = "2030-01"


def _limiter(redis: Redis, make_settings: SettingsFactory, **settings: object) -> RedisLimiter:
    return RedisLimiter(redis, make_settings(**settings))


async def _finish(
    limiter: RedisLimiter,
    key_id: str,
    request_id: str,
    *,
    reserved: int = -1,
    actual: int = -1,
    tokens: int = 0,
    cost_usd: float = 0.0,
    release: bool = False,
) -> None:
    """``finish.lua`` for one request of :data:`MONTH` (by default: nothing to settle)."""
    settlement = Settlement(key_id, request_id, reserved, actual, tokens, cost_usd, MONTH, release)
    await limiter.finish_many([settlement])


async def test_rpm_is_exact_under_concurrency(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings)
    limits = Limits(rpm=50)
    verdicts = await asyncio.gather(
        *(
            limiter.admit("id", "key_a", ip="", request_id=f"req_{n}", limits=limits, month=MONTH)
            for n in range(200)
        )
    )
    admitted = [v for v in verdicts if v.admitted]
    refused = [v for v in verdicts if not v.admitted]
    assert len(admitted) == 50
    assert {v.status for v in refused} == {"rpm"}
    assert sorted(v.requests.remaining for v in admitted if v.requests) == list(range(50))
    assert all(v.requests == Window(50, 0, v.requests.reset) for v in refused if v.requests)
    assert all(0 < v.retry_after <= 60 for v in refused)
    assert await redis.zcard("sb:rl:req:key_a") == 50


async def test_rpm_window_slides(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings, edge_rate_window=0.3)
    limits = Limits(rpm=2)

    async def admit(n: int) -> str:
        verdict = await limiter.admit(
            "id", "key_w", ip="", request_id=f"r{n}", limits=limits, month=MONTH
        )
        return verdict.status

    assert [await admit(1), await admit(2), await admit(3)] == ["ok", "ok", "rpm"]
    await asyncio.sleep(0.35)
    assert await admit(4) == "ok"


async def test_tpm_reserves_then_reconciles(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings)
    limits = Limits(tpm=1000)
    first = await limiter.admit(
        "id", "key_t", ip="", request_id="r1", estimate=600, limits=limits, month=MONTH
    )
    assert first.admitted
    assert first.tokens == Window(1000, 400, 60.0)
    # A second request of 600 does not fit next to the reservation...
    second = await limiter.admit(
        "id", "key_t", ip="", request_id="r2", estimate=600, limits=limits, month=MONTH
    )
    assert second.status == "tpm"
    assert second.tokens is not None
    assert second.tokens.remaining == 400
    assert 59 < second.retry_after <= 60
    # ...until the first one turns out to have used 50 tokens.
    await _finish(limiter, "key_t", "r1", reserved=600, actual=50, tokens=50)
    assert await redis.get("sb:rl:toksum:key_t") == "50"
    assert await redis.zrange("sb:rl:tok:key_t", 0, -1) == ["r1:50"]
    third = await limiter.admit(
        "id", "key_t", ip="", request_id="r3", estimate=600, limits=limits, month=MONTH
    )
    assert third.admitted
    assert third.tokens is not None
    assert third.tokens.remaining == 350


async def test_tpm_more_than_the_limit_is_too_large(
    redis: Redis, make_settings: SettingsFactory
) -> None:
    limiter = _limiter(redis, make_settings)
    verdict = await limiter.admit(
        "id", "key_l", ip="", request_id="r1", estimate=2000, limits=Limits(tpm=1000), month=MONTH
    )
    assert verdict.status == "too_large"
    assert await redis.exists("sb:rl:tok:key_l") == 0


async def test_tpm_window_expiry_and_late_reconciliation(
    redis: Redis, make_settings: SettingsFactory
) -> None:
    limiter = _limiter(redis, make_settings, edge_rate_window=0.2)
    limits = Limits(tpm=100)
    assert (
        await limiter.admit(
            "id", "key_e", ip="", request_id="r1", estimate=90, limits=limits, month=MONTH
        )
    ).admitted
    await asyncio.sleep(0.25)
    # r1 left the window: its tokens are freed, and r2 pruning it keeps the sum exact.
    verdict = await limiter.admit(
        "id", "key_e", ip="", request_id="r2", estimate=90, limits=limits, month=MONTH
    )
    assert verdict.admitted
    assert await redis.get("sb:rl:toksum:key_e") == "90"
    # r1 reports 30 tokens after its reservation left the window: counted now.
    await _finish(limiter, "key_e", "r1", reserved=90, actual=30, tokens=30)
    assert await redis.get("sb:rl:toksum:key_e") == "120"
    # A reservation returned (failure before any output) frees its tokens at once.
    await _finish(limiter, "key_e", "r2", reserved=90, actual=0)
    assert await redis.get("sb:rl:toksum:key_e") == "30"


async def test_concurrency_leases(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings, edge_concurrency_lease=0.3)
    limits = Limits(max_concurrent=2)

    async def admit(request_id: str) -> str:
        verdict = await limiter.admit(
            "id", "key_c", ip="", request_id=request_id, limits=limits, month=MONTH
        )
        return verdict.status

    assert [await admit("a"), await admit("b"), await admit("c")] == ["ok", "ok", "concurrency"]
    await _finish(limiter, "key_c", "a", release=True)
    assert await admit("d") == "ok"
    # b and d are renewed, so they outlive their first lease; an unknown lease is not added.
    await asyncio.sleep(0.2)
    assert await limiter.renew([("key_c", "b"), ("key_c", "d"), ("key_c", "zzz")]) == 2
    assert await limiter.renew([]) == 0
    await asyncio.sleep(0.15)
    assert await admit("e") == "concurrency"
    # A crashed edge renews nothing: its leases expire and free the slots.
    await asyncio.sleep(0.35)
    assert await admit("f") == "ok"


async def test_budget_and_token_quota(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings)
    budget = Limits(budget_usd=0.001)
    tokens = Limits(token_quota=100)

    async def admit(key: str, limits: Limits) -> str:
        verdict = await limiter.admit("id", key, ip="", request_id="r", limits=limits, month=MONTH)
        return verdict.status

    assert await admit("key_b", budget) == "ok"
    await _finish(limiter, "key_b", "r", tokens=10, cost_usd=0.0007)
    assert await admit("key_b", budget) == "ok"  # 0.0007 < 0.001: the next one may go
    await _finish(limiter, "key_b", "r", tokens=10, cost_usd=0.0007)
    assert await admit("key_b", budget) == "quota_usd"
    assert float(await redis.get(f"sb:quota:usd:key_b:{MONTH}") or 0) == pytest.approx(0.0014)
    assert await redis.ttl(f"sb:quota:usd:key_b:{MONTH}") > 92 * 86400
    assert await admit("key_b", Limits(budget_usd=0.01)) == "ok"  # a raised budget applies

    assert await admit("key_q", tokens) == "ok"
    await _finish(limiter, "key_q", "r", tokens=100)
    assert await admit("key_q", tokens) == "quota_tokens"
    assert await admit("key_q", Limits(budget_usd=0)) == "quota_usd"  # zero budget: nothing


async def test_ip_guard_blocks_after_n_failures(
    redis: Redis, make_settings: SettingsFactory
) -> None:
    limiter = _limiter(redis, make_settings, edge_auth_failures_per_minute=3)
    statuses = [
        (await limiter.admit("hash", "0" * 64, ip="192.0.2.1", request_id="r")).status
        for _ in range(3)
    ]
    assert statuses == ["unknown"] * 3
    blocked = await limiter.admit("fail", "", ip="192.0.2.1")
    assert blocked.status == "blocked"
    assert 59 < blocked.retry_after <= 60
    # Blocked for everything, even a known key; other addresses are not affected.
    assert (await limiter.admit("id", "key_x", ip="192.0.2.1", request_id="r")).status == "blocked"
    assert (await limiter.admit("id", "key_x", ip="192.0.2.2", request_id="r")).status == "ok"
    assert (await limiter.admit("fail", "", ip="192.0.2.2")).status == "failed"
    assert await redis.get("sb:ip:fail:192.0.2.2") == "1"


async def test_ip_rpm_layer(redis: Redis, make_settings: SettingsFactory) -> None:
    limiter = _limiter(redis, make_settings, edge_ip_rpm=2)
    statuses = [
        (await limiter.admit("id", f"key_{n}", ip="192.0.2.9", request_id=f"r{n}")).status
        for n in range(3)
    ]
    assert statuses == ["ok", "ok", "ip_rpm"]
    assert (await limiter.admit("id", "key_9", ip="192.0.2.10", request_id="r9")).status == "ok"


async def test_hash_mode_authenticates_and_uses_the_records_limits(
    redis: Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings(edge_default_rpm=1000, edge_auth_failures_per_minute=100)
    limiter = RedisLimiter(redis, settings)
    store = KeyStore(redis, invalidation_wait=0)
    plain = await store.create(KeySpec(name="plain"))
    limited = await store.create(KeySpec(name="limited", rpm=1))
    restricted = await store.create(KeySpec(name="restricted", allowed_models=["openai/*"]))
    expired = await store.create(KeySpec(name="old", expires_at=time.time() - 1))
    revoked = await store.create(KeySpec(name="gone"))
    await store.revoke(revoked.id)
    defaults = Limits.defaults(settings)

    async def admit(secret: str, mode: str = "hash", request_id: str = "r") -> str:
        verdict = await limiter.admit(
            mode,  # type: ignore[arg-type]
            hash_secret(secret),
            ip="192.0.2.3",
            request_id=request_id,
            limits=defaults,
            month=MONTH,
        )
        return verdict.status

    verdict = await limiter.admit(
        "hash", hash_secret(plain.key), ip="", request_id="r", limits=defaults, month=MONTH
    )
    assert verdict.admitted
    assert verdict.record is not None
    assert plain.id in verdict.record
    assert verdict.requests == Window(1000, 999, 60.0)  # the default applies
    assert [await admit(limited.key, request_id="a"), await admit(limited.key)] == ["ok", "rpm"]
    assert await admit(restricted.key) == "verify"
    assert await redis.exists(f"sb:rl:req:{restricted.id}") == 0  # nothing recorded
    assert await admit(expired.key) == "expired"
    assert await admit(revoked.key) == "revoked"
    assert await admit(plain.key, mode="auth") == "ok"
    assert await redis.get("sb:ip:fail:192.0.2.3") == "2"


async def test_rotated_secret_reports_its_grace(
    redis: Redis, make_settings: SettingsFactory
) -> None:
    limiter = _limiter(redis, make_settings)
    store = KeyStore(redis, invalidation_wait=0)
    created = await store.create(KeySpec(name="r"))
    change = await store.rotate(created.id, grace=30)
    assert change is not None
    assert change.created is not None
    old = await limiter.admit("auth", hash_secret(created.key), ip="")
    new = await limiter.admit("auth", hash_secret(change.created.key), ip="")
    assert old.status == new.status == "ok"
    assert 29_000 < old.secret_ttl_ms <= 30_000
    assert new.secret_ttl_ms == -1


def test_headers_and_month_ttl() -> None:
    headers = rate_limit_headers(Window(50, 49, 60.0), Window(1000, 0, 0.25))
    assert headers == {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "49",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "250ms",
    }
    assert rate_limit_headers(None, None) == {}
    # 2030-01-31 00:00 UTC: one day to the end of January, plus 92 days.
    assert month_ttl(1_896_048_000) == 86400 + 92 * 86400
    # December rolls over into January.
    assert month_ttl(1_924_905_600) == 86400 + 92 * 86400
