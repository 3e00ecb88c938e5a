"""Our own services as real processes, for end-to-end tests (and benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.servers import ManagedProcess, free_port

__all__ = ["create_key", "start_analytics", "start_edge", "start_router", "wait_healthy"]


def _spawn(
    name: str, module: str, workdir: Path, env: dict[str, str], args: list[str]
) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # No ops listener unless a test asks for one: processes would share port 9464.
            env={**os.environ, "LOG_LEVEL": "INFO", "OPS_PORT": "0", **env},
        )
    return ManagedProcess(name, proc, int(env.get("EDGE_PORT", "0")), log_path)


def start_router(workdir: Path, *, nats_url: str, upstream: str, **env: str) -> ManagedProcess:
    """A router process serving from ``upstream`` (an emulator's base URL).

    Its model catalog copy goes to ``workdir`` unless ``ROUTER_CATALOG_CACHE`` is given
    (the default would be ``.switchboard/`` under the current directory).
    """
    env.setdefault("ROUTER_CATALOG_CACHE", str(workdir / "router-catalog.json"))
    return _spawn(
        "router",
        "switchboard.router",
        workdir,
        {
            "NATS_URL": nats_url,
            "OPENROUTER_BASE_URL": upstream,
            "OPENROUTER_API_KEY": "sk-or-test-upstream-secret",
            **env,
        },
        [],
    )


def start_analytics(
    workdir: Path, *, nats_url: str, posthog_host: str, posthog_api_key: str, **env: str
) -> ManagedProcess:
    """An analytics process consuming usage events into the PostHog at ``posthog_host``."""
    return _spawn(
        "analytics",
        "switchboard.analytics",
        workdir,
        {
            "NATS_URL": nats_url,
            "POSTHOG_API_KEY": posthog_api_key,
            "POSTHOG_HOST": posthog_host,
            **env,
        },
        [],
    )


def start_edge(workdir: Path, *, nats_url: str, redis_url: str, **env: str) -> ManagedProcess:
    """An edge process on a free port; call :func:`wait_healthy` or wait for the port."""
    port = free_port()
    managed = _spawn(
        "edge",
        "switchboard.edge",
        workdir,
        {
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "EDGE_HOST": "127.0.0.1",
            "EDGE_PORT": str(port),
            **env,
        },
        ["serve"],
    )
    managed.extra["url"] = f"http://127.0.0.1:{port}"
    return managed


def wait_healthy(
    edge: ManagedProcess, *, timeout: float = 30.0, expect: int = 200
) -> dict[str, object]:
    """Poll the edge's ``/health`` until it answers ``expect``; return the report."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"edge exited with {edge.proc.returncode}:\n{edge.log()[-3000:]}")
        try:
            response = httpx.get(f"{edge.url}/health", timeout=2)
            last = response.text
            if response.status_code == expect:
                report: dict[str, object] = response.json()
                return report
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"edge not healthy after {timeout} s: {last}\n{edge.log()[-3000:]}")


def create_key(redis_url: str, name: str = "e2e", *options: str) -> dict[str, str]:
    """Mint an API key through the edge's own command; returns its JSON (``id``, ``key``).

    ``options`` are more ``keys create`` flags, e.g. ``"--privacy-mode", "full"``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard.edge",
            "keys",
            "create",
            "--name",
            name,
            *options,
            "--json",
        ],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        check=True,
        timeout=60,
    )
    created: dict[str, str] = json.loads(out.stdout)
    return created
