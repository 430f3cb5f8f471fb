"""Streaming translators between OpenAI chat chunks and Anthropic message events.

Each translator is a small state machine fed one decoded event at a time, returning what to send
to the client right away, plus `finish()` for the end of the upstream stream. They never invent
content, and they keep the target protocol's event grammar even when the upstream is cut short.

Anthropic -> OpenAI (``AnthropicToOpenAIStream``)::

    message_start            -> {"delta": {"role": "assistant", "content": ""}}
    text_delta               -> {"delta": {"content": "..."}}
    content_block_start(tool)-> {"delta": {"tool_calls": [{"index": i, "id", "type": "function",
                                                           "function": {"name", "arguments": ""}}]}}
    input_json_delta         -> {"delta": {"tool_calls": [{"index": i, "function": {"arguments"}}]}}
    message_delta            -> {"delta": {}, "finish_reason": ...}   (last chunk with choices)
    message_stop             -> {"choices": [], "usage": {...}}       (when include_usage)
    error                    -> {"error": {...}}

OpenAI -> Anthropic (``OpenAIToAnthropicStream``) emits message_start, then content blocks with
indexes 0, 1, 2... (a new block whenever text and tool calls alternate), then message_delta
(stop_reason, usage) and message_stop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runtime.translate.common import OpenAIChunkStream
from runtime.translate.errors import to_anthropic_error, to_openai_error

__all__ = [
    "JSON_TOOL",
    "AnthropicToCompletionsStream",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_stop_reason",
    "anthropic_usage",
    "anthropic_usage_to_openai",
    "openai_finish_reason",
]

_FINISH_BY_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON_BY_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_CLIENT_TOOL_BLOCKS = frozenset({"tool_use"})
# NOTE: the tool that carries an OpenAI response_format to Anthropic; its input is the answer
JSON_TOOL = "json_response"


def openai_finish_reason(stop_reason: str | None) -> str:
    """Anthropic stop_reason -> OpenAI finish_reason: ``max_tokens`` -> ``length``.

    Unknown or missing reasons give ``stop``.
    """
    return _FINISH_BY_STOP_REASON.get(stop_reason or "", "stop")


def anthropic_stop_reason(finish_reason: str | None, *, has_tools: bool = False) -> str:
    """OpenAI finish_reason -> Anthropic stop_reason: ``tool_calls`` -> ``tool_use``.

    A missing or ``stop`` finish with tool calls in the answer gives ``tool_use``, because that
    is what an Anthropic tool loop waits for. Example: ``anthropic_stop_reason("length")`` ->
    ``"max_tokens"``.
    """
    reason = _STOP_REASON_BY_FINISH.get(finish_reason or "", "end_turn")
    return "tool_use" if has_tools and reason == "end_turn" else reason


def anthropic_usage_to_openai(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage. Cache reads and writes count as prompt tokens (OpenAI's
    prompt_tokens include cached ones); reads are also reported as ``cached_tokens``.

    Example: ``{"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3}`` ->
    ``{"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3}}``.
    """
    usage = usage or {}
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached
    prompt += usage.get("cache_creation_input_tokens") or 0
    completion = usage.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def anthropic_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage -> Anthropic usage, the inverse of `anthropic_usage_to_openai`.

    Example: ``{"prompt_tokens": 13, "completion_tokens": 5, "prompt_tokens_details":
    {"cached_tokens": 3}}`` -> ``{"input_tokens": 10, "output_tokens": 5,
    "cache_read_input_tokens": 3}``.
    """
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - cached, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


class AnthropicToOpenAIStream(OpenAIChunkStream):
    """Anthropic SSE events (name, decoded data) -> OpenAI ``chat.completion.chunk`` objects.

    The finish_reason rides on the last chunk that has choices (a chunk with an empty delta, as
    OpenAI itself sends), before the usage chunk. No finish_reason is invented for an upstream
    that stops before ``message_delta``: the client sees a truncated stream, as from OpenAI.

    Example: ``feed("content_block_delta", {"type": "content_block_delta", "index": 0,
    "delta": {"type": "text_delta", "text": "Hi"}})`` -> ``[{..., "choices": [{"index": 0,
    "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}]}]``.
    """

    __slots__ = (
        "_finish_sent",
        "_json_blocks",
        "_stop_reason",
        "_tool_by_block",
        "_tool_count",
        "_usage",
        "_usage_sent",
    )

    def __init__(self, model: str, *, include_usage: bool, created: int, chunk_id: str) -> None:
        super().__init__(model, include_usage=include_usage, created=created, chunk_id=chunk_id)
        self._finish_sent = False
        self._usage_sent = False
        self._stop_reason: str | None = None
        self._tool_by_block: dict[int, int] = {}
        self._tool_count = 0
        self._json_blocks: set[int] = set()  # calls of JSON_TOOL: their input is the answer text
        self._usage: dict[str, Any] = {}

    def feed(self, event: str | None, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one upstream event; `event` falls back to ``data["type"]``."""
        if self._done:
            return []
        kind = event or data.get("type")
        if kind == "content_block_delta":
            return self._on_delta(data)
        if kind == "content_block_start":
            return self._on_block_start(data)
        if kind == "message_start":
            message = data.get("message") or {}
            self._usage.update(message.get("usage") or {})
            return self._start()
        if kind == "message_delta":
            return self._on_message_delta(data)
        if kind == "message_stop":
            self._done = True
            out = self._start()
            if not self._finish_sent:
                out.append(self._finish_chunk())
            out.extend(self._owed_usage())
            return out
        if kind == "error":
            self._done = True
            return [to_openai_error(data)]
        return []

    def finish(self) -> list[dict[str, Any]]:
        """End of the upstream stream: the usage chunk if it is still owed, else nothing."""
        if self._done:
            return []
        self._done = True
        return self._owed_usage() if self._finish_sent else []

    def _on_delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [*self._start(), self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            if partial and data.get("index", -1) in self._json_blocks:
                return [*self._start(), self._chunk({"content": partial})]
            tool = self._tool_by_block.get(data.get("index", -1))
            if not partial or tool is None:
                return []
            call = {"index": tool, "function": {"arguments": partial}}
            return [*self._start(), self._chunk({"tool_calls": [call]})]
        return []

    def _on_block_start(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [*self._start(), self._chunk({"content": block["text"]})]
        if kind not in _CLIENT_TOOL_BLOCKS:
            return []
        if block.get("name") == JSON_TOOL:
            self._json_blocks.add(data.get("index", -1))
            given = block.get("input")
            text = json.dumps(given, ensure_ascii=False) if given else ""
            return [*self._start(), *([self._chunk({"content": text})] if text else [])]
        tool = self._tool_count
        self._tool_count += 1
        self._tool_by_block[data.get("index", -1)] = tool
        given = block.get("input")
        call = {
            "index": tool,
            "id": block.get("id", ""),
            "type": "function",
            "function": {
                "name": block.get("name", ""),
                "arguments": json.dumps(given, ensure_ascii=False) if given else "",
            },
        }
        return [*self._start(), self._chunk({"tool_calls": [call]})]

    def _on_message_delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        usage = data.get("usage") or {}
        # NOTE: message_delta usage is cumulative; absent fields keep the message_start value.
        self._usage.update({k: v for k, v in usage.items() if v is not None})
        self._stop_reason = (data.get("delta") or {}).get("stop_reason")
        if self._stop_reason is None or self._finish_sent:
            return []
        return [*self._start(), self._finish_chunk()]

    def _finish_chunk(self) -> dict[str, Any]:
        self._finish_sent = True
        finish = openai_finish_reason(self._stop_reason)
        if finish == "tool_calls" and self._json_blocks and not self._tool_count:
            finish = "stop"  # NOTE: the only call was the answer itself
        return self._chunk({}, finish)

    def _owed_usage(self) -> list[dict[str, Any]]:
        if not self._include_usage or self._usage_sent:
            return []
        self._usage_sent = True
        return [self._usage_chunk(anthropic_usage_to_openai(self._usage))]


class AnthropicToCompletionsStream:
    """Anthropic SSE events -> legacy OpenAI ``text_completion`` stream chunks.

    Text deltas become ``choices[0].text``; the finish_reason arrives on a chunk with empty
    text; tool calls cannot occur (no tools in this API) and are skipped. Example: a text_delta
    "Hi" -> ``[{"id": ..., "object": "text_completion", ..., "choices": [{"text": "Hi",
    "index": 0, "logprobs": None, "finish_reason": None}]}]``.
    """

    __slots__ = ("_chat",)

    def __init__(self, model: str, *, include_usage: bool, created: int, chunk_id: str) -> None:
        self._chat = AnthropicToOpenAIStream(
            model, include_usage=include_usage, created=created, chunk_id=chunk_id
        )

    def feed(self, event: str | None, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one upstream event."""
        return self._convert(self._chat.feed(event, data))

    def finish(self) -> list[dict[str, Any]]:
        """End of the upstream stream."""
        return self._convert(self._chat.finish())

    @staticmethod
    def _convert(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            if "error" in chunk:
                out.append(chunk)
                continue
            choices = chunk["choices"]
            converted = {**chunk, "object": "text_completion"}
            if not choices:
                out.append(converted)
                continue
            delta = choices[0]["delta"]
            finish = choices[0]["finish_reason"]
            text = delta.get("content")
            if not text and finish is None:
                continue
            converted["choices"] = [
                {
                    "text": text or "",
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": "stop" if finish == "tool_calls" else finish,
                }
            ]
            out.append(converted)
        return out


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` objects -> Anthropic SSE (event name, data) pairs.

    Blocks are numbered 0, 1, 2... in the order they start; the open block is stopped before
    another starts. Tool calls are keyed by their OpenAI ``index``. The message is closed as soon
    as both a finish_reason and usage have been seen, or by `finish()`: an upstream that ends
    without a finish_reason still yields message_delta (``tool_use`` if tools were called, else
    ``end_turn``) and message_stop.

    OpenAI reports usage only at the end, so ``message_start`` carries `input_tokens`, the
    caller's estimate of the prompt (older Anthropic SDKs keep that value in the final message);
    the final ``message_delta`` carries the upstream's exact counts, or the estimate and 0 output
    tokens when the upstream reported none.

    Example: ``feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})`` ->
    ``[("message_start", ...), ("content_block_start", {"index": 0, ...}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}, ...})]``.
    """

    __slots__ = (
        "_closed",
        "_finish_reason",
        "_input_estimate",
        "_last_tool",
        "_last_tool_id",
        "_message_id",
        "_model",
        "_next_index",
        "_open",
        "_open_is_text",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(self, model: str, *, message_id: str, input_tokens: int = 0) -> None:
        self._model = model
        self._message_id = message_id
        self._input_estimate = input_tokens
        self._started = False
        self._closed = False
        self._open: int | None = None
        self._open_is_text = False
        self._next_index = 0
        self._tools: dict[int, int] = {}
        self._last_tool: int | None = None
        self._last_tool_id: str | None = None
        self._finish_reason: str | None = None
        self._usage: Mapping[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Translate one upstream chunk (the JSON of one ``data:`` line, not ``[DONE]``)."""
        if self._closed:
            return []
        if chunk.get("error"):
            self._closed = True
            return [("error", to_anthropic_error(chunk))]
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        out = self._start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text(text))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out.extend(self._text(refusal))
            for call in delta.get("tool_calls") or ():
                out.extend(self._tool_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        if self._finish_reason is not None and usage:
            out.extend(self._close())
        return out

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """End of the upstream stream (``[DONE]`` or EOF): close whatever is still open."""
        if self._closed:
            return []
        return self._start() + self._close()

    def _start(self) -> list[tuple[str, dict[str, Any]]]:
        if self._started:
            return []
        self._started = True
        usage = self._client_usage()
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        index = self._open
        if index is None or not self._open_is_text:
            out.extend(self._stop_open())
            index = self._open_block(out, {"type": "text", "text": ""}, is_text=True)
        out.append(_block_delta(index, {"type": "text_delta", "text": text}))
        return out

    def _tool_delta(self, call: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        key = call.get("index")
        call_id = call.get("id")
        if not isinstance(key, int):
            # NOTE: some OpenAI-compatible servers omit the index; a new id means a new call.
            last = self._last_tool
            is_new = last is None or (call_id is not None and call_id != self._last_tool_id)
            key = len(self._tools) if is_new or last is None else last
        self._last_tool = key
        if call_id is not None:
            self._last_tool_id = call_id
        fn = call.get("function") or {}
        out: list[tuple[str, dict[str, Any]]] = []
        block = self._tools.get(key)
        if block is None:
            out.extend(self._stop_open())
            tool_id = call_id or f"toolu_{self._message_id.removeprefix('msg_')}_{key}"
            content_block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id,
                "name": fn.get("name") or "",
                "input": {},
            }
            block = self._tools[key] = self._open_block(out, content_block, is_text=False)
        arguments = fn.get("arguments")
        if isinstance(arguments, Mapping):
            arguments = json.dumps(arguments, ensure_ascii=False)
        if isinstance(arguments, str) and arguments:
            # NOTE: a late delta for an earlier call keeps that call's index; the Anthropic SDK
            # accumulates by index, so its arguments stay whole.
            out.append(_block_delta(block, {"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _open_block(
        self, out: list[tuple[str, dict[str, Any]]], block: dict[str, Any], *, is_text: bool
    ) -> int:
        index = self._next_index
        self._next_index += 1
        self._open = index
        self._open_is_text = is_text
        data = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(("content_block_start", data))
        return index

    def _stop_open(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        self._closed = True
        out = self._stop_open()
        stop_reason = anthropic_stop_reason(self._finish_reason, has_tools=bool(self._tools))
        usage = self._client_usage()
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _client_usage(self) -> dict[str, Any]:
        if self._usage:
            return anthropic_usage(self._usage)
        return {"input_tokens": self._input_estimate, "output_tokens": 0}


def _block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
