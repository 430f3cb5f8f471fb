"""OpenAI chat/completions/embeddings -> Ollama's native API (``/api/chat``, ``/api/generate``,
``/api/embed``) and back, including the NDJSON stream lines.

Example::

    >>> body = openai_chat_to_ollama({"model": "llama3", "max_tokens": 64,
    ...     "messages": [{"role": "user", "content": "Hi"}]})
    >>> body["messages"], body["stream"], body["options"]
    ([{'role': 'user', 'content': 'Hi'}], False, {'num_predict': 64})

``stream`` is always set explicitly (Ollama streams by default). Sampling goes to ``options``:
temperature, top_p, top_k (an Anthropic client's), num_predict (from max_completion_tokens or
max_tokens), stop, seed, frequency_penalty, presence_penalty. ``response_format`` becomes
``format`` (``"json"`` or the schema). Images must be data: URLs (Ollama takes base64 only and
this layer fetches nothing); an http URL raises `TranslationError`.

``n`` above 1 is a `TranslationError`; ``logit_bias``, ``logprobs``, a forced ``tool_choice``
and the like are refused before translation (`runtime.translate.unsupported`). ``tool_choice``
``none`` sends no tools; ``allowed_tools`` in ``auto`` mode sends only the allowed ones.
Audio (``input_audio``) and ``file`` parts raise `TranslationError` naming the part. Dropped:
``n: 1``, ``user``, ``reasoning_effort``, ``service_tier``, ``stream_options`` (usage always
arrives on the final line), image ``detail`` (Ollama has no such setting); in responses the
model's ``thinking`` and Ollama's timing fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runtime.translate import TranslationError
from runtime.translate.common import (
    OpenAIChunkStream,
    embeddings_as_base64,
    narrow_allowed_tools,
    new_id,
    now,
    one_choice,
    parse_arguments,
    parse_data_url,
    single_prompt,
    text_embedding_request,
    text_of,
)
from runtime.translate.errors import to_openai_error
from runtime.translate.shapes import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    check_types,
)

__all__ = [
    "OllamaToCompletionsStream",
    "OllamaToOpenAIStream",
    "completions_to_ollama",
    "embeddings_to_ollama",
    "ollama_chat_to_openai",
    "ollama_embed_to_openai",
    "ollama_generate_to_completions",
    "openai_chat_to_ollama",
]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_REFUSED_PARTS = {"input_audio": "audio", "file": "files"}
_OPTION_KEYS = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")


def openai_chat_to_ollama(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body -> an Ollama ``/api/chat`` body.

    Tool results carry ``tool_name``, found from the assistant call with the same id.
    """
    check_types(body, ChatRequest)
    body = narrow_allowed_tools(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    one_choice(body)
    out["messages"] = _messages_to_ollama(body.get("messages"))
    out["stream"] = bool(body.get("stream"))
    tools = [t for t in body.get("tools") or () if t.get("type", "function") == "function"]
    if tools and body.get("tool_choice") != "none":  # NOTE: Ollama has no tool_choice
        out["tools"] = tools
    options = _options(body)
    if options:
        out["options"] = options
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    return out


def completions_to_ollama(body: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy OpenAI ``/v1/completions`` body -> an Ollama ``/api/generate`` body.

    Example: ``{"model": "m", "prompt": "def f(", "suffix": ")"}`` -> ``{"model": "m",
    "prompt": "def f(", "stream": False, "suffix": ")"}``. ``echo``, ``best_of``, ``n``,
    ``logprobs`` and ``logit_bias`` are dropped.
    """
    check_types(body, CompletionRequest)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    out["prompt"] = single_prompt(body)
    one_choice(body)
    out["stream"] = bool(body.get("stream"))
    if isinstance(body.get("suffix"), str):
        out["suffix"] = body["suffix"]
    options = _options(body)
    if options:
        out["options"] = options
    return out


def embeddings_to_ollama(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/embeddings`` body -> an Ollama ``/api/embed`` body.

    Token-id input cannot be expressed and raises `TranslationError`; ``encoding_format`` is
    applied to the answer (`runtime.translate.common.embeddings_as_base64`); ``user`` is dropped.
    Example:
    ``{"model": "e", "input": ["a", "b"]}`` -> ``{"model": "e", "input": ["a", "b"]}``.
    """
    check_types(body, EmbeddingRequest)
    out = text_embedding_request(body)
    if body.get("dimensions") is not None:
        out["dimensions"] = body["dimensions"]
    return out


def _messages_to_ollama(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise TranslationError("messages must be a list", param="messages")
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TranslationError("message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role == "tool":
            out.append(_tool_result(msg, names))
            continue
        if role not in _ROLES:
            raise TranslationError(f"unsupported role {role!r}", param=f"messages[{i}].role")
        content = msg.get("content")
        converted: dict[str, Any] = {"role": _ROLES[role], "content": text_of(content)}
        images = _images(content, i)
        if images:
            converted["images"] = images
        calls = msg.get("tool_calls")
        if role == "assistant" and calls:
            converted["tool_calls"] = [_tool_call_to_ollama(call, names) for call in calls]
        out.append(converted)
    return out


def _tool_call_to_ollama(call: Mapping[str, Any], names: dict[str, str]) -> dict[str, Any]:
    fn = call.get("function") or {}
    name = fn.get("name", "")
    converted: dict[str, Any] = {
        "function": {"name": name, "arguments": parse_arguments(fn.get("arguments"))}
    }
    call_id = call.get("id")
    if isinstance(call_id, str) and call_id:
        names[call_id] = name
        converted["id"] = call_id
    return converted


def _tool_result(msg: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    converted: dict[str, Any] = {"role": "tool", "content": text_of(msg.get("content"))}
    call_id = msg.get("tool_call_id")
    name = msg.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
    if name:
        converted["tool_name"] = name
    if isinstance(call_id, str) and call_id:
        converted["tool_call_id"] = call_id
    return converted


def _images(content: object, i: int) -> list[str]:
    """The base64 images of a message's parts; audio and file parts, which Ollama cannot take,
    raise `TranslationError` naming the part."""
    images: list[str] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if isinstance(kind, str) and kind in _REFUSED_PARTS:
            raise TranslationError(
                f"Ollama takes text and images only, not {_REFUSED_PARTS[kind]}",
                param=f"messages[{i}].content[{j}]",
            )
        if kind != "image_url" or not isinstance(part, Mapping):
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        parsed = parse_data_url(url) if isinstance(url, str) else None
        if parsed is None:
            raise TranslationError(
                "Ollama accepts only base64 images; send a data: URL",
                param=f"messages[{i}].content[{j}].image_url",
            )
        images.append(parsed[1])
    return images


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = {key: body[key] for key in _OPTION_KEYS if body.get(key) is not None}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        options["stop"] = list(stop)
    return options


def _format(response_format: object) -> object:
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


# --- responses ------------------------------------------------------------------------------


def ollama_chat_to_openai(
    resp: Mapping[str, Any], *, completion_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A non-streaming ``/api/chat`` response -> an OpenAI ``chat.completion``.

    Usage comes from ``prompt_eval_count``/``eval_count``; ``done_reason`` ``length`` ->
    ``length``, anything else -> ``stop``, and ``tool_calls`` whenever the message calls tools.
    """
    msg = resp.get("message") or {}
    calls = _tool_calls_to_openai(msg.get("tool_calls"), 0)
    content = msg.get("content") or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls else _finish_reason(resp.get("done_reason"))
    return {
        "id": completion_id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now() if created is None else created,
        "model": resp.get("model", ""),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(resp),
    }


def ollama_generate_to_completions(
    resp: Mapping[str, Any], *, completion_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A non-streaming ``/api/generate`` response -> a legacy OpenAI ``text_completion``."""
    return {
        "id": completion_id or new_id("cmpl-"),
        "object": "text_completion",
        "created": now() if created is None else created,
        "model": resp.get("model", ""),
        "choices": [
            {
                "text": resp.get("response") or "",
                "index": 0,
                "logprobs": None,
                "finish_reason": _finish_reason(resp.get("done_reason")),
            }
        ],
        "usage": _usage(resp),
    }


def ollama_embed_to_openai(
    resp: Mapping[str, Any], *, model: str | None = None, encoding_format: str = "float"
) -> dict[str, Any]:
    """An ``/api/embed`` response -> an OpenAI embeddings list.

    With ``encoding_format="base64"`` each vector is little-endian float32 bytes in base64, as
    OpenAI sends it. Example: ``{"model": "e", "embeddings": [[0.5]], "prompt_eval_count": 2}``
    -> ``{"object": "list", "data": [{"object": "embedding", "embedding": [0.5], "index": 0}],
    "model": "e", "usage": {"prompt_tokens": 2, "total_tokens": 2}}``.
    """
    data = [
        {"object": "embedding", "embedding": vector, "index": i}
        for i, vector in enumerate(resp.get("embeddings") or ())
    ]
    tokens = resp.get("prompt_eval_count") or 0
    out = {
        "object": "list",
        "data": data,
        "model": model if model is not None else resp.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return embeddings_as_base64(out) if encoding_format == "base64" else out


def _tool_calls_to_openai(calls: object, first_index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for offset, call in enumerate(calls if isinstance(calls, list) else ()):
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        out.append(
            {
                "index": first_index + offset,
                "id": call.get("id") or new_id("call_"),
                "type": "function",
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments or {}, ensure_ascii=False),
                },
            }
        )
    return out


def _finish_reason(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def _usage(resp: Mapping[str, Any]) -> dict[str, Any]:
    prompt = resp.get("prompt_eval_count") or 0
    completion = resp.get("eval_count") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- streams --------------------------------------------------------------------------------


class OllamaToOpenAIStream(OpenAIChunkStream):
    """Decoded ``/api/chat`` NDJSON lines -> OpenAI ``chat.completion.chunk`` objects.

    Ollama sends each tool call whole, so each becomes one tool_calls delta with its full
    arguments. The ``done`` line gives the finish chunk, then the usage chunk when
    `include_usage`. A ``{"error": ...}`` line becomes an OpenAI error chunk. Nothing is invented
    for a stream that ends before ``done``.

    Example: ``feed({"message": {"role": "assistant", "content": "Hi"}, "done": False})`` ->
    ``[<role chunk>, <chunk with delta {"content": "Hi"}>]``.
    """

    __slots__ = ("_tools",)

    def __init__(self, model: str, *, include_usage: bool, created: int, chunk_id: str) -> None:
        super().__init__(model, include_usage=include_usage, created=created, chunk_id=chunk_id)
        self._tools = 0

    def feed(self, line: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one decoded NDJSON line."""
        if self._done:
            return []
        if line.get("error"):
            self._done = True
            return [to_openai_error(line)]
        out = self._start()
        msg = line.get("message") or {}
        content = msg.get("content")
        if isinstance(content, str) and content:
            out.append(self._chunk({"content": content}))
        calls = _tool_calls_to_openai(msg.get("tool_calls"), self._tools)
        for call in calls:
            out.append(self._chunk({"tool_calls": [call]}))
        self._tools += len(calls)
        if line.get("done"):
            self._done = True
            finish = "tool_calls" if self._tools else _finish_reason(line.get("done_reason"))
            out.append(self._chunk({}, finish))
            if self._include_usage:
                out.append(self._usage_chunk(_usage(line)))
        return out


class OllamaToCompletionsStream(OpenAIChunkStream):
    """Decoded ``/api/generate`` NDJSON lines -> legacy OpenAI ``text_completion`` chunks.

    Text chunks are built here (no role chunk, no ``usage`` key); only the usage chunk comes
    from `OpenAIChunkStream`.

    Example: ``feed({"response": "Hi", "done": False})`` -> ``[{"id": ..., "object":
    "text_completion", ..., "choices": [{"text": "Hi", "index": 0, "logprobs": None,
    "finish_reason": None}]}]``.
    """

    __slots__ = ()

    def feed(self, line: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one decoded NDJSON line."""
        if self._done:
            return []
        if line.get("error"):
            self._done = True
            return [to_openai_error(line)]
        out: list[dict[str, Any]] = []
        text = line.get("response")
        if isinstance(text, str) and text:
            out.append(self._text_chunk(text, None))
        if line.get("done"):
            self._done = True
            out.append(self._text_chunk("", _finish_reason(line.get("done_reason"))))
            if self._include_usage:
                out.append(self._usage_chunk(_usage(line), object="text_completion"))
        return out

    def _text_chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": self._chunk_id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }
