"""The record of one request while it is served, and the usage event it ends as."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from switchboard.common.errors import GatewayError
from switchboard.common.events import AttemptRecord, UsageRecorded, UsageStatus
from switchboard.common.wire import ChatRequest, TokenUsage, request_usage_fields
from switchboard.router.cost import Cost
from switchboard.router.routing import Candidate, Route
from switchboard.router.transcript import OutputAssembler, TextPolicy, cap_text, input_messages

__all__ = ["CLIENT_CLOSED", "Ledger", "rejected_event"]

CLIENT_CLOSED = 499
"""The HTTP status a usage event records when the client went away (nginx's convention)."""
_MAX_ERROR_MESSAGE = 300


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


@dataclass
class Ledger:
    """Everything the usage event of one request needs, gathered as it is served."""

    envelope: ChatRequest
    started_at: float = field(default_factory=time.time)
    """Unix time the router picked the request up."""
    _started: float = field(default_factory=time.monotonic)
    route: Route | None = None
    candidate: Candidate | None = None
    """The candidate being tried (the one that served, on success)."""
    served_model: str | None = None
    upstream_provider: str | None = None
    usage: TokenUsage | None = None
    cost: Cost = field(default_factory=lambda: Cost(None, "unknown"))
    retries: int = 0
    fallbacks: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)
    text: TextPolicy | None = None
    """Whether and how much prompt and answer text the event carries; ``None``: none."""
    output: OutputAssembler | None = field(init=False, default=None)
    """Collects the answer sent to the client, only when the event carries text."""
    _first_output: float | None = None

    def __post_init__(self) -> None:
        if self.text is not None and self.text.captures(self.envelope.key):
            self.output = OutputAssembler()

    def elapsed_ms(self) -> int:
        """Milliseconds since the router picked the request up."""
        return _ms(time.monotonic() - self._started)

    @property
    def ttft(self) -> float | None:
        """Seconds from pick-up to the first output frame, once there was one."""
        if self._first_output is None:
            return None
        return self._first_output - self._started

    def output_started(self) -> None:
        """The first ``c`` or ``r`` frame is going out now."""
        if self._first_output is None:
            self._first_output = time.monotonic()

    def attempt(
        self,
        candidate: Candidate,
        began: float,
        *,
        status: UsageStatus,
        http_status: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """One upstream call ended (``began``: its ``time.monotonic()``)."""
        self.attempts.append(
            AttemptRecord(
                model=candidate.upstream_model,
                provider=candidate.provider.name,
                status=status,
                http_status=http_status,
                error_code=error_code,
                duration_ms=_ms(time.monotonic() - began),
            )
        )

    @property
    def model_tried(self) -> str | None:
        """The model that served, or the last one tried."""
        if self.served_model:
            return self.served_model
        return self.candidate.upstream_model if self.candidate else None

    def _texts(self) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, bool]:
        if self.output is None or self.text is None:
            return None, None, False
        messages = input_messages(self.envelope.request)
        return cap_text(messages, self.output.choices(), self.text.max_bytes)

    def event(
        self, status: UsageStatus, http_status: int, error: GatewayError | None = None
    ) -> UsageRecorded:
        """The usage event of the request as it ended."""
        envelope = self.envelope
        usage = self.usage or TokenUsage()
        candidate = self.candidate
        message = error.message[:_MAX_ERROR_MESSAGE] if error else None
        messages, choices, truncated = self._texts()
        return UsageRecorded(
            **request_usage_fields(envelope.request_id, envelope.key, envelope.request),
            served_model=self.model_tried,
            provider=candidate.provider.name if candidate else None,
            provider_base_url=candidate.provider.base_url if candidate else None,
            upstream_provider=self.upstream_provider,
            tier=self.route.tier if self.route else None,
            status=status,
            http_status=http_status,
            error_type=error.type if error else None,
            error_code=error.code if error else None,
            error_message=message,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=self.cost.usd,
            cost_source=self.cost.source,
            input_cost_usd=self.cost.input_usd,
            output_cost_usd=self.cost.output_usd,
            latency_ms=self.elapsed_ms(),
            ttft_ms=(
                _ms(self._first_output - self._started) if self._first_output is not None else None
            ),
            retries=self.retries,
            fallbacks=self.fallbacks,
            attempts=self.attempts,
            received_at=envelope.received_at,
            started_at=self.started_at,
            finished_at=time.time(),
            input_messages=messages,
            output_choices=choices,
            text_truncated=truncated,
        )


def _text(container: object, *path: str) -> str | None:
    for name in path:
        container = container.get(name) if isinstance(container, dict) else None
    return container if isinstance(container, str) else None


def rejected_event(data: bytes, request_id: str, error: GatewayError) -> UsageRecorded:
    """The usage event of a request the router could not even decode."""
    try:
        raw: object = orjson.loads(data)
    except orjson.JSONDecodeError:
        raw = None
    now = time.time()
    received = raw.get("received_at") if isinstance(raw, dict) else None
    return UsageRecorded(
        event_id=request_id,
        request_id=request_id,
        key_id=_text(raw, "key", "key_id") or "",
        key_name=_text(raw, "key", "name") or "",
        requested_model=_text(raw, "request", "model") or "",
        status="error",
        http_status=error.status,
        error_type=error.type,
        error_code=error.code,
        error_message=error.message[:_MAX_ERROR_MESSAGE],
        latency_ms=0,
        received_at=received if isinstance(received, int | float) else now,
        started_at=now,
        finished_at=now,
    )
