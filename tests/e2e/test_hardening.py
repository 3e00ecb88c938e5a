"""An edge behind a trusted proxy, on the public internet: HTTPS only, the IP guard, size
limits, secure headers everywhere, and a Redis that restarts under traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.gatekeeping import (
    SECURITY_HEADERS,
    GatedStack,
    chat_body,
    error_of,
    gated_stack,
    poll,
)
from tests.support.clickhouse import embedded_target
from tests.support.faults import settled_ledger, wait_metering
from tests.support.metering import start_metering
from tests.support.servers import ManagedProcess, start_valkey
from tests.support.services import wait_healthy

pytestmark = pytest.mark.e2e

FAILURES_PER_MINUTE = 5


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedStack]:
    """One edge behind a "proxy" at 127.0.0.1, with a Redis that keeps its data on restart."""
    with gated_stack(
        tmp_path_factory.mktemp("hardening"),
        persistent_redis=True,
        EDGE_TRUSTED_PROXIES="127.0.0.1/32, ::1/128",
        EDGE_REQUIRE_HTTPS="true",
        EDGE_AUTH_FAILURES_PER_MINUTE=str(FAILURES_PER_MINUTE),
        EDGE_MAX_MESSAGES="3",
        EDGE_MAX_TOOLS="1",
        EDGE_MAX_BODY_BYTES="65536",
        EDGE_KEY_CACHE_TTL="0.5",
    ) as stack:
        yield stack


def _via_proxy(client_ip: str = "198.51.100.1", **headers: str) -> dict[str, str]:
    return {"x-forwarded-for": client_ip, "x-forwarded-proto": "https", **headers}


def _chat(gated: GatedStack, key: str | None, body: Any = None, **headers: str) -> httpx.Response:
    return gated.chat(key, body, headers=_via_proxy(**headers))


def test_plain_http_is_refused(gated: GatedStack) -> None:
    plain = gated.chat("sk-sb-anything", headers={"x-forwarded-for": "198.51.100.2"})
    error = error_of(plain, 403)
    assert (error["type"], error["code"]) == ("permission_error", "https_required")
    for name, value in SECURITY_HEADERS.items():
        assert plain.headers[name] == value
    assert error_of(gated.admin("GET"), 403)["code"] == "https_required"
    # Health probes may use plain HTTP.
    assert httpx.get(f"{gated.edges[0].url}/health", timeout=5).status_code == 200


def _create_key(gated: GatedStack, **spec: Any) -> dict[str, Any]:
    response = gated.admin("POST", json={"name": "hardening", **spec}, headers=_via_proxy())
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    gated.secrets.append(created["key"])
    return created


def test_ip_guard_counts_failures_per_client_ip(gated: GatedStack) -> None:
    good = _create_key(gated)["key"]
    attacker = "203.0.113.66"
    for n in range(FAILURES_PER_MINUTE):
        response = _chat(gated, f"sk-sb-guess-{n}", client_ip=attacker)
        assert error_of(response, 401)["code"] == "invalid_api_key"
    blocked = _chat(gated, "sk-sb-guess-last", client_ip=attacker)
    error = error_of(blocked, 429)
    assert error["type"] == "rate_limit_exceeded"
    assert "failed authentication attempts" in error["message"]
    assert 55 <= int(blocked.headers["retry-after"]) <= 60
    # Even a good key is refused from that address: the guard answers nothing more there.
    assert _chat(gated, good, client_ip=attacker).status_code == 429
    assert error_of(gated.admin("GET", headers=_via_proxy(attacker)), 429)
    # The same proxy forwarding another client: served.
    assert _chat(gated, good, client_ip="203.0.113.67").status_code == 200
    # A client cannot forge its way out: the proxy appends what it saw, the right-most wins.
    forged = _chat(gated, good, client_ip=f"192.0.2.1, {attacker}")
    assert forged.status_code == 429


def test_wrong_admin_tokens_count_too(gated: GatedStack) -> None:
    prober = "203.0.113.80"
    for _ in range(FAILURES_PER_MINUTE):
        assert gated.admin("GET", token="guess", headers=_via_proxy(prober)).status_code == 401
    assert gated.admin("GET", headers=_via_proxy(prober)).status_code == 429


def test_request_size_limits(gated: GatedStack) -> None:
    key = _create_key(gated)["key"]
    messages = [{"role": "user", "content": "x"}] * 4
    error = error_of(_chat(gated, key, {"model": "m", "messages": messages}), 400)
    assert (error["param"], error["code"]) == ("messages", "array_above_max_length")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    error = error_of(_chat(gated, key, chat_body(tools=[tool, tool])), 400)
    assert (error["param"], error["code"]) == ("tools", "array_above_max_length")
    too_big = _chat(gated, key, chat_body("x" * 70_000))
    assert error_of(too_big, 413)["code"] == "request_too_large"
    # An invalid body from an unknown key is a 401, not a 400: keys are checked first.
    assert _chat(gated, "sk-sb-nope", {"model": "m"}, client_ip="198.51.100.9").status_code == 401
    assert _chat(gated, key, chat_body(tools=[tool])).status_code == 200
    assert httpx.get(f"{gated.edges[0].url}/health", timeout=5).status_code == 200


def test_secure_headers_on_every_response(gated: GatedStack) -> None:
    key = _create_key(gated, rpm=1)["key"]
    base = gated.edges[0].url
    responses = {
        "ok": _chat(gated, key),
        "rate limited": _chat(gated, key),
        "stream refused": _chat(gated, key, chat_body(stream=True)),
        "unauthorized": _chat(gated, None, client_ip="198.51.100.30"),
        "not found": httpx.get(f"{base}/v1/nowhere", headers=_via_proxy(), timeout=5),
        "method": httpx.get(f"{base}/v1/chat/completions", headers=_via_proxy(), timeout=5),
        "models": httpx.get(
            f"{base}/v1/models", headers=_via_proxy(authorization=f"Bearer {key}"), timeout=5
        ),
        "health": httpx.get(f"{base}/health", timeout=5),
        "admin": gated.admin("GET", headers=_via_proxy()),
    }
    streamed_key = _create_key(gated)["key"]
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json=chat_body(stream=True),
        headers=_via_proxy(authorization=f"Bearer {streamed_key}"),
        timeout=30,
    ) as stream:
        stream.read()
        responses["stream"] = stream
    assert responses["rate limited"].status_code == 429
    assert responses["stream"].status_code == 200
    for name, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
    for name in ("ok", "rate limited", "stream refused"):
        assert responses[name].headers["x-ratelimit-limit-requests"] == "1", name


@pytest.fixture
def metering(gated: GatedStack) -> Iterator[ManagedProcess]:
    """Metering on the module's NATS: the ledger the Redis restart is checked against."""
    process = start_metering(
        gated.workdir / "metering",
        nats_url=gated.nats.url,
        clickhouse_url=embedded_target(gated.workdir / "clickhouse").url,
    )
    try:
        yield process
    finally:
        process.stop()


def test_redis_restart_during_traffic(gated: GatedStack, metering: ManagedProcess) -> None:
    """Last in the module: it stops the module's Redis. Every request is answered, and
    recorded once in the ledger."""
    created = _create_key(gated, rpm=10_000)
    known = created["key"]
    first = _chat(gated, known)
    assert first.status_code == 200  # cached on the edge
    statuses: list[int] = []
    request_ids = {first.headers["x-request-id"]}
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.post(
                    f"{gated.url()}/chat/completions",
                    json=chat_body("steady"),
                    headers=_via_proxy(authorization=f"Bearer {known}"),
                )
                statuses.append(response.status_code)
                request_ids.add(response.headers["x-request-id"])
                time.sleep(0.02)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        poll(lambda: len(statuses) >= 5)
        valkey = gated.valkey
        valkey.kill()
        down_from = len(statuses)
        poll(lambda: len(statuses) >= down_from + 10)  # traffic goes on without Redis
        unknown = _chat(gated, "sk-sb-" + "u" * 43, client_ip="198.51.100.40")
        assert error_of(unknown, 503)["code"] == "auth_unavailable"
        health = httpx.get(f"{gated.edges[0].url}/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["components"]["redis"]["status"] == "down"

        gated.valkey = start_valkey(valkey.log_path.parent, port=valkey.port, persistent=True)
        wait_healthy(gated.edges[0], timeout=10)
        # Recovered without a restart: the edge reads keys again, also ones it never saw.
        fresh = _create_key(gated)["key"]
        poll(lambda: _chat(gated, fresh).status_code == 200, timeout=5)
        revived_from = len(statuses)
        poll(lambda: len(statuses) >= revived_from + 5)
    finally:
        stop.set()
        thread.join(30)
    assert statuses
    assert set(statuses) == {200}, sorted(set(statuses))
    logs = gated.logs()
    assert "redis.unavailable" in logs
    assert "redis.recovered" in logs
    wait_metering(gated.nats.url)
    rows = settled_ledger(gated.nats.url, created["id"], request_ids)
    assert len(rows) == len(statuses) + 1
    print(f"\n[redis restarted] requests={len(statuses) + 1} ledger_rows={len(rows)}")  # figures


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedStack]:
    """One edge that trusts no proxy, reached over loopback."""
    with gated_stack(
        tmp_path_factory.mktemp("hardening-direct"),
        EDGE_REQUIRE_HTTPS="true",
    ) as stack:
        yield stack


def test_forwarding_headers_of_an_untrusted_peer_are_ignored(direct: GatedStack) -> None:
    # Not even from 127.0.0.1, whose X-Forwarded-For and -Proto uvicorn's own proxy-header
    # handling would believe (it is off: the edge judges them by EDGE_TRUSTED_PROXIES).
    claimed = direct.chat("sk-sb-anything", headers={"x-forwarded-proto": "https"})
    assert error_of(claimed, 403)["code"] == "https_required"
    forwarded = direct.chat("sk-sb-anything", headers={"forwarded": "for=192.0.2.9;proto=https"})
    assert error_of(forwarded, 403)["code"] == "https_required"
    assert httpx.get(f"{direct.edges[0].url}/health", timeout=5).status_code == 200
