"""The gate: authentication, restrictions, limits and the Redis-unavailable policy, on a real
valkey-server (one that the Redis tests stop and restart on the same port)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.support.servers import ManagedProcess, free_port, start_valkey

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from switchboard.common.wire import CompletionFinished, TokenUsage
from switchboard.edge.errors import LimitError
from switchboard.edge.gate import Gate, estimate_tokens
from switchboard.edge.keycache import KeyCache
from switchboard.edge.keymodels import CreatedKey, KeySpec, month_of
from switchboard.edge.keys import KeyStore
from switchboard.edge.ratelimit import RedisLimiter
from switchboard.edge.redisclient import redis_client
from switchboard.edge.settings import EdgeSettings

from .conftest import SettingsFactory

IP = "192.0.2.50"


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40}]}
        | fields
    )


def _finished(total: int = 30, cost: float | None = 0.001) -> CompletionFinished:
    return CompletionFinished(
        request_id="r",
        served_model="openai/gpt-4o-mini",
        provider="OpenAI",
        usage=TokenUsage(prompt_tokens=10, completion_tokens=total - 10, total_tokens=total),
        cost_usd=cost,
    )


@dataclass
class Env:
    gate: Gate
    cache: KeyCache
    store: KeyStore
    redis: Redis
    settings: EdgeSettings

    async def key(self, **spec: Any) -> CreatedKey:
        return await self.store.create(KeySpec(name="k", **spec))

    async def admit(self, key: str, request_id: str = "r", ip: str = IP, **chat: Any) -> Any:
        return await self.gate.admit(f"Bearer {key}", ip, _chat(**chat), request_id)


EnvFactory = Callable[..., "asyncio.Future[Env]"]


@pytest.fixture
async def make_env(
    redis: Redis, make_settings: SettingsFactory
) -> AsyncIterator[Callable[..., Any]]:
    """Builds a gate over the test valkey with settings overrides; stops them all after."""
    built: list[tuple[Gate, Redis]] = []

    async def make(**overrides: Any) -> Env:
        settings = make_settings(**overrides)
        client = redis_client(settings)
        cache = KeyCache(
            ttl=settings.edge_key_cache_ttl,
            negative_ttl=settings.edge_key_negative_ttl,
            size=settings.edge_key_cache_size,
        )
        gate = Gate(settings, cache, RedisLimiter(client, settings))
        gate.start()
        built.append((gate, client))
        return Env(gate, cache, KeyStore(client, invalidation_wait=0), client, settings)

    yield make
    for gate, client in built:
        await gate.stop()
        await client.aclose()


def test_estimate() -> None:
    assert estimate_tokens(_chat(), 100) == 10 + 100
    assert estimate_tokens(_chat(max_tokens=7, n=2), 100) == 10 + 14
    assert estimate_tokens(_chat(max_completion_tokens=5, max_tokens=7), 100) == 15


async def test_first_request_reads_the_key_then_the_cache_serves_it(make_env: Any) -> None:
    env: Env = await make_env()
    created = await env.key(rpm=10)
    first = await env.admit(created.key, "r1")
    assert first.identity.key_id == created.id
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert len(env.cache) == 1
    second = await env.admit(created.key, "r2")
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert await env.redis.zcard(f"sb:rl:req:{created.id}") == 2
    identity = await env.gate.authenticate(f"Bearer {created.key}", IP)
    assert identity.key_id == created.id


async def test_unknown_revoked_and_expired_keys(make_env: Any) -> None:
    env: Env = await make_env()
    with pytest.raises(AuthenticationError, match="didn't provide an API key"):
        await env.gate.admit(None, IP, _chat(), "r")
    with pytest.raises(AuthenticationError, match="Incorrect API key"):
        await env.admit("sk-sb-unknown")
    with pytest.raises(AuthenticationError, match="Incorrect API key"):
        await env.admit("sk-sb-unknown")  # from the negative cache, still counted
    assert await env.redis.get(f"sb:ip:fail:{IP}") == "2"
    revoked = await env.key()
    await env.admit(revoked.key)
    await env.store.revoke(revoked.id)
    env.cache.invalidate(revoked.id)  # what the pub/sub listener does
    with pytest.raises(AuthenticationError, match="revoked"):
        await env.admit(revoked.key)
    with pytest.raises(AuthenticationError, match="revoked"):
        await env.admit(revoked.key)  # cached as revoked
    expiring = await env.key(expires_at=time.time() + 0.3)
    await env.admit(expiring.key)
    await asyncio.sleep(0.35)
    with pytest.raises(AuthenticationError, match="expired"):
        await env.admit(expiring.key)  # the cached record knows its expiry
    with pytest.raises(AuthenticationError, match="expired"):
        await env.gate.authenticate(f"Bearer {expiring.key}", "192.0.2.99")


async def test_ip_guard(make_env: Any) -> None:
    env: Env = await make_env(edge_auth_failures_per_minute=2)
    good = await env.key()
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await env.admit("sk-sb-guess")
    with pytest.raises(LimitError) as blocked:
        await env.admit("sk-sb-guess")
    assert blocked.value.status == 429
    assert blocked.value.retry_after is not None
    assert 59 < blocked.value.retry_after <= 60
    with pytest.raises(LimitError):
        await env.admit(good.key)  # known locally now: no Redis needed
    assert (await env.admit(good.key, ip="192.0.2.51")).identity.key_id == good.id
    with pytest.raises(LimitError):
        await env.gate.refuse_admin(IP)
    error = await env.gate.refuse_admin("192.0.2.52")
    assert error.status == 401


async def test_model_restrictions(make_env: Any) -> None:
    env: Env = await make_env()
    created = await env.key(allowed_models=["openai/*"], allowed_tiers=["budget"], rpm=5)
    ok = await env.admit(created.key, "r1")  # first: 'verify', then admitted by id
    assert ok.headers["x-ratelimit-remaining-requests"] == "4"
    await env.admit(created.key, "r2", model="budget")
    for fields in (
        {"model": "anthropic/claude-3.5-haiku"},
        {"model": "premium"},
        {"models": ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"]},
    ):
        with pytest.raises(PermissionDeniedError) as refused:
            await env.admit(created.key, "r3", **fields)
        assert refused.value.code == "model_not_allowed"
        assert refused.value.status == 403
    assert await env.redis.zcard(f"sb:rl:req:{created.id}") == 2  # refusals consumed nothing


async def test_limit_errors_carry_headers(make_env: Any) -> None:
    env: Env = await make_env()
    rpm = await env.key(rpm=1, tpm=10_000)
    await env.admit(rpm.key, "r1")
    with pytest.raises(LimitError) as caught:
        await env.admit(rpm.key, "r2")
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "rate_limit_exceeded"
    assert "requests per min (RPM)" in error.message
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-tokens"] == "10000"

    small = await env.key(tpm=100)
    with pytest.raises(LimitError) as large:
        await env.admit(small.key, max_tokens=500)
    assert large.value.headers["x-should-retry"] == "false"
    assert "Request too large" in large.value.message

    tpm = await env.key(tpm=300)
    await env.admit(tpm.key, "r1", max_tokens=200)
    with pytest.raises(LimitError, match="tokens per min"):
        await env.admit(tpm.key, "r2", max_tokens=200)

    conc = await env.key(max_concurrent=1)
    first = await env.admit(conc.key, "r1")
    with pytest.raises(LimitError, match="concurrent"):
        await env.admit(conc.key, "r2")
    first.abandon(consumed=False)
    await asyncio.sleep(0.1)
    await env.admit(conc.key, "r3")


async def test_ip_rpm_layer(make_env: Any) -> None:
    env: Env = await make_env(edge_ip_rpm=1)
    created = await env.key()  # no limits of its own: the IP layer still needs Redis
    await env.admit(created.key, "r1")
    with pytest.raises(LimitError, match="IP address"):
        await env.admit(created.key, "r2")


async def test_quota_is_charged_at_finish(make_env: Any) -> None:
    env: Env = await make_env()
    budget = await env.key(monthly_budget_usd=0.001, tpm=1000)
    admission = await env.admit(budget.key, "r1", max_tokens=100)
    assert admission.reserved == 110
    await admission.finish(_finished(total=30, cost=0.002))
    await admission.finish(_finished())  # settled once only
    month = month_of(time.time())
    assert float(await env.redis.get(f"sb:quota:usd:{budget.id}:{month}") or 0) == 0.002
    assert await env.redis.get(f"sb:rl:toksum:{budget.id}") == "30"
    with pytest.raises(LimitError) as caught:
        await env.admit(budget.key, "r2", max_tokens=100)
    assert caught.value.type == caught.value.code == "insufficient_quota"
    assert caught.value.headers["x-should-retry"] == "false"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0

    tokens = await env.key(monthly_token_quota=20)
    admission = await env.admit(tokens.key, "r1")
    await admission.finish(_finished(total=30, cost=None))  # unknown cost: 0 USD, logged
    with pytest.raises(LimitError, match="monthly quota of 20 tokens"):
        await env.admit(tokens.key, "r2")
    assert await env.redis.get(f"sb:quota:usd:{tokens.id}:{month}") is None


async def test_unlimited_keys_skip_redis_but_usage_is_recorded(make_env: Any) -> None:
    env: Env = await make_env()
    created = await env.key()
    await env.admit(created.key, "r1")  # the read
    admission = await env.admit(created.key, "r2")  # from the cache, no admission
    assert admission.headers == {}
    assert not admission.via_redis
    await admission.finish(_finished(total=12, cost=0.5))
    for _ in range(50):
        if await env.redis.get(f"sb:quota:tok:{created.id}:{month_of(time.time())}"):
            break
        await asyncio.sleep(0.02)
    usage = await env.store.usage(created.id)
    assert (usage.tokens, usage.cost_usd) == (12, 0.5)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    """A valkey-server of this test's own, restartable on the same port."""
    port = free_port()
    servers = [start_valkey(tmp_path, port=port, persistent=True)]
    try:
        yield servers
    finally:
        servers[-1].stop()


async def test_redis_down_cached_keys_use_local_limits(
    make_env: Any, own_valkey: list[ManagedProcess]
) -> None:
    server = own_valkey[0]
    env: Env = await make_env(redis_url=server.url, edge_key_cache_ttl=0.1)
    limited = await env.key(rpm=2, max_concurrent=5, monthly_budget_usd=10)
    unlimited = await env.key()
    await env.admit(limited.key, "warm")
    await env.admit(unlimited.key, "warm")
    server.kill()
    await asyncio.sleep(0.15)  # the cache entries are stale now: Redis would be asked
    first = await env.admit(limited.key, "down1")  # stale entry, local limits
    assert not first.via_redis
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await env.admit(limited.key, "down2")
    with pytest.raises(LimitError):
        await env.admit(limited.key, "down3")
    await env.admit(unlimited.key, "down")
    with pytest.raises(ServiceUnavailableError) as unknown:
        await env.admit("sk-sb-never-seen", "x")
    assert unknown.value.code == "auth_unavailable"
    await first.finish(_finished(total=30, cost=0.25))  # kept for later
    assert env.gate.settlements.kept == 1
    assert await env.gate.renew_leases() == 0

    own_valkey.append(start_valkey(server.log_path.parent, port=server.port, persistent=True))
    await asyncio.sleep(_wait_for_retry())
    assert await env.gate.settlements.flush() == 1
    assert env.gate.settlements.kept == 0
    assert (await env.store.usage(limited.id)).cost_usd == 0.25
    # Redis is back: the key's limits are exact again (the restarted server is empty).
    back = await env.admit(limited.key, "back")
    assert back.via_redis


async def test_closed_policy_refuses_everything(
    make_env: Any, own_valkey: list[ManagedProcess]
) -> None:
    server = own_valkey[0]
    env: Env = await make_env(redis_url=server.url, edge_redis_failure_policy="closed")
    created = await env.key(rpm=5)
    await env.admit(created.key, "warm")
    server.kill()
    with pytest.raises(ServiceUnavailableError):
        await env.admit(created.key, "down")  # Redis fails now
    with pytest.raises(ServiceUnavailableError):
        await env.admit(created.key, "down")  # Redis failed a moment ago


async def test_concurrency_leases_are_renewed(make_env: Any) -> None:
    env: Env = await make_env(edge_concurrency_lease=0.3)
    created = await env.key(max_concurrent=1)
    admission = await env.admit(created.key, "long")
    await asyncio.sleep(0.6)  # the maintenance task renews every 0.1 s
    with pytest.raises(LimitError):
        await env.admit(created.key, "other")
    await admission.finish(_finished())
    assert (await env.admit(created.key, "next")).leased


def _wait_for_retry() -> float:
    return 0.6
