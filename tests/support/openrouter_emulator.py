"""An OpenRouter emulator: the real HTTP upstream of integration tests, e2e tests and benchmarks.

It speaks OpenRouter's dialect of the OpenAI chat API over real sockets:

- ``POST {/api/v1,/v1,}/chat/completions``: a ``chat.completion`` or an SSE stream of
  ``chat.completion.chunk`` events, with OpenRouter's extras (``provider``,
  ``native_finish_reason``, ``usage.cost`` in USD, the ``: OPENROUTER PROCESSING`` comment,
  the ``X-Generation-Id`` header).
- ``GET {/api/v1,/v1,}/models``: the catalog in OpenRouter's list shape, prices as strings of
  USD per token; ``usage.cost`` is computed from them.
- ``/_emulator/calls`` (GET, DELETE) and ``/_emulator/faults`` (GET, POST, DELETE): the
  control API, for when the emulator runs as a separate process.

Answers are deterministic. The rules, in order:

1. the last message is a ``tool`` message: text ``"Tool result: <its content>"``;
2. ``tools`` is non-empty, ``tool_choice`` is not ``"none"`` and the last message is a
   ``user`` message: a call of the function named by ``tool_choice`` (``{"type":
   "function", "function": {"name": ...}}``), else of the first tool. Its arguments hold
   one value per property of the tool's JSON schema: the first ``enum`` value, the last
   user text for strings, ``1`` for numbers, ``true``, ``[]``, ``{}``;
3. otherwise text: ``reply(body)`` when the emulator has a ``reply`` hook, else
   ``"Echo: <last user text>"``.

Token counts are ``ceil(characters / 4)``, at least 1: prompt tokens count the text of
every message, completion tokens the answer (or the tool's name plus its arguments). When
``max_tokens`` / ``max_completion_tokens`` is smaller, the text is cut to ``4 * limit``
characters and ``finish_reason`` is ``"length"``. A stream sends a first chunk with the
role, ``stream_chunks`` content (or argument) pieces, a chunk with ``finish_reason``, a
usage chunk when ``stream_options.include_usage`` is true, then ``data: [DONE]``.

Faults (:class:`Fault`) make the upstream misbehave; each is taken by the first matching
chat call (``model``/``stream`` filters) and then dropped, unless ``sticky``. Requests that
are not valid JSON chat requests get a 400 before any fault is looked at; faults come
before the unknown-model 404.

Raw ASGI rather than Litestar: the emulator must cut connections mid-body, write SSE byte
for byte (comments, multi-line ``data:``), notice ``http.disconnect`` while it waits, and
serve thousands of requests a second; a framework's response classes are in the way of all
four, and there are only three routes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self, TypedDict, Unpack, get_args

import orjson
import uvicorn

__all__ = [
    "DEFAULT_CATALOG",
    "CallRecord",
    "EmulatorServer",
    "Fault",
    "FaultKind",
    "FaultOptions",
    "ModelSpec",
    "OpenRouterEmulator",
    "main",
    "running_emulator",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FaultKind = Literal["status", "delay", "disconnect", "stream_error", "multiline", "hang"]
"""What a fault does; see :class:`Fault`."""

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
_STREAM_ONLY_KINDS: Final = frozenset({"stream_error", "multiline"})

# --------------------------------------------------------------------------------- catalog

_OPENAI_PARAMETERS: Final = (
    *("frequency_penalty", "logit_bias", "logprobs", "max_tokens", "presence_penalty"),
    *("response_format", "seed", "stop", "structured_outputs", "temperature", "tool_choice"),
    *("tools", "top_logprobs", "top_p"),
)
_COMMON_PARAMETERS: Final = ("max_tokens", "stop", "temperature", "tool_choice", "tools", "top_k")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the catalog, priced like OpenRouter: decimal strings of USD per token."""

    id: str
    """OpenRouter's model id, ``author/slug``."""
    name: str
    """Display name, e.g. ``"OpenAI: GPT-4o-mini"``."""
    provider: str
    """The provider that serves it, reported as ``provider`` in completions."""
    prompt: str
    """USD per prompt token."""
    completion: str
    """USD per completion token."""
    input_cache_read: str = "0"
    """USD per cached prompt token read."""
    input_cache_write: str = "0"
    """USD per prompt token written to the cache."""
    internal_reasoning: str = "0"
    """USD per reasoning token."""
    context_length: int = 128_000
    max_completion_tokens: int | None = 16_384
    created: int = 1_700_000_000
    modality: str = "text->text"
    tokenizer: str = "Other"
    supported_parameters: tuple[str, ...] = _COMMON_PARAMETERS

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call, as OpenRouter reports it in ``usage.cost``."""
        usd = prompt_tokens * float(self.prompt) + completion_tokens * float(self.completion)
        return round(usd, 15)

    def to_openrouter(self) -> dict[str, Any]:
        """The entry of ``GET /models``, in OpenRouter's shape."""
        inputs, _, outputs = self.modality.partition("->")
        return {
            "id": self.id,
            "canonical_slug": self.id,
            "hugging_face_id": None,
            "name": self.name,
            "created": self.created,
            "description": f"{self.name}, served by the Switchboard OpenRouter emulator.",
            "context_length": self.context_length,
            "architecture": {
                "modality": self.modality,
                "input_modalities": inputs.split("+"),
                "output_modalities": outputs.split("+"),
                "tokenizer": self.tokenizer,
                "instruct_type": None,
            },
            "pricing": {
                "prompt": self.prompt,
                "completion": self.completion,
                "request": "0",
                "image": "0",
                "web_search": "0",
                "internal_reasoning": self.internal_reasoning,
                "input_cache_read": self.input_cache_read,
                "input_cache_write": self.input_cache_write,
            },
            "top_provider": {
                "context_length": self.context_length,
                "max_completion_tokens": self.max_completion_tokens,
                "is_moderated": False,
            },
            "per_request_limits": None,
            "supported_parameters": list(self.supported_parameters),
            "default_parameters": {},
        }


DEFAULT_CATALOG: Final[tuple[ModelSpec, ...]] = (
    ModelSpec(
        "openai/gpt-4o-mini",
        "OpenAI: GPT-4o-mini",
        "OpenAI",
        "0.00000015",
        "0.0000006",
        input_cache_read="0.000000075",
        created=1_721_260_800,
        modality="text+image->text",
        tokenizer="GPT",
        supported_parameters=_OPENAI_PARAMETERS,
    ),
    ModelSpec(
        "anthropic/claude-3.5-haiku",
        "Anthropic: Claude 3.5 Haiku",
        "Anthropic",
        "0.0000008",
        "0.000004",
        input_cache_read="0.00000008",
        input_cache_write="0.000001",
        context_length=200_000,
        max_completion_tokens=8_192,
        created=1_730_678_400,
        modality="text+image->text",
        tokenizer="Claude",
    ),
    ModelSpec(
        "meta-llama/llama-3.1-8b-instruct",
        "Meta: Llama 3.1 8B Instruct",
        "DeepInfra",
        "0.00000002",
        "0.00000003",
        context_length=131_072,
        max_completion_tokens=8_192,
        created=1_721_692_800,
        tokenizer="Llama3",
    ),
    ModelSpec(
        "google/gemini-flash-1.5",
        "Google: Gemini 1.5 Flash",
        "Google",
        "0.000000075",
        "0.0000003",
        context_length=1_000_000,
        max_completion_tokens=8_192,
        created=1_715_644_800,
        modality="text+image->text",
        tokenizer="Gemini",
    ),
)
"""The models served when no catalog is given."""

# ---------------------------------------------------------------------------------- faults


class FaultOptions(TypedDict, total=False):
    """Keyword arguments of :meth:`OpenRouterEmulator.add_fault`: the fields of :class:`Fault`."""

    model: str | None
    stream: bool | None
    sticky: bool
    status: int | None
    message: str | None
    retry_after: float | str | None
    metadata: dict[str, Any] | None
    seconds: float
    chunk_delay: float | None
    after_chunks: int


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour of the upstream.

    Kinds:

    - ``status``: answer HTTP ``status`` (default 500) with OpenRouter's error body
      ``{"error": {"code", "message"[, "metadata"]}}``, and ``Retry-After`` if given;
    - ``delay``: wait ``seconds`` before answering, and/or ``chunk_delay`` seconds before
      each chunk of a stream;
    - ``disconnect``: cut the connection after ``after_chunks`` chunks, without ``[DONE]``
      (a non-streaming call gets its headers, then no body);
    - ``stream_error``: after ``after_chunks`` chunks, send OpenRouter's mid-stream error
      event (``error: {code: status (default 502), message}``, ``finish_reason: "error"``)
      and end the stream without ``[DONE]``;
    - ``multiline``: send every JSON event over several ``data:`` lines;
    - ``hang``: send ``after_chunks`` chunks (or, not streaming, nothing), then wait until
      the client goes away.

    ``stream_error`` and ``multiline`` only match streaming calls.
    """

    kind: FaultKind
    model: str | None = None
    """Only calls for this model id (as requested); ``None`` matches every model."""
    stream: bool | None = None
    """Only streaming (``True``) or non-streaming (``False``) calls; ``None`` matches both."""
    sticky: bool = False
    """Apply to every matching call until cleared, instead of once."""
    status: int | None = None
    """HTTP status (``status``) or error code (``stream_error``)."""
    message: str | None = None
    """Error message; a default per status otherwise."""
    retry_after: float | str | None = None
    """Value of the ``Retry-After`` header of a ``status`` answer."""
    metadata: dict[str, Any] | None = None
    """``error.metadata`` of the error body or event."""
    seconds: float = 0.0
    """``delay``: seconds to wait before answering."""
    chunk_delay: float | None = None
    """``delay``: seconds to wait before each chunk, instead of the emulator's."""
    after_chunks: int = 0
    """``disconnect``, ``stream_error``, ``hang``: ``data:`` chunks sent first."""

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}, expected one of {sorted(_FAULT_KINDS)}"
            )
        if self.status is not None and not (
            isinstance(self.status, int) and 400 <= self.status <= 599
        ):
            raise ValueError(f"fault status must be an HTTP error status, not {self.status!r}")
        for name in ("seconds", "chunk_delay", "after_chunks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"fault {name} must be a non-negative number, not {value!r}")
        if self.kind in _STREAM_ONLY_KINDS:
            if self.stream is False:
                raise ValueError(f"a {self.kind!r} fault only applies to streaming calls")
            self.stream = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from its JSON form (the control API); raises ``ValueError`` if invalid."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault needs a 'kind'")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the control API lists it."""
        return asdict(self)

    def matches(self, model: str, stream: bool) -> bool:
        """Whether this fault applies to a chat call for ``model``."""
        return (self.model is None or self.model == model) and (
            self.stream is None or self.stream == stream
        )


# ---------------------------------------------------------------------------------- calls


@dataclass(slots=True, eq=False)
class CallRecord:
    """One request the emulator received (control API calls are not recorded)."""

    method: str
    path: str
    headers: dict[str, str]
    """Request headers, names lower-cased; repeated headers joined with ``", "``."""
    body: Any
    """The parsed JSON body; ``None`` when empty or not JSON."""
    time: float
    """When it arrived (``time.time()``)."""
    stream: bool = False
    model: str | None = None
    """The model asked for (``model``, else the first of ``models``)."""
    status: int | None = None
    """HTTP status answered; ``None`` if no answer was started."""
    fault: FaultKind | None = None
    """The kind of the fault applied, if any."""
    chunks_sent: int = 0
    """``data:`` chunks written, ``[DONE]`` excluded."""
    completed: bool = False
    """The whole answer was written (a stream up to its end)."""
    disconnected: bool = False
    """The client went away before the answer was complete."""
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @property
    def finished(self) -> bool:
        """The emulator is done with this call: its flags no longer change."""
        return self._done.is_set()

    def mark_finished(self) -> None:
        """Called by the emulator when it is done with this call."""
        self._done.set()

    def wait(self, timeout: float = 5.0) -> bool:
        """Block until :attr:`finished`; ``False`` on timeout."""
        return self._done.wait(timeout)

    async def wait_async(self) -> None:
        """Like :meth:`wait` without blocking the event loop; bound it with ``asyncio.timeout``."""
        # The flag is a threading.Event, set from the server's thread: poll it.
        while not self._done.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as ``GET /_emulator/calls`` lists it."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "time": self.time,
            "stream": self.stream,
            "model": self.model,
            "status": self.status,
            "fault": self.fault,
            "chunks_sent": self.chunks_sent,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "finished": self.finished,
        }


# ---------------------------------------------------------------------------------- state


class OpenRouterEmulator:
    """The emulator's state: catalog, scripted faults and the record of calls.

    Thread-safe: the server's event loop and the test's thread both use it.
    """

    def __init__(
        self,
        catalog: Iterable[ModelSpec] | None = None,
        *,
        stream_chunks: int = 4,
        chunk_delay: float = 0.0,
        processing_comment: bool = True,
        api_key: str | None = None,
        max_calls: int | None = 10_000,
        reply: Callable[[Mapping[str, Any]], str] | None = None,
        report_cost: bool = True,
    ) -> None:
        """Args:
        catalog: the models served; :data:`DEFAULT_CATALOG` if ``None``.
        stream_chunks: pieces a streamed answer (or tool arguments) is split into.
        chunk_delay: seconds before each chunk of every stream (slow upstream).
        processing_comment: start streams with ``: OPENROUTER PROCESSING``.
        api_key: if set, chat calls need ``Authorization: Bearer <api_key>`` (else 401).
        max_calls: calls kept in the record (oldest dropped); ``0`` keeps none.
        reply: makes the answer text from the request body instead of ``"Echo: ..."``.
        report_cost: put ``usage.cost`` in answers (OpenRouter does; most others do not).
        """
        models = tuple(DEFAULT_CATALOG if catalog is None else catalog)
        self._models = MappingProxyType({model.id: model for model in models})
        self.models_json = orjson.dumps({"data": [m.to_openrouter() for m in models]})
        """The body of ``GET /models``, built once."""
        self.stream_chunks = stream_chunks
        self.chunk_delay = chunk_delay
        self.processing_comment = processing_comment
        self.report_cost = report_cost
        self.models_status: int | None = None
        """When set, ``GET /models`` answers this HTTP error status (a catalog outage)."""
        self.api_key = api_key
        self.reply = reply
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._calls: deque[CallRecord] = deque(maxlen=max_calls)

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """The catalog by model id (read-only)."""
        return self._models

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD that a call to ``model`` costs, as ``usage.cost`` reports it."""
        return self._models[model].cost(prompt_tokens, completion_tokens)

    # faults

    def add_fault(self, fault: Fault | FaultKind, /, **options: Unpack[FaultOptions]) -> Fault:
        """Queue a fault, given whole or as its kind plus :class:`FaultOptions`."""
        if isinstance(fault, Fault):
            if options:
                raise TypeError("give either a Fault or a kind with options, not both")
        else:
            fault = Fault(fault, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def faults(self) -> list[Fault]:
        """The faults still queued, in order."""
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault, sticky ones included."""
        with self._lock:
            self._faults.clear()

    def take_fault(self, model: str, stream: bool) -> Fault | None:
        """The first fault matching a chat call, removed from the queue unless sticky."""
        if not self._faults:  # lock-free fast path: the common case in benchmarks
            return None
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(model, stream):
                    if not fault.sticky:
                        del self._faults[index]
                    return fault
        return None

    # calls

    def record(self, call: CallRecord) -> None:
        """Add a call to the record."""
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[CallRecord]:
        """The calls received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> int:
        """Forget the calls received so far; returns how many there were."""
        with self._lock:
            count = len(self._calls)
            self._calls.clear()
            return count

    def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[CallRecord]:
        """Block until at least ``count`` calls arrived and are finished."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls
            if len(calls) >= count and all(call.finished for call in calls):
                return calls
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(calls)} call(s) recorded, waited for {count}")
            time.sleep(0.005)

    async def wait_for_calls_async(self, count: int) -> list[CallRecord]:
        """Like :meth:`wait_for_calls` without blocking the event loop; bound it with
        ``asyncio.timeout``."""
        while True:
            calls = self.calls
            if len(calls) >= count and all(call.finished for call in calls):
                return calls
            await asyncio.sleep(0.005)

    def clear(self) -> None:
        """Forget calls and faults."""
        self.clear_calls()
        self.clear_faults()

    def app(self) -> EmulatorApp:
        """A new ASGI application serving this state."""
        return EmulatorApp(self)


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


# ----------------------------------------------------------------------------------- ASGI


def _paths(suffix: str) -> frozenset[str]:
    return frozenset(
        f"{base}{suffix}{slash}" for base in ("/api/v1", "/v1", "") for slash in ("", "/")
    )


_CHAT_PATHS: Final = _paths("/chat/completions")
_MODELS_PATHS: Final = _paths("/models")
_CONTROL_PREFIX: Final = "/_emulator/"


class _ClientGoneError(Exception):
    """The client disconnected while the request body was being read."""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send_json(
    send: Send, status: int, payload: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _Watch:
    """Notices the client going away (``http.disconnect``) or the server stopping.

    Only handlers that wait (delays, slow streams, hangs) pay for the watching task.
    """

    __slots__ = ("_app", "_task", "disconnected", "stopped")

    def __init__(self, app: EmulatorApp, receive: Receive) -> None:
        self._app = app
        self.disconnected = False
        self.stopped = asyncio.Event()
        if app.closing:
            self.stopped.set()
        app.watches.add(self)
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.stopped.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; ``True`` if the client left or the server stopped meanwhile."""
        if seconds <= 0 or self.stopped.is_set():
            return self.stopped.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopped.wait()
        return self.stopped.is_set()

    def close(self) -> None:
        self._task.cancel()
        self._app.watches.discard(self)


class EmulatorApp:
    """The ASGI application over an :class:`OpenRouterEmulator`; one per server."""

    def __init__(self, emulator: OpenRouterEmulator) -> None:
        self.emulator = emulator
        self.closing = False
        self.watches: set[_Watch] = set()

    def shutdown(self) -> None:
        """Wake every waiting handler so the server can stop; call on the server's loop."""
        self.closing = True
        for watch in list(self.watches):
            watch.stopped.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(_CONTROL_PREFIX):
            with contextlib.suppress(_ClientGoneError):
                await self._control(scope["method"], path, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        call = CallRecord(scope["method"], path, headers, None, time.time())
        self.emulator.record(call)
        try:
            if path in _CHAT_PATHS:
                await self._chat(call, receive, send)
            elif path in _MODELS_PATHS and call.method == "GET" and self.emulator.models_status:
                await self._fail(call, send, self.emulator.models_status, None)
            elif path in _MODELS_PATHS and call.method == "GET":
                call.status = 200
                await _send_json(send, 200, self.emulator.models_json)
                call.completed = True
            else:
                call.status = 404 if path not in _MODELS_PATHS else 405
                await _send_json(send, call.status, _error_body(call.status, None))
                call.completed = True
        except _ClientGoneError:
            call.disconnected = True
        finally:
            call.mark_finished()

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _fail(self, call: CallRecord, send: Send, status: int, message: str | None) -> None:
        call.status = status
        await _send_json(send, status, _error_body(status, message))
        call.completed = True

    async def _chat(self, call: CallRecord, receive: Receive, send: Send) -> None:
        emulator = self.emulator
        if call.method != "POST":
            await self._fail(call, send, 405, None)
            return
        raw = await _read_body(receive)
        if emulator.api_key is not None and (
            call.headers.get("authorization") != f"Bearer {emulator.api_key}"
        ):
            await self._fail(call, send, 401, None)
            return
        try:
            call.body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self._fail(call, send, 400, "Request body is not valid JSON")
            return
        try:
            model_id, stream = _validate(call.body)
        except _BadRequestError as exc:
            await self._fail(call, send, 400, str(exc))
            return
        call.model, call.stream = model_id, stream
        fault = emulator.take_fault(model_id, stream)
        if fault is not None:
            call.fault = fault.kind
            if fault.kind == "status":
                await self._status_fault(call, send, fault)
                return
        model = emulator.models.get(model_id)
        if model is None:
            await self._fail(call, send, 404, f"Model {model_id} does not exist")
            return
        answer = _answer(call.body, emulator.reply)
        if stream:
            await self._stream(call, receive, send, answer=answer, model=model, fault=fault)
        else:
            await self._complete(call, receive, send, answer=answer, model=model, fault=fault)

    async def _status_fault(self, call: CallRecord, send: Send, fault: Fault) -> None:
        call.status = fault.status or 500
        headers = []
        if fault.retry_after is not None:
            value = fault.retry_after
            text = (
                str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
            )
            headers.append((b"retry-after", text.encode()))
        body = _error_body(call.status, fault.message, fault.metadata)
        await _send_json(send, call.status, body, headers)
        call.completed = True

    async def _wait_out(self, call: CallRecord, watch: _Watch, send: Send, seconds: float) -> bool:
        """Wait before answering (``inf``: until stopped); ``False`` if the call is over."""
        if seconds == float("inf"):
            await watch.stopped.wait()
        elif not await watch.sleep(seconds):
            return True
        if watch.disconnected:
            call.disconnected = True
        else:  # the server is stopping: answer rather than leave uvicorn to send its 500
            await self._fail(call, send, 503, "The emulator is shutting down")
        return False

    async def _complete(
        self,
        call: CallRecord,
        receive: Receive,
        send: Send,
        *,
        answer: _Answer,
        model: ModelSpec,
        fault: Fault | None,
    ) -> None:
        wait = 0.0
        if fault is not None and fault.kind == "delay":
            wait = fault.seconds
        elif fault is not None and fault.kind == "hang":
            wait = float("inf")
        if wait:
            watch = _Watch(self, receive)
            try:
                if not await self._wait_out(call, watch, send, wait):
                    return
            finally:
                watch.close()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.content,
            "refusal": None,
            "reasoning": None,
        }
        if answer.tool_call is not None:
            call_id, name, arguments = answer.tool_call
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ]
        created = int(time.time())
        generation = f"gen-{created}-{os.urandom(10).hex()}"
        payload = orjson.dumps(
            {
                "id": generation,
                "provider": model.provider,
                "model": model.id,
                "object": "chat.completion",
                "created": created,
                "choices": [
                    {
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                        "native_finish_reason": answer.finish_reason,
                        "index": 0,
                        "message": message,
                    }
                ],
                "system_fingerprint": None,
                "usage": _usage(answer, model, report_cost=self.emulator.report_cost),
            }
        )
        call.status = 200
        if fault is not None and fault.kind == "disconnect":
            # Promise a body, send none: uvicorn closes the connection when we return.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode())],
                }
            )
            return
        await _send_json(send, 200, payload, [(b"x-generation-id", generation.encode())])
        call.completed = True

    async def _stream(
        self,
        call: CallRecord,
        receive: Receive,
        send: Send,
        *,
        answer: _Answer,
        model: ModelSpec,
        fault: Fault | None,
    ) -> None:
        emulator = self.emulator
        created = int(time.time())
        generation = f"gen-{created}-{os.urandom(10).hex()}"
        prefix = (
            orjson.dumps(
                {
                    "id": generation,
                    "provider": model.provider,
                    "model": model.id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "system_fingerprint": None,
                }
            )[:-1]
            + b',"choices":'
        )
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = _usage(answer, model, report_cost=emulator.report_cost) if include_usage else None
        payloads = _stream_payloads(answer, prefix, emulator.stream_chunks, usage)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind in ("disconnect", "stream_error", "hang"):
            payloads = payloads[: fault.after_chunks]
        if fault is not None and kind == "stream_error":
            error = orjson.loads(_error_body(fault.status or 502, fault.message, fault.metadata))
            error_choice = b'[{"index":0,"delta":{"content":""},"finish_reason":"error"}]'
            payloads.append(
                prefix + error_choice + b',"error":' + orjson.dumps(error["error"]) + b"}"
            )
        frame = _frame_multiline if kind == "multiline" else _frame
        frames = [frame(payload) for payload in payloads]
        ending = _DONE if kind in (None, "delay", "multiline") else b""
        head = _PROCESSING if emulator.processing_comment else b""
        chunk_delay = emulator.chunk_delay
        wait = 0.0
        if fault is not None and kind == "delay":
            wait = fault.seconds
            chunk_delay = fault.chunk_delay if fault.chunk_delay is not None else chunk_delay
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, (b"x-generation-id", generation.encode())],
        }

        if not wait and not chunk_delay and kind not in ("disconnect", "hang"):
            # Fast path, what benchmarks hit: one write, no watching task.
            call.status = 200
            await send(start)
            await send({"type": "http.response.body", "body": b"".join([head, *frames, ending])})
            call.chunks_sent, call.completed = len(frames), True
            return

        watch = _Watch(self, receive)
        try:
            if wait and not await self._wait_out(call, watch, send, wait):
                return
            call.status = 200
            await send(start)
            if head:
                await send({"type": "http.response.body", "body": head, "more_body": True})
            for data in frames:
                if await watch.sleep(chunk_delay):
                    break
                await send({"type": "http.response.body", "body": data, "more_body": True})
                call.chunks_sent += 1
            else:
                if kind == "hang":
                    await watch.stopped.wait()
                elif kind != "disconnect":
                    await send({"type": "http.response.body", "body": ending})
                    call.completed = True
            # Leaving without a final body makes uvicorn close the connection abruptly.
            call.disconnected = watch.disconnected and not call.completed
        finally:
            watch.close()

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        """``/_emulator/calls`` and ``/_emulator/faults``."""
        emulator = self.emulator
        resource = path[len(_CONTROL_PREFIX) :].rstrip("/")
        body = await _read_body(receive)
        if (resource, method) == ("calls", "GET"):
            calls = [call.to_dict() for call in emulator.calls]
            await _send_json(send, 200, orjson.dumps({"data": calls}))
        elif (resource, method) == ("calls", "DELETE"):
            await _send_json(send, 200, orjson.dumps({"cleared": emulator.clear_calls()}))
        elif (resource, method) == ("faults", "GET"):
            faults = [fault.to_dict() for fault in emulator.faults]
            await _send_json(send, 200, orjson.dumps({"data": faults}))
        elif (resource, method) == ("faults", "POST"):
            # One fault object, a list of them, or {"faults": [...]}.
            try:
                spec = orjson.loads(body)
                specs = spec if isinstance(spec, list) else spec.get("faults", [spec])
                parsed = [Fault.from_dict(item) for item in specs]  # all valid, or none added
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                await _send_json(send, 400, _error_body(400, f"Invalid fault: {exc}"))
                return
            added = [emulator.add_fault(fault) for fault in parsed]
            await _send_json(send, 201, orjson.dumps({"data": [f.to_dict() for f in added]}))
        elif (resource, method) == ("faults", "DELETE"):
            emulator.clear_faults()
            await _send_json(send, 200, orjson.dumps({"cleared": True}))
        else:
            await _send_json(send, 404, _error_body(404, None))


# --------------------------------------------------------------------------------- server


class _QuietAbort(logging.Filter):
    """Drops uvicorn's error log for the connections the emulator cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietAbort) for f in logger.filters):
        logger.addFilter(_QuietAbort())


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _config(app: EmulatorApp, host: str, *, own_logging: bool = False) -> uvicorn.Config:
    """uvicorn's settings; ``own_logging`` lets uvicorn configure logging (standalone only)."""
    return uvicorn.Config(
        app,
        host=host,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        # In tests, leave logging to pytest rather than let uvicorn reconfigure it.
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
    )


class EmulatorServer:
    """Serves an :class:`OpenRouterEmulator` with uvicorn on a background thread.

    Use it as a context manager::

        with EmulatorServer() as upstream:
            client = OpenAI(base_url=upstream.base_url, api_key="test")
            upstream.add_fault("status", status=429, retry_after=1)
    """

    def __init__(
        self,
        emulator: OpenRouterEmulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """``port`` 0 picks a free port; ``emulator`` defaults to a new one."""
        self.emulator = emulator if emulator is not None else OpenRouterEmulator()
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._app: EmulatorApp | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenRouter-style base URL, ``http://127.0.0.1:PORT/api/v1``."""
        return f"{self.origin}/api/v1"

    @property
    def calls(self) -> list[CallRecord]:
        """The calls received so far."""
        return self.emulator.calls

    def add_fault(self, fault: Fault | FaultKind, /, **options: Unpack[FaultOptions]) -> Fault:
        """See :meth:`OpenRouterEmulator.add_fault`."""
        return self.emulator.add_fault(fault, **options)

    def clear(self) -> None:
        """Forget calls and faults."""
        self.emulator.clear()

    def start(self, timeout: float = 5.0) -> Self:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        _quiet_uvicorn()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._app = self.emulator.app()
        self._server = server = uvicorn.Server(_config(self._app, self.host))
        self._thread = threading.Thread(
            target=self._run,
            args=(server, sock),
            name=f"openrouter-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator server did not start on port {self.port}")
            time.sleep(0.002)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(serve(), loop_factory=server.config.get_loop_factory())
        finally:
            sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: wakes hanging handlers, so it takes well under a second."""
        thread, server, app, loop = self._thread, self._server, self._app, self._loop
        if thread is None or server is None or app is None:
            return
        server.should_exit = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(app.shutdown)
        thread.join(timeout)
        self._thread = self._server = self._app = self._loop = None
        if thread.is_alive():
            raise RuntimeError("the emulator server did not stop in time")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_emulator(**options: Any) -> Iterator[EmulatorServer]:
    """An :class:`EmulatorServer` over a new emulator built with ``options``."""
    with EmulatorServer(OpenRouterEmulator(**options)) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.openrouter_emulator --port N [--chunk-delay S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds before chunks")
    parser.add_argument("--chunks", type=int, default=4, help="pieces per streamed answer")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--max-calls", type=int, default=10_000, help="calls kept on record")
    parser.add_argument("--no-processing-comment", action="store_true")
    args = parser.parse_args(argv)
    emulator = OpenRouterEmulator(
        stream_chunks=args.chunks,
        chunk_delay=args.chunk_delay,
        processing_comment=not args.no_processing_comment,
        api_key=args.api_key,
        max_calls=args.max_calls,
    )
    _quiet_uvicorn()
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(emulator.app(), args.host, own_logging=True))
    print(f"OpenRouter emulator on http://{args.host}:{port}/api/v1", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
