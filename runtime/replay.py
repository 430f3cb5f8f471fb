"""Whole answers and streams of the same answer, both ways, in the client's protocol.

`replay_frames` turns a complete (non-streamed) answer into the stream a client of that API
expects; `assemble_stream` turns a complete stream back into the non-streamed answer, so a
streamed answer can be cached for later requests, streamed or not::

    body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    frames = replay_frames("openai.chat", body, include_usage=True)
    frames[0]  -> b'data: {"id":"c1","created":1,"model":"m","object":"chat.completion.chunk",...'
    frames[-1] -> b"data: [DONE]\\n\\n"
    assemble_stream("openai.chat", b"".join(frames)) == body   -> True

OpenAI chat: per choice, one chunk with the whole message (role, content, refusal, ...), one
per tool call, one with the finish reason; then the usage chunk (``choices: []``) when asked;
then ``[DONE]``. Legacy completions: per choice the text, then the finish reason. Anthropic:
``message_start``, per block ``content_block_start`` / its deltas (``text_delta``,
``input_json_delta``, ``thinking_delta``, ``signature_delta``) / ``content_block_stop``,
``message_delta`` (stop reason, output tokens), ``message_stop``. `assemble_stream` also reads
what real upstreams send (text split over many deltas, tool arguments in pieces, citations).
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.sse import SSEDecoder

__all__ = ["REPLAY_APIS", "assemble_stream", "replay_frames"]

REPLAY_APIS = frozenset({"openai.chat", "openai.completions", "anthropic.messages"})

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_DONE = b"data: [DONE]\n\n"
Body = dict[str, Any]

# Message fields streamed in pieces: pieces are concatenated; every other field is a value.
_TEXT_FIELDS = frozenset({"content", "refusal", "reasoning_content", "reasoning"})
_CHOICE_KEYS = frozenset({"index", "message", "delta", "logprobs", "finish_reason", "text"})
# Anthropic block fields that stream as deltas: field -> (delta type, delta field)
_BLOCK_DELTAS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "text": (("text", "text_delta", "text"),),
    "thinking": (
        ("thinking", "thinking_delta", "thinking"),
        ("signature", "signature_delta", "signature"),
    ),
}
_JSON_BLOCKS = frozenset({"tool_use", "server_tool_use"})


class _Incomplete(Exception):
    """The stream stopped short, reported an error, or is not the API's stream."""


# --- answer -> stream -------------------------------------------------------------------------


def replay_frames(api: str, body: Body, *, include_usage: bool) -> list[bytes]:
    """The stream of `body` for a client of `api` (``openai.chat``, ``openai.completions``,
    ``anthropic.messages``), as wire frames. `include_usage`: an OpenAI client's
    ``stream_options.include_usage`` (an Anthropic stream always carries its usage)."""
    if api == "anthropic.messages":
        return _anthropic_frames(body)
    if api == "openai.chat":
        return _openai_frames(body, include_usage, chat=True)
    if api == "openai.completions":
        return _openai_frames(body, include_usage, chat=False)
    raise ValueError(f"{api} answers are not streamed")


def _openai_frames(body: Body, include_usage: bool, *, chat: bool) -> list[bytes]:
    base = {k: v for k, v in body.items() if k not in ("choices", "usage", "object")}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    frames: list[bytes] = []

    def chunk(choice: Body) -> None:
        frames.append(b"data: " + _encode({**base, "choices": [choice]}) + b"\n\n")

    for position, choice in enumerate(body.get("choices") or ()):
        index = choice.get("index", position)
        first: Body = {"index": index}
        if chat:
            message = choice.get("message") or {}
            found = message.get("tool_calls")
            calls: list[Any] = found if isinstance(found, list) else []
            streamed_calls = bool(calls)
            first["delta"] = {
                k: v for k, v in message.items() if not (k == "tool_calls" and streamed_calls)
            }
        else:
            first["text"] = choice.get("text", "")
        if "logprobs" in choice:
            first["logprobs"] = choice["logprobs"]
        first["finish_reason"] = None
        chunk(first)
        if chat and streamed_calls:
            for number, call in enumerate(calls):
                delta = {"tool_calls": [{"index": number, **call}]}
                chunk({"index": index, "delta": delta, "finish_reason": None})
        last: Body = {"index": index, "delta": {}} if chat else {"index": index, "text": ""}
        if "logprobs" in choice:
            last["logprobs"] = None
        last.update((k, v) for k, v in choice.items() if k not in _CHOICE_KEYS)
        last["finish_reason"] = choice.get("finish_reason")
        chunk(last)
    usage = body.get("usage")
    if include_usage and usage is not None:
        frames.append(b"data: " + _encode({**base, "choices": [], "usage": usage}) + b"\n\n")
    frames.append(_DONE)
    return frames


def _anthropic_frames(body: Body) -> list[bytes]:
    frames: list[bytes] = []

    def event(name: str, data: Body) -> None:
        frames.append(b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n")

    usage = body.get("usage")
    message = {k: v for k, v in body.items() if k != "content"}
    message["content"] = []
    stop = {k: body[k] for k in ("stop_reason", "stop_sequence") if k in body}
    message.update(dict.fromkeys(stop))
    if isinstance(usage, dict) and "output_tokens" in usage:
        message["usage"] = {**usage, "output_tokens": 0}
    event("message_start", {"type": "message_start", "message": message})
    for index, block in enumerate(body.get("content") or ()):
        start = dict(block)
        deltas: list[Body] = []
        kind = block.get("type")
        for field, delta_type, delta_field in _BLOCK_DELTAS.get(kind, ()):
            if isinstance(block.get(field), str):
                start[field] = ""
                if block[field]:
                    deltas.append({"type": delta_type, delta_field: block[field]})
        if kind in _JSON_BLOCKS and "input" in block:
            start["input"] = {}
            arguments = _encode(block["input"]).decode()
            deltas.append({"type": "input_json_delta", "partial_json": arguments})
        event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for delta in deltas:
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        event("content_block_stop", {"type": "content_block_stop", "index": index})
    final: Body = {"type": "message_delta", "delta": stop}
    if isinstance(usage, dict) and "output_tokens" in usage:
        final["usage"] = {"output_tokens": usage["output_tokens"]}
    event("message_delta", final)
    event("message_stop", {"type": "message_stop"})
    return frames


# --- stream -> answer -------------------------------------------------------------------------


def assemble_stream(api: str, data: bytes) -> Body | None:
    """The non-streamed answer a complete stream of `api` amounts to; None when the stream is
    not complete (no ``[DONE]`` / ``message_stop``), reports an error, or is malformed."""
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.flush()
    try:
        if api == "anthropic.messages":
            return _assemble_anthropic(events)
        if api in ("openai.chat", "openai.completions"):
            return _assemble_openai(events, chat=api == "openai.chat")
    except (_Incomplete, msgspec.DecodeError, TypeError, KeyError, AttributeError):
        return None
    return None


def _assemble_openai(events: list[Any], *, chat: bool) -> Body:
    top: Body = {}
    choices: dict[int, Body] = {}
    usage: Any = None
    done = False
    for event in events:
        if event.data == "[DONE]":
            done = True
            continue
        if done:
            raise _Incomplete("data after [DONE]")
        chunk = _decode(event.data)
        if not isinstance(chunk, dict) or chunk.get("error") or event.event == "error":
            raise _Incomplete("an error event")
        for key, value in chunk.items():
            if key == "usage":
                usage = value if value is not None else usage
            elif key not in ("choices", "object"):
                _set_value(top, key, value)
        for part in chunk.get("choices") or ():
            choice = choices.setdefault(part["index"], {"index": part["index"]})
            _merge_choice(choice, part, chat=chat)
    if not done:
        raise _Incomplete("no [DONE]")
    top["object"] = "chat.completion" if chat else "text_completion"
    top["choices"] = [_finish_choice(choices[i]) for i in sorted(choices)]
    if usage is not None:
        top["usage"] = usage
    return top


def _merge_choice(choice: Body, part: Body, *, chat: bool) -> None:
    for key, value in part.items():
        if key == "index":
            continue
        if key == "delta" and chat:
            message = choice.setdefault("message", {})
            for field, piece in (value or {}).items():
                if field == "tool_calls" and isinstance(piece, list):
                    calls = message.setdefault("_calls", {})
                    message.setdefault("tool_calls", [])
                    for call in piece:
                        _merge_call(calls.setdefault(call.get("index", 0), {}), call)
                elif field in _TEXT_FIELDS:
                    _append_text(message, field, piece)
                else:
                    _set_value(message, field, piece)
        elif key == "text" and not chat:
            _append_text(choice, "text", value)
        elif key == "logprobs":
            _merge_logprobs(choice, value)
        else:
            _set_value(choice, key, value)


def _finish_choice(choice: Body) -> Body:
    message = choice.get("message")
    if isinstance(message, dict):
        calls = message.pop("_calls", None)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return choice


def _merge_call(call: Body, part: Body) -> None:
    for key, value in part.items():
        if key == "index":
            continue
        if key == "function" and isinstance(value, dict):
            function = call.setdefault("function", {})
            for field, piece in value.items():
                if field == "arguments":
                    _append_text(function, field, piece)
                else:
                    _set_value(function, field, piece)
        else:
            _set_value(call, key, value)


def _merge_logprobs(choice: Body, value: Any) -> None:
    """Logprobs arrive per chunk: their lists are concatenated (OpenAI chat ``content`` /
    ``refusal``; completions ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)."""
    current = choice.get("logprobs")
    if not isinstance(value, dict):
        choice.setdefault("logprobs", value)
        return
    if not isinstance(current, dict):
        choice["logprobs"] = {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
        return
    for key, piece in value.items():
        if isinstance(piece, list) and isinstance(current.get(key), list):
            current[key].extend(piece)
        else:
            _set_value(current, key, piece)


def _assemble_anthropic(events: list[Any]) -> Body:
    message: Body | None = None
    blocks: dict[int, Body] = {}
    partial: dict[int, list[str]] = {}
    stopped = False
    for event in events:
        data = _decode(event.data)
        if not isinstance(data, dict):
            raise _Incomplete("not an event object")
        kind = data.get("type") or event.event
        if kind == "error" or event.event == "error":
            raise _Incomplete("an error event")
        if kind == "message_start":
            message = dict(data["message"])
            if isinstance(message.get("usage"), dict):
                message["usage"] = dict(message["usage"])
        elif message is None or stopped:
            if kind != "ping":
                raise _Incomplete("event outside a message")
        elif kind == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            _apply_block_delta(blocks[data["index"]], data["delta"], partial, data["index"])
        elif kind == "content_block_stop":
            pieces = partial.pop(data["index"], None)
            if pieces and "".join(pieces):
                blocks[data["index"]]["input"] = _decode("".join(pieces))
        elif kind == "message_delta":
            message.update(data.get("delta") or {})
            usage = data.get("usage")
            if isinstance(usage, dict):
                if not isinstance(message.get("usage"), dict):
                    message["usage"] = {}
                message["usage"].update(usage)
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped:
        raise _Incomplete("no message_stop")
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _apply_block_delta(block: Body, delta: Body, partial: dict[int, list[str]], index: int) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        _append_text(block, "text", delta.get("text"))
    elif kind == "thinking_delta":
        _append_text(block, "thinking", delta.get("thinking"))
    elif kind == "signature_delta":
        _append_text(block, "signature", delta.get("signature"))
    elif kind == "input_json_delta":
        partial.setdefault(index, []).append(delta.get("partial_json") or "")
    elif kind == "citations_delta":
        citations = block.get("citations")
        if not isinstance(citations, list):
            citations = block["citations"] = []
        citations.append(delta.get("citation"))
    else:
        raise _Incomplete(f"unknown delta {kind!r}")


def _append_text(target: Body, field: str, piece: Any) -> None:
    """A streamed text field: pieces concatenate; a null piece only says the field exists."""
    current = target.get(field)
    if isinstance(piece, str):
        target[field] = current + piece if isinstance(current, str) else piece
    elif field not in target:
        target[field] = piece


def _set_value(target: Body, field: str, value: Any) -> None:
    """A field that is a value, not a piece: the last non-null one wins."""
    if value is not None or field not in target:
        target[field] = value
