"""OpenAI-shaped errors, shared by every service.

Every error a client can see renders as OpenAI's body::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Exception tree::

    GatewayError                      (500 api_error)
    ├── InvalidRequestError           (400 invalid_request_error)
    │   └── ContextLengthExceededError  (400, code context_length_exceeded)
    ├── AuthenticationError           (401 invalid_request_error, code invalid_api_key)
    ├── PermissionDeniedError         (403)
    ├── NotFoundError                 (404)
    ├── PayloadTooLargeError          (413)
    ├── RateLimitError                (429 rate_limit_exceeded, optional retry_after)
    ├── UpstreamError                 (502 upstream_error)
    ├── ServiceUnavailableError       (503 service_unavailable)
    └── GatewayTimeoutError           (504 timeout)
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "AuthenticationError",
    "ContextLengthExceededError",
    "ErrorBody",
    "ErrorDetail",
    "GatewayError",
    "GatewayTimeoutError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UpstreamError",
]


class ErrorDetail(BaseModel):
    """The ``error`` object of an OpenAI error body."""

    model_config = ConfigDict(frozen=True)

    message: str
    """Human-readable; never contains a secret."""
    type: str
    """OpenAI's error type, e.g. ``invalid_request_error``."""
    param: str | None = None
    """The request field at fault, e.g. ``messages[0].role``."""
    code: str | None = None
    """Machine-readable code, e.g. ``invalid_api_key``."""


class ErrorBody(BaseModel):
    """OpenAI's error response body."""

    model_config = ConfigDict(frozen=True)

    error: ErrorDetail


class GatewayError(Exception):
    """Base of every error Switchboard reports to a client."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = error_type or self.error_type
        """OpenAI's error type; defaults to the class's, kept when relayed from another service."""
        self.param = param
        self.code = code if code is not None else self.default_code
        self.status = status_code if status_code is not None else self.status_code
        self.retry_after = retry_after
        """Seconds the client should wait before retrying, sent as ``Retry-After``."""

    @property
    def detail(self) -> ErrorDetail:
        """The OpenAI ``error`` object for this exception."""
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)

    def body(self) -> ErrorBody:
        """The whole OpenAI error body."""
        return ErrorBody(error=self.detail)


class InvalidRequestError(GatewayError):
    """The request is malformed or violates a limit."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """The conversation is larger than this gateway serves."""

    default_code = "context_length_exceeded"


class AuthenticationError(GatewayError):
    """Missing, unknown, revoked or expired API key."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """The key may not do this."""

    status_code = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    """No such route or model."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class PayloadTooLargeError(InvalidRequestError):
    """The request body is over the configured limit."""

    status_code = 413
    default_code = "request_too_large"


class RateLimitError(GatewayError):
    """Too many requests or tokens; ``retry_after`` says when to come back."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The model provider failed or answered with something we cannot serve."""

    status_code = 502
    error_type = "api_error"
    default_code = "upstream_error"


class ServiceUnavailableError(GatewayError):
    """A part of the gateway (router, NATS, Redis) is not available right now."""

    status_code = 503
    error_type = "api_error"
    default_code = "service_unavailable"


class GatewayTimeoutError(GatewayError):
    """The request's deadline passed before an answer was complete."""

    status_code = 504
    error_type = "api_error"
    default_code = "timeout"
