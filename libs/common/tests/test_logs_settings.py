from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from switchboard.common.logs import bind_context, clear_context, configure_logging, get_logger
from switchboard.common.settings import NatsSettings, ServiceSettings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put logging back as it was after a test that configures it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_logs_are_json_with_context_and_no_secrets(
    capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("test", "INFO")
    bind_context(request_id="req_1")
    get_logger("t").info(
        "hello", authorization="Bearer sk-sb-secret", api_key="sk-sb-secret", key_id="key_1"
    )
    get_logger("t").debug("hidden")
    clear_context("request_id")
    logging.getLogger("lib").warning("library %s", "line")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert lines[0]["event"] == "hello"
    assert lines[0]["request_id"] == "req_1"
    assert lines[0]["key_id"] == "key_1"
    assert "sk-sb-secret" not in json.dumps(lines)
    assert lines[1]["event"] == "library line"
    assert "request_id" not in lines[1]
    assert len(lines) == 2


def test_secrets_are_redacted_on_every_line_whatever_the_case_of_their_key(
    capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("test", "INFO")
    for _ in range(2):  # the second line is judged by the verdicts kept from the first
        get_logger("t").info(
            "call",
            Authorization="Bearer sk-sb-1",
            upstream_API_Key="sk-or-2",
            session_cookie="c3",
            key_id="key_1",
            usage_prompt_tokens=14,
        )
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["Authorization"] == line["upstream_API_Key"] == "[redacted]"
        assert line["session_cookie"] == "[redacted]"
        assert (line["key_id"], line["usage_prompt_tokens"]) == ("key_1", 14)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:1, nats://b:2")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = ServiceSettings()
    assert settings.servers == ["nats://a:1", "nats://b:2"]
    assert settings.log_level == "DEBUG"
    assert NatsSettings().nats_max_reconnect_attempts == -1
