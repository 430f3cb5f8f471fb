"""OpenAI chat completions <-> Anthropic messages: requests, responses, legacy completions.

Requests (both directions) map system prompts, text/image/PDF content, tools, tool_choice
(``allowed_tools``: only the allowed tools, with its mode), assistant tool calls, tool results,
stop sequences, max tokens, temperature, top_p, stream and the end-user id. Responses map
content, tool calls, stop reason, usage and ids. Example::

    >>> body = openai_chat_to_anthropic({"model": "m", "messages": [
    ...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    >>> body["system"], body["messages"], body["max_tokens"]
    ('Be brief.', [{'role': 'user', 'content': 'Hi'}], 4096)

``n`` above 1 is a `TranslationError` (one answer per request). ``reasoning_effort`` becomes
``thinking`` with a token budget (`EFFORT_BUDGETS`; ``max_tokens`` grows by the budget, which
Anthropic counts in it). The other way, ``thinking`` becomes ``reasoning_effort``,
``output_config.format`` becomes ``response_format`` and ``output_config.effort``
``reasoning_effort``; ``top_k`` is a `TranslationError` unless the target keeps it (Ollama).

``response_format`` (``json_schema``, ``json_object``) becomes a tool, ``json_response``, whose
input schema is the answer's (forced when it is the only tool, as LiteLLM does); the model's call
of it comes back as the answer's text (`JSON_TOOL`), finish_reason ``stop``.

Fields Anthropic cannot honour (penalties, logprobs, logit_bias, audio, legacy functions,
non-function tools, ...) are refused before translation (`runtime.translate.unsupported`).
Dropped OpenAI -> Anthropic (no counterpart, answer unaffected): ``n: 1``, ``seed``,
``service_tier``, ``store``, ``metadata``, ``prediction``, ``prompt_cache_key``,
``stream_options`` (Anthropic streams always carry usage), image ``detail`` (Claude sizes images
itself), message ``name``, and ``top_p`` when ``temperature`` is also set (current Claude models
reject both). ``temperature`` is clamped to Anthropic's 0..1. Audio parts and ``file`` parts
other than a PDF or plain text in ``file_data`` raise `TranslationError` naming the part.

Dropped Anthropic -> OpenAI: ``service_tier``, ``stop_sequence`` (which sequence matched),
``cache_control``, server tool blocks of earlier turns (server tools, ``mcp_servers``,
``container`` are refused by `runtime.translate.unsupported`), thinking blocks, tool_result
``is_error``, ``cache_creation_input_tokens`` (counted into ``prompt_tokens``). Images and
documents inside a tool_result follow the tool messages in the user message of the same turn
(chat tool messages carry text only). Images and documents by Anthropic file id, and documents
by URL, raise `TranslationError` naming the block.

The stream translators live in `runtime.translate.anthropic_stream` and are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from runtime.translate import TranslationError
from runtime.translate.anthropic_stream import (
    JSON_TOOL,
    AnthropicToCompletionsStream,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_stop_reason,
    anthropic_usage,
    anthropic_usage_to_openai,
    openai_finish_reason,
)
from runtime.translate.common import (
    dump_arguments,
    narrow_allowed_tools,
    new_id,
    now,
    one_choice,
    parse_arguments,
    parse_data_url,
    single_prompt,
    text_of,
)
from runtime.translate.shapes import (
    ChatRequest,
    CompletionRequest,
    MessagesRequest,
    check_types,
)

__all__ = [
    "EFFORT_BUDGETS",
    "JSON_TOOL",
    "AnthropicToCompletionsStream",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_id",
    "anthropic_response_to_completions",
    "anthropic_response_to_openai",
    "anthropic_to_openai_chat",
    "completions_to_anthropic",
    "count_request_chars",
    "estimate_input_tokens",
    "estimate_tokens",
    "openai_chat_to_anthropic",
    "openai_id",
    "openai_response_to_anthropic",
    "sanitize_tool_id",
]

_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
_TOOL_CHOICE_TO_ANTHROPIC = {"auto": "auto", "none": "none", "required": "any"}
_TOOL_CHOICE_TO_OPENAI = {"auto": "auto", "none": "none", "any": "required"}
_DOCUMENT_TYPES = frozenset({"application/pdf", "text/plain"})

MaxTokensKey = Literal["max_tokens", "max_completion_tokens"]
# reasoning_effort -> Anthropic thinking budget; "none" and "minimal" think not at all
EFFORT_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}


# --- requests: OpenAI -> Anthropic ----------------------------------------------------------


def openai_chat_to_anthropic(
    body: Mapping[str, Any], *, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body -> an Anthropic ``/v1/messages`` body.

    System and developer messages (wherever they are) become ``system``: a string when there is
    one plain text, else text blocks. Consecutive ``tool`` messages become one user message of
    ``tool_result`` blocks. ``max_completion_tokens`` wins over ``max_tokens``; with neither,
    `default_max_tokens` is used because Anthropic requires it.
    """
    check_types(body, ChatRequest)
    body = narrow_allowed_tools(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system, messages = _messages_to_anthropic(body.get("messages"))
    if system is not None:
        out["system"] = system
    out["messages"] = messages
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out["max_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    one_choice(body)
    budget = EFFORT_BUDGETS.get(str(body.get("reasoning_effort")))
    if budget is not None and isinstance(out["max_tokens"], int):
        # NOTE: Anthropic counts thinking in max_tokens and wants the budget below it
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        out["max_tokens"] += budget
    _copy_sampling(body, out)
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = list(stop)
    if body.get("stream"):
        out["stream"] = True
    tools = _tools_to_anthropic(body.get("tools"))
    answer_tool = _response_format_tool(body.get("response_format"))
    if answer_tool is not None:
        tools.append(answer_tool)
    if tools:
        out["tools"] = tools
        choice = _tool_choice_to_anthropic(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if answer_tool is not None and len(tools) == 1:
            choice = {"type": "tool", "name": JSON_TOOL}
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def completions_to_anthropic(
    body: Mapping[str, Any], *, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """A legacy OpenAI ``/v1/completions`` body -> an Anthropic messages body.

    The prompt becomes one user message. A batch of prompts or token-id prompts cannot be
    expressed and raises `TranslationError`. ``suffix``, ``echo``, ``best_of``, ``n``,
    ``logprobs`` and penalties are dropped. Example: ``{"model": "m", "prompt": "Say hi"}`` ->
    ``{"model": "m", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4096}``.
    """
    check_types(body, CompletionRequest)
    prompt = single_prompt(body)
    chat: dict[str, Any] = {
        key: body[key]
        for key in ("model", "max_tokens", "temperature", "top_p", "stop", "stream", "user", "n")
        if key in body
    }
    chat["messages"] = [{"role": "user", "content": prompt}]
    return openai_chat_to_anthropic(chat, default_max_tokens=default_max_tokens)


def _copy_sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        # NOTE: OpenAI allows 0..2, Anthropic rejects > 1; the nearest valid value is kept.
        out["temperature"] = min(max(temperature, 0), 1)
    top_p = body.get("top_p")
    # NOTE: current Claude models reject temperature and top_p together ("use only one");
    # OpenAI clients often send both, so temperature wins.
    if top_p is not None and "temperature" not in out:
        out["top_p"] = top_p


def _messages_to_anthropic(
    messages: object,
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    if not isinstance(messages, list):
        raise TranslationError("messages must be a list", param="messages")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TranslationError("message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role == "tool":
            block = _tool_result_block(msg)
            if results is None:
                results = [block]
                out.append({"role": "user", "content": results})
            else:
                results.append(block)
            continue
        results = None
        if role in ("system", "developer"):
            system.extend(_text_blocks(msg.get("content")))
        elif role == "user":
            out.append({"role": "user", "content": _user_content(msg.get("content"), i)})
        elif role == "assistant":
            out.append(_assistant_to_anthropic(msg))
        else:
            raise TranslationError(f"unsupported role {role!r}", param=f"messages[{i}].role")
    if not system:
        return None, out
    if len(system) == 1 and system[0].keys() == {"type", "text"}:
        return system[0]["text"], out
    return system, out


def _text_blocks(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        return []
    return [
        _with_cache_control({"type": "text", "text": part["text"]}, part)
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text" and part.get("text")
    ]


def _user_content(content: object, i: int) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list", param=f"messages[{i}].content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_image_block(part, f"messages[{i}].content[{j}]"))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), f"messages[{i}].content[{j}]"))
        elif kind == "input_audio":
            raise TranslationError(
                "Anthropic takes no audio input", param=f"messages[{i}].content[{j}]"
            )
    return blocks


def _image_block(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise TranslationError("image_url.url is required", param=param)
    parsed = parse_data_url(url)
    if parsed is not None:
        media_type, data = parsed
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": url}
    return _with_cache_control({"type": "image", "source": source}, part)


def _document_block(file: object, param: str) -> dict[str, Any]:
    """A chat ``file`` part as a document: a PDF, or plain text. Anthropic reads no other files
    and cannot see OpenAI's file ids: those raise `TranslationError` naming the part."""
    data = file.get("file_data") if isinstance(file, Mapping) else None
    parsed = parse_data_url(data) if isinstance(data, str) else None
    if parsed is None or parsed[0] not in _DOCUMENT_TYPES or not isinstance(file, Mapping):
        raise TranslationError(
            "Anthropic reads PDF and plain-text files sent as file_data (a data: URL), not "
            "other files or OpenAI file ids",
            param=param,
        )
    media_type, payload = parsed
    source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": payload}
    if media_type == "text/plain":
        source = {"type": "text", "media_type": media_type, "data": _text(payload, param)}
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def _text(payload: str, param: str) -> str:
    try:
        return base64.b64decode(payload, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TranslationError("file_data is not base64 UTF-8 text", param=param) from None


def _assistant_to_anthropic(msg: Mapping[str, Any]) -> dict[str, Any]:
    content = msg.get("content")
    tool_calls = msg.get("tool_calls")
    if not tool_calls and isinstance(content, str):
        return {"role": "assistant", "content": content}
    blocks = _text_blocks(content)
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal and not blocks:
        blocks.append({"type": "text", "text": refusal})
    for call in tool_calls or ():
        fn = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": sanitize_tool_id(call.get("id") or new_id("toolu_")),
                "name": fn.get("name", ""),
                "input": parse_arguments(fn.get("arguments")),
            }
        )
    return {"role": "assistant", "content": blocks}


def _tool_result_block(msg: Mapping[str, Any]) -> dict[str, Any]:
    content = msg.get("content")
    result = content if isinstance(content, str) else _text_blocks(content)
    return {
        "type": "tool_result",
        "tool_use_id": sanitize_tool_id(str(msg.get("tool_call_id") or "")),
        "content": result,
    }


def sanitize_tool_id(tool_id: str) -> str:
    """Anthropic accepts tool ids matching ``^[a-zA-Z0-9_-]+$``; others are made to match.

    The mapping is deterministic, so a call id and the tool result naming it still agree:
    ``sanitize_tool_id("call:1")`` -> ``"call_1"``.
    """
    if tool_id and _TOOL_ID_INVALID.search(tool_id) is None:
        return tool_id
    return _TOOL_ID_INVALID.sub("_", tool_id) or "toolu_empty"


def _tools_to_anthropic(tools: object) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not isinstance(tools, list):
        return out
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function") or {}
        schema = fn.get("parameters")
        if not isinstance(schema, Mapping):
            schema = {"type": "object", "properties": {}}
        elif "type" not in schema:
            schema = {"type": "object", **schema}
        converted: dict[str, Any] = {"name": fn.get("name", "")}
        if fn.get("description"):
            converted["description"] = fn["description"]
        converted["input_schema"] = schema
        out.append(_with_cache_control(converted, tool))
    return out


def _response_format_tool(response_format: object) -> dict[str, Any] | None:
    """The tool that carries a ``response_format`` to Anthropic (None for plain text)."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        schema: object = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if schema is None:
            schema = {"type": "object"}
        if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
            raise TranslationError(
                "this upstream needs a response_format JSON schema whose root is an object",
                param="response_format",
                droppable=True,
            )
    else:
        return None
    return {
        "name": JSON_TOOL,
        "description": "Give the answer: call this with the JSON object that is the answer.",
        "input_schema": schema,
    }


def _tool_choice_to_anthropic(choice: object, parallel: object) -> dict[str, Any] | None:
    result: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in _TOOL_CHOICE_TO_ANTHROPIC:
        result = {"type": _TOOL_CHOICE_TO_ANTHROPIC[choice]}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            result = {"type": "tool", "name": name}
    if parallel is False and (result is None or result["type"] != "none"):
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result


def _with_cache_control(block: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    cache_control = source.get("cache_control")
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


# --- requests: Anthropic -> OpenAI ----------------------------------------------------------


def anthropic_to_openai_chat(
    body: Mapping[str, Any],
    *,
    max_tokens_key: MaxTokensKey = "max_tokens",
    keep_top_k: bool = False,
) -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` body -> an OpenAI ``/v1/chat/completions`` body.

    `max_tokens_key` picks the OpenAI field: ``max_tokens`` (what OpenAI-compatible servers
    accept) or ``max_completion_tokens`` (what OpenAI's reasoning models require). A streaming
    request asks for ``stream_options.include_usage`` because Anthropic clients need the usage.
    Example: ``{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}``
    -> ``{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}``.
    """
    check_types(body, MessagesRequest)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        parts = [{"type": "text", "text": b["text"]} for b in system if _is_text_block(b)]
        if parts:
            messages.append({"role": "system", "content": parts})
    raw_messages = body.get("messages") or []
    if not isinstance(raw_messages, list):
        raise TranslationError("messages must be a list", param="messages")
    for i, msg in enumerate(raw_messages):
        if not isinstance(msg, Mapping):
            raise TranslationError("message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role == "assistant":
            messages.append(_assistant_to_openai(msg.get("content")))
        elif role in ("system", "developer"):  # NOTE: Claude Code sends them mid-conversation
            messages.append({"role": role, "content": _system_text(msg.get("content"))})
        else:
            messages.extend(_user_to_openai(msg.get("content"), f"messages[{i}].content"))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out[max_tokens_key] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("top_k") is not None:
        if not keep_top_k:
            raise TranslationError(
                "this upstream has no top_k sampling", param="top_k", droppable=True
            )
        out["top_k"] = body["top_k"]
    _reasoning_to_openai(body, out)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [
        _tool_to_openai(t)
        for t in body.get("tools") or ()
        if isinstance(t, Mapping) and isinstance(t.get("input_schema"), Mapping)
    ]
    if tools:
        out["tools"] = tools
        _tool_choice_to_openai(body.get("tool_choice"), out)
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user_id, str) and user_id:
        out["user"] = user_id
    return out


def _system_text(content: object) -> str:
    """A mid-conversation system message's text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else ()
    return "\n".join(b["text"] for b in blocks if _is_text_block(b))


def _reasoning_to_openai(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """``thinking`` and ``output_config`` (``effort``, ``format``) as OpenAI parameters."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    if kind == "enabled" and isinstance(thinking, Mapping):
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) else EFFORT_BUDGETS["medium"]
        out["reasoning_effort"] = next(
            (effort for effort, most in EFFORT_BUDGETS.items() if budget <= most), "xhigh"
        )
    elif kind == "adaptive":
        out["reasoning_effort"] = "medium"
    config = body.get("output_config")
    if not isinstance(config, Mapping):
        return
    effort = config.get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = "xhigh" if effort == "max" else effort
    fmt = config.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = {"name": "output", "schema": fmt.get("schema") or {"type": "object"}}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}


def _is_text_block(block: object) -> bool:
    return (
        isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def _user_to_openai(content: object, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            # NOTE: OpenAI wants tool messages right after the assistant's tool_calls, so they
            # go before any other content of the same Anthropic user turn.
            result = block.get("content")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": text_of(result),
                }
            )
            parts.extend(_tool_result_media(result, f"{param}[{j}].content"))
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image_part(block.get("source"), f"{param}[{j}]"))
        elif kind == "document":
            parts.extend(_document_part(block, f"{param}[{j}]"))
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result_media(content: object, param: str) -> list[dict[str, Any]]:
    """Images and documents a tool returned, as parts of the user message that follows the tool
    messages: chat tool messages carry text only, and the model must still see them."""
    out: list[dict[str, Any]] = []
    for k, block in enumerate(content if isinstance(content, list) else ()):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "image" and isinstance(block, Mapping):
            out.append(_image_part(block.get("source"), f"{param}[{k}]"))
        elif kind == "document" and isinstance(block, Mapping):
            out.extend(_document_part(block, f"{param}[{k}]"))
    return out


def _image_part(source: object, param: str) -> dict[str, Any]:
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "base64" and isinstance(source, Mapping):
        media_type = source.get("media_type") or "image/png"
        url = f"data:{media_type};base64,{source.get('data') or ''}"
    elif kind == "url" and isinstance(source, Mapping):
        url = source.get("url") or ""
    else:
        raise TranslationError(
            "this upstream takes images as base64 data or a URL, not Anthropic file ids",
            param=param,
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    """A document as chat parts: a base64 PDF as a ``file``, text (or a ``content`` source's
    text) as text; a PDF by URL or by Anthropic file id cannot be sent (`TranslationError`)."""
    source = block.get("source")
    if not isinstance(source, Mapping):  # NOTE: a search_result's source is its URL
        return []
    if source.get("type") == "text":
        return [{"type": "text", "text": source.get("data") or ""}]
    if source.get("type") == "content":
        return [{"type": "text", "text": text_of(source.get("content"))}]
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        data_url = f"data:application/pdf;base64,{source.get('data') or ''}"
        filename = block.get("title") or "document.pdf"
        return [{"type": "file", "file": {"file_data": data_url, "filename": filename}}]
    raise TranslationError(
        "this upstream takes documents as base64 PDF or text, not by URL or Anthropic file id",
        param=param,
    )


def _assistant_to_openai(content: object) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id") or "",
                    "type": "function",
                    "function": {
                        "name": block.get("name") or "",
                        "arguments": dump_arguments(block.get("input")),
                    },
                }
            )
    text = "".join(texts)
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_to_openai(tool: Mapping[str, Any]) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool["input_schema"]
    return {"type": "function", "function": fn}


def _tool_choice_to_openai(choice: object, out: dict[str, Any]) -> None:
    if not isinstance(choice, Mapping):
        return
    kind = choice.get("type")
    if kind in _TOOL_CHOICE_TO_OPENAI:
        out["tool_choice"] = _TOOL_CHOICE_TO_OPENAI[kind]
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# --- responses ------------------------------------------------------------------------------


def openai_id(anthropic_message_id: str | None, prefix: str = "chatcmpl-") -> str:
    """``msg_01ab`` -> ``chatcmpl-01ab``; the inverse of `anthropic_id`, fresh when missing."""
    if not anthropic_message_id:
        return new_id(prefix)
    return prefix + anthropic_message_id.removeprefix("msg_")


def anthropic_id(openai_completion_id: str | None) -> str:
    """``chatcmpl-01ab`` -> ``msg_01ab``; the inverse of `openai_id`, fresh when missing."""
    if not openai_completion_id:
        return new_id("msg_")
    return "msg_" + openai_completion_id.removeprefix("chatcmpl-").removeprefix("cmpl-")


def anthropic_response_to_openai(
    resp: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """A non-streaming Anthropic message -> an OpenAI ``chat.completion``.

    Text blocks are joined into ``content`` (None when the answer is only tool calls), tool_use
    blocks become ``tool_calls``; stop_reason end_turn/stop_sequence -> ``stop``, max_tokens ->
    ``length``, tool_use -> ``tool_calls``, refusal -> ``content_filter``.
    """
    content, answered = _json_tool_as_text(resp.get("content"))
    message = _assistant_to_openai(content)
    message["refusal"] = None
    finish = openai_finish_reason(resp.get("stop_reason"))
    if answered and finish == "tool_calls" and not message.get("tool_calls"):
        finish = "stop"
    return {
        "id": openai_id(resp.get("id")),
        "object": "chat.completion",
        "created": now() if created is None else created,
        "model": resp.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": anthropic_usage_to_openai(resp.get("usage")),
    }


def _json_tool_as_text(content: object) -> tuple[list[Any], bool]:
    """Content blocks with a call of `JSON_TOOL` turned into the text block it answers with;
    True when there was one."""
    blocks = content if isinstance(content, list) else []
    out: list[Any] = []
    answered = False
    for block in blocks:
        if (
            isinstance(block, Mapping)
            and block.get("type") == "tool_use"
            and block.get("name") == JSON_TOOL
        ):
            answered = True
            out.append({"type": "text", "text": dump_arguments(block.get("input"))})
            continue
        out.append(block)
    return out, answered


def anthropic_response_to_completions(
    resp: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """A non-streaming Anthropic message -> a legacy OpenAI ``text_completion``.

    Example: content ``[{"type": "text", "text": "hi"}]``, stop_reason ``max_tokens`` ->
    ``choices: [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": "length"}]``.
    """
    finish = openai_finish_reason(resp.get("stop_reason"))
    return {
        "id": openai_id(resp.get("id"), "cmpl-"),
        "object": "text_completion",
        "created": now() if created is None else created,
        "model": resp.get("model", ""),
        "choices": [
            {
                "text": text_of(resp.get("content")),
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop" if finish == "tool_calls" else finish,
            }
        ],
        "usage": anthropic_usage_to_openai(resp.get("usage")),
    }


def openai_response_to_anthropic(resp: Mapping[str, Any]) -> dict[str, Any]:
    """A non-streaming OpenAI ``chat.completion`` -> an Anthropic message.

    Only ``choices[0]`` is used. A refusal becomes text. A ``stop`` finish with tool calls
    (some OpenAI-compatible servers do this) is reported as ``tool_use`` so tool loops go on.
    """
    choices = resp.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": sanitize_tool_id(call.get("id") or new_id("toolu_")),
                "name": fn.get("name", ""),
                "input": parse_arguments(fn.get("arguments")),
            }
        )
    has_tools = any(block["type"] == "tool_use" for block in content)
    return {
        "id": anthropic_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": resp.get("model", ""),
        "content": content,
        "stop_reason": anthropic_stop_reason(choice.get("finish_reason"), has_tools=has_tools),
        "stop_sequence": None,
        "usage": anthropic_usage(resp.get("usage")),
    }


# --- token estimation -----------------------------------------------------------------------


def estimate_tokens(text_chars: int) -> int:
    """A rough token count for upstreams that cannot count: chars/4, at least 1.

    Example: ``estimate_tokens(10)`` -> ``3``.
    """
    return max(1, (text_chars + 3) // 4)


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """`estimate_tokens` of an Anthropic request, for ``count_tokens`` on an upstream that cannot
    count; an ill-typed field raises `TranslationError`. ``{"messages": [{"role": "user",
    "content": "Hello!"}]}`` -> ``2``."""
    check_types(body, MessagesRequest)
    return estimate_tokens(count_request_chars(body))


def count_request_chars(body: Mapping[str, Any]) -> int:
    """Characters of an Anthropic request that reach the model: system, text, tool inputs,
    tool results and tool definitions (as JSON). Feed the result to `estimate_tokens`.

    Example: ``{"system": "ab", "messages": [{"role": "user", "content": "cde"}]}`` -> ``5``.
    """
    total = _content_chars(body.get("system"))
    for msg in body.get("messages") or ():
        if isinstance(msg, Mapping):
            total += _content_chars(msg.get("content"))
    for tool in body.get("tools") or ():
        total += len(json.dumps(tool, ensure_ascii=False))
    return total


def _content_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    total = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            total += len(block.get("text") or "")
        elif kind == "tool_use":
            total += len(block.get("name") or "") + len(dump_arguments(block.get("input")))
        elif kind == "tool_result":
            total += _content_chars(block.get("content"))
    return total
