"""The exact-match response cache: deterministic answers kept in Redis, served by the edge.

A request is *cacheable* when its answer is meant to be reproducible (``temperature`` 0
or a ``seed``), it asks for one choice (``n`` absent or 1), the cache is on
(``EDGE_CACHE_TTL`` > 0) and the client did not send ``Cache-Control: no-cache`` or
``no-store``. Its key is the SHA-256 of a canonical JSON (sorted keys) of every field the
client set that can change the answer (unknown fields included), and of the scope: the
API key's id (``EDGE_CACHE_SCOPE=key``, the default) or nothing (``shared``). Left out:
``stream`` and ``stream_options`` (a streamed and a non-streamed request share one entry,
each served in its own form), ``user``, ``metadata`` and ``store`` (they change who is
billed or what is kept, not the answer), and top-level fields set to ``null``.

One Redis string per entry (:class:`CachedAnswer` JSON) with the TTL: either the whole
non-streamed completion or the chunks of a streamed one as the router sent them (without
the usage-only chunk), plus the served model, the usage and the cost. A hit is answered
without NATS: a completion as stored with ``created`` set to now (``id`` kept); a stream
replayed chunk by chunk (or synthesised from a stored completion); either form put
together from the other when needed. A hit publishes its own
:class:`~switchboard.common.events.UsageRecorded` (``cache_hit``, cost 0, ``cost_saved_usd``)
to JetStream from the edge (:mod:`switchboard.edge.usage_events`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.events import CostSource, UsageRecorded
from switchboard.common.logs import get_logger
from switchboard.common.wire import (
    CompletionFinished,
    KeyIdentity,
    TokenUsage,
    request_usage_fields,
)
from switchboard.edge.settings import EdgeSettings
from switchboard.edge.usage_events import UsageEvents

__all__ = [
    "CACHE_HEADER",
    "CacheStatus",
    "CachedAnswer",
    "ResponseCache",
    "cache_key",
    "completion_from_chunks",
    "is_cacheable",
    "replay_chunks",
]

log = get_logger(__name__)

CACHE_HEADER = "x-switchboard-cache"
"""``hit``, ``miss`` (cacheable, not found: stored once answered) or ``bypass``."""
CacheStatus = Literal["hit", "miss", "bypass"]

_KEY_PREFIX = "switchboard:cache:v1:"
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def bypassed_by(headers: Mapping[str, str]) -> bool:
    """True when the request's ``Cache-Control`` says ``no-cache`` or ``no-store``."""
    value = headers.get("cache-control") or ""
    tokens = {part.strip().lower() for part in value.split(",")}
    return bool(tokens & {"no-cache", "no-store"})


def is_cacheable(chat: ChatCompletionRequest) -> bool:
    """Deterministic and one choice: ``temperature`` 0 or a ``seed``, ``n`` absent or 1."""
    deterministic = chat.temperature == 0 or chat.seed is not None
    return deterministic and (chat.n is None or chat.n == 1)


def cache_key(chat: ChatCompletionRequest, *, key_id: str, shared: bool) -> str:
    """The Redis key of the answer to ``chat`` (see the module's docstring)."""
    fields = chat.model_dump(mode="json", exclude_unset=True, by_alias=True)
    canonical = {k: v for k, v in fields.items() if k not in _NOT_IN_KEY and v is not None}
    scope = "*" if shared else "key:" + key_id
    digest = hashlib.sha256(
        orjson.dumps({"scope": scope, "request": canonical}, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    return _KEY_PREFIX + digest


class CachedAnswer(BaseModel):
    """What one cache entry holds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["completion", "chunks"]
    body: str = ""
    """The ``chat.completion`` JSON (``kind`` ``completion``)."""
    chunks: list[str] = []
    """The ``chat.completion.chunk`` JSON objects (``kind`` ``chunks``), no usage-only one."""
    served_model: str
    provider: str
    upstream_provider: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    cost_source: CostSource = "unknown"
    stored_at: float = 0.0

    @classmethod
    def of(
        cls,
        finished: CompletionFinished,
        *,
        body: bytes | None = None,
        chunks: list[bytes] | None = None,
    ) -> CachedAnswer:
        """An entry for a successful answer: a completion ``body`` or streamed ``chunks``."""
        common: dict[str, Any] = {
            "served_model": finished.served_model,
            "provider": finished.provider,
            "upstream_provider": finished.upstream_provider,
            "usage": finished.usage,
            "cost_usd": finished.cost_usd,
            "cost_source": finished.cost_source,
            "stored_at": time.time(),
        }
        if body is not None:
            return cls(kind="completion", body=body.decode(), **common)
        kept = [chunk.decode() for chunk in chunks or () if not _usage_only(chunk)]
        return cls(kind="chunks", chunks=kept, **common)

    def completion(self) -> bytes:
        """The non-streamed answer, ``created`` set to now."""
        data = orjson.loads(self.body) if self.kind == "completion" else self._assembled()
        data["created"] = int(time.time())
        return orjson.dumps(data)

    def _assembled(self) -> dict[str, Any]:
        data = completion_from_chunks([orjson.loads(chunk) for chunk in self.chunks])
        if self.usage is not None:
            data["usage"] = _usage_json(self.usage)
        return data

    def sse(self, *, include_usage: bool) -> Iterator[bytes]:
        """The streamed answer as SSE events, ``[DONE]`` included."""
        if self.kind == "chunks":
            chunks = [orjson.loads(chunk) for chunk in self.chunks]
        else:
            chunks = replay_chunks(orjson.loads(self.body))
        if chunks and include_usage and self.usage is not None:
            first = chunks[0]
            chunks.append(
                {
                    "id": first.get("id"),
                    "object": "chat.completion.chunk",
                    "created": first.get("created"),
                    "model": first.get("model"),
                    "choices": [],
                    "usage": _usage_json(self.usage),
                }
            )
        created = int(time.time())
        for chunk in chunks:
            chunk["created"] = created
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _usage_json(usage: TokenUsage) -> dict[str, Any]:
    data: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        data["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        data["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return data


def _usage_only(chunk: bytes) -> bool:
    try:
        data = orjson.loads(chunk)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and not data.get("choices")


def replay_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI stream chunks that say what ``completion`` says: per choice a role chunk, the
    content (or refusal), the tool calls, then a chunk with the finish reason."""
    base: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    chunks: list[dict[str, Any]] = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append(chunk(index, {"role": "assistant", "content": ""}))
        if message.get("content"):
            chunks.append(chunk(index, {"content": message["content"]}))
        if message.get("refusal"):
            chunks.append(chunk(index, {"refusal": message["refusal"]}))
        calls = message.get("tool_calls") or []
        if calls:
            deltas = [
                {
                    "index": position,
                    "id": call.get("id"),
                    "type": call.get("type", "function"),
                    "function": call.get("function") or {},
                }
                for position, call in enumerate(calls)
            ]
            chunks.append(chunk(index, {"tool_calls": deltas}))
        chunks.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    return chunks


def completion_from_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` that a list of stream chunks adds up to."""
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for part in chunk.get("choices") or []:
            index = part.get("index", 0)
            choice = choices.setdefault(
                index,
                {"index": index, "message": {"role": "assistant", "content": None}, "calls": {}},
            )
            delta = part.get("delta") or {}
            message = choice["message"]
            for field in ("content", "refusal"):
                if delta.get(field):
                    message[field] = (message.get(field) or "") + delta[field]
            for call in delta.get("tool_calls") or []:
                slot = choice["calls"].setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    result = []
    for index in sorted(choices):
        choice = choices[index]
        calls = choice.pop("calls")
        if calls:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice.setdefault("finish_reason", "stop")
        choice["logprobs"] = None
        result.append(choice)
    data: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": result,
    }
    if first.get("system_fingerprint"):
        data["system_fingerprint"] = first["system_fingerprint"]
    return data


class ResponseCache:
    """Look-ups, stores and hit events (published in the background by
    :class:`~switchboard.edge.usage_events.UsageEvents`)."""

    def __init__(self, settings: EdgeSettings, redis: Redis, events: UsageEvents) -> None:
        self._ttl = settings.edge_cache_ttl
        self._shared = settings.edge_cache_scope == "shared"
        self._redis = redis
        self._events = events

    @property
    def enabled(self) -> bool:
        """False when ``EDGE_CACHE_TTL`` is 0."""
        return self._ttl > 0

    def key_for(
        self, chat: ChatCompletionRequest, headers: Mapping[str, str], key_id: str
    ) -> str | None:
        """The entry's key, or ``None`` when the request bypasses the cache."""
        if not self.enabled or not is_cacheable(chat) or bypassed_by(headers):
            return None
        return cache_key(chat, key_id=key_id, shared=self._shared)

    async def get(self, key: str) -> CachedAnswer | None:
        """The entry, or ``None`` (also when Redis fails or the entry is unreadable)."""
        try:
            raw = await self._redis.get(key)
            return None if raw is None else CachedAnswer.model_validate_json(raw)
        except (RedisError, OSError, ValueError) as exc:
            log.warning("cache.read_failed", error=str(exc))
            return None

    async def store(self, key: str, answer: CachedAnswer) -> None:
        """Keep ``answer`` for ``EDGE_CACHE_TTL`` seconds.

        Awaited before the answer (or ``[DONE]``) goes out, so the client's next identical
        request finds it; a Redis failure is logged and the answer still served.
        """
        try:
            await self._redis.set(key, answer.model_dump_json(), ex=max(int(self._ttl), 1))
        except (RedisError, OSError) as exc:
            log.warning("cache.write_failed", error=str(exc))

    def record_hit(
        self,
        *,
        request_id: str,
        identity: KeyIdentity,
        chat: ChatCompletionRequest,
        answer: CachedAnswer,
        received_at: float,
    ) -> None:
        """Publish the hit's usage event (cost 0, the cost saved) in the background."""
        usage = answer.usage or TokenUsage()
        now = time.time()
        event = UsageRecorded(
            **request_usage_fields(request_id, identity, chat),
            served_model=answer.served_model,
            provider=answer.provider,
            upstream_provider=answer.upstream_provider,
            status="ok",
            http_status=200,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=0.0,
            cost_source=answer.cost_source,
            latency_ms=max(int((now - received_at) * 1000), 0),
            received_at=received_at,
            started_at=received_at,
            finished_at=now,
            cache_hit=True,
            cost_saved_usd=answer.cost_usd,
        )
        self._events.publish(event)
