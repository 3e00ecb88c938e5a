"""The gatekeeper: who is calling, may they, and what did it cost them.

One :class:`Gate` per process. For a chat completion it authenticates the bearer key
(in-process cache, else Redis), checks the key's model restrictions, and admits the
request through every limit in one Redis round trip (``admit.lua``); the returned
:class:`Admission` settles the request when the answer is complete (``finish.lua``).

While Redis is unreachable ``EDGE_REDIS_FAILURE_POLICY`` decides: ``cached`` serves keys
this process has cached under in-process limits (:mod:`switchboard.edge.locallimits`) and
keeps quota charges to send later; unknown keys get 503. ``closed`` answers 503. After a
failure Redis is left alone for a moment, then tried again by the next request: redis-py
reconnects by itself, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from switchboard.common.chat import ChatCompletionRequest, message_text_length
from switchboard.common.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from switchboard.common.logs import get_logger
from switchboard.common.wire import CompletionFinished, KeyIdentity
from switchboard.edge.auth import bearer_secret
from switchboard.edge.clientip import client_ip
from switchboard.edge.durations import format_duration
from switchboard.edge.errors import LimitError
from switchboard.edge.keycache import CachedKey, KeyCache
from switchboard.edge.keymodels import KeyRecord, month_of
from switchboard.edge.keys import hash_secret
from switchboard.edge.locallimits import LocalLimiter
from switchboard.edge.observe import rate_limit_rejections
from switchboard.edge.ratelimit import (
    Limits,
    Mode,
    RedisLimiter,
    Settlement,
    Verdict,
    rate_limit_headers,
)
from switchboard.edge.settings import EdgeSettings
from switchboard.edge.settlements import Settlements

__all__ = ["Admission", "Gate", "estimate_tokens"]

log = get_logger(__name__)

_REDIS_RETRY_INTERVAL = 0.5
"""Seconds Redis is left alone after a failure before a request tries it again."""
_UNAVAILABLE = "API keys cannot be checked right now; try again shortly."
_INCORRECT = "Incorrect API key provided."
_AUTH_MESSAGES = {
    "unknown": _INCORRECT,
    "failed": _INCORRECT,
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
}


_LAYERS = {
    "quota_usd": "quota",
    "quota_tokens": "quota",
    "too_large": "tpm",
    "rpm": "rpm",
    "tpm": "tpm",
    "concurrency": "concurrency",
    "ip_rpm": "ip",
}
"""The metric's ``layer`` of each refusal verdict."""


def estimate_tokens(chat: ChatCompletionRequest, default_completion: int) -> int:
    """Tokens reserved against TPM before the call: prompt characters / 4, plus the
    completion budget (``max_completion_tokens``, ``max_tokens`` or the default) per choice."""
    prompt = math.ceil(message_text_length(chat) / 4)
    completion = chat.max_completion_tokens or chat.max_tokens or default_completion
    return prompt + completion * (chat.n or 1)


def _requested_models(chat: ChatCompletionRequest) -> list[str]:
    """``model`` and OpenRouter's fallback list ``models``, if the request has one."""
    models = [chat.model]
    extra = (chat.model_extra or {}).get("models")
    if isinstance(extra, list):
        models += [str(model) for model in extra]
    return models


def _seconds_to_next_month(now: float) -> float:
    year, month = time.gmtime(now)[:2]
    start = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
    return max(start - now, 1.0)


@dataclass
class Admission:
    """An admitted request; settle it exactly once with :meth:`finish` or :meth:`abandon`."""

    gate: Gate
    identity: KeyIdentity
    request_id: str
    limits: Limits
    estimate: int
    headers: dict[str, str]
    """``x-ratelimit-*`` headers for the response."""
    via_redis: bool
    """False when admitted by the in-process fallback."""
    reserved: int = -1
    """Tokens reserved in the TPM window, or -1."""
    leased: bool = False
    """True when a concurrency slot is held."""
    _settled: bool = field(default=False, repr=False)

    async def finish(self, finished: CompletionFinished) -> None:
        """Charge the reported usage and cost; reconcile the reservation; free the slot.

        Awaited before the client sees the end of the answer when that changes what the
        key's next request may do, so that "the next request is refused" is exact.
        """
        if self._settled:
            return
        self._settled = True
        usage = finished.usage
        cost = finished.cost_usd
        if cost is None:
            log.warning(
                "quota.cost_unknown",
                request_id=self.request_id,
                key_id=self.identity.key_id,
                served_model=finished.served_model,
            )
        total = usage.total_tokens if usage is not None else -1
        settlement = self.gate.settlement(
            self, actual=total, tokens=max(total, 0), cost_usd=max(cost or 0.0, 0.0)
        )
        if settlement is None:
            return
        if self.limits.needs_settling:
            await self.gate.settlements.now(settlement)
        else:
            self.gate.settlements.later(settlement)

    def abandon(self, *, consumed: bool) -> None:
        """The request failed or was cancelled without a usage report: charge nothing.

        ``consumed`` (chunks reached the client) keeps the TPM reservation, since tokens
        were spent; otherwise the reservation is returned.
        """
        if self._settled:
            return
        self._settled = True
        settlement = self.gate.settlement(
            self, actual=-1 if consumed else 0, tokens=0, cost_usd=0.0
        )
        if settlement is not None:
            self.gate.settlements.soon(settlement)


class Gate:
    """Authentication, model restrictions, limits and quotas for one edge process."""

    def __init__(
        self,
        settings: EdgeSettings,
        cache: KeyCache,
        limiter: RedisLimiter,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._limiter = limiter
        self._local = LocalLimiter(settings.edge_rate_window, clock=clock)
        self._defaults = Limits.defaults(settings)
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self._leases: dict[str, tuple[str, float]] = {}
        """Request id → (key id, monotonic time after which the lease is no longer renewed)."""
        self.settlements = Settlements(limiter, self)
        """Where admissions send what they used."""
        self._maintenance: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Renew concurrency leases and send kept settlements in the background."""
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain(), name="gate-maintenance"
        )

    async def stop(self) -> None:
        """Stop background work; settlements still running are awaited briefly."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        await self.settlements.stop()

    @property
    def redis_available(self) -> bool:
        """False for a moment after Redis failed; then the next request tries it again."""
        return self._clock() >= self._down_until

    def redis_failed(self, exc: BaseException) -> None:
        """A Redis call failed: leave Redis alone for a moment."""
        self._down_until = self._clock() + _REDIS_RETRY_INTERVAL
        if not self._down:
            self._down = True
            log.warning("redis.unavailable", error=type(exc).__name__)

    def redis_answered(self) -> None:
        """A Redis call succeeded."""
        if self._down:
            self._down = False
            log.info("redis.recovered", pending=self.settlements.kept)

    # ------------------------------------------------------------------ identity

    def client_ip(self, peer: str | None, headers: Any) -> str:
        """The client's IP, believing forwarding headers only from trusted proxies."""
        trusted = self._settings.edge_trusted_proxies
        if not trusted:
            return peer or "unknown"
        return client_ip(
            peer,
            trusted,
            forwarded=headers.getall("forwarded", []),
            x_forwarded_for=headers.getall("x-forwarded-for", []),
        )

    def check_blocked(self, ip: str) -> None:
        """429 when this process knows ``ip`` is blocked by the auth-failure guard."""
        until = self._blocked.get(ip)
        if until is None:
            return
        remaining = until - self._clock()
        if remaining <= 0:
            del self._blocked[ip]
            return
        raise self._blocked_error(remaining)

    def _block(self, ip: str, seconds: float) -> LimitError:
        """Remember that ``ip`` is blocked for ``seconds``; the 429 to answer now."""
        self._blocked.pop(ip, None)
        self._blocked[ip] = self._clock() + seconds
        while len(self._blocked) > self._settings.edge_key_cache_size:
            self._blocked.popitem(last=False)
        log.warning("auth.ip_blocked", client_ip=ip, seconds=round(seconds, 3))
        return self._blocked_error(seconds)

    @staticmethod
    def _blocked_error(seconds: float) -> LimitError:
        rate_limit_rejections.add(1, {"layer": "auth_guard"})
        return LimitError(
            "Too many failed authentication attempts from your address. "
            f"Please try again in {format_duration(seconds)}.",
            retry_after=seconds,
        )

    async def _redis(self, mode: Mode, subject: str, ip: str, **kwargs: Any) -> Verdict | None:
        """``admit.lua``, or ``None`` when Redis is unreachable (now or a moment ago)."""
        if not self.redis_available:
            return None
        try:
            verdict = await self._limiter.admit(mode, subject, ip=ip, **kwargs)
        except (RedisError, OSError) as exc:
            self.redis_failed(exc)
            return None
        self.redis_answered()
        return verdict

    async def _refuse_auth(
        self, status: str, ip: str, *, counted: Verdict | None
    ) -> AuthenticationError:
        """The 401 for a failed authentication, after counting it for the IP guard.

        ``counted`` is the verdict that already counted it (a lookup), if any. When this
        failure used up the IP's allowance, the block is remembered here at once.
        """
        if counted is None and self._settings.edge_auth_failures_per_minute:
            counted = await self._redis("fail", "", ip)
            if counted is not None and counted.status == "blocked":
                raise self._block(ip, counted.retry_after)
        if counted is not None and counted.retry_after > 0:
            self._block(ip, counted.retry_after)
        log.info("auth.failed", reason=status, client_ip=ip)
        return AuthenticationError(_AUTH_MESSAGES.get(status, _INCORRECT))

    async def refuse_admin(self, ip: str) -> AuthenticationError:
        """The 401 for a wrong admin token, counted for the IP guard (429 once blocked)."""
        self.check_blocked(ip)
        await self._refuse_auth("failed", ip, counted=None)
        return AuthenticationError("Invalid admin token.")

    def _remember(self, digest: str, verdict: Verdict) -> CachedKey | None:
        if verdict.record is None:
            if verdict.status == "unknown":
                self._cache.put_unknown(digest)
            return None
        record = KeyRecord.model_validate_json(verdict.record)
        return self._cache.put(digest, record, verdict.secret_ttl_ms)

    async def authenticate(self, authorization: str | None, ip: str) -> KeyIdentity:
        """Who is calling (no limits applied): for ``/v1/models`` and failed validations."""
        digest = hash_secret(bearer_secret(authorization))
        self.check_blocked(ip)
        record = (await self._entry(digest, ip, mode="auth", admit_kwargs={}))[0].record
        return record.identity(record.id, record.name)

    async def _entry(
        self, digest: str, ip: str, *, mode: Mode, admit_kwargs: dict[str, Any]
    ) -> tuple[CachedKey, Verdict | None]:
        """The active key for ``digest`` (cached, or read in ``mode``), or the right error.

        The verdict is set when Redis already admitted the request (``hash`` mode).
        """
        entry = self._cache.get(digest)
        usable = entry is not None and (self._cache.is_fresh(entry) or not self.redis_available)
        if entry is None and self._cache.is_unknown(digest):
            raise await self._refuse_auth("unknown", ip, counted=None)
        verdict: Verdict | None = None
        if not usable:
            verdict = await self._redis(mode, digest, ip, **admit_kwargs)
            if verdict is None:
                if entry is None or self._settings.edge_redis_failure_policy == "closed":
                    raise ServiceUnavailableError(_UNAVAILABLE, code="auth_unavailable")
                usable = True  # stale, but Redis cannot say otherwise: policy "cached"
            elif verdict.status == "blocked":
                raise self._block(ip, verdict.retry_after)
            else:
                entry = self._remember(digest, verdict)
                if verdict.status in _AUTH_MESSAGES:
                    raise await self._refuse_auth(verdict.status, ip, counted=verdict)
        elif self._settings.edge_redis_failure_policy == "closed" and not self.redis_available:
            raise ServiceUnavailableError(_UNAVAILABLE, code="auth_unavailable")
        if entry is None:  # Redis answered "ok" without a record: never happens
            raise ServiceUnavailableError(_UNAVAILABLE, code="auth_unavailable")
        state = entry.record.state(time.time())
        if state != "active":
            raise await self._refuse_auth(state, ip, counted=None)
        return entry, verdict if verdict is not None and verdict.status != "verify" else None

    # ------------------------------------------------------------------ admission

    async def admit(
        self,
        authorization: str | None,
        ip: str,
        chat: ChatCompletionRequest,
        request_id: str,
    ) -> Admission:
        """Authenticate, check the model, and admit the request through every limit."""
        settings = self._settings
        digest = hash_secret(bearer_secret(authorization))
        self.check_blocked(ip)
        estimate = estimate_tokens(chat, settings.edge_estimated_completion_tokens)
        month = month_of(time.time())
        admit_kwargs = {
            "request_id": request_id,
            "estimate": estimate,
            "limits": self._defaults,
            "month": month,
        }
        entry, verdict = await self._entry(digest, ip, mode="hash", admit_kwargs=admit_kwargs)
        record = entry.record
        for model in _requested_models(chat):
            if not record.allows(model):
                raise PermissionDeniedError(
                    f"This API key may not use the model '{model}'.",
                    param="model",
                    code="model_not_allowed",
                )
        limits = Limits.of(record, settings)
        identity = record.identity(record.id, record.name)
        if verdict is None:
            if not limits.any and not settings.edge_ip_rpm:
                return Admission(self, identity, request_id, limits, estimate, {}, via_redis=False)
            verdict = await self._redis("id", record.id, ip, **{**admit_kwargs, "limits": limits})
            if verdict is not None and verdict.status == "blocked":
                raise self._block(ip, verdict.retry_after)
        via_redis = verdict is not None
        if verdict is None:
            if settings.edge_redis_failure_policy == "closed":
                raise ServiceUnavailableError(_UNAVAILABLE, code="auth_unavailable")
            verdict = self._local.admit(record.id, request_id, estimate, limits)
        headers = rate_limit_headers(verdict.requests, verdict.tokens)
        if not verdict.admitted:
            raise self._limit_error(verdict, record, limits, estimate, headers)
        admission = Admission(
            self,
            identity,
            request_id,
            limits,
            estimate,
            headers,
            via_redis=via_redis,
            reserved=estimate if limits.tpm else -1,
            leased=bool(limits.max_concurrent),
        )
        if via_redis and limits.max_concurrent:
            # Renewed while the request may still run; a request whose settlement never
            # came (a response that was never started) lets its lease expire after that.
            self._leases[request_id] = (record.id, self._clock() + settings.edge_request_timeout)
        return admission

    @staticmethod
    def _limit_error(
        verdict: Verdict,
        record: KeyRecord,
        limits: Limits,
        estimate: int,
        headers: dict[str, str],
    ) -> LimitError:
        wait = format_duration(verdict.retry_after)
        status = verdict.status
        rate_limit_rejections.add(1, {"layer": _LAYERS.get(status, "ip")})
        if status in ("quota_usd", "quota_tokens"):
            what = (
                f"monthly budget of ${limits.budget_usd:g}"
                if status == "quota_usd"
                else f"monthly quota of {limits.token_quota} tokens"
            )
            return LimitError(
                f"You exceeded your current quota: the {what} of API key {record.id} is used "
                "up. It renews at the start of the next month (UTC).",
                retry_after=_seconds_to_next_month(time.time()),
                headers=headers,
                should_retry=False,
                code="insufficient_quota",
                error_type="insufficient_quota",
            )
        if status == "too_large":
            message = (
                f"Request too large for API key {record.id} on tokens per min (TPM): "
                f"Limit {limits.tpm}, Requested {estimate}. Lower max_tokens or shorten "
                "the messages."
            )
            return LimitError(
                message, retry_after=verdict.retry_after, headers=headers, should_retry=False
            )
        if status == "rpm":
            used = limits.rpm - (verdict.requests.remaining if verdict.requests else 0)
            message = (
                f"Rate limit reached for requests per min (RPM) on API key {record.id}: "
                f"Limit {limits.rpm}, Used {used}, Requested 1. Please try again in {wait}."
            )
        elif status == "tpm":
            used = limits.tpm - (verdict.tokens.remaining if verdict.tokens else 0)
            message = (
                f"Rate limit reached for tokens per min (TPM) on API key {record.id}: "
                f"Limit {limits.tpm}, Used {used}, Requested {estimate}. "
                f"Please try again in {wait}."
            )
        elif status == "concurrency":
            message = (
                f"Too many concurrent requests on API key {record.id}: Limit "
                f"{limits.max_concurrent}. Please try again in {wait}."
            )
        else:  # ip_rpm
            message = (
                "Rate limit reached for requests per min from your IP address. "
                f"Please try again in {wait}."
            )
        return LimitError(message, retry_after=verdict.retry_after, headers=headers)

    # ------------------------------------------------------------------ settlement

    def settlement(
        self, admission: Admission, *, actual: int, tokens: int, cost_usd: float
    ) -> Settlement | None:
        """What Redis must do to reconcile, charge and release one request, if anything;
        the in-process limits (an admission made without Redis) are settled here."""
        key_id = admission.identity.key_id
        request_id = admission.request_id
        self._leases.pop(request_id, None)
        if not admission.via_redis:
            self._local.finish(key_id, request_id, actual=actual, release=admission.leased)
        settlement = Settlement(
            key_id,
            request_id,
            reserved=admission.reserved if admission.via_redis else -1,
            actual=actual,
            tokens=tokens,
            cost_usd=cost_usd,
            month=month_of(time.time()),
            release=admission.leased and admission.via_redis,
        )
        return settlement if settlement.changes_anything else None

    async def renew_leases(self) -> int:
        """Extend the concurrency leases of this process's running requests."""
        now = self._clock()
        for request_id in [rid for rid, (_, until) in self._leases.items() if until <= now]:
            del self._leases[request_id]
        if not self._leases or not self.redis_available:
            return 0
        try:
            renewed = await self._limiter.renew(
                [(key_id, request_id) for request_id, (key_id, _) in self._leases.items()]
            )
        except (RedisError, OSError) as exc:
            self.redis_failed(exc)
            return 0
        self.redis_answered()
        return renewed

    async def probe(self) -> None:
        """While Redis is considered down, ask it whether it is back."""
        if not self._down or not self.redis_available:
            return
        try:
            await self._limiter.ping()
        except (RedisError, OSError) as exc:
            self.redis_failed(exc)
            return
        self.redis_answered()

    async def _maintain(self) -> None:
        interval = min(self._settings.edge_concurrency_lease / 3, _REDIS_RETRY_INTERVAL)
        last_renewal = self._clock()
        while True:
            await asyncio.sleep(interval)
            await self.probe()
            if self._clock() - last_renewal >= self._settings.edge_concurrency_lease / 3:
                await self.renew_leases()
                last_renewal = self._clock()
            if self.settlements.kept:
                await self.settlements.flush()
