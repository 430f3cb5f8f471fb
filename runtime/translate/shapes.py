"""The types of every request field a translator (or the built-in mock) reads, per client API,
checked once when a body enters translation: a wrong type is a `TranslationError` naming the
field's path, so the translators below can trust what they read. Example::

    >>> check_types({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    ...             ChatRequest)
    Traceback (most recent call last):
    runtime.translate.TranslationError: invalid messages[0].content[0].text: Expected `str | null`,
    got `int`

`runtime.heads` checks the few fields the gateway routes on for every request (also those sent
on untouched); these shapes add what translation reads. Fields are optional (``null`` is the same
as absent, as the translators treat it) and unknown fields are ignored: they are forwarded or
dropped by the translator, never read. A field whose type differs between block kinds (an
Anthropic ``search_result``'s ``source`` is a URL, an image's an object) accepts each kind's type.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from runtime.translate import TranslationError

__all__ = [
    "REQUEST_SHAPES",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "MessagesRequest",
    "ResponsesRequest",
    "check_types",
]

Object = dict[str, Any]

# --- OpenAI chat completions -------------------------------------------------------------------


class _Name(msgspec.Struct):
    name: str | None = None


class _ImageURL(msgspec.Struct):
    url: str | None = None
    detail: str | None = None


class _File(msgspec.Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _ChatPart(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    refusal: str | None = None
    image_url: _ImageURL | str | None = None
    file: _File | None = None


class _CallFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | Object | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    type: str | None = None
    function: _CallFunction | None = None


class _ChatMessage(msgspec.Struct):
    role: str | None = None
    content: str | list[_ChatPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class _FunctionSpec(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    parameters: Object | None = None
    strict: bool | None = None


class _ChatTool(msgspec.Struct):
    type: str | None = None
    function: _FunctionSpec | None = None


class _ChatToolChoice(msgspec.Struct):
    type: str | None = None
    function: _Name | None = None


class _JsonSchema(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    schema: Object | None = None
    strict: bool | None = None


class _ResponseFormat(msgspec.Struct):
    type: str | None = None
    json_schema: _JsonSchema | None = None


class _Sampling(msgspec.Struct):
    """What OpenAI's chat and legacy completions share, and the Ollama options read from both."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[_ChatMessage] | None = None
    max_completion_tokens: int | None = None
    tools: list[_ChatTool] | None = None
    tool_choice: str | _ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    reasoning_effort: str | None = None
    safety_identifier: str | None = None


class CompletionRequest(_Sampling):
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None


class EmbeddingRequest(msgspec.Struct):
    dimensions: int | None = None
    encoding_format: str | None = None
    user: str | None = None


# --- Anthropic messages ------------------------------------------------------------------------


class _Source(msgspec.Struct):
    type: str | None = None
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    content: str | list[_Block] | None = None


class _Block(msgspec.Struct):
    """Any content block: the fields of every kind the translators read (text, image, document,
    tool_use, tool_result, ...). Server tool results carry an object as ``content``."""

    type: str | None = None
    text: str | None = None
    source: _Source | str | None = None
    title: str | None = None
    id: str | None = None
    name: str | None = None
    input: Object | None = None
    tool_use_id: str | None = None
    content: str | list[_Block] | Object | None = None
    is_error: bool | None = None


class _Message(msgspec.Struct):
    role: str | None = None
    content: str | list[_Block] | None = None


class _Tool(msgspec.Struct):
    name: str | None = None
    type: str | None = None
    description: str | None = None
    input_schema: Object | None = None


class _ToolChoice(msgspec.Struct):
    type: str | None = None
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class _Thinking(msgspec.Struct):
    type: str | None = None
    budget_tokens: int | None = None


class _OutputFormat(msgspec.Struct):
    type: str | None = None
    schema: Object | None = None


class _OutputConfig(msgspec.Struct):
    effort: str | None = None
    format: _OutputFormat | None = None


class MessagesRequest(msgspec.Struct):
    """``/v1/messages`` and ``/v1/messages/count_tokens``."""

    messages: list[_Message] | None = None
    system: str | list[_Block] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    thinking: _Thinking | None = None
    output_config: _OutputConfig | None = None


# --- OpenAI Responses --------------------------------------------------------------------------


class _Part(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _Item(msgspec.Struct):
    """Any input item: a message, a function call or its output (other kinds are refused by
    the translator, or carry an object ``output``)."""

    type: str | None = None
    role: str | None = None
    content: str | list[_Part] | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[_Part] | Object | None = None


class _ResponsesTool(msgspec.Struct):
    type: str | None = None
    name: str | None = None
    description: str | None = None
    parameters: Object | None = None
    strict: bool | None = None


class _AllowedTool(msgspec.Struct):
    type: str | None = None
    name: str | None = None


class _ResponsesToolChoice(msgspec.Struct):
    type: str | None = None
    name: str | None = None
    mode: str | None = None
    tools: list[_AllowedTool] | None = None


class _Reasoning(msgspec.Struct):
    effort: str | None = None


class _TextFormat(msgspec.Struct):
    type: str | None = None
    name: str | None = None
    description: str | None = None
    schema: Object | None = None
    strict: bool | None = None


class _Text(msgspec.Struct):
    format: _TextFormat | None = None


class ResponsesRequest(msgspec.Struct):
    input: str | list[_Item] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    metadata: Object | None = None
    user: str | None = None
    safety_identifier: str | None = None
    reasoning: _Reasoning | None = None
    text: _Text | None = None
    tools: list[_ResponsesTool] | None = None
    tool_choice: str | _ResponsesToolChoice | None = None
    stream: bool | None = None


REQUEST_SHAPES: Mapping[str, type[msgspec.Struct]] = MappingProxyType(
    {
        "openai.chat": ChatRequest,
        "openai.completions": CompletionRequest,
        "openai.embeddings": EmbeddingRequest,
        "openai.responses": ResponsesRequest,
        "anthropic.messages": MessagesRequest,
        "anthropic.count_tokens": MessagesRequest,
    }
)

_AT = " - at `$"


def check_types(body: object, shape: type[msgspec.Struct]) -> None:
    """Raise `TranslationError` naming the first field of `body` whose type `shape` does not
    allow: ``check_types({"stop_sequences": 5}, MessagesRequest)`` names ``stop_sequences``."""
    try:
        msgspec.convert(body, shape)
    except msgspec.ValidationError as exc:
        detail, _, where = str(exc).partition(_AT)
        param = where.rstrip("`").lstrip(".") or None
        raise TranslationError(
            f"invalid {param}: {detail}" if param else f"invalid request body: {detail}",
            param=param,
        ) from None
    except RecursionError:
        raise TranslationError("request body is nested too deeply") from None
