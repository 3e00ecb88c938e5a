"""``uv run python -m bench.pool``: the router's upstream HTTP client alone, by transport.

The router's CPU per request under load was dominated by httpcore's connection pool, which
re-examines every pooled connection (probing idle sockets) whenever a request starts or
ends. This measures upstream calls per second from one process against the benchmark's
nginx upstream, with httpx's own transport and with the aiohttp transport the router uses,
side by side in one run, at 32 and 128 concurrent calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

from bench.upstream import NginxUpstream

_BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)


def _client(transport: str) -> httpx.AsyncClient:
    if transport == "aiohttp":
        return httpx.AsyncClient(transport=AiohttpTransport(limits=_LIMITS, trust_env=False))
    return httpx.AsyncClient(limits=_LIMITS)


async def _rate(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def measure(url: str, transports: list[str], levels: list[int], seconds: float) -> None:
    print("| transport | concurrency | calls/s |\n| --- | ---: | ---: |")
    for concurrency in levels:
        for transport in transports:
            async with _client(transport) as client:

                async def call(client: httpx.AsyncClient = client) -> None:
                    response = await client.post(url, content=_BODY)
                    response.raise_for_status()

                await _rate(call, concurrency, 1.0)  # warm-up: open the connections
                rate = await _rate(call, concurrency, seconds)
            print(f"| {transport} | {concurrency} | {rate:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        nginx = NginxUpstream.start(Path(tmp))
        try:
            url = nginx.base_url(stream=False) + "/chat/completions"
            asyncio.run(measure(url, ["httpx", "aiohttp"], args.concurrency, args.seconds))
        finally:
            nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
