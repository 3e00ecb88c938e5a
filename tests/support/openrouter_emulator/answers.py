"""What the emulated model answers, and how it is framed as JSON or SSE."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import orjson

from tests.support.openrouter_emulator.model import ModelSpec

# ------------------------------------------------------------------------------- answers

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_JSON_HEADER: Final = (b"content-type", b"application/json")
_SSE_HEADERS: Final = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))
_PROCESSING: Final = b": OPENROUTER PROCESSING\n\n"
_DONE: Final = b"data: [DONE]\n\n"
_ERROR_MESSAGES: Final = {
    401: "No auth credentials found",
    402: "Insufficient credits",
    408: "Request timed out",
    429: "Rate limit exceeded",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}


class _BadRequestError(Exception):
    """The chat request cannot be served; its message goes to the client with a 400."""


@dataclass(slots=True)
class _Answer:
    """What the model answers to one request."""

    content: str | None
    tool_call: tuple[str, str, str] | None  # id, function name, arguments JSON
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _tokens(characters: int) -> int:
    return max(1, -(-characters // 4))


def _text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


_EXAMPLES: Final[dict[str, Callable[[], Any]]] = {
    "integer": lambda: 1,
    "number": lambda: 1,
    "boolean": lambda: True,
    "array": list,
    "object": dict,
    "null": lambda: None,
}


def _example(schema: Any, text: str) -> Any:
    """A deterministic value that fits a JSON schema, for generated tool arguments."""
    if not isinstance(schema, dict):
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in _EXAMPLES:
        return _EXAMPLES[kind]()
    return text


def _split(text: str, parts: int) -> list[str]:
    """``text`` in at most ``parts`` pieces of nearly equal length."""
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        pieces.append(text[start:end])
        start = end
    return pieces


def _validate(body: Any) -> tuple[str, bool]:
    """The model asked for and whether to stream; raises :class:`_BadRequestError`."""
    if not isinstance(body, dict):
        raise _BadRequestError("Request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequestError("'messages' must be a non-empty array")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _BadRequestError("every message must be an object with a valid 'role'")
    model = body.get("model")
    if model is None and isinstance(body.get("models"), list) and body["models"]:
        model = body["models"][0]
    if not isinstance(model, str) or not model:
        raise _BadRequestError("'model' must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequestError("'stream' must be a boolean")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise _BadRequestError("'tools' must be an array")
    return model, stream


def _answer(body: dict[str, Any], reply: Callable[[Mapping[str, Any]], str] | None) -> _Answer:
    """The deterministic answer to a valid chat request (rules in the module docstring)."""
    messages: list[dict[str, Any]] = body["messages"]
    prompt_tokens = _tokens(sum(len(_text(m.get("content"))) for m in messages))
    last = messages[-1]
    user_text = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    tools = [
        t
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if last.get("role") == "user" and tools and choice != "none":
        named = choice.get("function") if isinstance(choice, dict) else None
        wanted = named.get("name") if isinstance(named, dict) else None
        function = next(
            (t["function"] for t in tools if t["function"].get("name") == wanted),
            tools[0]["function"],
        )
        name = str(function.get("name", "tool"))
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if not isinstance(properties, dict):
            properties = {}
        arguments = orjson.dumps({k: _example(v, user_text) for k, v in properties.items()})
        call = (f"call_{os.urandom(12).hex()}", name, arguments.decode())
        return _Answer(None, call, "tool_calls", prompt_tokens, _tokens(len(name) + len(call[2])))
    if last.get("role") == "tool":
        content = f"Tool result: {_text(last.get('content'))}"
    else:
        content = reply(body) if reply is not None else f"Echo: {user_text}"
    finish_reason = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0 and _tokens(len(content)) > limit:
        content, finish_reason = content[: 4 * limit], "length"
    return _Answer(content, None, finish_reason, prompt_tokens, _tokens(len(content)))


def _usage(answer: _Answer, model: ModelSpec, *, report_cost: bool = True) -> dict[str, Any]:
    prompt_cost = model.cost(answer.prompt_tokens, 0)
    completion_cost = model.cost(0, answer.completion_tokens)
    usage: dict[str, Any] = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "cost": model.cost(answer.prompt_tokens, answer.completion_tokens),
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "cost_details": {
            "upstream_inference_cost": None,
            "upstream_inference_prompt_cost": prompt_cost,
            "upstream_inference_completions_cost": completion_cost,
        },
        "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
    }
    if not report_cost:
        del usage["cost"], usage["cost_details"]
    return usage


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_body(status: int, message: str | None, metadata: dict[str, Any] | None = None) -> bytes:
    """OpenRouter's error body."""
    if message is None:
        message = _ERROR_MESSAGES.get(status) or _phrase(status)
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return orjson.dumps({"error": error})


def _frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _frame_multiline(payload: bytes) -> bytes:
    """One event whose JSON spans several ``data:`` lines (SSE joins them with ``\\n``)."""
    pretty = orjson.dumps(orjson.loads(payload), option=orjson.OPT_INDENT_2)
    return b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"


def _stream_payloads(
    answer: _Answer, prefix: bytes, pieces: int, usage: dict[str, Any] | None
) -> list[bytes]:
    """The JSON of every chunk of a streamed answer; ``prefix`` opens each chunk object."""

    def chunk(delta: Mapping[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "native_finish_reason": finish_reason,
            "logprobs": None,
        }
        return prefix + orjson.dumps([choice]) + b"}"

    if answer.tool_call is not None:
        call_id, name, arguments = answer.tool_call
        head = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        payloads = [chunk({"role": "assistant", "content": None, "tool_calls": [head]})]
        payloads += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _split(arguments, pieces)
        ]
    else:
        payloads = [chunk({"role": "assistant", "content": ""})]
        payloads += [chunk({"content": piece}) for piece in _split(answer.content or "", pieces)]
    payloads.append(chunk({}, answer.finish_reason))
    if usage is not None:
        payloads.append(prefix + b'[],"usage":' + orjson.dumps(usage) + b"}")
    return payloads
