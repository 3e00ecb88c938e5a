"""Turning a request body into a validated :class:`ChatCompletionRequest`, or a precise 400."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from switchboard.common.chat import ChatCompletionRequest, message_text_length
from switchboard.common.errors import ContextLengthExceededError, InvalidRequestError

__all__ = ["parse_chat_request"]

_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)


def _param(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> str:
    """``messages[0].content`` from pydantic's location, skipping union tags.

    Pydantic puts discriminator values and union member names in ``loc``; only the parts
    that exist in the submitted document (and, for a missing field, its name) are kept.
    """
    parts: list[str] = []
    node = data
    for position, item in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(item, str) and isinstance(node, dict) and item in node:
            parts.append(f".{item}" if parts else item)
            node = node[item]
        elif last and missing and isinstance(item, str):
            parts.append(f".{item}" if parts else item)
    return "".join(parts)


def _invalid(error: ErrorDetails, data: Any) -> InvalidRequestError:
    missing = error["type"] == "missing"
    param = _param(tuple(error["loc"]), data, missing=missing) or None
    if missing:
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return InvalidRequestError(
        f"Invalid value for '{param}': {error['msg']}.", param=param, code="invalid_value"
    )


def _check_length(name: str, items: list[Any] | None, limit: int | None) -> None:
    if limit is not None and items is not None and len(items) > limit:
        raise InvalidRequestError(
            f"Invalid '{name}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(items)} instead.",
            param=name,
            code="array_above_max_length",
        )


def parse_chat_request(
    body: bytes,
    *,
    max_content_chars: int,
    max_messages: int | None = None,
    max_tools: int | None = None,
) -> ChatCompletionRequest:
    """Validate ``body``; raise an OpenAI-shaped error naming the first bad field.

    Also enforces the gateway's size limits: message text, number of messages and tools.
    """
    # Parsed strictly first (RFC 8259: no NaN or Infinity, no number beyond 64 bits), so
    # that whatever is accepted can be written as JSON again by every later step (the
    # cache key, the router's upstream call): pydantic's own parser accepts ``NaN`` and
    # integers of any size, which crashed those steps with a 500.
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(_NOT_JSON) from None
    try:
        request = ChatCompletionRequest.model_validate(document)
    except ValidationError as exc:
        # Of the errors of every union branch, the deepest is the most specific.
        first = max(exc.errors(include_url=False), key=lambda error: len(error["loc"]))
        if first["type"] == "model_type" and not first["loc"]:
            raise InvalidRequestError(
                "The request body must be a JSON object.", code="invalid_type"
            ) from None
        raise _invalid(first, document) from None
    _check_length("messages", request.messages, max_messages)
    _check_length("tools", request.tools, max_tools)
    chars = message_text_length(request)
    if chars > max_content_chars:
        raise ContextLengthExceededError(
            f"This conversation has {chars} characters of message content, more than the "
            f"{max_content_chars} this gateway serves. Shorten the messages.",
            param="messages",
        )
    return request
