"""NATS message handlers: decode, hand off, answer. The work happens elsewhere."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal

import orjson
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import ValidationError

from switchboard.common import subjects
from switchboard.common.bus import NATS
from switchboard.common.errors import GatewayError, InvalidRequestError, UpstreamError
from switchboard.common.logs import get_logger
from switchboard.common.telemetry import extract_context
from switchboard.common.wire import ChatRequest, FrameKind, RouterHealth, RouterPong, encode_frame
from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import Routing
from switchboard.router.exchange import ChatServices, serve_chat
from switchboard.router.inflight import InFlight
from switchboard.router.ledger import CLIENT_CLOSED, Ledger, rejected_event
from switchboard.router.listing import model_list
from switchboard.router.openrouter.errors import UpstreamCallError
from switchboard.router.publisher import UsagePublisher
from switchboard.router.reply import Reply, reply_failure

__all__ = ["BadEnvelopeError", "Handlers", "decode_chat_request"]

log = get_logger(__name__)

_CANCEL_PREFIX = subjects.chat_cancel("")


class BadEnvelopeError(Exception):
    """A chat request that cannot be served as sent."""

    def __init__(self, error: GatewayError, request_id: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def _param(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _request_id(data: bytes) -> str:
    try:
        parsed: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    request_id = parsed.get("request_id") if isinstance(parsed, dict) else None
    return request_id if isinstance(request_id, str) else ""


def decode_chat_request(data: bytes) -> ChatRequest:
    """The :class:`ChatRequest` in ``data``.

    Raises :class:`BadEnvelopeError`: a fault of the client's request (the part the edge
    forwards as is) is a 400 naming the ``param``; anything else, an unknown wire version
    included, is a 500, since services disagree about the contract.
    """
    try:
        return ChatRequest.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        request_id = _request_id(data)
    if any(error["loc"][:1] == ("v",) for error in errors):
        raise BadEnvelopeError(
            GatewayError(
                "The router does not speak this wire version.", code="unsupported_wire_version"
            ),
            request_id,
        )
    if all(error["loc"][:1] == ("request",) for error in errors):
        first = errors[0]
        param = _param(first["loc"][1:])
        message = f"Invalid value for '{param}': {first['msg']}"
        raise BadEnvelopeError(InvalidRequestError(message, param=param or None), request_id)
    raise BadEnvelopeError(
        GatewayError("The router received a malformed request envelope.", code="invalid_envelope"),
        request_id,
    )


class Handlers:
    """The callbacks of the router's NATS subscriptions."""

    def __init__(
        self,
        nc: NATS,
        *,
        services: ChatServices,
        inflight: InFlight,
        catalog: ModelCatalog,
        routing: Routing,
        usage: UsagePublisher,
        instance_id: str,
    ) -> None:
        self._nc = nc
        self._services = services
        self._inflight = inflight
        self._catalog = catalog
        self._routing = routing
        self._usage = usage
        self._instance_id = instance_id

    async def chat_request(self, msg: Msg) -> None:
        """``CHAT_REQUEST``: start serving it in a task of its own and return at once."""
        if not msg.reply:
            log.warning("chat.no_reply_subject", request_id=_request_id(msg.data))
            return
        try:
            envelope = decode_chat_request(msg.data)
        except BadEnvelopeError as exc:
            error, request_id = exc.error, exc.request_id
            log.warning(
                "chat.rejected", request_id=request_id, status=error.status, code=error.code
            )
            if request_id:
                self._usage.record(rejected_event(msg.data, request_id, error))
            await self._respond(
                msg, encode_frame(FrameKind.ERROR, reply_failure(request_id, error))
            )
            return
        if self._inflight.cancelled_already(envelope.request_id):
            log.info("chat.cancelled_before_start", request_id=envelope.request_id)
            ledger = Ledger(envelope, text=self._services.usage_text)
            self._usage.record(ledger.event("cancelled", CLIENT_CLOSED))
            return
        reply = Reply(self._nc, msg.reply, envelope.request_id)
        parent = extract_context(msg.headers)

        def serve(reply: Reply) -> Coroutine[Any, Any, None]:
            return serve_chat(envelope, reply, self._services, parent=parent)

        if self._inflight.spawn(reply, serve) is None:
            # A second delivery of a request already served here: answering it would
            # interleave two exchanges' frames on one reply subject.
            log.warning("chat.duplicate", request_id=envelope.request_id)

    async def chat_cancel(self, msg: Msg) -> None:
        """``CHAT_CANCEL_WILDCARD``: stop the exchange if this replica serves it."""
        request_id = msg.subject.removeprefix(_CANCEL_PREFIX)
        if self._inflight.cancel(request_id):
            log.info("chat.cancel_received", request_id=request_id)

    async def models_list(self, msg: Msg) -> None:
        """``MODELS_LIST``: one ``r`` frame with OpenAI's model list, or an ``e`` frame."""
        try:
            await self._catalog.ensure()
            frame = encode_frame(FrameKind.RESPONSE, model_list(self._catalog, self._routing))
        except (UpstreamCallError, TimeoutError) as exc:
            error = UpstreamError(
                "The model catalog is unavailable: the upstream's model list cannot be "
                "fetched and no copy is kept.",
                code="catalog_unavailable",
            )
            log.warning("models.failed", status=error.status, failure=type(exc).__name__)
            frame = encode_frame(FrameKind.ERROR, reply_failure("", error))
        await self._respond(msg, frame)

    @property
    def degraded(self) -> bool:
        """Serving without a catalog, or with usage events not reaching JetStream."""
        return not self._catalog.loaded or not self._usage.healthy

    async def ping(self, msg: Msg) -> None:
        """``ROUTER_PING``: :class:`RouterPong` JSON (not a frame)."""
        pong = RouterPong(instance_id=self._instance_id, status=self._status())
        await self._respond(msg, pong.model_dump_json().encode())

    async def health(self, msg: Msg) -> None:
        """``ROUTER_HEALTH``: :class:`RouterHealth` JSON (not a frame)."""
        catalog = self._catalog
        report = RouterHealth(
            instance_id=self._instance_id,
            status=self._status(),
            catalog=catalog.status,
            catalog_models=len(catalog.models),
            catalog_fetched_at=catalog.fetched_at,
            in_flight=len(self._inflight),
            usage_backlog=self._usage.backlog,
            usage_dropped=self._usage.dropped,
            breakers=self._services.breakers.snapshots(),
        )
        await self._respond(msg, report.model_dump_json().encode())

    def _status(self) -> Literal["ok", "degraded"]:
        return "degraded" if self.degraded else "ok"

    async def _respond(self, msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(data)
        except NatsError as exc:
            log.warning("nats.reply_failed", subject=msg.subject, error=type(exc).__name__)
