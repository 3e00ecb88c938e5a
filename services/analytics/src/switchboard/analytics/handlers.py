"""From one JetStream message to what should be done with it (thin: decode, then map)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from switchboard.analytics.generation import Capture, CapturePolicy, build_capture
from switchboard.common.events import UsageRecorded

__all__ = ["Decoded", "decode_usage"]


@dataclass(frozen=True)
class Decoded:
    """A usage message understood: a capture to send, or ``None`` (privacy mode ``off``)."""

    event_id: str
    capture: Capture | None


def decode_usage(data: bytes, policy: CapturePolicy) -> Decoded:
    """Parse a ``UsageRecorded`` payload and map it.

    Raises ``ValueError`` for a payload that is not a usage event of a known version: no
    retry will ever make it one.
    """
    try:
        usage = UsageRecorded.model_validate_json(data)
    except ValidationError as exc:
        fields = sorted({".".join(map(str, error["loc"])) for error in exc.errors()} - {""})
        reason = ", ".join(fields) if fields else "not a JSON object"
        raise ValueError(f"not a usage event: {reason}") from None
    return Decoded(usage.event_id, build_capture(usage, policy))
