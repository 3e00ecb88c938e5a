"""``uv run --group bench python -m bench.servers``: the edge's ASGI server, uvicorn or granian.

The same smallest Litestar app (:mod:`bench.asgi_floor`), answering at once or after a NATS
request-reply to a Python responder, under uvicorn as the edge runs it (httptools, the
asyncio loop) and under granian (its ASGI interface, one worker, the asyncio loop); k6 runs
alternate between the four servers, and the table holds each one's medians. It prints a
Markdown table; the figures of a run are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import free_port, start_nats, wait_for_port

from bench.run import _result, run_k6

_SERVERS = {
    "uvicorn": [
        "-m",
        "uvicorn",
        "bench.asgi_floor:app",
        "--http",
        "httptools",
        "--loop",
        "asyncio",
        "--no-access-log",
        "--log-level",
        "warning",
        "--port",
    ],
    "granian": [
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "asyncio",
        "--workers",
        "1",
        "--runtime-mode",
        "st",
        "--no-access-log",
        "--log-level",
        "warning",
        "bench.asgi_floor:app",
        "--port",
    ],
}


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], port: int | None = None) -> Iterator[None]:
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if port is not None:
            wait_for_port(port, proc=proc)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating runs per server")
    parser.add_argument("--duration", default="4s", help="k6 duration of each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        nats = start_nats(Path(tmp), jetstream=False)
        stack.callback(nats.stop)
        env = {**os.environ, "NATS_URL": nats.url}
        stack.enter_context(_process(["-m", "bench.asgi_floor", "echo"], env))
        targets: dict[str, str] = {}
        for server, server_argv in _SERVERS.items():
            for mode in ("plain", "nats"):
                port = free_port()
                stack.enter_context(
                    _process([*server_argv, str(port)], {**env, "FLOOR_MODE": mode}, port)
                )
                targets[f"{server}, {mode}"] = f"http://127.0.0.1:{port}/v1"
        print("| server, answer | concurrency | p50 ms | req/s |\n| --- | ---: | ---: | ---: |")
        for vus in args.concurrency:
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    summary = run_k6(url, "x", stream=False, vus=vus, duration=args.duration)
                    result = _result(name, stream=False, vus=vus, summary=summary)
                    runs[name].append((result.p50, result.rps))
            for name, values in runs.items():
                p50 = statistics.median(v[0] for v in values)
                rps = statistics.median(v[1] for v in values)
                print(f"| {name} | {vus} | {p50:.2f} | {rps:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
