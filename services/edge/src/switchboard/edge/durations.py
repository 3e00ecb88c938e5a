"""Durations as people and OpenAI write them: ``1s``, ``6m0s``, ``20ms``, ``3600s``, ``7d``."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration", "retry_after_seconds"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def format_duration(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` format (Go's ``time.Duration``), to the millisecond.

    ``0`` → ``0s``, ``0.02`` → ``20ms``, ``1.5`` → ``1.5s``, ``360`` → ``6m0s``,
    ``3725`` → ``1h2m5s``.
    """
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds or units like ``1h30m``, ``3600s``, ``7d``.

    Raises ``ValueError`` for anything else.
    """
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"not a duration: {text!r}")
        return value
    parts = _PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (try 3600s, 90m, 1h30m, 7d)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))
