"""Mock LLM providers served on a real loopback socket, for Interlock's integration tests.

One `MockUpstream` speaks four wire protocols on their usual paths, so a test can point several
Interlock upstreams at base URLs of the same server:

    OpenAI     POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses;
               GET /v1/models
    Anthropic  POST /v1/messages, /v1/messages/count_tokens
    Ollama     POST /api/chat, /api/generate, /api/embed; GET /api/tags
    GigaChat   POST /api/v2/oauth, /api/v1/chat/completions; GET /api/v1/models

Default behaviour is deterministic: a chat reply is ``"echo: <last user text>"``; usage counts
whitespace-separated words; when the request offers tools and the last message is the user's, the
reply calls the first tool with arguments built from its schema (``{"city": "Paris"}`` for a
``city`` string); with a JSON schema for the answer (chat ``response_format``, Responses
``text.format``, Ollama ``format``) the reply is JSON built from it the same way. Streams split
text at words and tool arguments into several deltas.

Credentials: OpenAI needs ``Authorization: Bearer``; Anthropic needs ``anthropic-version`` and a key
in ``x-api-key`` or ``Authorization: Bearer`` (anthropic SDK 2.x sends the latter); any key passes
unless ``required_key`` is set. GigaChat chat needs a live token from ``POST /api/v2/oauth``.

    with MockUpstream() as up:
        httpx.post(f"{up.url}/v1/chat/completions", headers={"authorization": "Bearer k"},
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        # -> choices[0].message.content == "echo: hi"; up.requests[-1].body["model"] == "m"
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import difflib
import hashlib
import itertools
import json
import logging
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qsl

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "GIGACHAT_CREDENTIALS",
    "GIGACHAT_SCOPES",
    "PROTOCOLS",
    "Behaviour",
    "CloseMidStream",
    "Delay",
    "Hang",
    "Malformed",
    "MockUpstream",
    "RecordedRequest",
    "Reply",
    "SlowBody",
    "SlowStream",
    "Status",
    "StreamError",
    "example_arguments",
]

_LOG: Final = logging.getLogger("tests.upstreams")
PROTOCOLS: Final = ("openai", "anthropic", "ollama", "gigachat")
GIGACHAT_CREDENTIALS: Final = base64.b64encode(b"interlock-client:interlock-secret").decode()
GIGACHAT_SCOPES: Final = frozenset({"GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"})
_OAUTH_PATH: Final = "/api/v2/oauth"
_DONE: Final = b"data: [DONE]\n\n"
_BROKEN_JSON: Final = b'{"id": "mock-broken", "choices": [{"index": 0, "message": '
_UUID: Final = re.compile(r"^[0-9a-fA-F-]{36}$")

# ---------------------------------------------------------------------------------------------
# Scripted behaviours: queued with MockUpstream.script(), consumed one per request.


@dataclass(frozen=True)
class Status:
    """Answer `code`; `body` None gives the provider's own error shape, str/bytes go out raw."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Delay:
    """Wait `before_headers_s` before the status line (first-byte timeout), then do `then`."""

    before_headers_s: float
    then: Behaviour | None = None


@dataclass(frozen=True)
class SlowBody:
    """Send headers at once, then the body in `chunks` pieces (events when streaming) apart."""

    chunk_delay_s: float
    chunks: int = 4


@dataclass(frozen=True)
class Malformed:
    """200 with invalid JSON (streams: one good event, then an event whose data is not JSON)."""


@dataclass(frozen=True)
class CloseMidStream:
    """Drop the connection after `after_events` events, with no terminator (non-stream: half)."""

    after_events: int = 2


@dataclass(frozen=True)
class SlowStream:
    """A long stream: `events` text deltas, `interval_s` between any two events."""

    events: int = 20
    interval_s: float = 0.05


@dataclass(frozen=True)
class Hang:
    """Never answer; ends when the client disconnects (counted in `cancelled`) or on stop()."""


@dataclass(frozen=True)
class StreamError:
    """Stream `after_events` events, then the protocol's in-stream error (non-stream: 500)."""

    after_events: int = 1
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


@dataclass(frozen=True)
class Reply:
    """Override the model's answer: a given `text`, or a call to `tool` with `arguments`."""

    text: str | None = None
    tool: str | None = None
    arguments: Mapping[str, Any] | None = None


Behaviour = (
    Status | Delay | SlowBody | Malformed | CloseMidStream | SlowStream | Hang | StreamError | Reply
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the mock saw it; `body` is parsed JSON, a form dict, raw bytes or None."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any
    raw: bytes
    time: float
    protocol: str


# ---------------------------------------------------------------------------------------------
# The "model": conversation in, deterministic answer out.


@dataclass(frozen=True)
class _ToolCall:
    name: str
    arguments: Mapping[str, Any]
    id: str

    @property
    def arguments_json(self) -> str:
        return json.dumps(dict(self.arguments), ensure_ascii=False)


@dataclass(frozen=True)
class _Answer:
    pieces: tuple[str, ...]
    tool: _ToolCall | None
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return _words(self.tool.arguments_json if self.tool else self.text)

    @property
    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


@dataclass(frozen=True)
class _Conversation:
    last_user_text: str
    prompt_tokens: int
    tools: tuple[tuple[str, Any], ...] = ()
    forced_tool: str | None = None
    tools_disabled: bool = False
    awaiting_answer: bool = False
    schema: Any = None  # the JSON schema the answer must follow


class _BadRequest(Exception):
    """The request is invalid for its protocol; answered with 400 in that protocol's shape."""


def _words(text: str) -> int:
    return len(text.split())


def _split_words(text: str) -> tuple[str, ...]:
    """'echo: hi there' -> ('echo: ', 'hi ', 'there'); joins back to the input."""
    return tuple(part for part in re.split(r"(?<=\s)(?=\S)", text) if part)


def _split_even(text: str, parts: int = 3) -> tuple[str, ...]:
    size = max(1, -(-len(text) // parts))
    return tuple(text[i : i + size] for i in range(0, len(text), size))


def _split_bytes(data: bytes, parts: int) -> tuple[bytes, ...]:
    size = max(1, -(-len(data) // max(1, parts)))
    return tuple(data[i : i + size] for i in range(0, len(data), size)) or (b"",)


def stream_stopping_short(protocol: str) -> Status:
    """A well-formed HTTP answer whose stream stops before its terminator (no ``[DONE]``,
    ``message_stop`` or Ollama ``done`` line) after the text "half"."""
    if protocol == "anthropic":
        start: dict[str, Any] = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        }
        events: list[dict[str, Any]] = [
            start,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "half"},
            },
        ]
        body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return Status(200, headers={"content-type": "text/event-stream"}, body=body)
    if protocol == "ollama":
        line = {
            "model": "m",
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "half"},
            "done": False,
        }
        return Status(
            200, headers={"content-type": "application/x-ndjson"}, body=json.dumps(line) + "\n"
        )
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "half"}, "finish_reason": None}
        ],
    }
    return Status(
        200, headers={"content-type": "text/event-stream"}, body=f"data: {json.dumps(chunk)}\n\n"
    )


def example_arguments(schema: Any) -> dict[str, Any]:
    """Deterministic arguments valid for a JSON schema.

    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    -> {"city": "Paris"}
    """
    value = _example(schema or {"type": "object"}, "")
    return value if isinstance(value, dict) else {}


def _example(schema: Any, name: str) -> Any:
    if not isinstance(schema, Mapping):
        return "example"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required")
        return {
            k: _example(v, k) for k, v in properties.items() if required is None or k in required
        }
    scalars: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    if kind == "array":
        return [_example(schema.get("items", {}), name)]
    if kind in scalars:
        return schema.get("minimum", scalars[kind])
    return "Paris" if name.lower() in {"city", "location", "place", "town"} else "example"


def _text_of(content: Any) -> str:
    """Plain text of a message content: a string, or text/tool_result blocks joined by spaces."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = (_block_text(block) for block in content)
    return " ".join(text for text in texts if text)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    if block.get("type") == "tool_result":
        return _text_of(block.get("content"))
    text = block.get("text")
    return text if isinstance(text, str) else ""


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: field required (a non-empty list)")
    return [message for message in messages if isinstance(message, Mapping)]


def _last_user_text(messages: list[Mapping[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return _text_of(users[-1].get("content")) if users else ""


def _prompt_tokens(messages: list[Mapping[str, Any]], system: Any = None) -> int:
    return _words(_text_of(system)) + sum(_words(_text_of(m.get("content"))) for m in messages)


def _listed(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _function_tools(body: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    functions = (tool.get("function") for tool in _listed(body.get("tools")))
    return tuple(
        (f.get("name", ""), f.get("parameters")) for f in functions if isinstance(f, Mapping)
    )


def _answer(call: _Call, conversation: _Conversation) -> _Answer:
    override, tool = call.override, None
    text = f"echo: {conversation.last_user_text}"
    schemas = dict(conversation.tools)
    if isinstance(override, Reply) and override.tool:
        arguments = override.arguments
        if arguments is None:
            arguments = example_arguments(schemas.get(override.tool))
        tool = _ToolCall(override.tool, arguments, f"mock{call.seq}")
    elif isinstance(override, Reply) and override.text is not None:
        text = override.text
    elif isinstance(override, SlowStream):
        text = "".join(f"tick{i} " for i in range(override.events))
    elif conversation.awaiting_answer and conversation.tools and not conversation.tools_disabled:
        name = conversation.forced_tool or conversation.tools[0][0]
        tool = _ToolCall(name, example_arguments(schemas.get(name)), f"mock{call.seq}")
    elif conversation.schema is not None:
        text = json.dumps(example_arguments(conversation.schema))
    return _Answer(() if tool else _split_words(text), tool, conversation.prompt_tokens)


# ---------------------------------------------------------------------------------------------
# Wire encodings.


@dataclass(frozen=True)
class _Rendered:
    chunks: tuple[bytes, ...]
    media_type: str
    streaming: bool


@dataclass(frozen=True)
class _Call:
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    stream: bool
    seq: int
    tokens: _TokenStore
    override: Reply | SlowStream | None = None

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else "mock-model"


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    return (f"event: {event}\n" if event else "").encode() + b"data: " + _encode(data) + b"\n\n"


def _json_doc(value: Any) -> _Rendered:
    return _Rendered((_encode(value),), "application/json", False)


def _sse_doc(events: Iterable[bytes]) -> _Rendered:
    return _Rendered(tuple(events), "text/event-stream; charset=utf-8", True)


def _ndjson_doc(lines: Iterable[Any]) -> _Rendered:
    return _Rendered(tuple(_encode(line) + b"\n" for line in lines), "application/x-ndjson", True)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _vector(text: str, dims: int) -> list[float]:
    """Deterministic embedding; every value k/128 so float32 and JSON agree exactly."""
    values: list[float] = []
    for counter in itertools.count():
        values.extend(
            (b - 128) / 128 for b in hashlib.sha256(f"{counter}:{text}".encode()).digest()
        )
        if len(values) >= dims:
            return values[:dims]
    raise AssertionError("unreachable")


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    raise _BadRequest("input: field required")


# --- OpenAI ----------------------------------------------------------------------------------


def _openai_conversation(body: Mapping[str, Any]) -> _Conversation:
    messages = _messages(body)
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        forced = choice["function"].get("name")
    response_format = body.get("response_format")
    spec = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
    return _Conversation(
        _last_user_text(messages),
        _prompt_tokens(messages),
        _function_tools(body),
        forced,
        choice == "none",
        messages[-1].get("role") == "user",
        spec.get("schema") if isinstance(spec, Mapping) else None,
    )


def _openai_chat_message(answer: _Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": answer.text, "refusal": None}
    function = {"name": answer.tool.name, "arguments": answer.tool.arguments_json}
    call = {"id": f"call_{answer.tool.id}", "type": "function", "function": function}
    return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}


def _openai_head(call: _Call, kind: str, prefix: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-mock{call.seq}",
        "object": kind,
        "created": int(time.time()),
        "model": call.model,
    }


def _render_openai_chat(call: _Call) -> _Rendered:
    answer = _answer(call, _openai_conversation(call.body))
    finish = "tool_calls" if answer.tool else "stop"
    if not call.stream:
        choice = {
            "index": 0,
            "message": _openai_chat_message(answer),
            "logprobs": None,
            "finish_reason": finish,
        }
        head = _openai_head(call, "chat.completion", "chatcmpl")
        return _json_doc(
            {**head, "choices": [choice], "usage": answer.usage, "system_fingerprint": "fp_mock"}
        )
    head = {
        **_openai_head(call, "chat.completion.chunk", "chatcmpl"),
        "system_fingerprint": "fp_mock",
    }
    deltas = _openai_chat_deltas(answer)
    choices = [_openai_choice(d, None) for d in deltas] + [_openai_choice({}, finish)]
    return _openai_stream(call, head, choices, answer.usage)


def _openai_choice(delta: dict[str, Any], finish: str | None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


def _openai_chat_deltas(answer: _Answer) -> list[dict[str, Any]]:
    if answer.tool is None:
        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        return [first, *({"content": piece} for piece in answer.pieces)]
    function = {"name": answer.tool.name, "arguments": ""}
    opening = {"index": 0, "id": f"call_{answer.tool.id}", "type": "function", "function": function}
    first = {"role": "assistant", "content": None, "tool_calls": [opening]}
    pieces = _split_even(answer.tool.arguments_json)
    return [first, *({"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces)]


def _openai_stream(
    call: _Call, head: dict[str, Any], choices: list[list[dict[str, Any]]], usage: dict[str, int]
) -> _Rendered:
    """Chunks, then (stream_options.include_usage) a usage chunk with no choices, then [DONE]."""
    options = call.body.get("stream_options")
    with_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    extra = {"usage": None} if with_usage else {}
    events = [_sse({**head, "choices": c, **extra}) for c in choices]
    if with_usage:
        events.append(_sse({**head, "choices": [], "usage": usage}))
    return _sse_doc([*events, _DONE])


def _responses_conversation(body: Mapping[str, Any]) -> _Conversation:
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else _listed(given)
    if not items:
        raise _BadRequest("input: field required (a string or a non-empty list)")
    messages = [
        {"role": i.get("role"), "content": _text_of(_parts(i.get("content")))}
        for i in items
        if i.get("type", "message") == "message"
    ]
    tools = tuple((t.get("name", ""), t.get("parameters")) for t in _listed(body.get("tools")))
    choice = body.get("tool_choice")
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    return _Conversation(
        _last_user_text(messages),
        _prompt_tokens(messages, body.get("instructions")),
        tools,
        choice.get("name") if isinstance(choice, Mapping) else None,
        choice == "none",
        items[-1].get("type", "message") == "message" and items[-1].get("role") == "user",
        fmt.get("schema") if isinstance(fmt, Mapping) else None,
    )


def _parts(content: Any) -> Any:
    """Responses parts (``input_text``/``output_text``) as text blocks, for `_text_of`."""
    if not isinstance(content, list):
        return content
    return [{"text": p.get("text", "")} for p in _listed(content) if "text" in p]


def _responses_output(call: _Call, answer: _Answer, done: bool) -> list[dict[str, Any]]:
    if answer.tool is not None:
        arguments = answer.tool.arguments_json if done else ""
        return [
            {"id": f"fc_mock{call.seq}", "type": "function_call",
             "call_id": f"call_{answer.tool.id}", "name": answer.tool.name, "arguments": arguments,
             "status": "completed" if done else "in_progress"}
        ]  # fmt: skip
    content = [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}]
    return [
        {"id": f"msg_mock{call.seq}", "type": "message", "role": "assistant",
         "status": "completed" if done else "in_progress", "content": content if done else []}
    ]  # fmt: skip


def _render_openai_responses(call: _Call) -> _Rendered:
    """The Responses API: the answer as output items; a stream follows the documented event
    order, every event numbered, and ends with ``response.completed`` (no ``[DONE]``)."""
    answer = _answer(call, _responses_conversation(call.body))
    usage = {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }
    response = {
        "id": f"resp_mock{call.seq}", "object": "response", "created_at": int(time.time()),
        "status": "completed", "error": None, "incomplete_details": None,
        "instructions": call.body.get("instructions"), "model": call.model,
        "output": _responses_output(call, answer, done=True), "parallel_tool_calls": True,
        "tool_choice": call.body.get("tool_choice", "auto"), "tools": call.body.get("tools", []),
        "usage": usage,
    }  # fmt: skip
    if not call.stream:
        return _json_doc(response)
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    (item,) = _responses_output(call, answer, done=False)
    (final,) = response["output"]
    at = {"item_id": item["id"], "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
    ]
    if answer.tool is not None:
        events += [
            {"type": "response.function_call_arguments.delta", **at, "delta": piece}
            for piece in _split_even(answer.tool.arguments_json)
        ]
        arguments = answer.tool.arguments_json
        events.append(
            {"type": "response.function_call_arguments.done", **at, "arguments": arguments}
        )
    else:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.append(
            {"type": "response.content_part.added", **at, "content_index": 0, "part": part}
        )
        events += [
            {"type": "response.output_text.delta", **at, "content_index": 0, "delta": piece,
             "logprobs": []}
            for piece in answer.pieces
        ]  # fmt: skip
        events += [
            {"type": "response.output_text.done", **at, "content_index": 0, "text": answer.text,
             "logprobs": []},
            {"type": "response.content_part.done", **at, "content_index": 0,
             "part": final["content"][0]},
        ]  # fmt: skip
    events.append({"type": "response.output_item.done", "output_index": 0, "item": final})
    events.append({"type": "response.completed", "response": response})
    return _sse_doc(
        _sse({**event, "sequence_number": n}, event=event["type"]) for n, event in enumerate(events)
    )


def _render_openai_completions(call: _Call) -> _Rendered:
    prompt = call.body.get("prompt", "")
    text = prompt if isinstance(prompt, str) else " ".join(_embedding_inputs(prompt)[-1:])
    answer = _answer(call, _Conversation(text, _words(text)))
    head = _openai_head(call, "text_completion", "cmpl")
    if not call.stream:
        choice = {"text": answer.text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return _json_doc({**head, "choices": [choice], "usage": answer.usage})
    choices = [
        [{"text": p, "index": 0, "logprobs": None, "finish_reason": None}] for p in answer.pieces
    ]
    choices.append([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}])
    return _openai_stream(call, head, choices, answer.usage)


def _render_openai_embeddings(call: _Call) -> _Rendered:
    inputs = _embedding_inputs(call.body.get("input"))
    dims = call.body.get("dimensions")
    dims = dims if isinstance(dims, int) and dims > 0 else 8
    as_base64 = call.body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = _vector(text, dims)
        packed = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": index, "embedding": packed if as_base64 else vector}
        )
    tokens = sum(max(1, _words(text)) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json_doc({"object": "list", "data": data, "model": call.model, "usage": usage})


def _render_models(call: _Call) -> _Rendered:
    if "anthropic-version" in call.headers:
        names = ("claude-sonnet-4-5", "claude-haiku-4-5")
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
            for n in names
        ]
        return _json_doc(
            {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        )
    models = [
        {"id": n, "object": "model", "created": 1700000000, "owned_by": "openai"}
        for n in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    ]
    return _json_doc({"object": "list", "data": models})


# --- Anthropic -------------------------------------------------------------------------------


def _anthropic_conversation(body: Mapping[str, Any]) -> _Conversation:
    messages = _messages(body)
    tools = tuple((t.get("name", ""), t.get("input_schema")) for t in _listed(body.get("tools")))
    choice = body.get("tool_choice")
    choice = choice if isinstance(choice, Mapping) else {}
    last = messages[-1]
    results = [b for b in _listed(last.get("content")) if b.get("type") == "tool_result"]
    return _Conversation(
        _last_user_text(messages),
        _prompt_tokens(messages, body.get("system")),
        tools,
        choice.get("name") if choice.get("type") == "tool" else None,
        choice.get("type") == "none",
        last.get("role") == "user" and not results,
    )


def _anthropic_message(
    call: _Call, answer: _Answer, content: list[Any], done: bool
) -> dict[str, Any]:
    stop = ("tool_use" if answer.tool else "end_turn") if done else None
    output = answer.completion_tokens if done else 1
    return {
        "id": f"msg_mock{call.seq:06d}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": output},
    }


def _render_anthropic_messages(call: _Call) -> _Rendered:
    if not isinstance(call.body.get("max_tokens"), int):
        raise _BadRequest("max_tokens: Field required")
    answer = _answer(call, _anthropic_conversation(call.body))
    tool = answer.tool
    if not call.stream:
        block: dict[str, Any] = {"type": "text", "text": answer.text}
        if tool:
            block = {
                "type": "tool_use",
                "id": f"toolu_{tool.id}",
                "name": tool.name,
                "input": tool.arguments,
            }
        return _json_doc(_anthropic_message(call, answer, [block], done=True))
    if tool:
        block = {"type": "tool_use", "id": f"toolu_{tool.id}", "name": tool.name, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in _split_even(tool.arguments_json)
        ]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in answer.pieces]
    stop = {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": _anthropic_message(call, answer, [], done=False)}),
        ("content_block_start", {"index": 0, "content_block": block}),
        ("ping", {}),
        *(("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": stop, "usage": {"output_tokens": answer.completion_tokens}}),
        ("message_stop", {}),
    ]
    return _sse_doc(_sse({"type": name, **data}, event=name) for name, data in events)


def _render_anthropic_count(call: _Call) -> _Rendered:
    messages = _messages(call.body)
    return _json_doc({"input_tokens": _prompt_tokens(messages, call.body.get("system"))})


# --- Ollama ----------------------------------------------------------------------------------

_OLLAMA_STATS: Final = {"total_duration": 1_200_000, "load_duration": 100_000}


def _ollama_done(answer: _Answer) -> dict[str, Any]:
    return {
        "done_reason": "stop",
        "done": True,
        **_OLLAMA_STATS,
        "prompt_eval_count": answer.prompt_tokens,
        "prompt_eval_duration": 300_000,
        "eval_count": answer.completion_tokens,
        "eval_duration": 800_000,
    }


def _render_ollama_chat(call: _Call) -> _Rendered:
    messages = _messages(call.body)
    conversation = _Conversation(
        _last_user_text(messages),
        _prompt_tokens(messages),
        _function_tools(call.body),
        awaiting_answer=messages[-1].get("role") == "user",
        schema=call.body.get("format") if isinstance(call.body.get("format"), Mapping) else None,
    )
    answer = _answer(call, conversation)
    head = {"model": call.model, "created_at": _now_iso()}
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool:
        function = {"name": answer.tool.name, "arguments": dict(answer.tool.arguments)}
        message["tool_calls"] = [{"function": function}]
    if not call.stream:
        return _json_doc({**head, "message": message, **_ollama_done(answer)})
    parts = [{"role": "assistant", "content": piece} for piece in answer.pieces]
    if answer.tool:
        parts = [message]
    lines = [{**head, "message": part, "done": False} for part in parts]
    final = {**head, "message": {"role": "assistant", "content": ""}, **_ollama_done(answer)}
    return _ndjson_doc([*lines, final])


def _render_ollama_generate(call: _Call) -> _Rendered:
    prompt = call.body.get("prompt")
    text = prompt if isinstance(prompt, str) else ""
    answer = _answer(call, _Conversation(text, _words(text)))
    head = {"model": call.model, "created_at": _now_iso()}
    if not call.stream:
        return _json_doc(
            {**head, "response": answer.text, "context": [1, 2, 3], **_ollama_done(answer)}
        )
    lines = [{**head, "response": piece, "done": False} for piece in answer.pieces]
    final = {**head, "response": "", "context": [1, 2, 3], **_ollama_done(answer)}
    return _ndjson_doc([*lines, final])


def _render_ollama_embed(call: _Call) -> _Rendered:
    inputs = _embedding_inputs(call.body.get("input"))
    embeddings = [_vector(text, 8) for text in inputs]
    count = sum(max(1, _words(text)) for text in inputs)
    return _json_doc(
        {"model": call.model, "embeddings": embeddings, **_OLLAMA_STATS, "prompt_eval_count": count}
    )


def _render_ollama_tags(call: _Call) -> _Rendered:
    names = ("llama3.2:latest", "nomic-embed-text:latest")
    details = {
        "format": "gguf",
        "family": "llama",
        "parameter_size": "3B",
        "quantization_level": "Q4_K_M",
    }
    models = [
        {"name": n, "model": n, "modified_at": "2025-01-01T00:00:00Z", "size": 2_000_000_000,
         "digest": hashlib.sha256(n.encode()).hexdigest(), "details": details}
        for n in names
    ]  # fmt: skip
    return _json_doc({"models": models})


# --- GigaChat --------------------------------------------------------------------------------


def _gigachat_conversation(body: Mapping[str, Any]) -> _Conversation:
    messages = _messages(body)
    functions = tuple(
        (f.get("name", ""), f.get("parameters")) for f in _listed(body.get("functions"))
    )
    choice = body.get("function_call")
    forced = choice.get("name") if isinstance(choice, Mapping) else None
    return _Conversation(
        _last_user_text(messages),
        _prompt_tokens(messages),
        functions,
        forced,
        choice == "none",
        messages[-1].get("role") == "user",
    )


def _render_gigachat_chat(call: _Call) -> _Rendered:
    answer = _answer(call, _gigachat_conversation(call.body))
    model = call.model if call.body.get("model") else "GigaChat"
    head = {"created": int(time.time()), "model": model, "object": "chat.completion"}
    usage = {**answer.usage, "precached_prompt_tokens": 0}
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    finish = "stop"
    if answer.tool:
        function_call = {"name": answer.tool.name, "arguments": dict(answer.tool.arguments)}
        message.update(
            function_call=function_call,
            functions_state_id=str(uuid.uuid5(uuid.NAMESPACE_OID, answer.tool.id)),
        )
        finish = "function_call"
    if not call.stream:
        choice = {"message": message, "index": 0, "finish_reason": finish}
        return _json_doc({"choices": [choice], **head, "usage": usage})
    deltas = [{"content": piece} for piece in answer.pieces] or [{"content": ""}]
    deltas[0]["role"] = "assistant"
    events = [_sse({"choices": [{"delta": d, "index": 0}], **head}) for d in deltas]
    last = {**message, "content": ""} if answer.tool else {"content": ""}
    final = {
        "choices": [{"delta": last, "index": 0, "finish_reason": finish}],
        **head,
        "usage": usage,
    }
    return _sse_doc([*events, _sse(final), _DONE])


def _render_gigachat_models(call: _Call) -> _Rendered:
    data = [
        {"id": n, "object": "model", "owned_by": "salutedevices"}
        for n in ("GigaChat", "GigaChat-Pro", "GigaChat-Max")
    ]
    return _json_doc({"data": data, "object": "list"})


def _render_gigachat_embeddings(call: _Call) -> _Rendered:
    """GigaChat's embeddings answer: OpenAI's list, with a token count per input."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _vector(text, 8),
            "usage": {"prompt_tokens": max(1, _words(text))},
        }
        for index, text in enumerate(_embedding_inputs(call.body.get("input")))
    ]
    return _json_doc({"object": "list", "data": data, "model": call.model})


def _render_gigachat_token(call: _Call) -> _Rendered:
    token, expires_at_ms = call.tokens.issue()
    return _json_doc({"access_token": token, "expires_at": expires_at_ms})


class _TokenStore:
    """GigaChat access tokens and their expiry (wall clock), shared by both threads."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def issue(self) -> tuple[str, int]:
        token, expires = f"giga-{uuid.uuid4().hex}", time.time() + self.ttl_s
        with self._lock:
            self._expiry[token] = expires
        return token, int(expires * 1000)

    def valid(self, token: str) -> bool:
        with self._lock:
            return self._expiry.get(token, 0.0) > time.time()

    def expire_all(self) -> None:
        with self._lock:
            self._expiry = dict.fromkeys(self._expiry, 0.0)

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._expiry)


# ---------------------------------------------------------------------------------------------
# Endpoints, authentication and plans.

_Auth = Literal["bearer", "anthropic", "models", "none", "gigachat", "basic"]


@dataclass(frozen=True)
class _Endpoint:
    protocol: str
    path: str
    method: str
    auth: _Auth
    render: Callable[[_Call], _Rendered]
    streams: Literal["never", "opt_in", "opt_out"] = "never"

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        if self.streams == "opt_out":
            return body.get("stream", True) is not False
        return self.streams == "opt_in" and body.get("stream") is True


_ENDPOINTS: Final = (
    _Endpoint("openai", "/v1/chat/completions", "POST", "bearer", _render_openai_chat, "opt_in"),
    _Endpoint("openai", "/v1/completions", "POST", "bearer", _render_openai_completions, "opt_in"),
    _Endpoint("openai", "/v1/embeddings", "POST", "bearer", _render_openai_embeddings),
    _Endpoint("openai", "/v1/responses", "POST", "bearer", _render_openai_responses, "opt_in"),
    _Endpoint("openai", "/v1/models", "GET", "models", _render_models),
    _Endpoint(
        "anthropic", "/v1/messages", "POST", "anthropic", _render_anthropic_messages, "opt_in"
    ),
    _Endpoint(
        "anthropic", "/v1/messages/count_tokens", "POST", "anthropic", _render_anthropic_count
    ),
    _Endpoint("ollama", "/api/chat", "POST", "none", _render_ollama_chat, "opt_out"),
    _Endpoint("ollama", "/api/generate", "POST", "none", _render_ollama_generate, "opt_out"),
    _Endpoint("ollama", "/api/embed", "POST", "none", _render_ollama_embed),
    _Endpoint("ollama", "/api/tags", "GET", "none", _render_ollama_tags),
    _Endpoint("gigachat", _OAUTH_PATH, "POST", "basic", _render_gigachat_token),
    _Endpoint(
        "gigachat", "/api/v1/chat/completions", "POST", "gigachat", _render_gigachat_chat, "opt_in"
    ),
    _Endpoint("gigachat", "/api/v1/models", "GET", "gigachat", _render_gigachat_models),
    _Endpoint("gigachat", "/api/v1/embeddings", "POST", "gigachat", _render_gigachat_embeddings),
)
_TARGETS: Final = frozenset({*(e.path for e in _ENDPOINTS), *PROTOCOLS, "*"})
_ANTHROPIC_ERRORS: Final = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    529: "overloaded_error",
}  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """What to put on the wire: status, headers, body chunks and how to pace or break them."""

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    drop_after: int | None = None
    hang: bool = False


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def _error_body(
    protocol: str, status: int, message: str, kind: str | None = None, code: str | None = None
) -> Any:
    if protocol == "anthropic":
        kind = kind or _ANTHROPIC_ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if protocol == "ollama":
        return {"error": message}
    if protocol == "gigachat":
        return {"status": status, "message": message}
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    if status == 429 and kind == "invalid_request_error":
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _body_plan(status: int, payload: bytes, headers: Mapping[str, str] | None = None) -> _Plan:
    merged = {
        "content-type": "application/json",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    merged["content-length"] = str(len(payload))
    return _Plan(status, tuple(merged.items()), (payload,))


def _error_plan(
    protocol: str, status: int, message: str, kind: str | None = None, code: str | None = None
) -> _Plan:
    return _body_plan(status, _encode(_error_body(protocol, status, message, kind, code)))


def _status_plan(protocol: str, status: Status) -> _Plan:
    body = status.body
    if body is None:
        payload = _encode(_error_body(protocol, status.code, _phrase(status.code)))
    else:
        payload = (
            body
            if isinstance(body, bytes)
            else body.encode()
            if isinstance(body, str)
            else _encode(body)
        )
    return _body_plan(status.code, payload, status.headers)


def _stream_error_chunk(protocol: str, error: StreamError) -> bytes:
    if protocol == "anthropic":
        return _sse(
            {"type": "error", "error": {"type": error.error_type, "message": error.message}},
            "error",
        )
    if protocol == "ollama":
        return _encode({"error": error.message}) + b"\n"
    return _sse(
        {"error": {"message": error.message, "type": error.error_type, "param": None, "code": None}}
    )


def _malformed_chunk(protocol: str) -> bytes:
    if protocol == "anthropic":
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'
    if protocol == "ollama":
        return b'{"model": "mock", "message": {"role": \n'
    return b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'


def _build_plan(endpoint: _Endpoint, call: _Call, behaviour: Behaviour | None) -> _Plan:
    """The response for `call` under `behaviour` (None: the default, well-formed answer)."""
    if isinstance(behaviour, Delay):
        inner = _build_plan(endpoint, call, behaviour.then)
        return replace(
            inner, first_byte_delay_s=inner.first_byte_delay_s + behaviour.before_headers_s
        )
    if isinstance(behaviour, Hang):
        return _Plan(200, (), (), hang=True)
    if isinstance(behaviour, Status):
        return _status_plan(endpoint.protocol, behaviour)
    if isinstance(behaviour, StreamError) and not call.stream:
        return _error_plan(endpoint.protocol, 500, behaviour.message, behaviour.error_type)
    if isinstance(behaviour, Reply | SlowStream):
        call = replace(call, override=behaviour)
    try:
        doc = endpoint.render(call)
    except _BadRequest as error:
        return _error_plan(endpoint.protocol, 400, str(error))
    if isinstance(behaviour, Malformed) and not doc.streaming:
        doc = _Rendered((_BROKEN_JSON,), doc.media_type, False)
    return _shape_plan(endpoint.protocol, doc, behaviour, call.seq)


def _shape_plan(protocol: str, doc: _Rendered, behaviour: Behaviour | None, seq: int) -> _Plan:
    headers = [("content-type", doc.media_type), ("x-request-id", f"req_mock{seq}")]
    if protocol == "anthropic":
        headers.append(("request-id", f"req_mock{seq}"))
    if doc.streaming:
        headers.append(("cache-control", "no-cache"))
    else:
        headers.append(("content-length", str(sum(map(len, doc.chunks)))))
    plan = _Plan(200, tuple(headers), doc.chunks)
    if isinstance(behaviour, SlowStream):
        if doc.streaming:
            return replace(plan, chunk_delay_s=behaviour.interval_s)
        return replace(plan, first_byte_delay_s=behaviour.events * behaviour.interval_s)
    if isinstance(behaviour, SlowBody):
        chunks = doc.chunks if doc.streaming else _split_bytes(doc.chunks[0], behaviour.chunks)
        return replace(plan, chunks=chunks, chunk_delay_s=behaviour.chunk_delay_s)
    if isinstance(behaviour, Malformed) and doc.streaming:
        return replace(plan, chunks=(doc.chunks[0], _malformed_chunk(protocol)))
    if isinstance(behaviour, CloseMidStream):
        if doc.streaming:
            return replace(plan, drop_after=behaviour.after_events)
        return replace(plan, chunks=_split_bytes(doc.chunks[0], 2), drop_after=1)
    if isinstance(behaviour, StreamError):
        return replace(
            plan,
            chunks=(
                *doc.chunks[: behaviour.after_events],
                _stream_error_chunk(protocol, behaviour),
            ),
        )
    return plan


def _openai_denial(headers: Mapping[str, str], required: str | None) -> _Plan | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        message = (
            "You didn't provide an API key. Provide it in an Authorization header: Bearer YOUR_KEY."
        )
        return _error_plan("openai", 401, message)
    if required is not None and key != required:
        masked = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
        return _error_plan(
            "openai", 401, f"Incorrect API key provided: {masked}.", code="invalid_api_key"
        )
    return None


def _anthropic_denial(headers: Mapping[str, str], required: str | None) -> _Plan | None:
    # NOTE: anthropic SDK 2.x sends the API key as "Authorization: Bearer"; 0.x sent x-api-key.
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    key = headers.get("x-api-key") or (bearer.strip() if scheme.lower() == "bearer" else "")
    if not key:
        return _error_plan("anthropic", 401, "x-api-key header is required")
    if required is not None and key != required:
        return _error_plan("anthropic", 401, "invalid x-api-key")
    if not headers.get("anthropic-version"):
        return _error_plan("anthropic", 400, "anthropic-version: header is required")
    return None


def _oauth_denial(headers: Mapping[str, str], body: Any, credentials: str) -> _Plan | None:
    if not _UUID.match(headers.get("rquid", "")):
        return _body_plan(400, _encode({"code": 4, "message": "RqUID header must be a uuid4"}))
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or given.strip() != credentials:
        return _body_plan(401, _encode({"code": 6, "message": "credentials doesn't match db data"}))
    scope = body.get("scope") if isinstance(body, Mapping) else None
    if not scope:
        return _body_plan(400, _encode({"code": 5, "message": "scope is empty"}))
    if scope not in GIGACHAT_SCOPES:
        return _body_plan(
            400, _encode({"code": 7, "message": "scope from db not fully includes consumed scope"})
        )
    return None


# ---------------------------------------------------------------------------------------------
# Playing a plan on the ASGI connection.


class _Play:
    """One response in flight; interrupted by the client's disconnect or by stop()."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.event.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when interrupted."""
        if seconds > 0 and not self.event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), seconds)
        return self.event.is_set()


async def _watch_disconnect(receive: Receive, play: _Play) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    play.interrupt("disconnect")


async def _emit(plan: _Plan, send: Send, play: _Play) -> bool:
    """Send `plan`; True when interrupted before it was complete."""
    if plan.hang:
        await play.event.wait()
        return True
    if await play.pause(plan.first_byte_delay_s):
        return True
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]
    await send({"type": "http.response.start", "status": plan.status, "headers": raw_headers})
    for index, chunk in enumerate(plan.chunks):
        if index == plan.drop_after:
            return False
        if index and await play.pause(plan.chunk_delay_s):
            return True
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if plan.drop_after is None:
        # NOTE: returning without this final message makes Hypercorn drop the connection.
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return False


def _lower_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _parse_body(headers: Mapping[str, str], raw: bytes) -> Any:
    if not raw:
        return None
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(raw.decode("utf-8", "replace")))
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class _EndpointApp:
    """ASGI app for one endpoint: record, authenticate, consume a script, play the plan."""

    def __init__(self, mock: MockUpstream, endpoint: _Endpoint) -> None:
        self._mock = mock
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        raw = await request.body()
        record = self._mock._record(self._endpoint, scope, raw)
        plan = self._mock._plan_for(self._endpoint, record)
        await self._mock._serve_plan(plan, receive, send)


# ---------------------------------------------------------------------------------------------
# The server.


class MockUpstream:
    """All four providers on one loopback port, served by Hypercorn in a background thread.

    Thread-safe from the test thread: `script`, `reset`, `requests`, counters and settings.
    Settings (`required_key`, `gigachat_credentials`, `gigachat_token_ttl_s`) apply to the
    next request; `reset()` restores the values given to the constructor.
    """

    def __init__(
        self,
        *,
        required_key: str | None = None,
        gigachat_credentials: str = GIGACHAT_CREDENTIALS,
        gigachat_token_ttl_s: float = 1800.0,
    ) -> None:
        self._defaults = (required_key, gigachat_credentials, gigachat_token_ttl_s)
        self.required_key = required_key
        self.gigachat_credentials = gigachat_credentials
        self._tokens = _TokenStore(gigachat_token_ttl_s)
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, collections.deque[Behaviour]] = {}
        self._cancelled = 0
        self._oauth_calls = 0
        self._seq = itertools.count(1)
        self._plays: set[_Play] = set()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._error: BaseException | None = None
        routes = [Route(e.path, _EndpointApp(self, e), methods=[e.method]) for e in _ENDPOINTS]
        self.app = Starlette(routes=routes)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MockUpstream:
        """Bind 127.0.0.1 on an ephemeral port and serve; connections queue from return on."""
        if self._thread is not None:
            raise RuntimeError("MockUpstream is already started")
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 1.0
        config.errorlog = _LOG
        config.accesslog = None
        sockets = config.create_sockets()
        listener = sockets.insecure_sockets[0]
        listener.listen(config.backlog)
        self._port = int(listener.getsockname()[1])
        self._stopping = asyncio.Event()
        self._error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._loop, config, sockets),
            name=f"mock-upstream-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Interrupt responses in flight, stop serving and join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(self._begin_shutdown)
            thread.join(timeout=10)
        self._thread = self._loop = None
        if thread.is_alive():
            raise RuntimeError("MockUpstream did not stop within 10 s")
        if self._error is not None:
            raise RuntimeError("MockUpstream server failed") from self._error

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, loop: asyncio.AbstractEventLoop, config: Config, sockets: Sockets) -> None:
        asyncio.set_event_loop(loop)
        app = wrap_app(cast("ASGIFramework", self.app), config.wsgi_max_body_size, "asgi")
        try:
            loop.run_until_complete(
                worker_serve(app, config, sockets=sockets, shutdown_trigger=self._stopping.wait)
            )
        except Exception as error:  # surfaced by stop(): a thread must not die with it
            self._error = error
        finally:
            for sock in sockets.insecure_sockets:
                sock.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _begin_shutdown(self) -> None:
        for play in list(self._plays):
            play.interrupt("stop")
        self._stopping.set()

    # --- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """'http://127.0.0.1:PORT' (no trailing slash)."""
        if self._port is None:
            raise RuntimeError("MockUpstream is not started")
        return f"http://127.0.0.1:{self._port}"

    def base_url(self, protocol: str) -> str:
        """Base URL a client of `protocol` expects: openai -> '<url>/v1', gigachat ->
        '<url>/api/v1', 'gigachat-oauth' -> '<url>/api/v2/oauth', anthropic, ollama -> '<url>'."""
        suffixes = {
            "openai": "/v1",
            "anthropic": "",
            "ollama": "",
            "gigachat": "/api/v1",
            "gigachat-oauth": _OAUTH_PATH,
        }
        if protocol not in suffixes:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(suffixes)}")
        return self.url + suffixes[protocol]

    # --- scripting ---------------------------------------------------------------------------

    def script(self, target: str, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests to `target`, one each, then the default again.

        `target` is a path ('/v1/messages'), a protocol ('anthropic') or '*'. A request takes
        from its path's queue first, then its protocol's, then '*'. GigaChat's OAuth endpoint
        only takes from '/api/v2/oauth'. Requests refused for credentials consume nothing.
        """
        if target not in _TARGETS:
            hint = difflib.get_close_matches(target, sorted(_TARGETS), n=1)
            suffix = f" - did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown script target {target!r}{suffix}")
        with self._lock:
            self._scripts.setdefault(target, collections.deque()).extend(behaviours)

    def pending(self, target: str | None = None) -> int:
        """Scripted behaviours not yet consumed (for `target`, or all)."""
        with self._lock:
            queues = self._scripts.values() if target is None else [self._scripts.get(target, ())]
            return sum(len(queue) for queue in queues)

    def _next_behaviour(self, endpoint: _Endpoint) -> Behaviour | None:
        keys = (
            (endpoint.path,)
            if endpoint.auth == "basic"
            else (endpoint.path, endpoint.protocol, "*")
        )
        with self._lock:
            for key in keys:
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return None

    # --- recording ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, oldest first (including refused ones)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, target: str = "*") -> list[RecordedRequest]:
        """Requests whose path or protocol is `target` ('*': all)."""
        return [r for r in self.requests if target in ("*", r.path, r.protocol)]

    def last_request(self, target: str = "*") -> RecordedRequest:
        found = self.requests_to(target)
        if not found:
            raise LookupError(f"no request to {target!r} was recorded")
        return found[-1]

    def wait_for_requests(
        self, count: int, target: str = "*", timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Block until `count` requests to `target` were recorded; TimeoutError otherwise."""
        with self._lock:
            ok = self._lock.wait_for(
                lambda: sum(target in ("*", r.path, r.protocol) for r in self._requests) >= count,
                timeout,
            )
        if not ok:
            raise TimeoutError(
                f"expected {count} requests to {target!r}, got {len(self.requests_to(target))}"
            )
        return self.requests_to(target)

    @property
    def cancelled(self) -> int:
        """Responses abandoned because the client disconnected before they were complete."""
        with self._lock:
            return self._cancelled

    def wait_cancelled(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until `cancelled` >= `count`; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._cancelled >= count, timeout)

    def reset(self, *, revoke_tokens: bool = False) -> None:
        """Forget requests, scripts and counters; restore constructor settings. GigaChat tokens
        already issued stay valid unless `revoke_tokens` (a long-lived client may cache them)."""
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self._cancelled = self._oauth_calls = 0
        self.required_key, self.gigachat_credentials, self.gigachat_token_ttl_s = self._defaults
        if revoke_tokens:
            self._tokens.expire_all()

    # --- GigaChat tokens ---------------------------------------------------------------------

    @property
    def gigachat_token_ttl_s(self) -> float:
        return self._tokens.ttl_s

    @gigachat_token_ttl_s.setter
    def gigachat_token_ttl_s(self, seconds: float) -> None:
        self._tokens.ttl_s = seconds

    @property
    def oauth_calls(self) -> int:
        """Requests to POST /api/v2/oauth (refused ones included)."""
        with self._lock:
            return self._oauth_calls

    @property
    def issued_tokens(self) -> list[str]:
        return self._tokens.issued()

    def expire_tokens(self) -> None:
        """Make every issued GigaChat token expired now (the next chat call gets 401)."""
        self._tokens.expire_all()

    # --- request handling (server thread) ----------------------------------------------------

    def _record(self, endpoint: _Endpoint, scope: Scope, raw: bytes) -> RecordedRequest:
        headers = _lower_headers(scope["headers"])
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=MappingProxyType(headers),
            body=_parse_body(headers, raw),
            raw=raw,
            time=time.monotonic(),
            protocol=endpoint.protocol,
        )
        with self._lock:
            self._requests.append(record)
            self._oauth_calls += endpoint.auth == "basic"
            self._lock.notify_all()
        return record

    def _denial(self, endpoint: _Endpoint, record: RecordedRequest) -> _Plan | None:
        headers = record.headers
        auth = endpoint.auth
        if auth == "models":
            keyed = "x-api-key" in headers and "authorization" not in headers
            auth = "anthropic" if "anthropic-version" in headers or keyed else "bearer"
        if auth == "bearer":
            return _openai_denial(headers, self.required_key)
        if auth == "anthropic":
            return _anthropic_denial(headers, self.required_key)
        if auth == "basic":
            return _oauth_denial(headers, record.body, self.gigachat_credentials)
        if auth == "gigachat":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not self._tokens.valid(token.strip()):
                return _error_plan("gigachat", 401, "Unauthorized")
        return None

    def _plan_for(self, endpoint: _Endpoint, record: RecordedRequest) -> _Plan:
        denial = self._denial(endpoint, record)
        if denial is not None:
            return denial
        body = record.body if isinstance(record.body, dict) else {}
        if (
            endpoint.method == "POST"
            and endpoint.auth != "basic"
            and not isinstance(record.body, dict)
        ):
            return _error_plan(endpoint.protocol, 400, "the request body must be a JSON object")
        call = _Call(
            body, record.headers, endpoint.wants_stream(body), next(self._seq), self._tokens
        )
        return _build_plan(endpoint, call, self._next_behaviour(endpoint))

    async def _serve_plan(self, plan: _Plan, receive: Receive, send: Send) -> None:
        play = _Play()
        self._plays.add(play)
        watcher = asyncio.create_task(_watch_disconnect(receive, play))
        try:
            interrupted = await _emit(plan, send, play)
        finally:
            self._plays.discard(play)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if interrupted and play.reason == "disconnect":
            with self._lock:
                self._cancelled += 1
                self._lock.notify_all()
