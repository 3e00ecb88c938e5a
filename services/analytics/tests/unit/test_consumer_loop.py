"""The consume loop's handling of fetch outcomes (no server needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from switchboard.analytics.consumer import UsageConsumer
from switchboard.analytics.settings import AnalyticsSettings

Fetch = Callable[[], Awaitable[list[Any]]]


def _consumer(fetch: Fetch, **settings: Any) -> UsageConsumer:
    """A consumer bound at once to a subscription whose fetches ``fetch`` answers."""
    consumer = UsageConsumer.__new__(UsageConsumer)
    consumer._settings = AnalyticsSettings(posthog_api_key="phc_test", **settings)  # type: ignore[call-arg]
    consumer.bound = False

    class Subscription:
        async def fetch(self, *_args: object, **_kwargs: object) -> list[Any]:
            return await fetch()

        async def unsubscribe(self) -> None:
            return None

    async def subscribe(_stop: asyncio.Event) -> Subscription:
        return Subscription()

    async def read_pending(_subscription: object) -> None:
        return None

    consumer._subscribe = subscribe  # type: ignore[method-assign,assignment]
    consumer._read_pending = read_pending  # type: ignore[method-assign,assignment]
    return consumer


async def test_a_plain_asyncio_timeout_from_fetch_is_an_empty_fetch() -> None:
    # nats-py's fetch raises asyncio's own TimeoutError on one path, not its subclass.
    stop = asyncio.Event()
    fetches = 0

    async def fetch() -> list[Any]:
        nonlocal fetches
        fetches += 1
        if fetches == 3:
            stop.set()
        raise TimeoutError

    consumer = _consumer(fetch, analytics_fetch_wait=0.01)
    await asyncio.wait_for(consumer.run(stop), 5)
    assert fetches == 3
    assert consumer.bound is False


async def test_a_short_fetch_is_followed_by_a_pause_and_a_full_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A trickle of events would otherwise cost a pull and a PostHog request per event.
    stop = asyncio.Event()
    sizes = iter([1, 3, 2])
    pauses: list[tuple[int, float]] = []
    fetched: list[int] = []

    async def fetch() -> list[Any]:
        size = next(sizes, None)
        if size is None:
            stop.set()
            raise TimeoutError
        fetched.append(size)
        return [object()] * size

    async def process(_messages: object) -> float:
        return 0.0

    async def sleep_unless(_stop: asyncio.Event, delay: float) -> None:
        pauses.append((fetched[-1], delay))

    monkeypatch.setattr("switchboard.analytics.consumer._sleep_unless", sleep_unless)
    consumer = _consumer(fetch, analytics_batch_size=3)
    consumer.process = process  # type: ignore[method-assign]
    await asyncio.wait_for(consumer.run(stop), 5)
    assert fetched == [1, 3, 2]
    assert pauses == [(1, 0.05), (2, 0.05)]
