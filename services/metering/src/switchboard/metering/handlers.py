"""NATS request handlers: decode, run the query in a thread, answer. Thin on purpose.

Errors are answered with OpenAI's error body and the ``Nats-Service-Error`` headers (see
:mod:`switchboard.common.metering`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Protocol

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import BaseModel, ValidationError

from switchboard.common.bus import NATS
from switchboard.common.errors import (
    GatewayError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from switchboard.common.logs import get_logger
from switchboard.common.metering import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    EraseRequest,
    MeteringPong,
    SqlRequest,
    UsageQuery,
)
from switchboard.metering import queries
from switchboard.metering.clickhouse import Client, DatabaseError, unavailable

__all__ = ["Handlers", "Ledger", "LedgerSource"]

log = get_logger(__name__)


_FIRST_DAY = date(1970, 1, 1)
_LAST_DAY = date(2149, 6, 6)
"""ClickHouse's ``Date`` range."""
_NOT_READY = "Usage data is not available right now; try again shortly."


class Ledger(Protocol):
    """The ClickHouse clients handlers use."""

    @property
    def reader(self) -> Client: ...
    @property
    def writer(self) -> Client: ...
    @property
    def readonly(self) -> Client: ...


class LedgerSource(Protocol):
    """Where handlers find the ledger (``None`` until it is open) and the readiness."""

    @property
    def ledger(self) -> Ledger | None: ...

    def pong(self) -> MeteringPong: ...


def _param(error: dict[str, object]) -> str | None:
    loc = error.get("loc")
    if isinstance(loc, tuple) and loc:
        return ".".join(str(part) for part in loc)
    return None


def _decode[M: BaseModel](model: type[M], data: bytes) -> M:
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        param = _param(dict(first))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequestError(
            f"Invalid value for '{param}': {message}" if param else message,
            param=param,
            code="invalid_value",
        ) from None


class Handlers:
    """The callbacks of metering's request/reply subscriptions."""

    def __init__(self, nc: NATS, source: LedgerSource, *, max_days: int, sql_max_rows: int) -> None:
        self._nc = nc
        self._source = source
        self._max_days = max_days
        self._sql_max_rows = sql_max_rows

    async def usage(self, msg: Msg) -> None:
        """``METERING_USAGE``: :class:`UsageQuery` → :class:`UsageReport`."""
        await self._serve(msg, lambda: self._usage(msg.data))

    async def sql(self, msg: Msg) -> None:
        """``METERING_SQL``: :class:`SqlRequest` → :class:`SqlResult` (read-only)."""
        await self._serve(msg, lambda: self._sql(msg.data))

    async def erase(self, msg: Msg) -> None:
        """``METERING_ERASE``: :class:`EraseRequest` → :class:`EraseResult`."""
        await self._serve(msg, lambda: self._erase(msg.data))

    async def ping(self, msg: Msg) -> None:
        """``METERING_PING``: :class:`MeteringPong`."""
        await self._respond(msg, self._source.pong().model_dump_json().encode())

    # ------------------------------------------------------------------ the work

    async def _usage(self, data: bytes) -> BaseModel:
        query = _decode(UsageQuery, data)
        for name in ("start_date", "end_date"):
            if not _FIRST_DAY <= getattr(query, name) <= _LAST_DAY:
                raise InvalidRequestError(
                    f"{name} must be between {_FIRST_DAY} and {_LAST_DAY}.",
                    param=name,
                    code="invalid_value",
                )
        if query.end_date < query.start_date:
            raise InvalidRequestError(
                "end_date must not be before start_date.", param="end_date", code="invalid_value"
            )
        days = (query.end_date - query.start_date).days + 1
        if days > self._max_days:
            raise InvalidRequestError(
                f"The date range spans {days} days; at most {self._max_days} may be asked at once.",
                param="start_date",
                code="invalid_value",
            )
        ledger = self._ledger()
        return await self._run(lambda: queries.usage_report(ledger.reader, query))

    async def _sql(self, data: bytes) -> BaseModel:
        request = _decode(SqlRequest, data)
        try:
            queries.read_only_statement(request.sql)
        except queries.NotReadOnlyError as exc:
            raise InvalidRequestError(str(exc), param="sql", code="not_read_only") from None
        ledger = self._ledger()
        max_rows = self._sql_max_rows
        return await self._run(
            lambda: queries.run_sql(ledger.readonly, request.sql, max_rows=max_rows),
            statement_errors_are_client_errors=True,
        )

    async def _erase(self, data: bytes) -> BaseModel:
        request = _decode(EraseRequest, data)
        ledger = self._ledger()
        result = await self._run(
            lambda: queries.erase(ledger.writer, key_id=request.key_id, end_user=request.end_user)
        )
        log.info(
            "usage.erased",
            key_id=request.key_id,
            end_user_given=request.end_user is not None,
            events=result.events,
            rows=result.rows,
        )
        return result

    def _ledger(self) -> Ledger:
        ledger = self._source.ledger
        if ledger is None:
            raise ServiceUnavailableError(_NOT_READY, code="metering_unavailable")
        return ledger

    @staticmethod
    async def _run[T](
        work: Callable[[], T], *, statement_errors_are_client_errors: bool = False
    ) -> T:
        try:
            return await asyncio.to_thread(work)
        except Exception as exc:
            if unavailable(exc):
                log.warning("clickhouse.unavailable", error=type(exc).__name__, detail=str(exc))
                raise ServiceUnavailableError(_NOT_READY, code="metering_unavailable") from exc
            if statement_errors_are_client_errors and isinstance(exc, DatabaseError):
                raise InvalidRequestError(str(exc), param="sql", code="query_failed") from exc
            raise

    # ------------------------------------------------------------------ replies

    async def _serve(self, msg: Msg, work: Callable[[], Awaitable[BaseModel]]) -> None:
        try:
            result = await work()
            payload = result.model_dump_json().encode()
        except GatewayError as exc:
            await self._respond_error(msg, exc)
            return
        except Exception:
            log.exception("metering.request_failed", subject=msg.subject)
            await self._respond_error(
                msg, GatewayError("Metering failed to answer this request.", code="internal_error")
            )
            return
        max_payload = self._nc.max_payload
        if len(payload) > max_payload:
            await self._respond_error(
                msg,
                InvalidRequestError(
                    f"The answer is {len(payload)} bytes, over the bus limit of {max_payload}: "
                    "ask for fewer rows or columns (LIMIT).",
                    code="result_too_large",
                ),
            )
            return
        await self._respond(msg, payload)

    async def _respond_error(self, msg: Msg, error: GatewayError) -> None:
        headers = {ERROR_HEADER: error.message[:1000], ERROR_CODE_HEADER: str(error.status)}
        await self._respond(msg, error.body().model_dump_json().encode(), headers)

    async def _respond(
        self, msg: Msg, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        if not msg.reply:
            return
        try:
            await self._nc.publish(msg.reply, payload, headers=headers)
        except NatsError as exc:
            log.warning("nats.reply_failed", subject=msg.subject, error=type(exc).__name__)
