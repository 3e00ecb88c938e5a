"""``GET /v1/usage``: the caller's usage over a range of days, answered by metering.

An API key reads its own usage. The admin token (``SWITCHBOARD_ADMIN_TOKEN``) reads any
key's, named by ``key_id``. Metering answers over NATS request/reply
(``switchboard.v1.metering.usage``) from the ClickHouse ledger; its 400s (a range too
long, dates in the wrong order) are relayed as they are, and a metering that does not
answer is a 503.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from litestar import get
from litestar.params import Parameter
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from switchboard.common.errors import (
    ErrorBody,
    GatewayError,
    InvalidRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from switchboard.common.metering import ERROR_CODE_HEADER, UsageQuery, UsageReport
from switchboard.common.subjects import METERING_USAGE
from switchboard.edge.auth import admin_token_matches
from switchboard.edge.errors import API_ERROR_RESPONSES
from switchboard.edge.lifespan import HttpRequest, services_of

__all__ = ["get_usage"]

_DEFAULT_DAYS = 30
_TIMEOUT = 10.0
_UNAVAILABLE = "Usage data is not available right now; try again shortly."


async def _key_of_caller(request: HttpRequest, key_id: str | None) -> str:
    """The key whose usage the caller may read: its own, or any with the admin token."""
    services = services_of(request.app)
    authorization = request.headers.get("authorization")
    admin_token = services.settings.switchboard_admin_token
    if admin_token is not None and admin_token_matches(authorization, admin_token):
        if not key_id:
            raise InvalidRequestError(
                "Name the key with key_id when using the admin token.",
                param="key_id",
                code="missing_required_parameter",
            )
        return key_id
    gate = services.gate
    ip = gate.client_ip(request.client.host if request.client else None, request.headers)
    identity = await gate.authenticate(authorization, ip)
    if key_id is not None and key_id != identity.key_id:
        raise PermissionDeniedError(
            "An API key may read only its own usage.", param="key_id", code="not_your_key"
        )
    return identity.key_id


def _relay_error(data: bytes, status: int) -> GatewayError:
    try:
        detail = ErrorBody.model_validate_json(data).error
    except ValidationError:
        return GatewayError("Metering sent an unexpected reply.", code="protocol_error")
    return GatewayError(
        detail.message,
        param=detail.param,
        code=detail.code,
        status_code=status,
        error_type=detail.type,
    )


@get(
    "/v1/usage",
    summary="Usage of an API key",
    description=(
        "Totals and breakdowns by model and by day (UTC) of one API key's requests: "
        "requests, errors, cache hits, prompt and completion tokens, cost in USD. An API "
        "key reads its own usage; the admin token names any key with `key_id`. Without "
        "dates: the last 30 days up to today (UTC)."
    ),
    tags=["usage"],
    cache=False,
    responses=API_ERROR_RESPONSES,
)
async def get_usage(
    request: HttpRequest,
    start_date: Annotated[
        date | None,
        Parameter(
            description="First day (UTC, ISO 8601), included. Default: 29 days before end_date."
        ),
    ] = None,
    end_date: Annotated[
        date | None, Parameter(description="Last day (UTC, ISO 8601), included. Default: today.")
    ] = None,
    key_id: Annotated[
        str | None,
        Parameter(
            description="The key to report on: the caller's own (default); any with the "
            "admin token.",
            max_length=256,
        ),
    ] = None,
) -> UsageReport:
    """Usage of an API key over a range of days."""
    key = await _key_of_caller(request, key_id)
    end = end_date or datetime.now(UTC).date()
    try:
        start = start_date or end - timedelta(days=_DEFAULT_DAYS - 1)
    except OverflowError:
        raise InvalidRequestError(
            "end_date is out of range.", param="end_date", code="invalid_value"
        ) from None
    query = UsageQuery(key_id=key, start_date=start, end_date=end).model_dump_json().encode()
    nc = services_of(request.app).nc
    try:
        reply = await nc.request(METERING_USAGE, query, timeout=_TIMEOUT)
    except (NoRespondersError, NatsTimeoutError):
        raise ServiceUnavailableError(_UNAVAILABLE, code="metering_unavailable") from None
    except NatsError:
        raise ServiceUnavailableError(
            "The message bus is unavailable; try again shortly.", code="bus_unavailable"
        ) from None
    status = (reply.headers or {}).get(ERROR_CODE_HEADER)
    if status is not None:
        raise _relay_error(reply.data, int(status) if status.isdigit() else 500)
    return UsageReport.model_validate_json(reply.data)
