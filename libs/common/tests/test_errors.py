from __future__ import annotations

import pytest

from switchboard.common import errors


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (errors.InvalidRequestError("m"), 400, "invalid_request_error", None),
        (
            errors.ContextLengthExceededError("m"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (errors.AuthenticationError("m"), 401, "invalid_request_error", "invalid_api_key"),
        (errors.PermissionDeniedError("m"), 403, "permission_error", None),
        (errors.NotFoundError("m"), 404, "invalid_request_error", "not_found"),
        (errors.PayloadTooLargeError("m"), 413, "invalid_request_error", "request_too_large"),
        (
            errors.RateLimitError("m", retry_after=3),
            429,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
        ),
        (errors.UpstreamError("m"), 502, "api_error", "upstream_error"),
        (errors.ServiceUnavailableError("m"), 503, "api_error", "service_unavailable"),
        (errors.GatewayTimeoutError("m"), 504, "api_error", "timeout"),
    ],
)
def test_each_error_renders_openai_shape(
    exc: errors.GatewayError, status: int, type_: str, code: str | None
) -> None:
    assert exc.status == status
    body = exc.body().model_dump()
    assert body == {"error": {"message": "m", "type": type_, "param": None, "code": code}}


def test_overrides_keep_relayed_values() -> None:
    exc = errors.GatewayError(
        "m", param="p", code="c", status_code=418, error_type="teapot", retry_after=1.5
    )
    assert (exc.status, exc.detail.type, exc.detail.code, exc.detail.param, exc.retry_after) == (
        418,
        "teapot",
        "c",
        "p",
        1.5,
    )
