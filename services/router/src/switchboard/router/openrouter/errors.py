"""What can go wrong upstream, and what the client is told about it.

The client module raises the internal exceptions below; they keep everything the upstream
said (status, body, lower-cased headers) so that retries and fallbacks can decide on it.
:func:`to_gateway_error` is the one place where they become the OpenAI-shaped errors of
:mod:`switchboard.common.errors` that a client sees.

Exception tree::

    UpstreamCallError
    ├── UpstreamHTTPError       the upstream answered with a non-2xx status
    ├── UpstreamReportedError   a 2xx answer that is an error (OpenRouter's mid-stream
    │                           error event, or an ``error`` object instead of a completion)
    ├── UpstreamProtocolError   an answer we cannot read (not JSON, not an event stream)
    ├── UpstreamUnreachableError     no connection could be opened
    ├── UpstreamDisconnectedError    the connection dropped before the answer was complete
    ├── UpstreamTimeoutError         the upstream went silent for longer than the read timeout
    └── UpstreamBusyError            no pooled connection became free in time
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from switchboard.common.errors import (
    ContextLengthExceededError,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)

__all__ = [
    "UpstreamBusyError",
    "UpstreamCallError",
    "UpstreamDisconnectedError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamReportedError",
    "UpstreamTimeoutError",
    "UpstreamUnreachableError",
    "is_moderation",
    "retry_after_seconds",
    "to_gateway_error",
]

_MAX_MESSAGE = 1000
_REDACTED = "[redacted]"


class UpstreamCallError(Exception):
    """Base of every upstream failure; the message never contains a secret."""


class UpstreamHTTPError(UpstreamCallError):
    """The upstream answered with a non-2xx status."""

    def __init__(
        self,
        status_code: int,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        model_name: str | None = None,
    ) -> None:
        # The body may quote the prompt (moderation errors do): keep it out of str(exc).
        super().__init__(f"upstream answered HTTP {status_code}")
        self.status_code = status_code
        self.body = body
        """The response body exactly as received."""
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}
        """Response headers with lower-cased names (``retry-after`` …)."""
        self.model_name = model_name
        """The model the request asked for."""

    @property
    def error_object(self) -> dict[str, Any]:
        """The body's ``error`` object (OpenAI / OpenRouter shape), or ``{}``."""
        return error_object(self.body)


class UpstreamReportedError(UpstreamCallError):
    """A successful HTTP answer whose content is an error."""

    def __init__(self, message: str, *, code: object = None, body: bytes = b"") -> None:
        super().__init__("upstream reported an error")
        self.message = message
        """The upstream's ``error.message``."""
        self.code = code
        """The upstream's ``error.code`` (OpenRouter sends numbers or strings)."""
        self.body = body


class UpstreamProtocolError(UpstreamCallError):
    """The upstream's answer is not what the protocol promises."""


class UpstreamUnreachableError(UpstreamCallError):
    """No connection to the upstream could be opened."""


class UpstreamDisconnectedError(UpstreamCallError):
    """The connection dropped, or the stream ended without ``[DONE]``."""


class UpstreamTimeoutError(UpstreamCallError):
    """The upstream stayed silent for longer than the read timeout."""


class UpstreamBusyError(UpstreamCallError):
    """Every pooled upstream connection stayed busy for longer than the pool timeout."""


def error_object(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an error body, or ``{}`` when the body has none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text[:_MAX_MESSAGE]


def _upstream_message(exc: UpstreamHTTPError) -> str | None:
    message = exc.error_object.get("message")
    return message if isinstance(message, str) and message.strip() else None


def is_moderation(exc: UpstreamHTTPError) -> bool:
    """A 403 for flagged input (not for our credentials)."""
    # OpenRouter answers 403 both for a bad key and for input its moderation flagged;
    # only the latter carries ``metadata.reasons``.
    metadata = exc.error_object.get("metadata")
    return isinstance(metadata, dict) and "reasons" in metadata


# One return per status reads as the mapping table it is.
def _from_http(exc: UpstreamHTTPError, secrets: Iterable[str]) -> GatewayError:  # noqa: PLR0911
    status = exc.status_code
    upstream = _upstream_message(exc)
    said = _redact(upstream, secrets) if upstream else None
    if status in {400, 422}:
        message = said or "The upstream provider rejected the request."
        if "context length" in message.lower():
            return ContextLengthExceededError(message)
        return InvalidRequestError(message)
    if status == 403 and is_moderation(exc):
        return InvalidRequestError(
            said or "The request was flagged by the provider's moderation.", code="content_flagged"
        )
    if status in (401, 403):
        return UpstreamError(
            f"The gateway's credentials were rejected by the upstream provider (HTTP {status}).",
            code="upstream_auth_failed",
        )
    if status == 402:
        return UpstreamError(
            "The gateway's upstream account cannot pay for this request (HTTP 402).",
            code="upstream_payment_required",
        )
    if status == 404:
        model = f"`{exc.model_name}` " if exc.model_name else ""
        return NotFoundError(
            said or f"The model {model}does not exist or is not available.",
            code="model_not_found",
        )
    if status == 408:
        return GatewayTimeoutError("The upstream provider timed out (HTTP 408).")
    if status == 413:
        return PayloadTooLargeError(said or "The request is too large for the upstream provider.")
    if status == 429:
        return RateLimitError(
            said or "The upstream provider is rate limiting requests; retry later.",
            retry_after=retry_after_seconds(exc.headers.get("retry-after")),
        )
    detail = f": {said}" if said else "."
    return UpstreamError(f"The upstream provider failed (HTTP {status}){detail}")


def to_gateway_error(  # noqa: PLR0911 - one case per failure kind
    exc: UpstreamCallError, *, secrets: Iterable[str] = ()
) -> GatewayError:
    """The error a client sees for ``exc``; any of ``secrets`` is blanked out of it."""
    match exc:
        case UpstreamHTTPError():
            return _from_http(exc, secrets)
        case UpstreamReportedError():
            message = _redact(exc.message, secrets) or "The upstream provider failed."
            return UpstreamError(message)
        case UpstreamUnreachableError():
            return UpstreamError(
                "The upstream provider is unreachable.", code="upstream_unreachable"
            )
        case UpstreamDisconnectedError():
            return UpstreamError("The upstream provider closed the connection before finishing.")
        case UpstreamTimeoutError():
            return GatewayTimeoutError("The upstream provider stopped sending data.")
        case UpstreamBusyError():
            return ServiceUnavailableError(
                "The router has no free upstream connection; try again shortly.",
                code="router_busy",
            )
        case _:
            return UpstreamError("The upstream provider sent an answer the gateway cannot read.")
