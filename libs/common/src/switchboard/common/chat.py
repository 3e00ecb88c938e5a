"""The OpenAI chat completion request, validated.

Models follow OpenAI's ``CreateChatCompletionRequest`` schema. Every model allows extra
fields: what OpenAI or OpenRouter add tomorrow (``models``, ``provider``, ``reasoning``,
``cache_control`` on a content part …) travels to the upstream untouched instead of being
dropped. Known fields are checked for type and range so that bad input is refused at the
edge with a precise ``param``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "DeveloperMessage",
    "FunctionMessage",
    "SystemMessage",
    "ToolMessage",
    "UserMessage",
    "message_text_length",
]


class _Open(BaseModel):
    """Base for request models: extra fields are kept and forwarded."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Open):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Open):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]

TextContent = str | Annotated[list[TextPart], Field(min_length=1)]


class SystemMessage(_Open):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(min_length=1)]
    name: str | None = None


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: dict[str, Any] | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


class FunctionMessage(_Open):
    """Deprecated by OpenAI in favour of tool messages; still accepted."""

    role: Literal["function"]
    content: str | None
    name: str


ChatMessage = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(_Open):
    type: Literal["custom"]
    custom: dict[str, Any]


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class AllowedToolsChoice(_Open):
    type: Literal["allowed_tools"]
    allowed_tools: dict[str, Any]


class CustomToolChoice(_Open):
    type: Literal["custom"]
    custom: dict[str, Any]


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        NamedToolChoice | AllowedToolsChoice | CustomToolChoice, Field(discriminator="type")
    ]
)


class ResponseFormatText(_Open):
    type: Literal["text"]


class ResponseFormatJsonObject(_Open):
    type: Literal["json_object"]


class JsonSchemaSpec(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(_Open):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
"""OpenAI's integers are 64-bit: a larger one could not be written as JSON again by the
serialisers downstream (orjson), nor be sent to any upstream."""


class StreamOptions(_Open):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions`` body. Unknown fields are kept and forwarded."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    stop: str | Annotated[list[str], Field(min_length=1, max_length=4)] | None = None
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    service_tier: str | None = None

    @property
    def wants_stream(self) -> bool:
        """True when the client asked for server-sent events."""
        return bool(self.stream)

    @property
    def wants_usage_chunk(self) -> bool:
        """True when a streaming client asked for the final usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


def _content_length(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            text = getattr(part, "text", None) or getattr(part, "refusal", None)
            if isinstance(text, str):
                total += len(text)
        return total
    return 0


def message_text_length(request: ChatCompletionRequest) -> int:
    """Characters of text across all messages: content, refusals and tool-call arguments."""
    total = 0
    for message in request.messages:
        total += _content_length(message.content)
        if isinstance(message, AssistantMessage) and message.tool_calls:
            total += sum(len(call.function.arguments) for call in message.tool_calls)
    return total
