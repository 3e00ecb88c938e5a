"""Upstream failures become the right OpenAI-shaped errors, and never leak the key."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

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
from switchboard.router.openrouter.errors import (
    UpstreamBusyError,
    UpstreamCallError,
    UpstreamDisconnectedError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamReportedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    retry_after_seconds,
    to_gateway_error,
)

SECRET = "sk-or-v1-very-secret"


def http_error(status: int, message: str | None = None, **extra: object) -> UpstreamHTTPError:
    error: dict[str, object] = {"code": status, **extra}
    if message is not None:
        error["message"] = message
    return UpstreamHTTPError(
        status,
        body=orjson.dumps({"error": error}),
        headers={"Retry-After": "7", "X-Generation-Id": "gen-1"},
        model_name="openai/gpt-4o-mini",
    )


@pytest.mark.parametrize(
    ("status", "kind", "http_status", "error_type", "code"),
    [
        (400, InvalidRequestError, 400, "invalid_request_error", None),
        (422, InvalidRequestError, 400, "invalid_request_error", None),
        (401, UpstreamError, 502, "api_error", "upstream_auth_failed"),
        (403, UpstreamError, 502, "api_error", "upstream_auth_failed"),
        (402, UpstreamError, 502, "api_error", "upstream_payment_required"),
        (404, NotFoundError, 404, "invalid_request_error", "model_not_found"),
        (408, GatewayTimeoutError, 504, "api_error", "timeout"),
        (413, PayloadTooLargeError, 413, "invalid_request_error", "request_too_large"),
        (429, RateLimitError, 429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (500, UpstreamError, 502, "api_error", "upstream_error"),
        (502, UpstreamError, 502, "api_error", "upstream_error"),
        (503, UpstreamError, 502, "api_error", "upstream_error"),
        (418, UpstreamError, 502, "api_error", "upstream_error"),
    ],
)
def test_http_statuses_map_to_gateway_errors(
    status: int, kind: type[GatewayError], http_status: int, error_type: str, code: str | None
) -> None:
    error = to_gateway_error(http_error(status, "upstream says no"))
    assert type(error) is kind
    assert error.status == http_status
    assert error.detail.type == error_type
    assert error.code == code


def test_client_faults_keep_the_upstream_message() -> None:
    assert to_gateway_error(http_error(400, "temperature too hot")).message == "temperature too hot"
    assert to_gateway_error(http_error(413, "too big")).message == "too big"
    assert to_gateway_error(http_error(404, "No endpoints found")).message == "No endpoints found"


def test_messages_have_defaults_when_the_upstream_gives_none() -> None:
    assert "rejected" in to_gateway_error(http_error(400)).message
    assert "`openai/gpt-4o-mini`" in to_gateway_error(http_error(404)).message
    assert to_gateway_error(http_error(500)).message == "The upstream provider failed (HTTP 500)."
    plain = UpstreamHTTPError(503, body=b"<html>Bad gateway</html>")
    assert to_gateway_error(plain).message == "The upstream provider failed (HTTP 503)."
    assert "`" not in to_gateway_error(UpstreamHTTPError(404)).message


def test_server_errors_quote_the_upstream() -> None:
    error = to_gateway_error(http_error(503, "provider overloaded"))
    assert error.message == "The upstream provider failed (HTTP 503): provider overloaded"


def test_rate_limit_carries_retry_after_from_the_header() -> None:
    error = to_gateway_error(http_error(429, "slow down"))
    assert error.retry_after == 7.0
    assert error.message == "slow down"
    no_header = UpstreamHTTPError(429, body=b"{}")
    assert to_gateway_error(no_header).retry_after is None


def test_context_length_is_recognised() -> None:
    error = to_gateway_error(
        http_error(400, "This endpoint's maximum context length is 8192 tokens.")
    )
    assert isinstance(error, ContextLengthExceededError)
    assert error.code == "context_length_exceeded"


def test_moderation_403_is_the_clients_fault_not_our_credentials() -> None:
    exc = http_error(
        403,
        "Your input was flagged for harassment",
        metadata={"reasons": ["harassment"], "flagged_input": "the prompt"},
    )
    error = to_gateway_error(exc)
    assert isinstance(error, InvalidRequestError)
    assert error.status == 400
    assert error.code == "content_flagged"
    assert "the prompt" not in error.message


@pytest.mark.parametrize("status", [401, 402, 403])
def test_our_account_problems_do_not_echo_the_upstream(status: int) -> None:
    error = to_gateway_error(http_error(status, f"Invalid key {SECRET}"), secrets=[SECRET])
    assert SECRET not in error.message
    assert "Invalid key" not in error.message
    assert str(status) in error.message


def test_the_key_is_blanked_out_of_any_quoted_message() -> None:
    for status in (400, 404, 413, 429, 500):
        error = to_gateway_error(http_error(status, f"bad key {SECRET}!"), secrets=[SECRET])
        assert SECRET not in error.message
        assert "[redacted]" in error.message
    reported = UpstreamReportedError(f"oops {SECRET}")
    assert SECRET not in to_gateway_error(reported, secrets=[SECRET, ""]).message


def test_long_messages_are_cut() -> None:
    assert len(to_gateway_error(http_error(400, "x" * 5000)).message) == 1000


def test_http_error_keeps_status_body_and_lower_cased_headers() -> None:
    exc = http_error(429, "slow down")
    assert exc.status_code == 429
    assert orjson.loads(exc.body)["error"]["message"] == "slow down"
    assert exc.headers == {"retry-after": "7", "x-generation-id": "gen-1"}
    assert exc.model_name == "openai/gpt-4o-mini"
    assert exc.error_object["code"] == 429
    # The body may quote the prompt; str() is what lands in tracebacks.
    assert "slow down" not in str(exc)


def test_error_object_tolerates_odd_bodies() -> None:
    assert UpstreamHTTPError(500, body=b"not json").error_object == {}
    assert UpstreamHTTPError(500, body=b"[1, 2]").error_object == {}
    assert UpstreamHTTPError(500, body=b'{"error": "text"}').error_object == {}


@pytest.mark.parametrize(
    ("exc", "kind", "status", "code"),
    [
        (UpstreamReportedError("provider crashed"), UpstreamError, 502, "upstream_error"),
        (UpstreamReportedError(""), UpstreamError, 502, "upstream_error"),
        (UpstreamUnreachableError("ConnectError"), UpstreamError, 502, "upstream_unreachable"),
        (UpstreamDisconnectedError("ReadError"), UpstreamError, 502, "upstream_error"),
        (UpstreamTimeoutError("ReadTimeout"), GatewayTimeoutError, 504, "timeout"),
        (UpstreamBusyError("PoolTimeout"), ServiceUnavailableError, 503, "router_busy"),
        (UpstreamProtocolError("bad json"), UpstreamError, 502, "upstream_error"),
        (UpstreamCallError("other"), UpstreamError, 502, "upstream_error"),
    ],
)
def test_transport_failures(
    exc: UpstreamCallError, kind: type[GatewayError], status: int, code: str
) -> None:
    error = to_gateway_error(exc)
    assert type(error) is kind
    assert (error.status, error.code) == (status, code)


def test_reported_error_keeps_the_upstream_message() -> None:
    assert to_gateway_error(UpstreamReportedError("provider crashed")).message == "provider crashed"
    assert to_gateway_error(UpstreamReportedError("")).message == "The upstream provider failed."


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now=now) == seconds


def test_retry_after_date_without_zone_is_utc() -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 -0000", now=now) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2099 07:28:10 GMT") is not None
