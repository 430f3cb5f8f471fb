"""Round-trip properties: OpenAI -> Anthropic -> OpenAI keeps what both sides can express,
for requests and for non-streaming responses (streams: test_translate_anthropic_stream.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.translate.anthropic import (
    anthropic_response_to_openai,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
    openai_response_to_anthropic,
)

Json = dict[str, Any]


# --- properties ------------------------------------------------------------------------------

_WORD = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
_NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
_ID = st.from_regex(r"call_[a-zA-Z0-9]{1,8}", fullmatch=True)
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | _WORD,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAME, inner, max_size=3),
    max_leaves=6,
)
_ARGS = st.dictionaries(_NAME, _JSON_VALUE, max_size=3)


@st.composite
def text_content(draw: st.DrawFn) -> str | list[Json]:
    if draw(st.booleans()):
        return draw(_WORD)
    return [{"type": "text", "text": t} for t in draw(st.lists(_WORD, min_size=1, max_size=3))]


@st.composite
def openai_requests(draw: st.DrawFn) -> Json:
    messages: list[Json] = [
        {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(text_content())}
        for _ in range(draw(st.integers(0, 2)))
    ]
    tool_names = draw(st.lists(_NAME, max_size=3, unique=True))
    used_ids: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(text_content())})
        calls: list[Json] = []
        wants_calls = draw(st.booleans())
        if tool_names and wants_calls:
            for _ in range(draw(st.integers(1, 2))):
                call_id = draw(_ID.filter(lambda i: i not in used_ids))
                used_ids.add(call_id)
                args = json.dumps(draw(_ARGS), ensure_ascii=draw(st.booleans()))
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": draw(st.sampled_from(tool_names)), "arguments": args},
                    }
                )
        assistant: Json = {
            "role": "assistant",
            "content": draw(st.one_of(st.none(), text_content()) if calls else text_content()),
        }
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        messages.extend(
            {"role": "tool", "tool_call_id": c["id"], "content": draw(text_content())}
            for c in calls
        )
    body: Json = {"model": draw(_NAME), "messages": messages}
    if tool_names:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": draw(_WORD),
                    "parameters": {
                        "type": "object",
                        "properties": {
                            k: {"type": "string"} for k in draw(st.lists(_NAME, max_size=2))
                        },
                    },
                },
            }
            for name in tool_names
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    "auto",
                    "none",
                    "required",
                    {"type": "function", "function": {"name": tool_names[0]}},
                ]
            )
        )
    optional = {
        "stop": st.one_of(_WORD, st.lists(_WORD, min_size=1, max_size=3)),
        "max_tokens": st.integers(1, 100_000),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "stream": st.just(True),
        "user": _NAME,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def normalize_openai_request(body: Json) -> Json:
    """What both APIs can express, in one canonical form."""
    system: list[str] = []
    messages: list[Any] = []
    for msg in body["messages"]:
        content = msg.get("content")
        texts = [content] if isinstance(content, str) else [p["text"] for p in content or []]
        if msg["role"] in ("system", "developer"):
            system.extend(texts)
        elif msg["role"] == "user":
            messages.append(("user", content))
        elif msg["role"] == "tool":
            messages.append(("tool", msg["tool_call_id"], "".join(texts)))
        else:
            calls = [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in msg.get("tool_calls") or []
            ]
            text = content if isinstance(content, str) and not calls else "".join(texts)
            messages.append(("assistant", text, calls))
    stop = body.get("stop")
    return {
        "model": body.get("model"),
        "system": system,
        "messages": messages,
        "stop": [stop] if isinstance(stop, str) else stop,
        "max_tokens": body.get("max_tokens", 4096),
        "temperature": body.get("temperature"),
        # NOTE: Claude rejects temperature with top_p, so top_p only survives alone.
        "top_p": body.get("top_p") if body.get("temperature") is None else None,
        "stream": body.get("stream"),
        "user": body.get("user"),
        "tools": body.get("tools"),
        "tool_choice": body.get("tool_choice"),
    }


@settings(max_examples=120, deadline=None)
@given(openai_requests())
def test_openai_request_round_trip_keeps_what_both_sides_express(body: Json) -> None:
    anthropic = openai_chat_to_anthropic(body)
    back = anthropic_to_openai_chat(anthropic)
    assert normalize_openai_request(back) == normalize_openai_request(body)
    assert anthropic_to_openai_chat(openai_chat_to_anthropic(back)) == back


@st.composite
def openai_responses(draw: st.DrawFn) -> Json:
    calls = [
        {
            "id": draw(_ID),
            "type": "function",
            "function": {"name": draw(_NAME), "arguments": json.dumps(draw(_ARGS))},
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    text = draw(st.one_of(st.none(), _WORD)) if calls else draw(_WORD)
    message: Json = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = draw(
        st.sampled_from(["tool_calls", "length"] if calls else ["stop", "length", "content_filter"])
    )
    prompt, cached, completion = (
        draw(st.integers(0, 10_000)),
        draw(st.integers(0, 100)),
        draw(st.integers(0, 10_000)),
    )
    usage: Json = {
        "prompt_tokens": prompt + cached,
        "completion_tokens": completion,
        "total_tokens": prompt + cached + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "id": "chatcmpl-" + draw(st.from_regex(r"[a-zA-Z0-9]{1,10}", fullmatch=True)),
        "object": "chat.completion",
        "created": 42,
        "model": draw(_NAME),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def normalize_openai_response(resp: Json) -> Json:
    message = resp["choices"][0]["message"]
    calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls", [])
    ]
    return {
        **resp,
        "choices": [{**resp["choices"][0], "message": {**message, "tool_calls": calls}}],
    }


@settings(max_examples=100, deadline=None)
@given(openai_responses())
def test_openai_response_round_trip(resp: Json) -> None:
    back = anthropic_response_to_openai(openai_response_to_anthropic(resp), created=42)
    assert normalize_openai_response(back) == normalize_openai_response(resp)


@st.composite
def anthropic_responses(draw: st.DrawFn) -> Json:
    content: list[Json] = []
    if draw(st.booleans()):
        content.append({"type": "text", "text": draw(_WORD)})
    content.extend(
        {
            "type": "tool_use",
            "id": "toolu_" + draw(_NAME),
            "name": draw(_NAME),
            "input": draw(_ARGS),
        }
        for _ in range(draw(st.integers(0, 2)))
    )
    has_tools = any(b["type"] == "tool_use" for b in content)
    stop = draw(
        st.sampled_from(
            ["tool_use", "max_tokens"] if has_tools else ["end_turn", "max_tokens", "refusal"]
        )
    )
    usage: Json = {
        "input_tokens": draw(st.integers(0, 10_000)),
        "output_tokens": draw(st.integers(0, 10_000)),
    }
    if draw(st.booleans()):
        usage["cache_read_input_tokens"] = draw(st.integers(1, 100))
    return {
        "id": "msg_" + draw(st.from_regex(r"[a-zA-Z0-9]{1,10}", fullmatch=True)),
        "type": "message",
        "role": "assistant",
        "model": draw(_NAME),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


@settings(max_examples=100, deadline=None)
@given(anthropic_responses())
def test_anthropic_response_round_trip(resp: Json) -> None:
    assert openai_response_to_anthropic(anthropic_response_to_openai(resp)) == resp
