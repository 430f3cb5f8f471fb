"""The built-in `mock` upstream: answers in-process, in the protocol the client speaks.

It echoes the last user message (or says `reply`), splits streamed replies into `stream_chunks`
pieces, answers a tool call when tools are offered, reports usage, and can inject failures, so
demos, tests and load tests need no provider and no network::

    reply = await MockProvider(MockSettings()).call("openai.chat", body, "demo-1", stream=False)
    msgspec.json.decode(reply.body)["choices"][0]["message"]["content"]  -> "Echo: hi"
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from compiler.matcher import message_text
from compiler.table import MockSettings
from runtime.errors import GatewayError
from runtime.translate import TranslationError
from runtime.translate.responses import chat_to_response, responses_to_chat
from runtime.translate.responses_stream import ChatToResponsesStream
from runtime.translate.shapes import REQUEST_SHAPES, check_types
from runtime.upstream import Reply, UpstreamFailure

_encode = msgspec.json.Encoder().encode
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_DEFAULT_REPLY = "Hello from Interlock's mock provider."


def _failure_class(status: int) -> str:
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"


class MockProvider:
    def __init__(self, settings: MockSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()

    async def call(
        self,
        api: str,
        body: dict[str, Any],
        model: str,
        *,
        stream: bool,
        include_usage: bool = False,
    ) -> Reply:
        try:
            check_types(body, REQUEST_SHAPES[api])
        except TranslationError as exc:
            raise GatewayError(400, exc.message, param=exc.param) from None
        s = self.settings
        if s.latency_ms:
            await asyncio.sleep(s.latency_ms / 1000)
        if s.fail_rate and self.rng.random() < s.fail_rate:
            raise UpstreamFailure(
                _failure_class(s.fail_status), s.fail_message, status=s.fail_status
            )
        if api == "openai.responses":  # NOTE: answered as chat, then translated
            return self._responses(body, model, stream=stream)
        answer = _Answer.of(api, body, s)
        if api == "openai.embeddings":
            return Reply(200, list(_JSON), _encode(_embeddings(body, model, answer)))
        if api == "anthropic.count_tokens":
            return Reply(200, list(_JSON), _encode({"input_tokens": answer.prompt_tokens}))
        if not stream:
            return Reply(200, list(_JSON), _encode(answer.whole(api, model)))
        return Reply(200, list(_SSE), chunks=self._stream(api, model, answer, include_usage))

    def _responses(self, body: dict[str, Any], model: str, *, stream: bool) -> Reply:
        try:
            chat = responses_to_chat(body)
        except TranslationError as exc:
            raise GatewayError(400, exc.message, param=exc.param) from None
        answer = _Answer.of("openai.chat", chat, self.settings)
        if not stream:
            return Reply(
                200, list(_JSON), _encode(chat_to_response(answer.whole("openai.chat", model)))
            )
        return Reply(200, list(_SSE), chunks=self._responses_stream(model, answer))

    async def _responses_stream(self, model: str, answer: _Answer) -> AsyncIterator[bytes]:
        events = ChatToResponsesStream(model)
        async for chunk in self._stream("openai.chat", model, answer, True):
            data = chunk.removeprefix(b"data: ").rstrip()
            pairs = events.finish() if data == b"[DONE]" else events.feed(msgspec.json.decode(data))
            for name, event in pairs:
                yield b"event: " + name.encode() + b"\ndata: " + _encode(event) + b"\n\n"

    async def _stream(
        self, api: str, model: str, answer: _Answer, include_usage: bool
    ) -> AsyncIterator[bytes]:
        delay = self.settings.chunk_delay_ms / 1000
        pieces = _split(answer.text, self.settings.stream_chunks)
        events = (
            answer.anthropic_events(model, pieces)
            if api == "anthropic.messages"
            else answer.openai_chunks(api, model, pieces, include_usage)
        )
        for index, event in enumerate(events):
            if delay and index:
                await asyncio.sleep(delay)
            yield event


class _Answer(msgspec.Struct):
    text: str
    tool: str | None
    prompt_tokens: int
    completion_tokens: int
    ident: str
    arguments: str = "{}"

    @classmethod
    def of(cls, api: str, body: dict[str, Any], s: MockSettings) -> _Answer:
        said = message_text(api, body, "last_user")
        text = s.reply if s.reply is not None else (f"Echo: {said}" if said else _DEFAULT_REPLY)
        tool, arguments = _pick_tool(api, body, s) if _awaits_answer(body) else (None, "{}")
        prompt = s.prompt_tokens or max(1, len(message_text(api, body, "all")) // 4)
        completion = s.completion_tokens or max(1, len(text.split()))
        ident = hashlib.sha256(f"{time.time_ns()}{said}".encode()).hexdigest()[:24]
        return cls(text, tool, prompt, completion, ident, arguments)

    def openai_usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    def anthropic_usage(self) -> dict[str, int]:
        return {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens}

    def tool_call(self) -> dict[str, Any]:
        return {
            "id": f"call_{self.ident[:12]}",
            "type": "function",
            "function": {"name": self.tool, "arguments": self.arguments},
        }

    def whole(self, api: str, model: str) -> dict[str, Any]:
        created = int(time.time())
        if api == "anthropic.messages":
            content: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
            if self.tool:
                content.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_{self.ident[:12]}",
                        "name": self.tool,
                        "input": msgspec.json.decode(self.arguments),
                    }
                )
            return {
                "id": f"msg_{self.ident}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "tool_use" if self.tool else "end_turn",
                "stop_sequence": None,
                "usage": self.anthropic_usage(),
            }
        if api == "openai.completions":
            return {
                "id": f"cmpl-{self.ident}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "usage": self.openai_usage(),
                "choices": [
                    {"index": 0, "text": self.text, "finish_reason": "stop", "logprobs": None}
                ],
            }
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool:
            message["tool_calls"] = [self.tool_call()]
        return {
            "id": f"chatcmpl-{self.ident}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "usage": self.openai_usage(),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if self.tool else "stop",
                }
            ],
        }

    def openai_chunks(
        self, api: str, model: str, pieces: list[str], include_usage: bool
    ) -> list[bytes]:
        created = int(time.time())
        chat = api == "openai.chat"
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{self.ident}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }

        def chunk(choice: dict[str, Any], **extra: Any) -> bytes:
            return b"data: " + _encode({**base, "choices": [choice], **extra}) + b"\n\n"

        out = []
        if chat:
            out.append(
                chunk(
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                )
            )
        finish = "tool_calls" if self.tool and chat else "stop"
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1 and not (self.tool and chat)
            delta = {"content": piece} if chat else None
            choice: dict[str, Any] = (
                {"index": 0, "delta": delta} if chat else {"index": 0, "text": piece}
            )
            choice["finish_reason"] = finish if last else None
            out.append(chunk(choice))
        if self.tool and chat:
            call = {"index": 0, **self.tool_call()}
            out.append(
                chunk({"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"})
            )
        if include_usage:
            out.append(
                b"data: " + _encode({**base, "choices": [], "usage": self.openai_usage()}) + b"\n\n"
            )
        out.append(b"data: [DONE]\n\n")
        return out

    def anthropic_events(self, model: str, pieces: list[str]) -> list[bytes]:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"

        start = self.whole("anthropic.messages", model)
        start.update(
            content=[],
            stop_reason=None,
            usage={"input_tokens": self.prompt_tokens, "output_tokens": 0},
        )
        out = [
            event("message_start", {"type": "message_start", "message": start}),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            event("ping", {"type": "ping"}),
        ]
        out.extend(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in pieces
        )
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if self.tool:
            out.append(
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 1,
                        "content_block": {
                            "type": "tool_use",
                            "id": f"toolu_{self.ident[:12]}",
                            "name": self.tool,
                            "input": {},
                        },
                    },
                )
            )
            out.append(
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": self.arguments},
                    },
                )
            )
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": 1}))
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "tool_use" if self.tool else "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": self.completion_tokens},
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


def _pick_tool(api: str, body: dict[str, Any], s: MockSettings) -> tuple[str | None, str]:
    """The tool to call and its JSON arguments: the first of `s.tool_calls` the request offers,
    or (without ``tool_calls``) the first offered tool with ``{}``; ``(None, "{}")`` for none."""
    tools = body.get("tools")
    if not (isinstance(tools, list) and tools):
        return None, "{}"
    names = [_tool_name(api, tool) for tool in tools if isinstance(tool, dict)]
    if not s.tool_calls:
        return (names[0] if names else "tool"), "{}"
    offered = set(names)
    return next(((n, a) for n, a in s.tool_calls if n in offered), (None, "{}"))


def _tool_name(api: str, tool: dict[str, Any]) -> str:
    """An offered tool's name: ``function.name`` of a chat tool, ``name`` of an Anthropic one."""
    named = tool if api.startswith("anthropic.") else (tool.get("function") or {})
    return str(named.get("name") or "tool")


def _awaits_answer(body: dict[str, Any]) -> bool:
    """Whether the last message is the user's own turn, not a tool result handed back (an
    Anthropic ``tool_result`` block is sent in a user message): only then is a tool called."""
    messages = body.get("messages")
    turns = (
        [
            m
            for m in messages
            if isinstance(m, dict) and m.get("role") not in ("system", "developer")
        ]
        if isinstance(messages, list)
        else []
    )
    if not turns:  # NOTE: Claude Code ends with a mid-conversation system message; skip those
        return False
    last = turns[-1]
    content = last.get("content")
    results = isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )
    return last.get("role") == "user" and not results


def _split(text: str, parts: int) -> list[str]:
    """``_split("abcdef", 3) -> ["ab", "cd", "ef"]``; never an empty list."""
    parts = max(1, min(parts, len(text) or 1))
    size = -(-len(text) // parts) or 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _embeddings(body: dict[str, Any], model: str, answer: _Answer) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for index, item in enumerate(items):
        digest = hashlib.sha256(str(item).encode()).digest()
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": [round(b / 255 - 0.5, 4) for b in digest[:8]],
            }
        )
    usage = {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
