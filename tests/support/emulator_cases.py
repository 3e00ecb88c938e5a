"""Requests and readers shared by the emulator's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def chat(content: str = "hello", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A chat request body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def stream_events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[ServerSentEvent]:
    """Every SSE event of a streamed chat call."""
    async with aconnect_sse(client, "POST", "/chat/completions", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream"
        return [event async for event in source.aiter_sse()]


def chunks_of(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, ``[DONE]`` left out."""
    return [json.loads(event.data) for event in events if event.data != "[DONE]"]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
