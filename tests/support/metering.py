"""Metering for tests: usage events as the router publishes them, the usage stream, and
the metering service as a real process (``python -m switchboard.metering``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as Nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from switchboard.common.metering import ERROR_CODE_HEADER
from switchboard.common.subjects import METERING_PING, METERING_SQL
from tests.support.servers import ManagedProcess

__all__ = [
    "METERING_PING",
    "METERING_SQL",
    "create_usage_stream",
    "eventually",
    "metering_pong",
    "publish_usage",
    "sql_over_nats",
    "start_metering",
    "usage_event",
]


def usage_event(**overrides: Any) -> UsageRecorded:
    """A plausible served request; keyword arguments override fields (``at``: the time)."""
    now = overrides.pop("at", None) or time.time()
    request_id = overrides.pop("request_id", None) or f"req_{uuid.uuid4().hex[:24]}"
    values: dict[str, Any] = {
        "event_id": request_id,
        "request_id": request_id,
        "key_id": "key_alpha",
        "key_name": "alpha",
        "requested_model": "openai/gpt-4o-mini",
        "served_model": "openai/gpt-4o-mini",
        "provider": "openrouter",
        "provider_base_url": "https://openrouter.ai/api/v1",
        "status": "ok",
        "http_status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": 0.000123,
        "cost_source": "upstream",
        "latency_ms": 420,
        "ttft_ms": 120,
        "stream": True,
        "attempts": [
            {
                "model": "openai/gpt-4o-mini",
                "provider": "openrouter",
                "status": "ok",
                "http_status": 200,
                "duration_ms": 400,
            }
        ],
        "received_at": now,
        "started_at": now + 0.001,
        "finished_at": now + 0.421,
        **overrides,
    }
    return UsageRecorded.model_validate(values)


async def create_usage_stream(nc: Nats, *, duplicate_window: float = 120.0) -> None:
    """The usage stream as the router creates it."""
    await nc.jetstream().add_stream(
        StreamConfig(
            name=subjects.USAGE_STREAM,
            subjects=[subjects.USAGE_STREAM_SUBJECTS],
            duplicate_window=duplicate_window,
        )
    )


async def publish_usage(
    nc: Nats, events: Iterable[UsageRecorded], *, msg_id: str | None = None
) -> int:
    """Publish events as the router does (``Nats-Msg-Id`` = event id; ``msg_id`` overrides
    it, ``""`` sends none); returns how many JetStream stored (not duplicates)."""
    js = nc.jetstream()
    stored = 0
    for event in events:
        message_id = event.event_id if msg_id is None else msg_id
        ack = await js.publish(
            subjects.USAGE_RECORDED,
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": message_id} if message_id else None,
        )
        stored += not ack.duplicate
    return stored


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 15.0,
    every: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``check`` until it is true, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(every)


async def metering_pong(nc: Nats) -> dict[str, Any] | None:
    """Metering's readiness (its ping reply), or None when no replica answers."""
    try:
        reply = await nc.request(METERING_PING, b"", timeout=0.5)
    except (NoRespondersError, NatsTimeoutError):
        return None
    pong: dict[str, Any] = orjson.loads(reply.data)
    return pong


async def sql_over_nats(nc: Nats, sql: str) -> list[list[Any]]:
    """Rows of a read-only query answered by a running metering (which owns the ledger)."""
    reply = await nc.request(METERING_SQL, orjson.dumps({"sql": sql}), timeout=10)
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        raise AssertionError(reply.data.decode())
    rows: list[list[Any]] = orjson.loads(reply.data)["rows"]
    return rows


def start_metering(
    workdir: Path, *, nats_url: str, clickhouse_url: str, **env: str
) -> ManagedProcess:
    """A metering process (no port: it speaks only NATS); wait with :func:`metering_pong`."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "metering.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard.metering"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "LOG_LEVEL": "INFO",
                "NATS_URL": nats_url,
                "CLICKHOUSE_URL": clickhouse_url,
                "METERING_BATCH_MAX_WAIT": "0.1",
                "OPS_PORT": "0",
                **env,
            },
        )
    return ManagedProcess("metering", proc, 0, log_path)
