"""From a JetStream message to a ledger row: decode, validate, convert.

A message that is not a :class:`UsageRecorded` this version of metering can read becomes
a :class:`Reject` (kept in ``usage_rejects``), never an exception: one bad message must
not stop the ledger, and must not vanish either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import ValidationError

from switchboard.common.events import AttemptRecord, UsageRecorded

__all__ = [
    "EVENT_COLUMNS",
    "REJECT_COLUMNS",
    "Reject",
    "Row",
    "decode",
    "event_row",
]

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "request_id",
    "event_version",
    "key_id",
    "key_name",
    "end_user",
    "requested_model",
    "served_model",
    "provider",
    "provider_base_url",
    "upstream_provider",
    "tier",
    "status",
    "http_status",
    "error_type",
    "error_code",
    "error_message",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_source",
    "latency_ms",
    "ttft_ms",
    "stream",
    "retries",
    "fallbacks",
    "attempts",
    "temperature",
    "max_tokens",
    "received_at",
    "started_at",
    "finished_at",
    "cache_hit",
    "cost_saved_usd",
    "stream_sequence",
)
"""The columns of ``usage_events`` metering writes, in the order of :func:`event_row`."""

REJECT_COLUMNS: tuple[str, ...] = (
    "stream_sequence",
    "subject",
    "key_id",
    "end_user",
    "reason",
    "payload",
)
"""The columns of ``usage_rejects`` metering writes, in the order of :attr:`Reject.row`."""

Row = list[Any]

_USD_SCALE = Decimal("1e-10")
_USD_LIMIT = Decimal("1e8")  # Decimal(18, 10) holds 8 digits before the point
_UINT16 = 2**16 - 1
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1
_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that is not a readable usage event."""

    stream_sequence: int
    subject: str
    reason: str
    payload: bytes

    @property
    def row(self) -> Row:
        """Its ``usage_rejects`` row (``key_id`` and ``end_user`` found when possible, so
        that erasure reaches it too)."""
        try:
            parsed: Any = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            parsed = None
        fields: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        key_id, end_user = (
            value if isinstance(value := fields.get(name), str) else ""
            for name in ("key_id", "end_user")
        )
        payload = self.payload.decode("utf-8", errors="replace")
        return [self.stream_sequence, self.subject, key_id, end_user, self.reason, payload]


def _uint(value: int | None, limit: int, name: str) -> int:
    if value is None:
        return 0
    if not 0 <= value <= limit:
        raise ValueError(f"{name} {value} is out of range 0..{limit}")
    return value


def _optional_uint(value: int | None, limit: int, name: str) -> int | None:
    return None if value is None else _uint(value, limit, name)


def _requested_limit(value: int | None) -> int | None:
    """``max_tokens`` as the client sent it, capped at what the column holds.

    The client chooses it (any 64-bit number): refusing the event for it would let a
    client keep its requests out of the ledger. No model comes near the cap.
    """
    return None if value is None else _uint(min(value, _UINT32), _UINT32, "max_tokens")


def _usd(value: float | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(repr(value)).quantize(_USD_SCALE, rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:
        raise ValueError(f"{name} {value!r} is not an amount") from exc
    if not amount.is_finite() or abs(amount) >= _USD_LIMIT:
        raise ValueError(f"{name} {value!r} is out of range")
    return amount


def _time(value: float, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{name} {value!r} is not a time") from exc


def _attempt(attempt: AttemptRecord) -> tuple[Any, ...]:
    return (
        attempt.model,
        attempt.provider,
        attempt.status,
        _optional_uint(attempt.http_status, _UINT16, "attempts.http_status"),
        attempt.error_code,
        _uint(attempt.duration_ms, _UINT32, "attempts.duration_ms"),
    )


def event_row(event: UsageRecorded, stream_sequence: int) -> Row:
    """The ``usage_events`` row of ``event`` (columns :data:`EVENT_COLUMNS`).

    Raises ``ValueError`` for a value the column cannot hold exactly.
    """
    return [
        event.event_id,
        event.request_id,
        event.v,
        event.key_id,
        event.key_name,
        event.end_user or "",
        event.requested_model,
        event.served_model or "",
        event.provider or "",
        event.provider_base_url or "",
        event.upstream_provider or "",
        event.tier or "",
        event.status,
        _uint(event.http_status, _UINT16, "http_status"),
        event.error_type or "",
        event.error_code or "",
        event.error_message or "",
        _uint(event.prompt_tokens, _UINT64, "prompt_tokens"),
        _uint(event.completion_tokens, _UINT64, "completion_tokens"),
        _uint(event.total_tokens, _UINT64, "total_tokens"),
        _uint(event.cached_tokens, _UINT64, "cached_tokens"),
        _uint(event.reasoning_tokens, _UINT64, "reasoning_tokens"),
        _usd(event.cost_usd, "cost_usd"),
        event.cost_source,
        _uint(event.latency_ms, _UINT32, "latency_ms"),
        _optional_uint(event.ttft_ms, _UINT32, "ttft_ms"),
        event.stream,
        _uint(event.retries, _UINT16, "retries"),
        _uint(event.fallbacks, _UINT16, "fallbacks"),
        [_attempt(attempt) for attempt in event.attempts],
        event.temperature,
        _requested_limit(event.max_tokens),
        _time(event.received_at, "received_at"),
        _time(event.started_at, "started_at"),
        _time(event.finished_at, "finished_at"),
        event.cache_hit,
        _usd(event.cost_saved_usd, "cost_saved_usd"),
        stream_sequence,
    ]


def decode(data: bytes, *, subject: str, stream_sequence: int) -> tuple[str, Row] | Reject:
    """``(event_id, row)`` of a usage message, or the :class:`Reject` it is."""
    try:
        event = UsageRecorded.model_validate_json(data)
        return event.event_id, event_row(event, stream_sequence)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}" for e in errors)
    except ValueError as exc:
        reason = str(exc)
    return Reject(stream_sequence, subject, reason[:_REASON_CHARS], data)
