"""Rate limits and quotas, exact across two edge processes that share one Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.gatekeeping import (
    GatedStack,
    chat_body,
    error_of,
    gated_stack,
    poll,
    sse_events,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedStack]:
    """Two edges on one Redis (and one router, one emulator)."""
    with gated_stack(tmp_path_factory.mktemp("limits"), edges=2) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _clean_upstream(gated: GatedStack) -> Iterator[None]:
    gated.upstream.clear()
    yield
    gated.upstream.clear()


async def _burst(gated: GatedStack, key: str, count: int) -> list[httpx.Response]:
    """``count`` requests at once, alternating between the two edges."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{gated.url(n % 2)}/chat/completions",
                    json=chat_body(f"request {n}"),
                    headers={"authorization": f"Bearer {key}"},
                )
                for n in range(count)
            )
        )


def test_two_edges_admit_exactly_the_rpm(gated: GatedStack) -> None:
    key = gated.create_key(rpm=50)["key"]
    responses = asyncio.run(_burst(gated, key, 200))
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) == 50, sorted({r.status_code for r in responses})
    assert len(refused) == 150
    # Which edge admitted how many depends on timing (under load one may admit all 50); both
    # refused (each got 100), and every refusal names the key's limit with none left.
    assert {
        (
            r.url.port,
            r.headers["x-ratelimit-limit-requests"],
            r.headers["x-ratelimit-remaining-requests"],
        )
        for r in refused
    } == {(edge.port, "50", "0") for edge in gated.edges}
    assert len(gated.upstream.calls) == 50
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted)
    assert remaining == list(range(50))
    for response in admitted:
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        assert response.headers["x-ratelimit-reset-requests"] == "1m0s"
    for response in refused:
        error = error_of(response, 429)
        assert (error["type"], error["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
        assert "requests per min (RPM)" in error["message"]
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert "x-request-id" not in response.headers  # refused before it was given an id


def test_tpm_reserves_then_reconciles_with_the_reported_usage(gated: GatedStack) -> None:
    key = gated.create_key(tpm=1000)["key"]
    body = chat_body("abcd" * 10, max_tokens=600)  # reserves 10 + 600 tokens
    first = gated.chat(key, body)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]
    assert used < 100
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 610)
    # Without reconciliation 610 + 610 would be over 1000. With it, the first request
    # counts for what it used, and the second fits (on the other edge).
    second = gated.chat(
        key, {**body, "stream": True, "stream_options": {"include_usage": True}}, edge=1
    )
    assert second.status_code == 200, second.text
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - used - 610)
    events = sse_events(second)
    assert events[-1] == "[DONE]"
    streamed_used = events[-2]["usage"]["total_tokens"]
    # The streamed one was reconciled when its end frame arrived, before [DONE].
    third = gated.chat(key, body)
    assert third.status_code == 200, third.text
    assert third.headers["x-ratelimit-remaining-tokens"] == str(1000 - used - streamed_used - 610)
    # A request that can never fit is refused without a retry.
    too_large = gated.chat(key, chat_body(max_tokens=5000))
    assert "Request too large" in error_of(too_large, 429)["message"]
    assert too_large.headers["x-should-retry"] == "false"


def test_concurrency_limit(gated: GatedStack) -> None:
    key = gated.create_key(max_concurrent=2)["key"]
    gated.upstream.add_fault("delay", seconds=1.0, sticky=True)
    results: list[httpx.Response] = []

    def slow(edge: int) -> None:
        results.append(gated.chat(key, edge=edge))

    threads = [threading.Thread(target=slow, args=(edge,)) for edge in (0, 1)]
    for thread in threads:
        thread.start()
    poll(lambda: len(gated.upstream.calls) >= 2, timeout=10)  # both are waiting upstream
    refused = gated.chat(key)
    error = error_of(refused, 429)
    assert "concurrent" in error["message"]
    assert refused.headers["retry-after"] == "1"
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in results] == [200, 200]
    gated.upstream.clear()
    assert gated.chat(key).status_code == 200  # both slots are free again


def _streamed(gated: GatedStack, key: str, edge: int = 0) -> tuple[int, list[Any]]:
    response = gated.chat(
        key,
        chat_body("spend some money", stream=True, stream_options={"include_usage": True}),
        edge=edge,
    )
    return response.status_code, sse_events(response) if response.status_code == 200 else []


def test_budget_runs_out_with_streamed_calls(gated: GatedStack) -> None:
    created = gated.create_key(monthly_budget_usd=0.000001)  # less than one call costs
    key = created["key"]
    # Two streamed calls in flight together: both were admitted with nothing spent, and
    # both complete although together they go over the budget.
    gated.upstream.add_fault("delay", chunk_delay=0.1, sticky=True)
    outcomes: list[tuple[int, list[Any]]] = []
    threads = [
        threading.Thread(target=lambda edge=edge: outcomes.append(_streamed(gated, key, edge)))
        for edge in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    gated.upstream.clear()
    assert [status for status, _ in outcomes] == [200, 200]
    costs = []
    for _, events in outcomes:
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["cost"] > 0.000001 / 2
        costs.append(events[-2]["usage"]["cost"])
    # The next one is refused, on either edge, streamed or not.
    for edge in (0, 1):
        status, _ = _streamed(gated, key, edge)
        assert status == 429
    refused = gated.chat(key)
    error = error_of(refused, 429)
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers["x-should-retry"] == "false"
    assert int(refused.headers["retry-after"]) > 0
    # The charge is exactly what the upstream reported.
    shown = gated.admin("GET", f"/{created['id']}").json()
    assert shown["usage"]["cost_usd"] == pytest.approx(sum(costs), rel=1e-9)
    assert len(gated.upstream.calls) == 0
    # Raising the budget lets the key work again at once, on both edges.
    assert gated.admin("PATCH", f"/{created['id']}", json={"monthly_budget_usd": 1}).is_success
    assert gated.chat(key, edge=1).status_code == 200


def test_token_quota(gated: GatedStack) -> None:
    created = gated.create_key(monthly_token_quota=10)
    first = gated.chat(created["key"], chat_body("a rather longer question for the model"))
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 10
    error = error_of(gated.chat(created["key"], edge=1), 429)
    assert error["code"] == "insufficient_quota"
    assert "monthly quota of 10 tokens" in error["message"]
    assert gated.admin("GET", f"/{created['id']}").json()["usage"]["tokens"] == used


def test_unlimited_keys_carry_no_limit_headers_but_are_metered(gated: GatedStack) -> None:
    created = gated.create_key()
    response = gated.chat(created["key"])
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("x-ratelimit")]
    used = response.json()["usage"]["total_tokens"]
    shown: dict[str, Any] = {}

    def metered() -> bool:
        shown.update(gated.admin("GET", f"/{created['id']}").json())
        return bool(shown["usage"]["tokens"] == used)

    poll(metered)
