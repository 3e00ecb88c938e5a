"""Structured JSON logs on stderr, one object per line.

Bind request context with :func:`bind_context` (``request_id``, ``key_id``, ``model``) and
every line logged while handling that request carries it. Values of keys that look like
secrets are replaced before anything is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from functools import lru_cache
from typing import Any

import orjson
import structlog
from opentelemetry import trace

__all__ = ["add_trace_ids", "bind_context", "clear_context", "configure_logging", "get_logger"]

_SECRET_WORDS = ("authorization", "api_key", "apikey", "password", "secret", "token", "cookie")
REDACTED = "[redacted]"


@lru_cache(maxsize=1024)
def _names_secret(key: str) -> bool:
    """Whether a value logged under ``key`` is to be redacted. Keys are names from code, so
    the verdicts are kept: checking every key of a line cost 14 µs of a 33 µs line."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(
        ("_id", "_tokens")
    )


def _redact_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event:
        if _names_secret(key):
            event[key] = REDACTED
    return event


def add_trace_ids(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put the current span's ``trace_id`` and ``span_id`` on the line, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send this process's logs (ours and libraries') to stderr as JSON lines."""
    numeric = logging.getLevelNamesMapping()[level]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
        add_trace_ids,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))


def get_logger(name: str) -> Any:
    """A structlog logger; ``name`` is the module, logged as ``module``."""
    return structlog.get_logger(module=name)


def bind_context(**values: str) -> None:
    """Attach values to every log line of the current task (request id, key id, model)."""
    structlog.contextvars.bind_contextvars(**values)


def clear_context(*names: str) -> None:
    """Forget values bound by :func:`bind_context`."""
    structlog.contextvars.unbind_contextvars(*names)
