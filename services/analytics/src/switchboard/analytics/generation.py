"""One usage event → one PostHog ``$ai_generation`` capture (or none, in privacy mode ``off``).

Properties follow PostHog's documented LLM-analytics names; ours carry a ``switchboard_``
prefix. The event's ``uuid`` is derived from the usage event id, so a redelivered event is
the same PostHog event, which PostHog keeps once. docs/analytics-posthog.md lists every
property per privacy mode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from switchboard.analytics.privacy import cap_content, redact, redact_messages, resolve_mode
from switchboard.analytics.settings import AnalyticsSettings, PrivacyMode
from switchboard.common.events import UsageRecorded

__all__ = [
    "AI_GENERATION",
    "EVENT_UUID_NAMESPACE",
    "MAX_EVENT_BYTES",
    "Capture",
    "CapturePolicy",
    "build_capture",
    "distinct_id_of",
    "event_uuid",
]

AI_GENERATION: Final = "$ai_generation"

EVENT_UUID_NAMESPACE: Final = uuid.UUID("fe7fed2f-4fc2-4bb6-b3ca-1bd0d3443e0e")
"""Namespace of the UUIDv5 each usage event id maps to. Never change it: PostHog
de-duplicates on the uuid, and a new namespace would make redeliveries new events."""

MAX_EVENT_BYTES: Final = 800 * 1024
"""Largest serialized properties we hand to the SDK; it silently drops events over 900 KiB."""

_COST_DIGITS: Final = 10

DistinctIdSource = Literal["user", "key_owner", "key_id"]


@dataclass(frozen=True)
class CapturePolicy:
    """What may leave, from the settings: default privacy mode, text cap, id hashing."""

    default_mode: PrivacyMode = "metadata"
    max_content_chars: int = 16_384
    distinct_id_salt: bytes | None = None
    """Set: distinct ids are ``HMAC-SHA256(salt, id)``, hex."""

    @classmethod
    def from_settings(cls, settings: AnalyticsSettings) -> CapturePolicy:
        salt = settings.analytics_distinct_id_salt
        return cls(
            default_mode=settings.analytics_privacy_mode,
            max_content_chars=settings.analytics_max_content_chars,
            distinct_id_salt=(
                salt.get_secret_value().encode()
                if settings.analytics_hash_distinct_id and salt is not None
                else None
            ),
        )


@dataclass(frozen=True)
class Capture:
    """One PostHog event, ready for ``posthog.capture``."""

    event_id: str
    """The usage event it comes from."""
    uuid: str
    distinct_id: str
    timestamp: datetime
    properties: dict[str, Any]
    event: str = AI_GENERATION


def event_uuid(event_id: str) -> str:
    """The PostHog event uuid of a usage event: the same for every delivery of it."""
    return str(uuid.uuid5(EVENT_UUID_NAMESPACE, event_id))


def distinct_id_of(usage: UsageRecorded, salt: bytes | None) -> tuple[str, DistinctIdSource]:
    """The OpenAI ``user`` field, else the key's owner, else the key id; hashed with a salt."""
    source: DistinctIdSource
    if usage.end_user and usage.end_user.strip():
        value, source = usage.end_user, "user"
    elif usage.key_owner and usage.key_owner.strip():
        value, source = usage.key_owner, "key_owner"
    else:
        value, source = usage.key_id, "key_id"
    if salt is not None:
        value = hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()
    return value, source


def _costs(usage: UsageRecorded) -> dict[str, float]:
    total = usage.cost_usd
    if total is None:
        # PostHog prices the tokens itself when no cost is sent.
        return {}
    if usage.input_cost_usd is not None and usage.output_cost_usd is not None:
        prompt, completion = usage.input_cost_usd, usage.output_cost_usd
    else:
        # Only the total is known: split it by token share. PostHog recomputes costs unless
        # both parts are sent, and the total we know is the one that was billed.
        tokens = usage.prompt_tokens + usage.completion_tokens
        prompt = total * usage.prompt_tokens / tokens if tokens else total
        completion = total - prompt
    return {
        "$ai_input_cost_usd": round(prompt, _COST_DIGITS),
        "$ai_output_cost_usd": round(completion, _COST_DIGITS),
        "$ai_total_cost_usd": round(total, _COST_DIGITS),
    }


def _error(usage: UsageRecorded) -> str | None:
    if usage.status == "ok":
        return None
    if usage.status == "cancelled":
        return "cancelled"
    label = usage.error_code or usage.error_type or "error"
    # The router keeps prompt text and secrets out of error messages; redact all the same.
    return f"{label}: {redact(usage.error_message)}" if usage.error_message else label


def _metadata(usage: UsageRecorded, event_uuid_: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "$ai_trace_id": usage.request_id,
        "$ai_span_id": event_uuid_,
        "$ai_model": usage.served_model or usage.requested_model,
        "$ai_input_tokens": usage.prompt_tokens,
        "$ai_output_tokens": usage.completion_tokens,
        "$ai_cache_read_input_tokens": usage.cached_tokens,
        "$ai_reasoning_tokens": usage.reasoning_tokens,
        "$ai_latency": usage.latency_ms / 1000,
        "$ai_http_status": usage.http_status,
        "$ai_is_error": usage.status != "ok",
        "$ai_stream": usage.stream,
    }
    optional: dict[str, Any] = {
        "$ai_provider": usage.provider,
        "$ai_base_url": usage.provider_base_url,
        "$ai_time_to_first_token": None if usage.ttft_ms is None else usage.ttft_ms / 1000,
        "$ai_error": _error(usage),
        "$ai_temperature": usage.temperature,
        "$ai_max_tokens": usage.max_tokens,
    }
    properties.update({name: value for name, value in optional.items() if value is not None})
    properties.update(_costs(usage))
    return properties


def _ours(usage: UsageRecorded, mode: PrivacyMode, id_source: DistinctIdSource) -> dict[str, Any]:
    return {
        "switchboard_key_id": usage.key_id,
        "switchboard_key_name": usage.key_name,
        "switchboard_tier": usage.tier,
        "switchboard_requested_model": usage.requested_model,
        "switchboard_upstream_provider": usage.upstream_provider,
        "switchboard_status": usage.status,
        "switchboard_error_type": usage.error_type,
        "switchboard_retries": usage.retries,
        "switchboard_fallbacks": usage.fallbacks,
        "switchboard_cache_hit": usage.cache_hit,
        "switchboard_cost_saved_usd": usage.cost_saved_usd,
        "switchboard_cost_source": usage.cost_source,
        "switchboard_privacy_mode": mode,
        "switchboard_distinct_id_source": id_source,
    }


def _content(usage: UsageRecorded, max_chars: int) -> dict[str, Any]:
    if usage.input_messages is None and usage.output_choices is None:
        return {}
    capped = cap_content(
        redact_messages(usage.input_messages or []),
        redact_messages(usage.output_choices or []),
        max_chars,
    )
    content: dict[str, Any] = {}
    if usage.input_messages is not None:
        content["$ai_input"] = capped.input
    if usage.output_choices is not None:
        content["$ai_output_choices"] = capped.output
    # Cut here, or already by the router's own cap (``ROUTER_USAGE_MAX_TEXT_BYTES``).
    content["switchboard_content_truncated"] = capped.truncated or usage.text_truncated
    return content


def build_capture(usage: UsageRecorded, policy: CapturePolicy) -> Capture | None:
    """The ``$ai_generation`` for ``usage``, or ``None`` when its privacy mode is ``off``."""
    mode = resolve_mode(usage.privacy_mode, policy.default_mode)
    if mode == "off":
        return None
    uuid_ = event_uuid(usage.event_id)
    distinct_id, id_source = distinct_id_of(usage, policy.distinct_id_salt)
    properties = {**_metadata(usage, uuid_), **_ours(usage, mode, id_source)}
    if mode == "full":
        content = _content(usage, policy.max_content_chars)
        if content and len(json.dumps({**properties, **content}).encode()) > MAX_EVENT_BYTES:
            # Escaping can swell capped text past the SDK's limit; the event goes without it.
            content = {"switchboard_content_truncated": True}
        properties.update(content)
    return Capture(
        event_id=usage.event_id,
        uuid=uuid_,
        distinct_id=distinct_id,
        timestamp=datetime.fromtimestamp(usage.received_at, UTC),
        properties=properties,
    )
