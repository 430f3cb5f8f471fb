"""OpenAI Responses API <-> OpenAI chat completions: requests and whole responses.

Every upstream family already speaks chat completions through a bridge, so a Responses request
goes Responses -> chat -> (Anthropic, Ollama, GigaChat, an OpenAI-compatible server) and its answer
comes back the same way. Example::

    >>> body = responses_to_chat({"model": "m", "instructions": "Be brief.", "input": "Hi",
    ...                           "max_output_tokens": 64})
    >>> body["messages"], body["max_tokens"]
    ([{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}], 64)

Requests map ``instructions``, ``input`` (a string, or items: messages with text, image and file
parts, ``function_call`` and ``function_call_output``), function ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``max_output_tokens``, ``temperature``, ``top_p``, ``text.format``
(``json_schema``, ``json_object``), ``text.verbosity``, ``stream``, ``user``/``safety_identifier``,
``reasoning.effort`` and ``top_logprobs``. ``reasoning`` items of earlier turns are dropped (only
the model that wrote them can read them; the answer does not depend on them), and so is every
field the README's drop table lists as dropped (``metadata``, ``include``, ``truncation``,
``max_tool_calls``, ...); `runtime.translate.unsupported.RESPONSES_TO_CHAT` refuses ``prompt``
and ``include`` of log probabilities first. What only OpenAI's
own Responses service can do raises `TranslationError` (a 400 naming the parameter): hosted tools
(web search, file search, MCP, ...), ``item_reference`` and file ids of uploaded images.

Answers map text (and refusals) to one ``message`` item, tool calls to ``function_call`` items,
``finish_reason`` ``length`` / ``content_filter`` to ``status: incomplete`` with its reason, and
usage to ``input_tokens`` / ``output_tokens`` with their details. The stream translator is
`runtime.translate.responses_stream.ChatToResponsesStream`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runtime.translate import TranslationError
from runtime.translate.common import new_id, now, text_of
from runtime.translate.shapes import ResponsesRequest, check_types

__all__ = [
    "chat_to_response",
    "chat_usage_to_responses",
    "function_call_item",
    "hosted_tools",
    "message_item",
    "output_text_part",
    "response_base",
    "response_object",
    "responses_param",
    "responses_to_chat",
]

_TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
_MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# chat fields `responses_to_chat` makes -> the Responses fields they come from
_CHAT_PARAMS = {
    "max_tokens": "max_output_tokens",
    "verbosity": "text.verbosity",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
}
_CHAT_MESSAGE = re.compile(r"messages\[(\d+)\](.*)")


# --- requests: Responses -> chat ----------------------------------------------------------


def responses_to_chat(body: Mapping[str, Any], *, drop_hosted: bool = True) -> dict[str, Any]:
    """A ``/v1/responses`` body -> a ``/v1/chat/completions`` body (see the module docstring).

    A streaming request asks for ``stream_options.include_usage``: ``response.completed``
    reports usage, so the chat upstream must send it. Hosted tools (`hosted_tools`) are dropped,
    or refused with `TranslationError` when not `drop_hosted`.
    """
    check_types(body, ResponsesRequest)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(_input_to_messages(body.get("input")))
    out["messages"] = messages
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "top_logprobs"):
        if body.get(key) is not None:
            out[key] = body[key]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        out["user"] = user
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if isinstance(text, Mapping) and text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    response_format = _response_format(text)
    if response_format is not None:
        out["response_format"] = response_format
    tools = _tools_to_chat(body.get("tools"), drop_hosted=drop_hosted)
    if tools:
        out["tools"] = tools
    choice = _tool_choice_to_chat(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _input_to_messages(value: object) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise TranslationError("input must be a string or a list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise TranslationError("an input item must be an object", param=f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message_to_chat(item, f"input[{i}]"))
        elif kind == "function_call":
            _append_call(out, item)
        elif kind == "function_call_output":
            output = item.get("output")
            _refuse_media_output(output, f"input[{i}].output")
            content = output if isinstance(output, str) else text_of(_parts_as_text(output))
            out.append(
                {"role": "tool", "tool_call_id": item.get("call_id", ""), "content": content}
            )
        elif kind != "reasoning":  # NOTE: only the model that wrote it can read a reasoning item
            raise TranslationError(
                f"input items of type {kind!r} need OpenAI's own Responses service",
                param=f"input[{i}]",
            )
    return out


def _message_to_chat(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role == "developer":
        role = "system"
    if role not in _MESSAGE_ROLES:
        raise TranslationError(f"unsupported role {role!r}", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list", param=f"{param}.content")
    if role == "assistant":
        return {"role": "assistant", "content": text_of(_parts_as_text(content))}
    parts = [_part_to_chat(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
    return {"role": role, "content": [part for part in parts if part is not None]}


def _refuse_media_output(output: object, param: str) -> None:
    """Chat tool messages carry text only: an image or file a function returned cannot follow
    it there, and dropping it would change the answer."""
    for k, part in enumerate(output if isinstance(output, list) else ()):
        if isinstance(part, Mapping) and part.get("type") in ("input_image", "input_file"):
            raise TranslationError(
                f"a function_call_output with {part.get('type')} parts needs an upstream that "
                "speaks the Responses API (chat tool messages carry text only); send it in a "
                "user message instead",
                param=f"{param}[{k}]",
            )


def _parts_as_text(parts: object) -> list[dict[str, Any]]:
    """Responses text parts (``input_text``, ``output_text``, ``refusal``) as chat text parts."""
    out: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping):
            continue
        if part.get("type") in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "refusal":
            out.append({"type": "text", "text": part.get("refusal", "")})
    return out


def _part_to_chat(part: object, param: str) -> dict[str, Any] | None:
    if not isinstance(part, Mapping):
        raise TranslationError("a content part must be an object", param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise TranslationError(
                "input_image needs an image_url (file ids need OpenAI)", param=param
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        if not file:
            raise TranslationError("input_file needs file_data or file_id", param=param)
        return {"type": "file", "file": file}
    raise TranslationError(f"unsupported content part {kind!r}", param=param)


def _append_call(out: list[dict[str, Any]], item: Mapping[str, Any]) -> None:
    """A ``function_call`` item joins the assistant message right before it, as chat wants."""
    call = {
        "id": item.get("call_id") or item.get("id") or new_id("call_"),
        "type": "function",
        "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"},
    }
    last = out[-1] if out else None
    if last is None or last.get("role") != "assistant":
        last = {"role": "assistant", "content": None}
        out.append(last)
    last.setdefault("tool_calls", []).append(call)
    if last.get("content") == "":
        last["content"] = None


def _response_format(text: object) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        return None
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    spec.setdefault("name", "response")
    return {"type": "json_schema", "json_schema": spec}


def hosted_tools(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The tools in `body` only OpenAI's own Responses service runs, as parameters:
    ``{"tools": [{"type": "function", ...}, {"type": "web_search"}]}`` -> ``("tools[1]",)``.

    Translation drops them (see `responses_to_chat`); the gateway names them in its
    dropped-parameters response header.
    """
    tools = body.get("tools")
    return tuple(
        f"tools[{i}]"
        for i, tool in enumerate(tools if isinstance(tools, list) else ())
        if isinstance(tool, Mapping) and tool.get("type") != "function"
    )


def _tools_to_chat(tools: object, *, drop_hosted: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if drop_hosted and isinstance(kind, str):
                continue  # NOTE: named by `hosted_tools`; the model never sees them
            raise TranslationError(
                f"{kind!r} tools need OpenAI's own Responses service; only function tools "
                "reach other upstreams",
                param=f"tools[{i}]",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice_to_chat(choice: object) -> str | dict[str, Any] | None:
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICE_MODES):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        tools = [
            {"type": "function", "function": {"name": t.get("name", "")}}
            for t in choice.get("tools") or ()
            if isinstance(t, Mapping) and t.get("type") == "function"
        ]
        mode = choice.get("mode", "auto")
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}
    raise TranslationError(
        "this tool_choice needs OpenAI's own Responses service", param="tool_choice"
    )


def responses_param(body: Mapping[str, Any], param: str) -> str:
    """The Responses field of `body` that the chat parameter `param` of its translation came
    from, for an error that must name what the client sent: ``text.verbosity`` for
    ``verbosity``; for a message, the input item (``messages[1].content[0]`` ->
    ``input[0].content[0]`` when ``instructions`` made ``messages[0]``). Other names are kept.
    """
    if param in _CHAT_PARAMS:
        return _CHAT_PARAMS[param]
    match = _CHAT_MESSAGE.fullmatch(param)
    origins = _message_origins(body) if match else []
    if match is None or int(match[1]) >= len(origins):
        return param
    origin, rest = origins[int(match[1])], match[2]
    if origin in ("instructions", "input"):
        return origin
    return origin + rest.replace(".tool_call_id", ".call_id", 1)


def _message_origins(body: Mapping[str, Any]) -> list[str]:
    """For each chat message `responses_to_chat` makes of `body`, the field it comes from."""
    origins: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        origins.append("instructions")
    items = body.get("input")
    if isinstance(items, str):
        return [*origins, "input"]
    assistant = False  # NOTE: consecutive calls join the assistant message before them
    for i, item in enumerate(items if isinstance(items, list) else ()):
        kind = item.get("type", "message") if isinstance(item, Mapping) else None
        if kind == "function_call" and assistant:
            continue
        if kind in ("message", "function_call", "function_call_output"):
            origins.append(f"input[{i}]")
            assistant = kind == "function_call" or (
                kind == "message" and isinstance(item, Mapping) and item.get("role") == "assistant"
            )
    return origins


# --- responses: chat -> Responses --------------------------------------------------------


def chat_to_response(resp: Mapping[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A ``chat.completion`` -> a ``response`` object (``choices[0]`` only).

    Example: content "Hi", finish_reason "stop", usage 5/1 -> ``{"object": "response",
    "status": "completed", "output": [{"type": "message", ..., "content": [{"type":
    "output_text", "text": "Hi", ...}]}], "usage": {"input_tokens": 5, "output_tokens": 1,
    ...}, ...}``.
    """
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = choice.get("message") or {}
    base = response_base(resp.get("id"))
    output: list[dict[str, Any]] = []
    text = text_of(message.get("content")) + (message.get("refusal") or "")
    if text:
        output.append(message_item(base, len(output), text))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        output.append(
            function_call_item(
                base,
                len(output),
                call.get("id") or "",
                function.get("name", ""),
                arguments if isinstance(arguments, str) else "{}",
            )
        )
    usage = resp.get("usage")
    return response_object(
        base,
        model=resp.get("model", ""),
        created=created if created is not None else _created(resp.get("created")),
        output=output,
        usage=chat_usage_to_responses(usage) if isinstance(usage, Mapping) else None,
        finish_reason=choice.get("finish_reason"),
    )


def _created(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else now()


def response_base(chat_id: object) -> str:
    """The id part shared by a response and its items: ``chatcmpl-ab12`` -> ``ab12``."""
    if not isinstance(chat_id, str) or not chat_id:
        return new_id("")
    return chat_id.removeprefix("chatcmpl-").removeprefix("cmpl-")


def message_item(base: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    """The assistant ``message`` output item at `index` holding `text`."""
    return {
        "id": f"msg_{base}_{index}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)] if status == "completed" else [],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    base: str, index: int, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """The ``function_call`` output item at `index`; `call_id` is what the tool's output names."""
    return {
        "id": f"fc_{base}_{index}",
        "type": "function_call",
        "status": status,
        "call_id": call_id or f"call_{base}_{index}",
        "name": name,
        "arguments": arguments,
    }


def response_object(
    base: str,
    *,
    model: str,
    created: int,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    finish_reason: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A whole ``response`` object; `status` defaults from `finish_reason` (``length`` and
    ``content_filter`` make it ``incomplete``, with the reason)."""
    reason = _INCOMPLETE.get(finish_reason or "")
    if status is None:
        status = "incomplete" if reason else "completed"
    return {
        "id": f"resp_{base}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason and status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    }


def chat_usage_to_responses(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Chat usage -> Responses usage: ``{"prompt_tokens": 9, "completion_tokens": 3,
    "prompt_tokens_details": {"cached_tokens": 4}}`` -> ``{"input_tokens": 9,
    "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}``."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": prompt_details.get("cached_tokens") or 0},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0
        },
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }
