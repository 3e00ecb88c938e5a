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
``t`` end                  :class:`CompletionFinished` JSON: the exchange succeeded
``e`` error                :class:`CompletionFailed` JSON: the exchange failed
==== ===================== ===========================================================

Every exchange ends with exactly one ``t`` or ``e`` frame. Core NATS keeps the order of
one publisher's messages; ``CompletionFinished.chunks`` lets the edge detect a lost chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import ErrorDetail

__all__ = [
    "ChatRequest",
    "CompletionFailed",
    "CompletionFinished",
    "Frame",
    "FrameKind",
    "KeyIdentity",
    "RouterPong",
    "TokenUsage",
    "decode_frame",
    "encode_frame",
]

WIRE_VERSION: Literal[1] = 1


class FrameKind(Enum):
    """The first byte of every reply frame."""

    CHUNK = b"c"
    RESPONSE = b"r"
    KEEPALIVE = b"k"
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

    def model_post_init(self, context: object, /) -> None:
        # Keep ``v`` on the wire even when dumped with ``exclude_unset``.
        self.model_fields_set.add("v")


class KeyIdentity(_Wire):
    """Who is calling: the authenticated API key, never its secret."""

    key_id: str
    name: str = ""


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

    def encode(self) -> bytes:
        """JSON for the wire: only what the client sent, so no default becomes an explicit
        ``null`` for the upstream."""
        return self.model_dump_json(exclude_unset=True, by_alias=True).encode()


class TokenUsage(_Wire):
    """Token counts as the upstream reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class CompletionFinished(_Wire):
    """Terminal frame of a successful exchange."""

    request_id: str
    served_model: str
    """The model that actually produced the answer."""
    provider: str
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    """Cost reported by the upstream or computed from pricing; ``None`` when unknown."""
    chunks: int = Field(default=0, ge=0)
    """Number of ``c`` frames sent before this one."""


class CompletionFailed(_Wire):
    """Terminal frame of a failed exchange: an OpenAI error and its HTTP status."""

    request_id: str = ""
    """Empty on replies that belong to no chat request (the model list)."""
    status: int
    error: ErrorDetail
    retry_after: float | None = None
    chunks: int = Field(default=0, ge=0)


class RouterPong(_Wire):
    """Reply to a router ping."""

    instance_id: str
