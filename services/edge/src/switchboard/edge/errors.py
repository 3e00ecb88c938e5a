"""Every error leaves the edge in OpenAI's shape, whoever raised it."""

from __future__ import annotations

import math
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from switchboard.common.errors import (
    AuthenticationError,
    ErrorBody,
    ErrorDetail,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
)
from switchboard.common.logs import get_logger

__all__ = [
    "ADMIN_ERROR_RESPONSES",
    "API_ERROR_RESPONSES",
    "LimitError",
    "error_response",
    "exception_handlers",
]

log = get_logger(__name__)

HttpRequest = Request[Any, Any, Any]

_TYPE_BY_STATUS = {
    401: AuthenticationError.error_type,
    403: "permission_error",
    404: NotFoundError.error_type,
    429: "rate_limit_exceeded",
    503: ServiceUnavailableError.error_type,
}


def _documented(*statuses: tuple[int, str]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(ErrorBody, description=description, generate_examples=False)
        for status, description in statuses
    }


_COMMON_ERRORS = (
    (400, "Invalid request: `error.param` names the field."),
    (401, "No credentials, or wrong ones."),
    (404, "Unknown URL, or unknown resource."),
    (413, "Body larger than `EDGE_MAX_BODY_BYTES`."),
    (429, "Too many failed authentications from this address, or a limit of the key."),
    (503, "A dependency (Redis, NATS, a router, metering) is unavailable; retry."),
)
API_ERROR_RESPONSES = _documented(*_COMMON_ERRORS, (403, "Not allowed for this key."))
"""OpenAPI responses of the ``/v1`` routes: every error is OpenAI's body (Litestar would
document its own validation body, which the edge never sends)."""
ADMIN_ERROR_RESPONSES = _documented(*_COMMON_ERRORS, (403, "HTTPS required."))
"""OpenAPI responses of the admin API (same error body)."""


class LimitError(RateLimitError):
    """A 429 of the edge's own limits, carrying the ``x-ratelimit-*`` headers.

    ``should_retry=False`` (quota exhausted, a request larger than the limit) adds
    ``x-should-retry: false``, which tells OpenAI's SDKs not to retry.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        headers: dict[str, str] | None = None,
        should_retry: bool = True,
        code: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, code=code, error_type=error_type)
        self.headers = dict(headers or {})
        if not should_retry:
            self.headers["x-should-retry"] = "false"


def error_response(
    detail: ErrorDetail,
    status: int,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """An OpenAI error body with ``status`` (and ``Retry-After`` when given)."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)) if retry_after > 0 else 0)
    return Response(
        content=ErrorBody(error=detail).model_dump_json().encode(),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _gateway_error(_: HttpRequest, exc: GatewayError) -> Response[bytes]:
    headers = exc.headers if isinstance(exc, LimitError) else None
    return error_response(exc.detail, exc.status, retry_after=exc.retry_after, headers=headers)


def _http_exception(_: HttpRequest, exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status == 413:
        error: GatewayError = PayloadTooLargeError("The request body is too large.")
        return error_response(error.detail, status)
    if status == 404:
        return error_response(NotFoundError("Unknown request URL.", code="unknown_url").detail, 404)
    if status == 405:
        detail = ErrorDetail(
            message="This method is not allowed on this URL.",
            type="invalid_request_error",
            code="method_not_allowed",
        )
        return error_response(detail, 405)
    if status >= 500:
        log.error("http.exception", status=status, detail=exc.detail)
        detail = ErrorDetail(
            message="The server had an error while processing your request.",
            type="api_error",
            code="internal_error",
        )
        return error_response(detail, status)
    if isinstance(exc, ValidationException):
        return error_response(_validation_detail(exc), 400)
    detail = ErrorDetail(
        message=exc.detail or "Bad request.",
        type=_TYPE_BY_STATUS.get(status, "invalid_request_error"),
    )
    return error_response(detail, status)


def _validation_detail(exc: ValidationException) -> ErrorDetail:
    """Litestar's validation of a typed handler (the admin API): name the first bad field."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    param = first.get("key") or None
    if param is None:
        return ErrorDetail(message=exc.detail or "Bad request.", type="invalid_request_error")
    return ErrorDetail(
        message=f"Invalid value for '{param}': {first.get('message', 'invalid')}.",
        type="invalid_request_error",
        param=str(param),
        code="invalid_value",
    )


def _recursion(request: HttpRequest, exc: RecursionError) -> Response[bytes]:
    """A body nested deeper than the JSON decoder goes (the admin API's typed bodies):
    msgspec gives up with a RecursionError, which is the client's 400, not our 500."""
    if "deserializing" not in str(exc):
        return _unexpected(request, exc)
    detail = ErrorDetail(
        message="We could not parse the JSON body of your request: it is nested too deeply.",
        type="invalid_request_error",
    )
    return error_response(detail, 400)


def _unexpected(_: HttpRequest, exc: Exception) -> Response[bytes]:
    log.error("unhandled", error=type(exc).__name__, exc_info=exc)
    detail = ErrorDetail(
        message="The server had an error while processing your request.",
        type="api_error",
        code="internal_error",
    )
    return error_response(detail, 500)


def exception_handlers() -> ExceptionHandlersMap:
    """Handlers that render Litestar's, ours and unexpected exceptions as OpenAI errors."""
    return {
        GatewayError: _gateway_error,
        HTTPException: _http_exception,
        RecursionError: _recursion,
        Exception: _unexpected,
    }
