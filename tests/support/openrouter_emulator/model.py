"""The emulator's state: catalog, scripted faults and the record of calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, Unpack, get_args

import orjson

if TYPE_CHECKING:
    from tests.support.openrouter_emulator.asgi import EmulatorApp

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
        from tests.support.openrouter_emulator.asgi import EmulatorApp

        return EmulatorApp(self)
