"""Upstream JSON objects: the raw bytes we forward, beside the parse we only read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from switchboard.router.openrouter.errors import UpstreamProtocolError, UpstreamReportedError

__all__ = ["UpstreamObject", "parse_object"]


@dataclass(frozen=True, slots=True)
class UpstreamObject:
    """One JSON object from the upstream: a completion, or one chunk of a stream."""

    raw: bytes
    """The bytes to forward, exactly as received (never re-encoded)."""
    data: dict[str, Any]
    """The same object parsed, to read usage, model and errors from."""

    @property
    def is_usage_only(self) -> bool:
        """The final chunk of a stream asked with ``include_usage``: usage, no choices."""
        return self.data.get("choices") == [] and isinstance(self.data.get("usage"), dict)


def _reported_error(data: dict[str, Any], raw: bytes) -> UpstreamReportedError | None:
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return UpstreamReportedError(
            message if isinstance(message, str) else "", code=error.get("code"), body=raw
        )
    choices = data.get("choices")
    if isinstance(choices, list) and any(
        isinstance(choice, dict) and choice.get("finish_reason") == "error" for choice in choices
    ):
        return UpstreamReportedError("", body=raw)
    return None


def parse_object(raw: bytes) -> UpstreamObject:
    """Parse one upstream JSON object.

    Raises :class:`UpstreamProtocolError` when ``raw`` is not a JSON object and
    :class:`UpstreamReportedError` when it is an error (OpenRouter's ``error`` object, or
    a choice that finished with ``"error"``).
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent something that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError("upstream sent JSON that is not an object")
    error = _reported_error(data, raw)
    if error is not None:
        raise error
    return UpstreamObject(raw, data)
