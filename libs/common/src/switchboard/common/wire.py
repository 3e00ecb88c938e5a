"""The messages services exchange over NATS, version 1.

Request: the edge publishes a :class:`ChatRequest` (JSON) on
:data:`~switchboard.common.subjects.CHAT_REQUEST` with a reply subject of its own.

Reply: the router answers with a sequence of *frames* on that reply subject. A frame is
one kind byte followed by a body, so that the edge can route a frame without parsing it
and write a chunk to the client without decoding and re-encoding its JSON:

==== ===================== ===========================================================
byte kind                  body
==== ===================== ===========================================================
``c`` chunk                one upstream stream chunk, the JSON object exactly as sent
                           to the client after ``data: ``
``r`` response             a whole non-streamed ``chat.completion`` JSON object (also
                           the model list on :data:`~switchboard.common.subjects.MODELS_LIST`)
``k`` keepalive            empty; the router is working, the upstream is silent
``s`` started              :class:`CompletionStarted` JSON: which model and provider
                           serve the answer; sent once, right before the first ``c`` or
                           ``r`` frame, and only to edges that set
                           :attr:`ChatRequest.accepts_started`
``t`` end                  :class:`CompletionFinished` JSON: the exchange succeeded
``e`` error                :class:`CompletionFailed` JSON: the exchange failed
==== ===================== ===========================================================

Every exchange ends with exactly one ``t`` or ``e`` frame. Core NATS keeps the order of
one publisher's messages; ``CompletionFinished.chunks`` lets the edge detect a lost chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import ErrorDetail
from switchboard.common.events import PrivacyMode

__all__ = [
    "BreakerSnapshot",
    "ChatRequest",
    "CompletionFailed",
    "CompletionFinished",
    "CompletionStarted",
    "Frame",
    "FrameKind",
    "KeyIdentity",
    "RouterHealth",
    "RouterPong",
    "TokenUsage",
    "decode_frame",
    "encode_frame",
    "request_usage_fields",
]

WIRE_VERSION: Literal[1] = 1


class FrameKind(Enum):
    """The first byte of every reply frame."""

    CHUNK = b"c"
    RESPONSE = b"r"
    KEEPALIVE = b"k"
    STARTED = b"s"
    END = b"t"
    ERROR = b"e"


_KIND_BY_BYTE = {kind.value[0]: kind for kind in FrameKind}


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: its kind and its raw body (not parsed)."""

    kind: FrameKind
    body: bytes


def encode_frame(kind: FrameKind, body: bytes | BaseModel = b"") -> bytes:
    """Frame bytes for ``body``; a model is serialised as JSON."""
    raw = body.model_dump_json().encode() if isinstance(body, BaseModel) else body
    return kind.value + raw


def decode_frame(data: bytes) -> Frame:
    """Split a frame into kind and body. Raises ``ValueError`` on an unknown kind."""
    if not data:
        raise ValueError("empty frame")
    kind = _KIND_BY_BYTE.get(data[0])
    if kind is None:
        raise ValueError(f"unknown frame kind {data[:1]!r}")
    return Frame(kind, data[1:])


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = WIRE_VERSION
    """Wire version; a consumer refuses versions it does not know."""

    def model_post_init(self, _context: object, /) -> None:
        # Keep ``v`` on the wire even when dumped with ``exclude_unset``.
        self.model_fields_set.add("v")


class KeyIdentity(_Wire):
    """Who is calling: the authenticated API key, never its secret."""

    key_id: str
    name: str = ""
    owner: str | None = None
    """The key's owner (a person or team id from the key's metadata), if it names one."""
    privacy_mode: PrivacyMode | None = None
    """The key's own privacy mode (``off``, ``metadata``, ``full``), overriding the
    services' default (``ROUTER_USAGE_PRIVACY_MODE``, ``ANALYTICS_PRIVACY_MODE``)."""
    allowed_tiers: list[str] | None = None
    """Tier aliases (``premium``, ``standard``, ``budget``, ``auto``, custom aliases) the key
    may name as its model; ``None`` (and ``allowed_models`` ``None``): not restricted."""
    allowed_models: list[str] | None = None
    """Model ids or glob patterns (``openai/*``) the key may name; ``None`` (and
    ``allowed_tiers`` ``None``): not restricted. A restricted key may use a model only when
    it matches one of these, and an alias only when it is in ``allowed_tiers``."""

    @property
    def restricted(self) -> bool:
        """True when the key may use only some models."""
        return self.allowed_tiers is not None or self.allowed_models is not None


class ChatRequest(_Wire):
    """Edge → router: one chat completion to serve."""

    request_id: str
    """Unique per client request; also the ``Nats-Msg-Id`` of its usage event."""
    key: KeyIdentity
    received_at: float
    """Unix time (seconds) at which the edge received the request."""
    deadline: float
    """Unix time (seconds) after which nobody waits for the answer."""
    request: ChatCompletionRequest
    """The validated OpenAI request, unknown fields included."""
    accepts_started: bool = False
    """The edge understands the ``s`` frame (:class:`CompletionStarted`). Older edges treat
    an unknown frame as a protocol error, so the router sends it only when this is set."""

    def encode(self) -> bytes:
        """JSON for the wire: only what the client sent, so no default becomes an explicit
        ``null`` for the upstream."""
        return self.model_dump_json(exclude_unset=True, by_alias=True).encode()


def request_usage_fields(
    request_id: str, key: KeyIdentity, request: ChatCompletionRequest
) -> dict[str, Any]:
    """The fields of a :class:`~switchboard.common.events.UsageRecorded` that the request
    alone decides (who asked, for what, how), the same whoever publishes the event: the
    router that served it, or the edge for a cache hit or a request no router ended."""
    return {
        "event_id": request_id,
        "request_id": request_id,
        "key_id": key.key_id,
        "key_name": key.name,
        "key_owner": key.owner,
        "privacy_mode": key.privacy_mode,
        "end_user": request.user,
        "requested_model": request.model,
        "stream": request.wants_stream,
        "temperature": request.temperature,
        "max_tokens": request.max_completion_tokens or request.max_tokens,
    }


class TokenUsage(_Wire):
    """Token counts as the upstream reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class CompletionStarted(_Wire):
    """``s`` frame: the answer is coming, and this is who serves it."""

    request_id: str
    served_model: str
    """The model that serves the answer (the upstream's own name for it)."""
    provider: str
    """The configured provider (``openrouter``, or a name from the routing config)."""
    fallbacks: int = Field(default=0, ge=0)
    """Entries of the route's model chain passed over before this one (failed or open
    circuit breaker); the ``x-switchboard-fallbacks`` header."""
    retries: int = Field(default=0, ge=0)
    """Upstream attempts repeated after a retryable failure, over the whole request."""


class CompletionFinished(_Wire):
    """Terminal frame of a successful exchange."""

    request_id: str
    served_model: str
    """The model that actually produced the answer."""
    provider: str
    """The configured provider that served it (``openrouter`` by default)."""
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    """Cost reported by the upstream or computed from pricing; ``None`` when unknown."""
    chunks: int = Field(default=0, ge=0)
    """Number of ``c`` frames sent before this one."""
    fallbacks: int = Field(default=0, ge=0)
    """As in :class:`CompletionStarted`."""
    retries: int = Field(default=0, ge=0)
    """As in :class:`CompletionStarted`."""
    cost_source: Literal["upstream", "catalog", "unknown"] = "unknown"
    """Where ``cost_usd`` comes from: the upstream's ``usage.cost``, catalog pricing, or
    nowhere (``cost_usd`` is ``None``)."""
    upstream_provider: str | None = None
    """Who served it behind the provider, as the upstream reports it (OpenRouter's
    ``provider``, e.g. ``OpenAI``)."""


class CompletionFailed(_Wire):
    """Terminal frame of a failed exchange: an OpenAI error and its HTTP status."""

    request_id: str = ""
    """Empty on replies that belong to no chat request (the model list)."""
    status: int
    error: ErrorDetail
    retry_after: float | None = None
    chunks: int = Field(default=0, ge=0)
    model: str | None = None
    """The last model tried, if any (for the ``x-switchboard-model`` header)."""
    fallbacks: int = Field(default=0, ge=0)
    """As in :class:`CompletionStarted`."""
    retries: int = Field(default=0, ge=0)
    """As in :class:`CompletionStarted`."""


class RouterPong(_Wire):
    """Reply to a router ping."""

    instance_id: str
    status: Literal["ok", "degraded"] = "ok"
    """``degraded``: the router serves, but without a model catalog (no upstream list and
    no persisted copy), or its usage events cannot reach JetStream."""


class BreakerSnapshot(_Wire):
    """One circuit breaker, as the health report shows it."""

    provider: str
    model: str
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int = 0
    window_calls: int = 0
    """Calls recorded within the breaker's error-rate window."""
    window_failures: int = 0
    opened_at: float | None = None
    """Unix time the breaker last opened."""
    retry_at: float | None = None
    """Unix time an open breaker lets a probe through."""


class RouterHealth(_Wire):
    """Reply on :data:`~switchboard.common.subjects.ROUTER_HEALTH` (plain JSON, not a frame)."""

    instance_id: str
    status: Literal["ok", "degraded"]
    catalog: Literal["fresh", "cached", "stale", "empty"]
    """``fresh``: from the upstream within the refresh interval; ``cached``: the persisted
    copy (the upstream failed since start); ``stale``: refreshes are failing; ``empty``: no
    catalog at all."""
    catalog_models: int = 0
    catalog_fetched_at: float | None = None
    """Unix time the catalog in use was fetched from the upstream."""
    in_flight: int = 0
    usage_backlog: int = 0
    """Usage events waiting to be published to JetStream."""
    usage_dropped: int = 0
    """Usage events given up since start (each logged with its content)."""
    breakers: list[BreakerSnapshot] = Field(default_factory=list)
    """Every breaker that has seen a call; one not listed is closed."""
