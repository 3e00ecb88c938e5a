"""Where a running local stack writes down how to reach it: ``<data dir>/state.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

__all__ = ["StackState", "data_dir", "pid_alive"]

STATE_FILE = "state.json"


def data_dir(explicit: str | None = None) -> Path:
    """``--data-dir``, else ``SWITCHBOARD_DATA_DIR``, else ``.switchboard`` here."""
    return Path(explicit or os.environ.get("SWITCHBOARD_DATA_DIR") or ".switchboard").resolve()


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StackState(BaseModel):
    """What ``switchboard up`` started and where it listens."""

    pid: int
    base_url: str
    nats_url: str
    redis_url: str
    services: dict[str, int]
    """Service name → pid."""
    ports: dict[str, dict[str, int]] = {}
    """Service name → its ports by role: ``api`` (the edge's HTTP API), ``ops`` (health and
    metrics), ``client`` (NATS, Redis)."""

    @classmethod
    def load(cls, directory: Path) -> StackState | None:
        """The state of a stack that is still running, if any."""
        path = directory / STATE_FILE
        if not path.exists():
            return None
        state = cls.model_validate(json.loads(path.read_text()))
        return state if pid_alive(state.pid) else None

    def save(self, directory: Path) -> None:
        """Write atomically, readable by the owner only (it names local endpoints)."""
        path = directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    @staticmethod
    def remove(directory: Path) -> None:
        """Forget the stack (on shutdown)."""
        (directory / STATE_FILE).unlink(missing_ok=True)
