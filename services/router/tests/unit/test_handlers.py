"""Handler edge cases that a real NATS server makes hard to provoke."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from nats.errors import ConnectionClosedError

from switchboard.router.catalog import ModelCatalog
from switchboard.router.handlers import Handlers
from switchboard.router.inflight import InFlight


@dataclass
class FakeMsg:
    subject: str
    data: bytes = b""
    reply: str = ""
    fail: bool = False
    responses: list[bytes] = field(default_factory=list)

    async def respond(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionClosedError
        self.responses.append(data)


def handlers(fake_nats: Any) -> Handlers:
    async def no_models() -> dict[str, Any]:
        return {"data": []}

    return Handlers(
        fake_nats,
        upstream=None,  # type: ignore[arg-type]
        inflight=InFlight(1),
        catalog=ModelCatalog(no_models, ttl=1),
        instance_id="router-x",
        keepalive_interval=1,
    )


async def test_requests_without_a_reply_subject_are_dropped(fake_nats: Any) -> None:
    h = handlers(fake_nats)
    await h.chat_request(FakeMsg("switchboard.v1.chat.request", b'{"request_id": "r1"}'))  # type: ignore[arg-type]
    ping = FakeMsg("switchboard.v1.router.ping")
    await h.ping(ping)  # type: ignore[arg-type]
    assert ping.responses == []
    assert fake_nats.published == []


async def test_a_failed_reply_is_logged_not_raised(fake_nats: Any) -> None:
    h = handlers(fake_nats)
    await h.ping(FakeMsg("switchboard.v1.router.ping", reply="inbox", fail=True))  # type: ignore[arg-type]
    models = FakeMsg("switchboard.v1.models.list", reply="inbox")
    await h.models_list(models)  # type: ignore[arg-type]
    assert models.responses == [b'r{"object":"list","data":[]}']
    await asyncio.sleep(0)
