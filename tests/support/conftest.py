"""Fixtures of the emulator's tests: one server per module, a clean emulator per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.support.openai_schema import validator
from tests.support.openrouter_emulator import EmulatorServer


@pytest.fixture(scope="module")
def response_schema() -> Draft202012Validator:
    """OpenAI's ``CreateChatCompletionResponse``."""
    return validator("CreateChatCompletionResponse")


@pytest.fixture(scope="module")
def chunk_schema() -> Draft202012Validator:
    """OpenAI's ``CreateChatCompletionStreamResponse``."""
    return validator("CreateChatCompletionStreamResponse")


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    """One emulator server for the module: starting one per test would be wasted time."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def upstream(shared_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The shared server with no calls, no faults and default settings."""
    emulator = shared_server.emulator
    shared_server.clear()
    yield shared_server
    shared_server.clear()
    emulator.chunk_delay, emulator.stream_chunks, emulator.processing_comment = 0.0, 4, True


@pytest.fixture
async def client(upstream: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose base URL is the emulator's ``/api/v1``."""
    async with httpx.AsyncClient(base_url=upstream.base_url, timeout=5) as http:
        yield http
