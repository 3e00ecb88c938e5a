from __future__ import annotations

from pathlib import Path

import pytest
from nats.errors import NoServersError
from tests.support.servers import free_port, start_nats

from switchboard.common.bus import connect_nats, nats_connection
from switchboard.common.settings import NatsSettings


async def test_connection_drains_on_exit(tmp_path: Path) -> None:
    server = start_nats(tmp_path, jetstream=False)
    try:
        async with nats_connection(NatsSettings(nats_url=server.url), name="t") as nc:
            assert nc.is_connected
        assert nc.is_closed
    finally:
        server.stop()


async def test_first_connection_waits_then_gives_up() -> None:
    settings = NatsSettings(nats_url=f"nats://127.0.0.1:{free_port()}", nats_connect_timeout=0.2)
    with pytest.raises(NoServersError):
        await connect_nats(settings, name="t", first_connect_wait=0.5)
