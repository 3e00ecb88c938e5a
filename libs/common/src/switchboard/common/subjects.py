"""Every NATS subject, queue group and JetStream name Switchboard uses, in one place.

Subjects carry a version token (``v1``) so that a new wire format can run beside the old
one during a rolling upgrade. Nothing else in the code base spells a subject.
"""

from __future__ import annotations

__all__ = [
    "CHAT_CANCEL_WILDCARD",
    "CHAT_REQUEST",
    "METERING_ERASE",
    "METERING_PING",
    "METERING_QUEUE",
    "METERING_SQL",
    "METERING_USAGE",
    "MODELS_LIST",
    "ROUTER_HEALTH",
    "ROUTER_PING",
    "ROUTER_QUEUE",
    "USAGE_RECORDED",
    "USAGE_STREAM",
    "USAGE_STREAM_SUBJECTS",
    "chat_cancel",
    "reply_inbox_prefix",
]

PREFIX = "switchboard.v1"

CHAT_REQUEST = f"{PREFIX}.chat.request"
"""Edge → router: one :class:`~switchboard.common.wire.ChatRequest` per chat completion."""

ROUTER_QUEUE = "switchboard-router"
"""Queue group shared by every router replica: each request goes to exactly one of them."""

CHAT_CANCEL_WILDCARD = f"{PREFIX}.chat.cancel.*"
"""Router side: every replica listens; only the one serving the request acts on it."""

MODELS_LIST = f"{PREFIX}.models.list"
"""Edge → router (request/reply): one frame, ``r`` with the OpenAI model list or ``e``."""

ROUTER_PING = f"{PREFIX}.router.ping"
"""Edge → router (request/reply): is any router alive? The reply is plain
:class:`~switchboard.common.wire.RouterPong` JSON, not a frame. Used by health checks."""


ROUTER_HEALTH = f"{PREFIX}.router.health"
"""Anyone → router (request/reply, queue group): one replica's health detail as plain
:class:`~switchboard.common.wire.RouterHealth` JSON (catalog state, circuit breakers)."""

USAGE_RECORDED = f"{PREFIX}.usage.recorded"
"""Router → JetStream: one :class:`~switchboard.common.events.UsageRecorded` per chat
request, ``Nats-Msg-Id`` = its request id."""

USAGE_STREAM = "SWITCHBOARD_USAGE"
"""The JetStream stream that keeps usage events for metering and analytics."""

USAGE_STREAM_SUBJECTS = f"{PREFIX}.usage.>"
"""The subjects :data:`USAGE_STREAM` captures."""

METERING_USAGE = f"{PREFIX}.metering.usage"
"""Edge → metering (request/reply, queue group ``switchboard-metering``): a key's usage
report from the ledger."""
METERING_SQL = f"{PREFIX}.metering.sql"
"""``switchboard sql`` → metering (request/reply): a read-only analyst query."""
METERING_ERASE = f"{PREFIX}.metering.erase"
"""``switchboard usage erase`` → metering (request/reply): delete one key's or one end
user's rows."""
METERING_PING = f"{PREFIX}.metering.ping"
"""Anyone → metering (request/reply): readiness."""
METERING_QUEUE = "switchboard-metering"
"""Queue group of every metering replica."""


def chat_cancel(request_id: str) -> str:
    """Subject on which the edge announces that the client of ``request_id`` went away."""
    return f"{PREFIX}.chat.cancel.{request_id}"


def reply_inbox_prefix(instance_id: str) -> str:
    """Prefix of one edge process's multiplexed reply inbox (``<prefix>.<token>`` per request)."""
    return f"_INBOX.sb.{instance_id}"
