"""Fault tests on real processes: a whole stack one test module may break and mend, what
the clients saw, and the ledger to check it against.

:class:`FaultStack` runs nats-server (JetStream on a file store), valkey, the OpenRouter
emulator, a router, an edge, metering (embedded ClickHouse under the stack's directory),
analytics and a PostHog capture server, and kills or restarts any of them on demand,
NATS on the same port and store.

:func:`chat` makes one request with the official ``openai`` SDK and returns a
:class:`Seen`: its request id (``x-request-id``), whether it was answered, and, when not,
whether the failure was a clean OpenAI-shaped error (an HTTP error body, or an error
event ending a stream) rather than a hang or a dropped connection.

:meth:`FaultStack.settled_ledger` is the check every scenario ends with: the ledger holds
exactly one row per request id the clients saw, no more, no fewer.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import orjson

from switchboard.common import subjects
from tests.support.clickhouse import embedded_target
from tests.support.metering import eventually, metering_pong, sql_over_nats, start_metering
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.posthog_capture import CaptureServer, PostHogCapture
from tests.support.servers import ManagedProcess, start_nats, start_valkey
from tests.support.services import start_analytics, start_edge, start_router, wait_healthy

__all__ = [
    "CLEAN_CODES",
    "MODEL",
    "POSTHOG_KEY",
    "SLOW_MODEL",
    "FaultStack",
    "LedgerRow",
    "Seen",
    "Traffic",
    "chat",
    "fault_stack",
    "ledger",
    "logged",
    "on_nats",
    "settled_ledger",
    "wait_metering",
]

MODEL = "openai/gpt-4o-mini"
SLOW_MODEL = "meta-llama/llama-3.1-8b-instruct"
"""Its upstream calls time out after one second of silence (the routing config)."""
POSTHOG_KEY = "phc_faultsProjectKey0123456789abcd"
ADMIN_TOKEN = "sb-admin-faults-token-0123456789abcdef"
ROUTING_CONFIG = f"""
# No retries and breakers that never open: each test counts single upstream attempts.
retry: {{max_retries: 0}}
breaker: {{failure_threshold: 1000000, min_calls: 1000000}}
models:
  {SLOW_MODEL}: {{timeout: 1}}
aliases:
  resilient: [{SLOW_MODEL}, {MODEL}]
"""
CLEAN_CODES = frozenset(
    {
        "router_unresponsive",
        "no_router",
        "bus_unavailable",
        "timeout",
        "upstream_error",
        # Frames a router sent while the edge was not subscribed (a NATS restart) are lost:
        # the edge notices and says so rather than relay a corrupted answer.
        "stream_incomplete",
        "protocol_error",
    }
)
"""Error codes a client may get while a process of the stack is down or restarting."""
_METERING_CONSUMER = "switchboard-metering"


@dataclass(frozen=True)
class Seen:
    """One chat request as its client saw it."""

    request_id: str | None
    stream: bool
    status: int
    """The HTTP status; 200 for a stream that ended with an error event."""
    code: str | None = None
    """The OpenAI error code, when it failed."""
    error: dict[str, Any] | None = None
    """The OpenAI ``error`` object, when it failed cleanly."""
    problem: str | None = None
    """Set when the failure was not clean: ``hang`` (the client's guard timeout fired),
    ``connection`` (the edge dropped it) or ``shape`` (not OpenAI's error shape)."""
    chunks: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.problem is None

    @property
    def clean_failure(self) -> bool:
        return self.error is not None and self.problem is None


def _openai_error(body: object) -> dict[str, Any] | None:
    if isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}:
        return body
    return None


def chat(
    client: openai.OpenAI,
    *,
    stream: bool,
    model: str = MODEL,
    content: str = "hello",
    first_chunk: threading.Event | None = None,
) -> Seen:
    """One chat completion through the SDK; never raises for what a fault may cause.

    ``first_chunk`` is set once a stream's first chunk has arrived."""
    messages: Any = [{"role": "user", "content": content}]
    request_id: str | None = None
    chunks = 0
    try:
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model=model, messages=messages, stream=True
            ) as response:
                request_id = response.headers.get("x-request-id")
                for _ in response.parse():
                    chunks += 1
                    if first_chunk is not None:
                        first_chunk.set()
        else:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
            request_id = raw.headers.get("x-request-id")
            raw.parse()
    except openai.APITimeoutError:
        return Seen(request_id, stream, 0, problem="hang", chunks=chunks)
    except openai.APIConnectionError:
        return Seen(request_id, stream, 0, problem="connection", chunks=chunks)
    except openai.APIStatusError as exc:
        error = _openai_error(exc.body)
        return Seen(
            exc.response.headers.get("x-request-id"),
            stream,
            exc.status_code,
            code=exc.code,
            error=error,
            problem=None if error else "shape",
        )
    except openai.APIError as exc:  # the error event that ends a stream
        error = _openai_error(exc.body)
        problem = None if error else "shape"
        return Seen(request_id, stream, 200, exc.code, error, problem, chunks)
    return Seen(request_id, stream, 200, chunks=chunks)


class Traffic:
    """Clients sending requests one after another, each on a thread, until stopped.

    ``streams`` says, per client, whether it streams. After a failure a client waits
    ``pause`` s, so that a stack answering 503 at once is not flooded.
    """

    def __init__(
        self, make_client: Callable[[], openai.OpenAI], streams: list[bool], *, pause: float = 0.1
    ) -> None:
        self._make_client = make_client
        self._streams = streams
        self._pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[tuple[float, int, Seen]] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n, stream), daemon=True)
            for n, stream in enumerate(streams)
        ]

    def _run(self, client_number: int, stream: bool) -> None:
        client = self._make_client()
        with client:
            while not self._stop.is_set():
                seen = chat(client, stream=stream)
                with self._lock:
                    self._seen.append((time.monotonic(), client_number, seen))
                if not seen.ok:
                    self._stop.wait(self._pause)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self._threads), "a client hangs"

    @property
    def seen(self) -> list[Seen]:
        """Every request made so far, in the order they ended."""
        with self._lock:
            return [seen for _, _, seen in self._seen]

    def answered_before(self, moment: float) -> frozenset[str]:
        """Request ids of the answers that ended before ``moment`` (``time.monotonic()``)."""
        with self._lock:
            return frozenset(
                seen.request_id
                for at, _, seen in self._seen
                if at < moment and seen.ok and seen.request_id
            )

    def answered_since(self, since: float) -> set[int]:
        """The clients that got an answer ending after ``since`` (``time.monotonic()``)."""
        with self._lock:
            return {n for at, n, seen in self._seen if at >= since and seen.ok}

    def first_answer_since(self, since: float) -> float | None:
        """When the first answer after ``since`` ended."""
        with self._lock:
            times = [at for at, _, seen in self._seen if at >= since and seen.ok]
        return min(times) if times else None

    def wait_all_answered(self, since: float, *, timeout: float = 30.0) -> None:
        """Until every client got an answer ending after ``since``."""
        deadline = time.monotonic() + timeout
        while len(self.answered_since(since)) < len(self._streams):
            assert time.monotonic() < deadline, f"clients answered: {self.answered_since(since)}"
            time.sleep(0.02)


@dataclass(frozen=True)
class LedgerRow:
    """What the ledger says of one request."""

    request_id: str
    status: str
    http_status: int
    error_code: str
    served_model: str
    cost_usd: str | None
    """As ClickHouse prints it; ``None`` when unknown."""
    fallbacks: int


@dataclass
class FaultStack:
    """Every process of the stack, each replaceable by the test."""

    workdir: Path
    nats: ManagedProcess
    valkey: ManagedProcess
    upstream: EmulatorServer
    capture: CaptureServer
    router: ManagedProcess
    edge: ManagedProcess
    metering: ManagedProcess
    analytics: ManagedProcess
    clients: list[openai.OpenAI] = field(default_factory=list, repr=False)
    """Every SDK client made by :meth:`client`, open until :meth:`close_clients`."""

    @property
    def base_url(self) -> str:
        return f"{self.edge.url}/v1"

    # ------------------------------------------------------------------------ clients

    def new_key(self) -> dict[str, Any]:
        """A fresh key (``id``, ``key``), so a test reads only its own ledger rows."""
        response = httpx.post(
            f"{self.edge.url}/admin/keys",
            json={"name": f"faults-{uuid.uuid4().hex[:6]}"},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def client(self, key: dict[str, Any], *, timeout: float = 20.0) -> openai.OpenAI:
        """The SDK on the edge, no retries; ``timeout`` only guards against a hang. Kept
        (so no open connection is left to the garbage collector) until
        :meth:`close_clients`."""
        client = openai.OpenAI(
            base_url=self.base_url, api_key=key["key"], max_retries=0, timeout=timeout
        )
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client :meth:`client` made."""
        while self.clients:
            self.clients.pop().close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until the edge reports NATS, Redis and a router all up."""
        wait_healthy(self.edge, timeout=timeout)

    # ---------------------------------------------------------------------- processes

    def start_router(self) -> ManagedProcess:
        """A new router (after :meth:`kill_router`)."""
        self.router = _start_router(self.workdir, self.nats.url, self.upstream.base_url)
        return self.router

    def kill_router(self) -> None:
        """SIGKILL, as a crash (or the OOM killer) would."""
        self.router.kill()

    @contextmanager
    def frozen(self, process: ManagedProcess) -> Iterator[None]:
        """``process`` stopped (SIGSTOP) for the block: alive, but silent and slow."""
        process.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.proc.send_signal(signal.SIGCONT)

    def kill_nats(self) -> None:
        self.nats.kill()

    def start_nats(self) -> ManagedProcess:
        """nats-server again on the same port with the same JetStream store."""
        self.nats = start_nats(self.workdir / "nats", port=self.nats.port)
        return self.nats

    def kill_metering(self) -> None:
        self.metering.kill()

    def stop_metering(self) -> None:
        self.metering.stop()

    def start_metering(self, **env: str) -> ManagedProcess:
        """Metering on the stack's ledger (``CLICKHOUSE_URL`` in ``env`` overrides it)."""
        self.metering = _start_metering(self.workdir, self.nats.url, **env)
        return self.metering

    def wait_metering(self, *, ready: bool = True, within: float = 30.0) -> dict[str, Any]:
        """See :func:`wait_metering`."""
        return wait_metering(self.nats.url, ready=ready, within=within)

    # ------------------------------------------------------------------------- ledger

    def on_nats[T](self, action: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``action(nc)`` on a NATS connection of its own."""
        return on_nats(self.nats.url, action)

    def stream_messages(self) -> int:
        """Events the usage stream holds."""

        async def count(nc: Any) -> int:
            info = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
            return int(info.state.messages)

        return self.on_nats(count)

    def ledger(self, key_id: str) -> list[LedgerRow]:
        """See :func:`ledger`."""
        return ledger(self.nats.url, key_id)

    def settled_ledger(
        self,
        key_id: str,
        seen: list[Seen],
        *,
        within: float = 30.0,
    ) -> dict[str, LedgerRow]:
        """See :func:`settled_ledger`; every request seen must have a request id."""
        assert all(s.request_id for s in seen), "a request without an x-request-id"
        ids = {s.request_id for s in seen if s.request_id}
        return settled_ledger(self.nats.url, key_id, ids, within=within)

    def generations(self, key_id: str) -> dict[str, list[str]]:
        """PostHog ``$ai_generation`` uuids per request id (PostHog keeps one per uuid)."""
        found: dict[str, set[str]] = {}
        for event in self.capture.events:
            properties = event.get("properties") or {}
            if (
                event.get("event") == "$ai_generation"
                and properties.get("switchboard_key_id") == key_id
            ):
                found.setdefault(properties["$ai_trace_id"], set()).add(str(event.get("uuid")))
        return {request_id: sorted(uuids) for request_id, uuids in found.items()}

    def stop(self) -> None:
        """Stop every process, the edge first (no new requests while the rest stops)."""
        self.close_clients()
        for process in (self.edge, self.router, self.analytics, self.metering):
            process.stop()
        self.capture.stop()
        self.upstream.stop()
        self.valkey.stop()
        self.nats.stop()


def on_nats[T](nats_url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(nc)`` on a NATS connection of its own."""

    async def run() -> T:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            return await action(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def wait_metering(nats_url: str, *, ready: bool = True, within: float = 30.0) -> dict[str, Any]:
    """Until a metering answers its ping on ``nats_url`` (ready and consuming, unless
    ``ready`` is false); its ping reply."""

    async def answered(nc: Any) -> dict[str, Any]:
        async def check() -> bool:
            pong = await metering_pong(nc)
            return pong is not None and (not ready or (pong["ready"] and pong["consuming"]))

        await eventually(check, within=within, what="metering answering")
        pong = await metering_pong(nc)
        assert pong is not None
        return pong

    return on_nats(nats_url, answered)


def ledger(nats_url: str, key_id: str) -> list[LedgerRow]:
    """Every row of ``key_id`` as the metering on ``nats_url`` reads its ledger (``FINAL``:
    copies of one event collapse; two rows for one request would both show)."""
    sql = (
        "SELECT key_id, request_id, status, http_status, error_code, served_model,"
        " toString(cost_usd), fallbacks FROM usage_events FINAL"
    )

    async def read(nc: Any) -> list[list[Any]]:
        return await sql_over_nats(nc, sql)

    return [LedgerRow(*row[1:]) for row in on_nats(nats_url, read) if row[0] == key_id]


def settled_ledger(
    nats_url: str,
    key_id: str,
    request_ids: set[str],
    *,
    within: float = 30.0,
) -> dict[str, LedgerRow]:
    """The ledger of ``key_id`` once it holds every one of ``request_ids`` and metering
    has acknowledged every event: exactly one row per request id, checked here."""
    required = request_ids
    deadline = time.monotonic() + within
    while not required <= {row.request_id for row in ledger(nats_url, key_id)}:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)

    async def acknowledged(nc: Any) -> None:
        async def check() -> bool:
            info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, _METERING_CONSUMER)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(check, within=within, what="metering acknowledged every event")

    on_nats(nats_url, acknowledged)
    rows = ledger(nats_url, key_id)
    ids = [row.request_id for row in rows]
    assert len(ids) == len(set(ids)), f"more than one row for a request: {sorted(ids)}"
    missing, extra = required - set(ids), set(ids) - request_ids
    assert not missing and not extra, f"missing {sorted(missing)}, extra {sorted(extra)}"
    return {row.request_id: row for row in rows}


def logged(process: ManagedProcess, event: str, **fields: object) -> bool:
    """Whether ``process`` wrote a JSON log line for ``event`` with these ``fields``."""
    for line in process.log().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("event") == event
            and all(entry.get(name) == value for name, value in fields.items())
        ):
            return True
    return False


@contextmanager
def fault_stack(workdir: Path) -> Iterator[FaultStack]:
    """A whole stack under ``workdir``, ready (edge healthy, metering consuming)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "routing.yaml").write_text(ROUTING_CONFIG)
    with ExitStack() as exits:
        nats_server = start_nats(workdir / "nats")
        exits.callback(nats_server.stop)
        valkey = start_valkey(workdir / "valkey")
        exits.callback(valkey.stop)
        upstream = EmulatorServer().start()
        exits.callback(upstream.stop)
        capture = CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)).start()
        exits.callback(capture.stop)
        router = _start_router(workdir, nats_server.url, upstream.base_url)
        exits.callback(router.stop)
        metering = _start_metering(workdir, nats_server.url)
        exits.callback(metering.stop)
        analytics = start_analytics(
            workdir / "analytics",
            nats_url=nats_server.url,
            posthog_host=capture.host,
            posthog_api_key=POSTHOG_KEY,
            ANALYTICS_FETCH_WAIT="0.2",
            ANALYTICS_RETRY_INITIAL="0.2",
            ANALYTICS_RETRY_MAX="1",
        )
        exits.callback(analytics.stop)
        edge = start_edge(
            workdir / "edge",
            nats_url=nats_server.url,
            redis_url=valkey.url,
            EDGE_IDLE_TIMEOUT="1.5",
            SWITCHBOARD_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        exits.callback(edge.stop)
        stack = FaultStack(
            workdir, nats_server, valkey, upstream, capture, router, edge, metering, analytics
        )
        stack.wait_healthy()
        stack.wait_metering()
        exits.pop_all()  # from here on the stack stops whichever processes it runs then
    try:
        yield stack
    finally:
        stack.stop()


def _start_router(workdir: Path, nats_url: str, upstream: str) -> ManagedProcess:
    return start_router(
        workdir / "router",
        nats_url=nats_url,
        upstream=upstream,
        ROUTER_KEEPALIVE_INTERVAL="0.3",
        SWITCHBOARD_CONFIG=str(workdir / "routing.yaml"),
    )


def _start_metering(workdir: Path, nats_url: str, **env: str) -> ManagedProcess:
    env.setdefault("CLICKHOUSE_URL", embedded_target(workdir / "clickhouse").url)
    return start_metering(
        workdir / "metering",
        nats_url=nats_url,
        clickhouse_url=env.pop("CLICKHOUSE_URL"),
        METERING_ACK_WAIT="2",
        METERING_RETRY_INITIAL="0.2",
        METERING_RETRY_MAX="1",
        **env,
    )
