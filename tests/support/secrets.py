"""The search for secrets in everything a stack answered and logged.

API keys, the admin token, the upstream's key, passwords: none may appear in a response
(except the one that mints a key, which is where its secret is shown, once) or in any
log line. A secret is searched whole and by its last 20 characters, so that a key logged
without its prefix, or cut, is found too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import orjson

from tests.support.rawhttp import RawResponse

__all__ = ["assert_no_secrets", "findings"]

_TAIL = 20


def _needles(secrets: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for secret in secrets:
        if len(secret) < 12:
            raise ValueError(f"too short to search for: {len(secret)} characters")
        found |= {secret, secret[-_TAIL:]}
    return found


def _minted(response: httpx.Response) -> bool:
    """The answer of a key creation or rotation, which shows the new secret by design."""
    request = response.request
    path = request.url.path
    return (
        request.method == "POST"
        and response.status_code in (200, 201)
        and (path.rstrip("/") == "/admin/keys" or path.endswith("/rotate"))
    )


def _text_of(response: httpx.Response) -> str:
    body = response.content
    if _minted(response):
        document: Any = orjson.loads(body)
        document.pop("key", None)
        body = orjson.dumps(document)
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
    return headers + "\n" + body.decode("utf-8", errors="replace")


def _raw_text_of(response: RawResponse) -> str:
    return (response.raw_head + b"\n" + response.body).decode("utf-8", errors="replace")


def findings(
    secrets: Iterable[str],
    responses: Iterable[httpx.Response | RawResponse],
    logs: Iterable[tuple[str, str]],
) -> list[str]:
    """Where any secret shows: ``"<where>: <secret's last 6 characters>"`` for each."""
    needles = _needles(secrets)
    found: list[str] = []
    for index, response in enumerate(responses):
        text = _raw_text_of(response) if isinstance(response, RawResponse) else _text_of(response)
        found += [f"response {index}: …{n[-6:]}" for n in needles if n in text]
    for name, text in logs:
        found += [f"log of {name}: …{n[-6:]}" for n in needles if n in text]
    return found


def assert_no_secrets(stack: Any, *, extra: Iterable[str] = ()) -> None:
    """Search ``stack.responses`` and every log of ``stack.processes()`` for
    ``stack.secrets`` and ``extra``."""
    logs = [(process.name, process.log()) for process in stack.processes()]
    assert logs and all(text for _, text in logs), "every service wrote a log"
    assert stack.responses, "responses were collected"
    responses = [*stack.responses, *stack.raw_responses]
    found = findings([*stack.secrets, *extra], responses, logs)
    assert not found, found
