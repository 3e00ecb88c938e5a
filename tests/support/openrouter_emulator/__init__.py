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

from tests.support.openrouter_emulator.model import (
    DEFAULT_CATALOG,
    CallRecord,
    Fault,
    FaultKind,
    FaultOptions,
    ModelSpec,
    OpenRouterEmulator,
)
from tests.support.openrouter_emulator.server import EmulatorServer, main, running_emulator

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
