"""A whole stack for the hostile-input tests, and the hostile inputs themselves.

nats-server, valkey-server, the OpenRouter emulator (its catalog with a few models whose
ids are attacks of their own), a router, an edge with an admin token, and, when asked,
metering on an embedded ledger. Every response read through :attr:`HostileStack.http`
is kept, so that a test can search all of them (and every log) for secrets at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as Nats

from tests.support.clickhouse import embedded_target
from tests.support.metering import eventually, metering_pong, sql_over_nats, start_metering
from tests.support.openrouter_emulator import EmulatorServer, OpenRouterEmulator
from tests.support.openrouter_emulator.model import DEFAULT_CATALOG
from tests.support.rawhttp import RawResponse, raw_exchange, request_bytes
from tests.support.servers import ManagedProcess, start_nats, start_valkey
from tests.support.services import start_edge, start_router, wait_healthy

__all__ = [
    "ADMIN_TOKEN",
    "HOSTILE_MODELS",
    "INJECTIONS",
    "MODEL",
    "REQUEST_ID",
    "UPSTREAM_SECRET",
    "HostileStack",
    "hostile_stack",
    "openai_error",
]

ADMIN_TOKEN = "sb-admin-hostile-" + "f3" * 16
UPSTREAM_SECRET = "sk-or-test-upstream-secret"
"""The upstream key every router of the test support runs with (``start_router``)."""
MODEL = "openai/gpt-4o-mini"
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")

INJECTIONS: tuple[str, ...] = (
    "'; DROP TABLE usage_events; --",
    "\\' OR 1=1 --",
    '" OR ""="',
    "1); ALTER TABLE usage_events DELETE WHERE (1=1",
    "' UNION SELECT name FROM system.tables --",
    "{key_id:String}",
    "a\\b\\\\c\\",
    "\\N",
    "nul\x00byte",
    "line\r\nbreak\ttab",
    "ünïcödé 模型 \u202e 😀",
    "`back`tick` $$dollar$$ %s%n",
    "x" * 10_000,
)
"""Strings that break SQL built by hand, or the formats rows travel in (TSV, JSON)."""


def _hostile_model(model_id: str) -> Any:
    return dataclasses.replace(DEFAULT_CATALOG[0], id=model_id, name=f"Hostile: {model_id!r}")


HOSTILE_MODELS: dict[str, str] = {
    "crlf": "hostile/crlf\r\nx-injected: yes",
    "lf": "hostile/lf\nx-injected: yes",
    "sql": "hostile/'; DROP TABLE usage_events; --",
    "unicode": "hostile/ünïcødé-模型-\u202e",
}
"""Model ids the emulator's catalog serves: an upstream (or its catalog) is not trusted
to name models politely, and the edge reflects the serving model in a header."""


def openai_error(response: httpx.Response | Any, status: int | None = None) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error response (checked against OpenAI's
    schema), after checking the status when given."""
    from tests.support.openai_schema import validate

    code = getattr(response, "status_code", None) or response.status
    if status is not None:
        assert code == status, (code, response.text if hasattr(response, "text") else "")
    body = response.json()
    validate("error", body)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@dataclass
class HostileStack:
    """Handles on the running stack, and everything it answered."""

    workdir: Path
    nats: ManagedProcess
    valkey: ManagedProcess
    upstream: EmulatorServer
    router: ManagedProcess
    edge: ManagedProcess
    metering: ManagedProcess | None = None
    secrets: list[str] = field(default_factory=lambda: [ADMIN_TOKEN, UPSTREAM_SECRET])
    """Every secret the stack knows of: none may show in a log or an answer."""
    responses: list[httpx.Response] = field(default_factory=list)
    """Every response read through :attr:`http` (bodies read)."""
    raw_responses: list[RawResponse] = field(default_factory=list)
    """Every response read through :meth:`raw`."""
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.edge.url, timeout=30, event_hooks={"response": [self._keep]}
        )

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.responses.append(response)

    @property
    def port(self) -> int:
        return self.edge.port

    def admin(
        self, method: str, path: str = "", *, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> httpx.Response:
        """A call of ``/admin/keys{path}`` with ``token``."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.http.request(method, f"/admin/keys{path}", headers=headers, **kwargs)

    def create_key(self, **spec: Any) -> dict[str, Any]:
        """A key made through the admin API (``name`` defaults); its secret is remembered."""
        response = self.admin("POST", json={"name": "hostile", **spec})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        self.secrets.append(created["key"])
        return created

    def chat(
        self, key: str | None, body: Any, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """``POST /v1/chat/completions`` (``body`` as JSON, or bytes as they are)."""
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["authorization"] = f"Bearer {key}"
        if isinstance(body, bytes):
            all_headers.setdefault("content-type", "application/json")
            return self.http.post("/v1/chat/completions", content=body, headers=all_headers)
        return self.http.post("/v1/chat/completions", json=body, headers=all_headers)

    def raw(
        self,
        method: str,
        target: str,
        *,
        authorization: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> RawResponse:
        """A request sent byte for byte (see :mod:`tests.support.rawhttp`), kept."""
        all_headers = list(headers or [])
        if authorization is not None:
            all_headers.append((b"authorization", authorization.encode()))
        if body:
            all_headers.append((b"content-type", b"application/json"))
        request = request_bytes(method, target, host="edge", headers=all_headers, body=body)
        response = raw_exchange(self.port, request)
        self.raw_responses.append(response)
        return response

    def healthy(self) -> bool:
        """True when the edge answers ``/health`` with 200 (all of its dependencies up)."""
        return httpx.get(f"{self.edge.url}/health", timeout=10).status_code == 200

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.edge, self.router, self.metering) if p is not None]

    def logs(self) -> str:
        """Everything our services wrote."""
        return "".join(process.log() for process in self.processes())

    # ------------------------------------------------------------------ the ledger

    def on_nats(self, action: Callable[[Nats], Any]) -> Any:
        async def run() -> Any:
            nc = await nats.connect(self.nats.url)
            try:
                return await action(nc)
            finally:
                await nc.close()

        return asyncio.run(run())

    def sql(self, query: str) -> list[list[Any]]:
        """Rows of a read-only query, answered by metering (as ``switchboard sql`` does)."""

        async def ask(nc: Nats) -> list[list[Any]]:
            return await sql_over_nats(nc, query)

        rows: list[list[Any]] = self.on_nats(ask)
        return rows

    def wait_for_rows(self, query: str, expected: Any, *, within: float = 30.0) -> None:
        """Poll ``query`` until its rows equal ``expected``."""
        deadline = time.monotonic() + within
        rows: Any = None
        while time.monotonic() < deadline:
            rows = self.sql(query)
            if rows == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{query!r} gave {rows!r}, not {expected!r}, within {within} s")


def _start_metering(stack: HostileStack) -> ManagedProcess:
    workdir = stack.workdir / "metering"
    process = start_metering(
        workdir,
        nats_url=stack.nats.url,
        clickhouse_url=embedded_target(workdir / "clickhouse").url,
    )

    async def ready(nc: Nats) -> None:
        async def check() -> bool:
            pong = await metering_pong(nc)
            return bool(pong and pong["ready"] and pong["consuming"])

        await eventually(check, within=60, what="metering ready")

    stack.metering = process
    stack.on_nats(ready)
    return process


@contextlib.contextmanager
def hostile_stack(
    workdir: Path, *, metering: bool = False, **edge_env: str
) -> Iterator[HostileStack]:
    """The whole stack; the IP guard is off unless ``edge_env`` sets it, since hostile
    tests send many failed authentications from 127.0.0.1 on purpose."""
    nats_server = start_nats(workdir / "nats")
    valkey = start_valkey(workdir / "valkey")
    catalog = (*DEFAULT_CATALOG, *(_hostile_model(model) for model in HOSTILE_MODELS.values()))
    upstream = EmulatorServer(OpenRouterEmulator(catalog)).start()
    router = edge = None
    stack: HostileStack | None = None
    try:
        router = start_router(
            workdir / "router",
            nats_url=nats_server.url,
            upstream=upstream.base_url,
            ROUTER_KEEPALIVE_INTERVAL="0.5",
        )
        edge = start_edge(
            workdir / "edge",
            nats_url=nats_server.url,
            redis_url=valkey.url,
            **{
                "EDGE_IDLE_TIMEOUT": "5",
                "SWITCHBOARD_ADMIN_TOKEN": ADMIN_TOKEN,
                "EDGE_AUTH_FAILURES_PER_MINUTE": "0",
                **edge_env,
            },
        )
        wait_healthy(edge)
        stack = HostileStack(workdir, nats_server, valkey, upstream, router, edge)
        if metering:
            _start_metering(stack)
        yield stack
    finally:
        if stack is not None:
            stack.http.close()
        for process in (edge, router, stack.metering if stack else None):
            if process is not None:
                process.stop()
        upstream.stop()
        valkey.stop()
        nats_server.stop()
