"""OpenAI chat/embeddings -> GigaChat's API (``/api/v1/chat/completions``, ``/api/v1/embeddings``)
and back, including the SSE stream chunks.

Example::

    >>> body = openai_chat_to_gigachat({"model": "GigaChat", "tools": [{"type": "function",
    ...     "function": {"name": "weather", "parameters": {"type": "object"}}}],
    ...     "messages": [{"role": "user", "content": "Hi"}]})
    >>> body["functions"], body["function_call"], body["stream"]
    ([{'name': 'weather', 'parameters': {'type': 'object'}}], 'auto', False)

GigaChat looks like OpenAI but speaks functions: ``tools`` become ``functions`` and
``tool_choice`` becomes ``function_call`` (``"required"`` forces the only function; with several
it is a droppable `TranslationError`, since GigaChat cannot demand "some" call: dropped, the
model decides; ``allowed_tools`` offers only the allowed functions, with its mode). An
assistant's call is
``function_call`` with its arguments as an object, one per message: a message with several
``tool_calls`` becomes one assistant message per call, each followed by its result. Tool results
are ``role: function`` messages naming the function (looked up from the call's id), their
content a JSON object (text that is not one is wrapped: ``{"result": "sunny"}``).

GigaChat's ``functions_state_id`` rides in the tool call id: ``call_<uuid>`` (a dashed UUID,
unlike random ids), and goes back on the assistant message when the client replays the call.

GigaChat takes one system message, first: leading system/developer messages are joined, later
ones become user messages. Images and files must be uploaded to GigaChat first (this layer does
no I/O), so a non-text content part raises `TranslationError`. ``temperature`` must be above 0:
0 becomes ``top_p: 0``, GigaChat's greedy setting. ``response_format`` ``json_schema`` maps to
GigaChat's (beta) ``{"type": "json_schema", "schema": ...}``. GigaChat's own parameters
(``repetition_penalty``, ``update_interval``, ``profanity_check``, ``flags``) pass through.

``n`` above 1 is a `TranslationError`; ``stop``, penalties, logprobs and the like are refused
before translation (`runtime.translate.unsupported`). Dropped: ``n: 1``, ``seed``,
``parallel_tool_calls``
(one call per answer anyway), ``user``, ``service_tier``, ``stream_options`` (GigaChat always
sends usage, on the last chunk with choices; `GigaChatToOpenAIStream` moves or strips it);
embeddings' ``user``, and ``encoding_format``, which the gateway applies to the answer
(`runtime.translate.common.embeddings_as_base64`). ``response_format`` ``json_object`` becomes a
``json_schema`` of any object; ``reasoning_effort`` ``xhigh`` becomes ``high``. Legacy
completions have no GigaChat endpoint.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from runtime.translate import TranslationError
from runtime.translate.common import (
    OpenAIChunkStream,
    dump_arguments,
    narrow_allowed_tools,
    new_id,
    now,
    one_choice,
    parse_arguments,
    text_embedding_request,
    text_of,
)
from runtime.translate.errors import to_openai_error
from runtime.translate.shapes import ChatRequest, EmbeddingRequest, check_types

__all__ = [
    "GigaChatToOpenAIStream",
    "embeddings_to_gigachat",
    "gigachat_embed_to_openai",
    "gigachat_to_openai_chat",
    "openai_chat_to_gigachat",
]

_SYSTEM_ROLES = frozenset({"system", "developer"})
_RESULT_ROLES = frozenset({"tool", "function"})
_PASSTHROUGH = ("repetition_penalty", "update_interval", "profanity_check", "flags")
_REASONING_EFFORTS = frozenset({"low", "medium", "high", "xhigh"})
_FUNCTION_EXTRAS = ("few_shot_examples", "return_parameters")
_FINISH_REASONS = {"length": "length", "blacklist": "content_filter"}
_STATE_ID = re.compile(r"call_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


def openai_chat_to_gigachat(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body -> a GigaChat ``/chat/completions`` body."""
    check_types(body, ChatRequest)
    body = narrow_allowed_tools(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    one_choice(body)
    out["messages"] = _messages_to_gigachat(body.get("messages"))
    out["stream"] = bool(body.get("stream"))
    functions = _functions(body.get("tools"))
    if functions:
        out["functions"] = functions
        out["function_call"] = _function_call(body.get("tool_choice"), functions)
    _copy_sampling(body, out)
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        out["response_format"] = fmt
    return out


def embeddings_to_gigachat(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/embeddings`` body -> a GigaChat ``/embeddings`` body.

    Token-id input cannot be expressed and raises `TranslationError`. Example:
    ``{"model": "Embeddings", "input": "a", "encoding_format": "float"}`` -> ``{"model":
    "Embeddings", "input": "a"}``.
    """
    check_types(body, EmbeddingRequest)
    out = text_embedding_request(body)
    return out


def _messages_to_gigachat(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise TranslationError("messages must be a list", param="messages")
    results = _results_by_call_id(messages)
    names: dict[str, str] = {}
    placed: set[int] = set()  # tool results already emitted right after their call
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TranslationError("message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in _SYSTEM_ROLES:
            _add_system(out, text_of(msg.get("content")))
        elif role == "user":
            out.append({"role": "user", "content": _user_text(msg.get("content"), i)})
        elif role == "assistant":
            out.extend(_assistant_turn(msg, messages, results, names, placed))
        elif role in _RESULT_ROLES and i not in placed:
            placed.add(i)
            out.append(_function_result(msg, _result_name(msg, names, i)))
        elif role not in _RESULT_ROLES:
            raise TranslationError(f"unsupported role {role!r}", param=f"messages[{i}].role")
    return out


def _results_by_call_id(messages: list[Any]) -> dict[str, int]:
    """The index of the first tool result answering each call id."""
    found: dict[str, int] = {}
    for i, msg in enumerate(messages):
        if isinstance(msg, Mapping) and msg.get("role") in _RESULT_ROLES:
            call_id = msg.get("tool_call_id")
            if isinstance(call_id, str) and call_id:
                found.setdefault(call_id, i)
    return found


def _add_system(out: list[dict[str, Any]], text: str) -> None:
    # NOTE: GigaChat answers 422 to a second system message or one that is not first.
    if not out:
        out.append({"role": "system", "content": text})
    elif len(out) == 1 and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text
    else:
        out.append({"role": "user", "content": text})


def _user_text(content: object, i: int) -> str:
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, Mapping) and part.get("type", "text") not in ("text", "refusal"):
            raise TranslationError(
                "GigaChat takes images and files only as ids of files uploaded to it",
                param=f"messages[{i}].content[{j}]",
            )
    return text_of(content)


def _assistant_turn(
    msg: Mapping[str, Any],
    messages: list[Any],
    results: Mapping[str, int],
    names: dict[str, str],
    placed: set[int],
) -> list[dict[str, Any]]:
    """One assistant message per call (GigaChat's limit), each followed by its result."""
    text = text_of(msg.get("content"))
    calls = [c for c in msg.get("tool_calls") or () if isinstance(c, Mapping)]
    if not calls:
        return [{"role": "assistant", "content": text}]
    out: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        fn = call.get("function") or {}
        name = fn.get("name", "")
        converted: dict[str, Any] = {
            "role": "assistant",
            "content": text if k == 0 else "",
            "function_call": {"name": name, "arguments": parse_arguments(fn.get("arguments"))},
        }
        call_id = call.get("id")
        state_id = _state_id(call_id)
        if state_id is not None:
            converted["functions_state_id"] = state_id
        out.append(converted)
        if not isinstance(call_id, str) or not call_id:
            continue
        names[call_id] = name
        answer = results.get(call_id)
        if answer is not None and answer not in placed:
            placed.add(answer)
            out.append(_function_result(messages[answer], name))
    return out


def _result_name(msg: Mapping[str, Any], names: Mapping[str, str], i: int) -> str:
    call_id = msg.get("tool_call_id")
    name = msg.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
    if not isinstance(name, str) or not name:
        raise TranslationError(
            "a tool result must answer an earlier tool call: GigaChat needs the function's name",
            param=f"messages[{i}].tool_call_id",
        )
    return name


def _function_result(msg: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {"role": "function", "name": name, "content": _json_object_text(msg.get("content"))}


def _json_object_text(content: object) -> str:
    """GigaChat wants a JSON object as a function's result: ``"sunny"`` -> ``{"result":
    "sunny"}``, ``"[1]"`` -> ``{"result": [1]}``; an object's text is kept as it is."""
    text = text_of(content)
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict):
        return text
    return json.dumps({"result": value}, ensure_ascii=False)


def _state_id(call_id: object) -> str | None:
    match = _STATE_ID.fullmatch(call_id) if isinstance(call_id, str) else None
    return match.group(1) if match else None


def _functions(tools: object) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function")
        if not isinstance(fn, Mapping) or not fn.get("name"):
            continue
        converted: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            converted["description"] = fn["description"]
        # NOTE: GigaChat requires `parameters`; OpenAI lets a function without arguments omit it.
        converted["parameters"] = fn.get("parameters") or dict(_EMPTY_PARAMETERS)
        converted.update({key: fn[key] for key in _FUNCTION_EXTRAS if key in fn})
        out.append(converted)
    return out


def _function_call(choice: object, functions: list[dict[str, Any]]) -> str | dict[str, Any]:
    if choice == "none":
        return "none"
    if choice == "required" and len(functions) == 1:
        return {"name": functions[0]["name"]}
    if choice == "required":
        raise TranslationError(
            "GigaChat can force one named function but not a call of any of several: name one "
            "in tool_choice, remove tool_choice, or route with drop_unsupported: true",
            param="tool_choice",
            droppable=True,
        )
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if isinstance(name, str) and name:
        return {"name": name}
    return "auto"


def _copy_sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    if isinstance(temperature, int | float) and temperature <= 0:
        temperature = None
        top_p = 0 if top_p is None else top_p
    if temperature is not None:
        out["temperature"] = temperature
    if top_p is not None:
        out["top_p"] = top_p
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    out.update({key: body[key] for key in _PASSTHROUGH if body.get(key) is not None})
    effort = body.get("reasoning_effort")
    if effort in _REASONING_EFFORTS:
        out["reasoning_effort"] = "high" if effort == "xhigh" else effort


def _response_format(response_format: object) -> dict[str, Any] | None:
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(schema, Mapping):
        return None
    out: dict[str, Any] = {"type": "json_schema", "schema": schema}
    if isinstance(spec.get("strict"), bool):
        out["strict"] = spec["strict"]
    return out


# --- responses ------------------------------------------------------------------------------


def gigachat_to_openai_chat(
    resp: Mapping[str, Any], *, completion_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A non-streaming GigaChat response -> an OpenAI ``chat.completion``.

    ``function_call`` becomes the one entry of ``tool_calls`` (arguments as a JSON string) with
    finish_reason ``tool_calls``; ``length`` -> ``length``, ``blacklist`` -> ``content_filter``,
    anything else -> ``stop``. Example: ``{"choices": [{"index": 0, "finish_reason": "stop",
    "message": {"role": "assistant", "content": "Hi"}}], "model": "GigaChat", "usage":
    {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}`` -> a completion whose
    ``choices[0].message.content`` is ``"Hi"``.
    """
    choices = resp.get("choices")
    return {
        "id": completion_id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": _created(resp, created),
        "model": resp.get("model", ""),
        "choices": [
            _choice_to_openai(choice, i)
            for i, choice in enumerate(choices if isinstance(choices, list) else ())
            if isinstance(choice, Mapping)
        ],
        "usage": _usage(resp.get("usage")),
    }


def gigachat_embed_to_openai(resp: Mapping[str, Any]) -> dict[str, Any]:
    """A GigaChat embeddings response -> an OpenAI embeddings list.

    GigaChat counts tokens per input; the counts are summed into OpenAI's ``usage``. Example:
    ``{"object": "list", "model": "Embeddings", "data": [{"object": "embedding", "index": 0,
    "embedding": [0.5], "usage": {"prompt_tokens": 2}}]}`` -> ``{"object": "list", "data":
    [{"object": "embedding", "embedding": [0.5], "index": 0}], "model": "Embeddings", "usage":
    {"prompt_tokens": 2, "total_tokens": 2}}``.
    """
    data: list[dict[str, Any]] = []
    tokens = 0
    items = resp.get("data")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, Mapping):
            continue
        usage = item.get("usage")
        tokens += int(usage.get("prompt_tokens") or 0) if isinstance(usage, Mapping) else 0
        embedding = item.get("embedding") or []
        data.append({"object": "embedding", "embedding": embedding, "index": item.get("index", i)})
    return {
        "object": "list",
        "data": data,
        "model": resp.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _created(resp: Mapping[str, Any], created: int | None) -> int:
    if created is not None:
        return created
    value = resp.get("created")
    return value if isinstance(value, int) else now()


def _choice_to_openai(choice: Mapping[str, Any], position: int) -> dict[str, Any]:
    msg = choice.get("message") or {}
    call = _tool_call(msg.get("function_call"), msg.get("functions_state_id"))
    content = msg.get("content") or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or call is None else None,
        "refusal": None,
    }
    if call is not None:
        message["tool_calls"] = [call]
    return {
        "index": choice.get("index", position),
        "message": message,
        "logprobs": None,
        "finish_reason": _finish_reason(choice.get("finish_reason"), called=call is not None),
    }


def _tool_call(function_call: object, state_id: object) -> dict[str, Any] | None:
    if not isinstance(function_call, Mapping) or not function_call.get("name"):
        return None
    return {
        "id": _call_id(state_id),
        "type": "function",
        "function": {
            "name": function_call["name"],
            "arguments": dump_arguments(function_call.get("arguments")),
        },
    }


def _call_id(state_id: object) -> str:
    """``call_<functions_state_id>`` when GigaChat gave one, else a random ``call_<hex>``."""
    if isinstance(state_id, str):
        try:
            return f"call_{uuid.UUID(state_id)}"
        except ValueError:
            pass
    return new_id("call_")


def _finish_reason(reason: object, *, called: bool) -> str:
    if called:
        return "tool_calls"
    return _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _usage(usage: object) -> dict[str, Any]:
    """GigaChat's prompt_tokens leave out ``precached_prompt_tokens``; OpenAI's include them
    (and report them as ``cached_tokens``): ``{"prompt_tokens": 14, "completion_tokens": 2,
    "precached_prompt_tokens": 30}`` -> ``{"prompt_tokens": 44, "completion_tokens": 2,
    "total_tokens": 46, "prompt_tokens_details": {"cached_tokens": 30}}``."""
    usage = usage if isinstance(usage, Mapping) else {}
    cached = usage.get("precached_prompt_tokens") or 0
    prompt = (usage.get("prompt_tokens") or 0) + cached
    completion = usage.get("completion_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


# --- streams --------------------------------------------------------------------------------


class GigaChatToOpenAIStream(OpenAIChunkStream):
    """Decoded GigaChat SSE chunks -> OpenAI ``chat.completion.chunk`` objects.

    GigaChat sends a call whole, in one delta: it becomes one tool_calls delta (index 0, the id,
    name and all arguments). The finish_reason gets its own chunk with an empty delta. GigaChat
    puts usage on its last chunk with choices, asked or not: with `include_usage` it becomes the
    final choices-less chunk (sent by `finish`, at ``[DONE]``), otherwise it is dropped. An
    ``{"error": ...}`` chunk becomes an OpenAI error chunk and ends the stream.

    Example: ``feed({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]})``
    -> ``[<role chunk>, <chunk with delta {"content": "Hi"}>]``.
    """

    __slots__ = ("_called", "_finished", "_state_id", "_usage")

    def __init__(self, model: str, *, include_usage: bool, created: int, chunk_id: str) -> None:
        super().__init__(model, include_usage=include_usage, created=created, chunk_id=chunk_id)
        self._finished = False
        self._called = False
        self._state_id: object = None
        self._usage: Mapping[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one decoded ``data:`` chunk (not ``[DONE]``)."""
        if self._done:
            return []
        if chunk.get("error"):
            self._done = True
            return [to_openai_error(chunk)]
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        out: list[dict[str, Any]] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """End of the upstream stream: the usage chunk when asked for and known."""
        if self._done:
            return []
        self._done = True
        if not (self._include_usage and self._finished and self._usage is not None):
            return []
        return [self._usage_chunk(_usage(self._usage))]

    def _choice(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self._finished:
            return []
        out = self._start()
        delta = choice.get("delta") or {}
        if delta.get("functions_state_id"):
            self._state_id = delta["functions_state_id"]
        content = delta.get("content")
        # NOTE: role function_in_progress reports a built-in function's progress, not an answer.
        if isinstance(content, str) and content and delta.get("role") != "function_in_progress":
            out.append(self._chunk({"content": content}))
        call = _tool_call(delta.get("function_call"), self._state_id)
        if call is not None and not self._called:
            self._called = True
            out.append(self._chunk({"tool_calls": [{"index": 0, **call}]}))
        reason = choice.get("finish_reason")
        if reason:
            self._finished = True
            out.append(self._chunk({}, _finish_reason(reason, called=self._called)))
        return out
