"""Every error leaves the edge in OpenAI's shape, whoever raised it."""

from __future__ import annotations

from litestar import MediaType, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from switchboard.common.errors import (
    AuthenticationError,
    ErrorBody,
    ErrorDetail,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from switchboard.common.logs import get_logger
from switchboard.edge.lifespan import HttpRequest

__all__ = ["error_response", "exception_handlers"]

log = get_logger(__name__)

_TYPE_BY_STATUS = {
    401: AuthenticationError.error_type,
    403: "permission_error",
    404: NotFoundError.error_type,
    429: "rate_limit_exceeded",
    503: ServiceUnavailableError.error_type,
}


def error_response(
    detail: ErrorDetail, status: int, *, retry_after: float | None = None
) -> Response[bytes]:
    """An OpenAI error body with ``status`` (and ``Retry-After`` when given)."""
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = str(max(0, round(retry_after)))
    return Response(
        content=ErrorBody(error=detail).model_dump_json().encode(),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _gateway_error(_: HttpRequest, exc: GatewayError) -> Response[bytes]:
    return error_response(exc.detail, exc.status, retry_after=exc.retry_after)


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
    detail = ErrorDetail(
        message=exc.detail or "Bad request.",
        type=_TYPE_BY_STATUS.get(status, "invalid_request_error"),
    )
    return error_response(detail, status)


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
        Exception: _unexpected,
    }
