"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): the n-th retry waits a uniformly random time in ``[0, min(cap, base · 2ⁿ)]``, so
that clients failing together do not retry together."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_delay", "retry_wait"]

_MAX_EXPONENT = 32  # 2**32 times any sane base is past every cap; avoids float overflow


def backoff_delay(
    retry: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
    ceiling = min(cap, base * 2.0 ** min(max(retry, 0), _MAX_EXPONENT))
    return rng() * ceiling


def retry_wait(
    retry: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait before a retry: the upstream's ``Retry-After`` when it sent one (it knows
    best when it will take calls again), else :func:`backoff_delay`."""
    if retry_after is not None:
        return max(retry_after, 0.0)
    return backoff_delay(retry, base=base, cap=cap, rng=rng)
