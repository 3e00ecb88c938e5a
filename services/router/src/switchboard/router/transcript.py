"""Prompt and answer text for usage events: only in privacy mode ``full``, and capped.

The effective mode of a request is its key's own ``privacy_mode`` when set, else
``ROUTER_USAGE_PRIVACY_MODE``. Only in ``full`` does the router keep anything: the
request's ``messages`` as sent and the answer as the client got it, one
``{"role": "assistant", "content", "tool_calls"?}`` per choice. A stream is put together
from the parsed chunks it already has (the bytes sent on are never re-encoded): content
concatenated per choice index, tool calls merged per tool-call index (``id``, ``type`` and
``function.name`` from the first delta that has them, ``arguments`` concatenated). In
``off`` and ``metadata`` nothing is kept and nothing is done per chunk.

:func:`cap_text` keeps the text within ``ROUTER_USAGE_MAX_TEXT_BYTES`` serialized, far below
JetStream's 1 MiB message limit: strings are shortened in proportion (each ending in
:data:`TRUNCATION_MARK`; roles, types, ids and names are kept), then, if the structure
alone is too big, the oldest messages are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.events import PrivacyMode
from switchboard.common.wire import KeyIdentity

__all__ = [
    "TRUNCATION_MARK",
    "OutputAssembler",
    "TextPolicy",
    "cap_text",
    "input_messages",
]

TRUNCATION_MARK: Final = "…[truncated]"
"""What a shortened string ends with."""
_MARK_LENGTH: Final = len(TRUNCATION_MARK)
_KEPT_WHOLE: Final = frozenset({"role", "type", "id", "tool_call_id", "name"})
"""Keys whose string values are structure, never shortened."""
_CUT_ROUNDS: Final = 8


@dataclass(frozen=True, slots=True)
class TextPolicy:
    """When usage events carry text, and how much (from the router's settings)."""

    mode: PrivacyMode = "metadata"
    """``ROUTER_USAGE_PRIVACY_MODE``: the mode of keys that name none."""
    max_bytes: int = 262_144
    """``ROUTER_USAGE_MAX_TEXT_BYTES``."""

    def captures(self, key: KeyIdentity) -> bool:
        """Whether requests of ``key`` have their text in usage events (mode ``full``)."""
        return (key.privacy_mode or self.mode) == "full"


def input_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's ``messages`` as the client sent them (JSON, unset fields left out)."""
    return [
        message.model_dump(mode="json", exclude_unset=True, by_alias=True)
        for message in request.messages
    ]


# ----------------------------------------------------------------------------- the answer


def _index(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def add(self, delta: dict[str, Any]) -> None:
        if self.id is None and isinstance(delta.get("id"), str) and delta["id"]:
            self.id = delta["id"]
        if self.type is None and isinstance(delta.get("type"), str) and delta["type"]:
            self.type = delta["type"]
        function = delta.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if self.name is None and isinstance(name, str) and name:
                self.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                self.arguments.append(arguments)

    def render(self) -> dict[str, Any]:
        call: dict[str, Any] = {} if self.id is None else {"id": self.id}
        call["type"] = self.type or "function"
        call["function"] = {"name": self.name or "", "arguments": "".join(self.arguments)}
        return call


@dataclass(slots=True)
class _Choice:
    content: list[str] | None = None
    """Streamed content pieces, ``None`` until one arrives."""
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    whole: dict[str, Any] | None = None
    """The choice of a completion that was not streamed, already whole."""

    def add_delta(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if isinstance(content, str):
            if self.content is None:
                self.content = []
            self.content.append(content)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call(call).add(call)

    def _tool_call(self, delta: dict[str, Any]) -> _ToolCall:
        last = max(self.tool_calls, default=-1)
        # Without an index, a delta with a new id starts a call; else it continues the last.
        starts = last < 0 or (
            isinstance(delta.get("id"), str) and delta["id"] != self.tool_calls[last].id
        )
        index = _index(delta.get("index"), last + 1 if starts else last)
        return self.tool_calls.setdefault(index, _ToolCall())

    def render(self) -> dict[str, Any]:
        if self.whole is not None:
            return self.whole
        choice: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.content is None else "".join(self.content),
        }
        if self.tool_calls:
            choice["tool_calls"] = [self.tool_calls[i].render() for i in sorted(self.tool_calls)]
        return choice


class OutputAssembler:
    """The answer, put together from the completion or the chunks sent to the client."""

    __slots__ = ("_choices",)

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}

    def add(self, data: dict[str, Any], *, streamed: bool) -> None:
        """Take in one chunk (``streamed``) or a whole completion, as parsed."""
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            target = self._choices.setdefault(_index(choice.get("index"), position), _Choice())
            if streamed:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    target.add_delta(delta)
                continue
            message = choice.get("message")
            message = message if isinstance(message, dict) else {}
            whole: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
            if message.get("tool_calls"):
                whole["tool_calls"] = message["tool_calls"]
            target.whole = whole

    def choices(self) -> list[dict[str, Any]] | None:
        """One ``{"role": "assistant", "content", "tool_calls"?}`` per choice, by index;
        ``None`` when nothing was answered."""
        if not self._choices:
            return None
        return [self._choices[i].render() for i in sorted(self._choices)]


# --------------------------------------------------------------------------------- the cap


def _size(value: object) -> int:
    return len(orjson.dumps(value))


def _text_size(value: object, key: str | None = None) -> int:
    """Serialized bytes of the strings :func:`_cut` may shorten (without their quotes)."""
    if isinstance(value, str):
        return 0 if key in _KEPT_WHOLE else _size(value) - 2
    if isinstance(value, dict):
        return sum(_text_size(item, name) for name, item in value.items())
    if isinstance(value, list):
        return sum(_text_size(item, key) for item in value)
    return 0


def _cut(value: Any, ratio: float, key: str | None = None) -> Any:
    """``value`` with every shortenable string cut to ``ratio`` of its length."""
    if isinstance(value, str):
        if key in _KEPT_WHOLE:
            return value
        keep = int(len(value) * ratio)
        return value if keep + _MARK_LENGTH >= len(value) else value[:keep] + TRUNCATION_MARK
    if isinstance(value, dict):
        return {name: _cut(item, ratio, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_cut(item, ratio, key) for item in value]
    return value


def _drop_oldest(
    messages: list[dict[str, Any]], choices: list[dict[str, Any]] | None, limit: int
) -> list[dict[str, Any]]:
    """The newest ``messages`` that fit within ``limit`` beside ``choices``."""
    size = _size([messages, choices])
    dropped = 0
    while size > limit and dropped < len(messages):
        size -= _size(messages[dropped]) + (1 if dropped < len(messages) - 1 else 0)
        dropped += 1
    return messages[dropped:]


def cap_text(
    messages: list[dict[str, Any]] | None,
    choices: list[dict[str, Any]] | None,
    limit: int,
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, bool]:
    """``messages`` and ``choices`` within ``limit`` bytes serialized together, and whether
    anything was cut; both ``None`` if even the structure cannot fit."""
    size = _size([messages, choices])
    if size <= limit:
        return messages, choices, False
    text = _text_size([messages, choices])
    budget = limit - (size - text)
    if budget > 0:
        ratio = budget / text
        for _ in range(_CUT_ROUNDS):
            cut_messages, cut_choices = _cut(messages, ratio), _cut(choices, ratio)
            size = _size([cut_messages, cut_choices])
            if size <= limit:
                return cut_messages, cut_choices, True
            ratio *= 0.9 * limit / size
        # Too many strings too short to cut: keep them cut as far as they go.
        messages, choices = cut_messages, cut_choices
    if messages:
        messages = _drop_oldest(messages, choices, limit)
    if _size([messages, choices]) > limit:
        return None, None, True
    return messages, choices, True
