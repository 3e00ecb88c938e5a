"""Facts services publish to JetStream for others to consume later, version 1.

:class:`UsageRecorded` is published by the router on
:data:`~switchboard.common.subjects.USAGE_RECORDED` (stream
:data:`~switchboard.common.subjects.USAGE_STREAM`), exactly one per chat request that
reached a router, served, failed or cancelled, with ``Nats-Msg-Id`` = ``event_id`` =
``request_id`` so that JetStream drops a re-publication. Metering (ClickHouse) and
analytics (PostHog) read it. It never holds a secret, and holds prompt and answer text
(``input_messages``, ``output_choices``) only when the request's privacy mode is ``full``.

Compatibility: consumers ignore fields they do not know; a producer only adds optional
fields within one version. Anything else is a new ``v`` (and a new subject token).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EVENT_VERSION",
    "AttemptRecord",
    "CostSource",
    "PrivacyMode",
    "UsageRecorded",
    "UsageStatus",
]

EVENT_VERSION: Literal[1] = 1

UsageStatus = Literal["ok", "error", "cancelled"]
"""``ok``: answered in full; ``error``: ended with an error (before or after chunks);
``cancelled``: the client went away first."""

CostSource = Literal["upstream", "catalog", "unknown"]
"""Where ``cost_usd`` comes from: the upstream's ``usage.cost``, the catalog's (or the
routing config's) prices times the token counts, or nowhere."""

PrivacyMode = Literal["off", "metadata", "full"]
"""What of a request may leave for analytics: ``off`` nothing, ``metadata`` no prompt or
answer text, ``full`` the text too. A key's own mode (its metadata) overrides a service's
default."""


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class AttemptRecord(_Event):
    """One call to an upstream made while serving the request."""

    model: str
    """The model asked of the upstream (its name at that provider)."""
    provider: str
    """The configured provider name."""
    status: Literal["ok", "error", "cancelled"]
    http_status: int | None = None
    """The upstream's HTTP status, if it answered with one."""
    error_code: str | None = None
    """The client-facing error code this failure maps to (``upstream_error``, ``timeout`` …)."""
    duration_ms: int = Field(ge=0)


class UsageRecorded(_Event):
    """What one chat request used and cost, and how it was served."""

    v: Literal[1] = EVENT_VERSION
    """Schema version."""
    event_id: str
    """Equal to ``request_id``: the ``Nats-Msg-Id`` JetStream de-duplicates on."""
    request_id: str
    key_id: str
    key_name: str = ""
    key_owner: str | None = None
    """The key's owner (a person or team id from the key's metadata), if it names one."""
    privacy_mode: PrivacyMode | None = None
    """The key's own privacy mode, if it names one (consumers fall back to their default)."""
    end_user: str | None = None
    """The request's ``user`` field (the client's own end-user id), if sent."""

    requested_model: str
    """The ``model`` of the request, as sent (a concrete model, a tier alias or ``auto``)."""
    served_model: str | None = None
    """The model that answered (or the last one tried, on failure); ``None`` if none was tried."""
    provider: str | None = None
    """The configured provider of ``served_model``."""
    provider_base_url: str | None = None
    upstream_provider: str | None = None
    """Who served it behind the provider, as reported (OpenRouter's ``provider``)."""
    tier: str | None = None
    """The tier alias, custom alias or ``auto`` the request named, if any."""

    status: UsageStatus
    http_status: int
    """The status the client got (``499`` when it went away first)."""
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    """Short (at most 300 characters), never a secret and never prompt text."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    """USD, rounded half-even to 10 decimal places; ``None`` when unknown."""
    cost_source: CostSource = "unknown"
    input_cost_usd: float | None = None
    """The prompt's share of ``cost_usd`` (cached tokens included), when the split is known;
    ``input_cost_usd + output_cost_usd == cost_usd`` exactly, in decimal."""
    output_cost_usd: float | None = None
    """The completion's share of ``cost_usd`` (reasoning tokens and any per-request price
    included), when the split is known."""

    latency_ms: int = Field(ge=0)
    """From the router picking the request up to its terminal frame."""
    ttft_ms: int | None = None
    """From the router picking the request up to the first ``c`` (or the ``r``) frame."""
    stream: bool = False
    retries: int = 0
    fallbacks: int = 0
    attempts: list[AttemptRecord] = Field(default_factory=list)

    temperature: float | None = None
    max_tokens: int | None = None
    """``max_completion_tokens``, else ``max_tokens``, as the client sent it."""

    received_at: float
    """Unix time the edge received the request."""
    started_at: float
    """Unix time the router picked it up."""
    finished_at: float
    """Unix time the router sent its terminal frame (or learnt the client had left)."""

    cache_hit: bool = False
    """Reserved for the response cache: the answer came from it, no upstream was called."""
    cost_saved_usd: float | None = None
    """Reserved for the response cache: what the cached answer would have cost."""

    input_messages: list[dict[str, Any]] | None = None
    """The request's ``messages`` as sent (OpenAI shape), only when the request's privacy
    mode is ``full``; ``None`` otherwise. Possibly cut down (``text_truncated``)."""
    output_choices: list[dict[str, Any]] | None = None
    """The answer as the client got it, one ``{"role": "assistant", "content",
    "tool_calls"?}`` per choice (a stream put together), under the same condition as
    ``input_messages``; on failure or cancellation, what was sent so far."""
    text_truncated: bool = False
    """``input_messages``/``output_choices`` were cut to the producer's size cap (strings
    shortened, ending in ``…[truncated]``; oldest messages dropped if need be)."""
