"""Rate limits and quotas, exact across edges: atomic Lua scripts in Redis.

- ``lua/admit.lua``: one round trip authenticates (on a cache miss) and checks every layer
  — IP auth-failure guard, per-IP requests per minute, monthly USD budget and token quota,
  requests per minute (sliding-window log), tokens per minute (sliding log of
  reservations), concurrency (leases) — then records the request in all of them, or in
  none.
- ``lua/finish.lua``: after the answer, reconciles the TPM reservation with the actual
  ``usage.total_tokens``, charges the quotas, frees the concurrency slot.
- ``lua/renew.lua``: extends the leases of requests still running, so that a crashed edge
  frees its slots within ``EDGE_CONCURRENCY_LEASE``.

Scripts run with ``EVALSHA`` (redis-py's ``register_script``), reloaded if Redis lost them.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from redis.asyncio import Redis

from switchboard.edge.durations import format_duration
from switchboard.edge.keymodels import KeyPolicy
from switchboard.edge.settings import EdgeSettings

__all__ = [
    "Limits",
    "RedisLimiter",
    "Settlement",
    "Verdict",
    "Window",
    "month_ttl",
    "rate_limit_headers",
]

Mode = Literal["id", "hash", "auth", "fail"]


def _script(name: str) -> str:
    return resources.files("switchboard.edge").joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class Window:
    """The state of one per-minute limit, as OpenAI's ``x-ratelimit-*`` headers report it."""

    limit: int
    remaining: int
    reset: float
    """Seconds until the window holds nothing any more (the limit is back to its initial
    state)."""


def rate_limit_headers(requests: Window | None, tokens: Window | None) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the limits that apply."""
    headers: dict[str, str] = {}
    for suffix, window in (("requests", requests), ("tokens", tokens)):
        if window is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(window.remaining, 0))
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(window.reset)
    return headers


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one key is under (0 = unlimited; ``None`` = no quota)."""

    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    budget_usd: float | None = None
    token_quota: int | None = None

    @classmethod
    def of(cls, policy: KeyPolicy, settings: EdgeSettings) -> Limits:
        """A key's own limits, the settings' defaults where it sets none."""
        return cls(
            rpm=policy.rpm or settings.edge_default_rpm,
            tpm=policy.tpm or settings.edge_default_tpm,
            max_concurrent=policy.max_concurrent or settings.edge_default_max_concurrent,
            budget_usd=policy.monthly_budget_usd,
            token_quota=policy.monthly_token_quota,
        )

    @classmethod
    def defaults(cls, settings: EdgeSettings) -> Limits:
        """The limits of a key that sets none."""
        return cls.of(KeyPolicy(), settings)

    @property
    def any(self) -> bool:
        """True when anything limits the key (it then needs Redis on every request)."""
        return bool(
            self.rpm
            or self.tpm
            or self.max_concurrent
            or self.budget_usd is not None
            or self.token_quota is not None
        )

    @property
    def needs_settling(self) -> bool:
        """True when the end of a request changes what the next one may do."""
        return bool(
            self.tpm
            or self.max_concurrent
            or self.budget_usd is not None
            or self.token_quota is not None
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``admit.lua`` decided."""

    status: str
    record: str | None
    """The key's record JSON, when the script looked the secret up."""
    secret_ttl_ms: int
    """Milliseconds the presented secret keeps working (-1: no end)."""
    retry_after: float
    """Seconds until a refused request could succeed."""
    requests: Window | None
    tokens: Window | None

    @property
    def admitted(self) -> bool:
        """True when the request was recorded in every layer."""
        return self.status == "ok"


def month_ttl(now: float) -> int:
    """Seconds to keep a month's quota counters: to the end of the month, plus 92 days."""
    year, month = time.gmtime(now)[:2]
    following = (year + month // 12, month % 12 + 1)
    end = calendar.timegm((*following, 1, 0, 0, 0))
    return max(1, math.ceil(end - now)) + 92 * 86400


@dataclass(frozen=True, slots=True)
class Settlement:
    """What ``finish.lua`` does for one request (see its header)."""

    key_id: str
    request_id: str
    reserved: int
    actual: int
    tokens: int
    cost_usd: float
    month: str
    release: bool

    @property
    def changes_anything(self) -> bool:
        """False when there is nothing to reconcile, charge or free."""
        return (
            (self.reserved >= 0 and self.actual >= 0 and self.actual != self.reserved)
            or self.tokens > 0
            or self.cost_usd > 0
            or self.release
        )


class RedisLimiter:
    """Runs the limit scripts. Raises redis-py's errors; the caller has the policy."""

    def __init__(self, redis: Redis, settings: EdgeSettings) -> None:
        self._redis = redis
        self._settings = settings
        self._window_ms = round(settings.edge_rate_window * 1000)
        self._lease_ms = round(settings.edge_concurrency_lease * 1000)
        self._admit = redis.register_script(_script("admit.lua"))
        self._finish = redis.register_script(_script("finish.lua"))
        self._renew = redis.register_script(_script("renew.lua"))

    async def admit(
        self,
        mode: Mode,
        subject: str,
        *,
        ip: str,
        request_id: str = "",
        estimate: int = 0,
        limits: Limits | None = None,
        month: str = "",
    ) -> Verdict:
        """Run ``admit.lua`` (see its header for the modes)."""
        settings = self._settings
        limits = limits or Limits.defaults(settings)
        raw = await self._admit(
            args=[
                mode,
                subject,
                ip,
                request_id,
                self._window_ms,
                settings.edge_auth_failures_per_minute,
                settings.edge_ip_rpm,
                estimate,
                month,
                self._lease_ms,
                limits.rpm,
                limits.tpm,
                limits.max_concurrent,
                repr(limits.budget_usd) if limits.budget_usd is not None else -1,
                limits.token_quota if limits.token_quota is not None else -1,
            ]
        )
        status, record, secret_ttl, retry, r_lim, r_rem, r_reset, t_lim, t_rem, t_reset = raw
        return Verdict(
            status=str(status),
            record=str(record) if record else None,
            secret_ttl_ms=int(secret_ttl),
            retry_after=int(retry) / 1000,
            requests=Window(int(r_lim), int(r_rem), int(r_reset) / 1000) if int(r_lim) else None,
            tokens=Window(int(t_lim), int(t_rem), int(t_reset) / 1000) if int(t_lim) else None,
        )

    async def finish_many(self, settlements: Sequence[Settlement]) -> None:
        """Run ``finish.lua`` for ``settlements``, all in one round trip."""
        args: list[str | int] = [self._window_ms, month_ttl(time.time())]
        for s in settlements:
            args += [
                s.key_id,
                s.request_id,
                s.reserved,
                s.actual,
                s.tokens,
                repr(s.cost_usd) if s.cost_usd > 0 else "0",
                s.month,
                "1" if s.release else "0",
            ]
        await self._finish(args=args)

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._redis.ping()

    async def renew(self, leases: list[tuple[str, str]]) -> int:
        """Extend the concurrency leases of ``(key id, request id)`` pairs."""
        if not leases:
            return 0
        args: list[str | int] = [self._lease_ms]
        for key_id, request_id in leases:
            args += [key_id, request_id]
        return int(await self._renew(args=args))
