from __future__ import annotations

import pytest

from switchboard.edge.durations import format_duration, parse_duration, retry_after_seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (2.52, "2.52s"),
        (59.9999, "1m0s"),
        (60, "1m0s"),
        (90.25, "1m30.25s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3725, "1h2m5s"),
    ],
)
def test_openai_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        ("2.5", 2.5),
        ("3600s", 3600),
        ("90m", 5400),
        ("1h30m", 5400),
        ("7d", 7 * 86400),
        ("250ms", 0.25),
        (" 1H ", 3600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "-5", "5s later", "inf", "1h-2m"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "header"), [(0, 1), (0.2, 1), (1, 1), (1.01, 2), (59.5, 60)])
def test_retry_after_rounds_up(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header
