"""What the gateway reads of a request body, per client API: msgspec Structs with types and
ranges, so a value the gateway would route on, clamp, translate or meter is a 400 naming the
parameter before any upstream is called. Everything else is skipped by the decoder and forwarded
untouched (unknown fields still pass through)::

    DECODERS["openai.chat"].decode(b'{"model": "m", "messages": [], "temperature": 3}')
    -> msgspec.ValidationError("Expected `array` of length >= 1 - at `$.messages`")

Ranges are the documented ones of each API: OpenAI ``temperature`` 0..2, Anthropic 0..1,
``top_p`` 0..1, ``n`` 1..128, token limits at least 1 (legacy completions allow
``max_tokens: 0``). The Responses API is stateless here: `check_head` refuses what needs stored
responses (``previous_response_id``, ``store: true``, ``conversation``, ``background``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from runtime.errors import GatewayError

__all__ = [
    "DECODERS",
    "ChatHead",
    "CompletionHead",
    "CountTokensHead",
    "EmbeddingHead",
    "Head",
    "MessagesHead",
    "ResponsesHead",
    "check_head",
]

Model = Annotated[str, Meta(min_length=1)]
Messages = Annotated[list[msgspec.Raw], Meta(min_length=1)]
OpenAITemperature = Annotated[float, Meta(ge=0, le=2)]
AnthropicTemperature = Annotated[float, Meta(ge=0, le=1)]
TopP = Annotated[float, Meta(ge=0, le=1)]
Choices = Annotated[int, Meta(ge=1, le=128)]
Tokens = Annotated[int, Meta(ge=1)]
ToolChoiceMode = Literal["none", "auto", "required"]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ResponsesStreamOptions(msgspec.Struct):
    include_obfuscation: bool | None = None


class FunctionName(msgspec.Struct):
    name: str


class ChatTool(msgspec.Struct):
    """``{"type": "function", "function": {"name": ...}}``; other tool types only need a type."""

    type: str
    function: FunctionName | None = None

    def __post_init__(self) -> None:
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool needs `function`")


class ChatToolChoice(msgspec.Struct):
    type: str
    function: FunctionName | None = None

    def __post_init__(self) -> None:
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool_choice needs `function.name`")


class AnthropicTool(msgspec.Struct):
    name: str
    type: str | None = None


class AnthropicToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type `tool` needs `name`")


class ResponsesTool(msgspec.Struct):
    """``{"type": "function", "name": ..., "parameters": ...}`` (flat, unlike chat's)."""

    type: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.type == "function" and not self.name:
            raise ValueError("a function tool needs `name`")


class ResponsesToolChoice(msgspec.Struct):
    type: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.type == "function" and not self.name:
            raise ValueError("a function tool_choice needs `name`")


class ChatHead(msgspec.Struct):
    messages: Messages
    model: Model | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    n: Choices | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoiceMode | ChatToolChoice | None = None


class CompletionHead(msgspec.Struct):
    prompt: msgspec.Raw
    model: Model | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None  # NOTE: 0 with echo scores a prompt
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    n: Choices | None = None


class EmbeddingHead(msgspec.Struct):
    input: msgspec.Raw
    model: Model | None = None


class MessagesHead(msgspec.Struct):
    messages: Messages
    max_tokens: Tokens
    model: Model | None = None
    stream: bool | None = None
    temperature: AnthropicTemperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None


class CountTokensHead(msgspec.Struct):
    messages: Messages
    model: Model | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None


class ResponsesHead(msgspec.Struct):
    input: str | list[msgspec.Raw]
    model: Model | None = None
    stream: bool | None = None
    stream_options: ResponsesStreamOptions | None = None
    max_output_tokens: Tokens | None = None
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ToolChoiceMode | ResponsesToolChoice | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    conversation: msgspec.Raw = msgspec.Raw()  # NOTE: Raw cannot be optional; empty: absent


Head = ChatHead | CompletionHead | EmbeddingHead | MessagesHead | CountTokensHead | ResponsesHead

DECODERS: Mapping[str, msgspec.json.Decoder[Any]] = {
    "openai.chat": msgspec.json.Decoder(ChatHead),
    "openai.completions": msgspec.json.Decoder(CompletionHead),
    "openai.embeddings": msgspec.json.Decoder(EmbeddingHead),
    "openai.responses": msgspec.json.Decoder(ResponsesHead),
    "anthropic.messages": msgspec.json.Decoder(MessagesHead),
    "anthropic.count_tokens": msgspec.json.Decoder(CountTokensHead),
}

_STATELESS = (
    "Interlock serves the Responses API statelessly and keeps no responses; send the whole "
    "conversation in `input` instead"
)


def check_head(head: Head) -> None:
    """Refuse what decoding cannot: requests that need a stored response (400, naming it).

    ``check_head(ResponsesHead(input="hi", store=True))`` raises ``GatewayError(400, ...,
    param="store")``.
    """
    if not isinstance(head, ResponsesHead):
        return
    refused = (
        ("previous_response_id", head.previous_response_id is not None),
        ("store", head.store is True),
        ("conversation", bytes(head.conversation) not in (b"", b"null")),
        ("background", head.background is True),
    )
    for param, given in refused:
        if given:
            raise GatewayError(
                400,
                f"'{param}' is not supported: {_STATELESS}",
                code="unsupported_parameter",
                param=param,
            )
