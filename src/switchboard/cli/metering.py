"""Talking to metering over NATS from the ``switchboard`` command (request/reply).

Message models and headers: :mod:`switchboard.common.metering`; subjects:
:mod:`switchboard.common.subjects`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats
import orjson
from nats.errors import NoRespondersError

from switchboard.cli.state import StackState, data_dir
from switchboard.common.metering import ERROR_CODE_HEADER
from switchboard.common.subjects import METERING_ERASE, METERING_SQL

__all__ = [
    "METERING_ERASE",
    "METERING_SQL",
    "MeteringCallError",
    "ask_metering",
    "metering_nats_url",
]


class MeteringCallError(Exception):
    """Metering could not be asked, or answered with an error."""


def metering_nats_url(explicit_data_dir: str | None) -> str:
    """NATS of the running local stack, else ``NATS_URL``."""
    state = StackState.load(data_dir(explicit_data_dir))
    if state is not None:
        return state.nats_url
    url = os.environ.get("NATS_URL")
    if url:
        return url
    raise MeteringCallError(
        "no running stack found (start one with `switchboard up`) and NATS_URL is not set"
    )


async def _ask(url: str, subject: str, body: dict[str, Any], timeout: float) -> Any:
    try:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    except (OSError, nats.errors.Error) as exc:
        raise MeteringCallError(f"cannot reach NATS at {url}: {exc}") from exc
    try:
        reply = await nc.request(subject, orjson.dumps(body), timeout=timeout)
    except NoRespondersError:
        raise MeteringCallError("metering is not running (no responder on NATS)") from None
    except TimeoutError:  # nats-py's own subclass, or asyncio's
        raise MeteringCallError(f"metering did not answer within {timeout} s") from None
    finally:
        await nc.close()
    answer: Any = orjson.loads(reply.data)
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise MeteringCallError(str(error.get("message") or reply.data.decode()))
    return answer


def ask_metering(url: str, subject: str, body: dict[str, Any], *, timeout: float) -> Any:
    """Metering's JSON answer to ``body`` on ``subject``; :class:`MeteringCallError` else."""
    return asyncio.run(_ask(url, subject, body, timeout))
