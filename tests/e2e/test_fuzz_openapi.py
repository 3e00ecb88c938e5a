"""Property-based fuzzing of every operation of the edge's own OpenAPI document
(``/openapi/openapi.json``) with schemathesis: with valid credentials (an API key on
``/v1``, the admin token on ``/admin`` and, for ``/v1/usage``, both), without any, and
with data that breaks the schema. Whatever comes: no 5xx, every 4xx is OpenAI's error
body (checked against OpenAI's own schema), and responses conform to the document.

Deterministic: Hypothesis derandomised, no example database, a bounded number of
examples per operation and variant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from switchboard.common.chat import ChatCompletionRequest
from tests.support.hostile import ADMIN_TOKEN, MODEL, HostileStack, hostile_stack
from tests.support.openai_schema import validate

pytestmark = pytest.mark.e2e

OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/usage"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/live"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/{key_id}"),
    ("PATCH", "/admin/keys/{key_id}"),
    ("POST", "/admin/keys/{key_id}/revoke"),
    ("POST", "/admin/keys/{key_id}/rotate"),
]
"""Every operation the edge documents; a new one fails the completeness test until added."""

WITHOUT_INPUT = {
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/live"),
}
"""Operations with no parameter and no body: nothing to make invalid."""
EXAMPLES = {"authorized": 50, "anonymous": 15, "negative": 25}
"""Examples per operation and variant (Hypothesis ``max_examples``; fewer when an
operation has fewer distinct inputs)."""
CASES = [
    (method, path, variant)
    for method, path in OPERATIONS
    for variant in EXAMPLES
    if not (variant == "negative" and (method, path) in WITHOUT_INPUT)
]


@dataclass
class Target:
    """The stack under fuzzing and what the requests carry."""

    stack: HostileStack
    schema: Any
    api_key: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The stack (with metering, so that ``/v1/usage`` answers) and its loaded schema."""
    with hostile_stack(tmp_path_factory.mktemp("fuzz"), metering=True) as stack:
        served = stack.http.get("/openapi/openapi.json")
        assert served.status_code == 200
        schema = schemathesis.openapi.from_dict(_completed(served.json()))
        yield Target(stack, schema, stack.create_key(name="fuzz")["key"])


def _completed(document: dict[str, Any]) -> dict[str, Any]:
    """The served document, plus what it leaves out and the fuzzer needs.

    ``POST /v1/chat/completions`` reads its body itself, so Litestar documents no request
    body for it: the edge's own request model is added, unless the document has one by
    now.
    """
    document = copy.deepcopy(document)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    if "requestBody" not in chat:
        body = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        definitions = body.pop("$defs", {})
        # Served models only: random names end at the router's 404, before anything else
        # (unknown names are the negative variant's and the hostile tests' business).
        body["properties"]["model"] = {"enum": [MODEL, "anthropic/claude-3.5-haiku"]}
        document["components"]["schemas"].update(definitions)
        chat["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return document


def test_every_operation_is_fuzzed(target: Target) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in target.schema.raw_schema["paths"].items()
        for method in operations
    }
    assert documented == set(OPERATIONS)


def _headers(target: Target, path: str, variant: str, *, admin: bool) -> dict[str, str]:
    if variant == "anonymous" or path.startswith("/health"):
        return {}
    token = ADMIN_TOKEN if admin or path.startswith("/admin") else target.api_key
    return {"authorization": f"Bearer {token}"}


def _content_type(response: Any) -> str:
    """schemathesis keeps every header as a list of values."""
    values = response.headers.get("content-type") or [""]
    return str(values[0])


def _openai_checks(response: Any, path: str) -> None:
    """Our own: OpenAI's error body on every 4xx, OpenAI's shapes on the chat's 200."""
    status = response.status_code
    if 400 <= status < 500:
        body = response.json()
        validate("error", body)
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    elif status == 200 and path == "/v1/chat/completions":
        if _content_type(response).startswith("text/event-stream"):
            events = [b[6:] for b in response.text.split("\n\n") if b.startswith("data: ")]
            assert events[-1] == "[DONE]"
            for event in events[:-1]:
                validate("chunk", httpx.Response(200, content=event).json())
        else:
            validate("response", response.json())


def _fuzz(target: Target, method: str, path: str, variant: str) -> int:
    operation = target.schema[path][method]
    mode = (
        schemathesis.GenerationMode.NEGATIVE
        if variant == "negative"
        else schemathesis.GenerationMode.POSITIVE
    )
    strategy = operation.as_strategy(generation_mode=mode)
    if "{key_id}" in path and variant != "anonymous":
        victim = target.stack.create_key(name="fuzz-victim")["id"]
        own = operation.as_strategy(generation_mode=mode, path_parameters={"key_id": victim})
        strategy = st.one_of(strategy, own)
    admin_views = [False, True] if path == "/v1/usage" and variant != "anonymous" else [False]
    sent: list[int] = []

    @settings(
        max_examples=EXAMPLES[variant],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, admin=st.sampled_from(admin_views))
    def run(case: Any, admin: bool) -> None:
        headers = _headers(target, path, variant, admin=admin)
        response = case.call(base_url=target.stack.edge.url, headers=headers, timeout=30)
        sent.append(response.status_code)
        checks: list[Callable[..., Any]] = [not_a_server_error]
        if not _content_type(response).startswith("text/event-stream"):
            checks.append(response_schema_conformance)
        case.validate_response(response, checks=checks, headers=headers)
        _openai_checks(response, path)

    run()
    return len(sent)


@pytest.mark.parametrize(("method", "path", "variant"), CASES)
def test_fuzz(target: Target, method: str, path: str, variant: str) -> None:
    sent = _fuzz(target, method, path, variant)
    assert sent > 0
    assert target.stack.healthy()
