"""Responses API <-> chat completions translation (runtime/translate/responses.py and
responses_stream.py), the Anthropic side of ``response_format`` (a forced ``json_response``
tool), and the relays that end a Responses stream. In process; the served paths are in
tests/test_responses_api.py.

Properties: a streamed answer ends with exactly the response its whole twin translates to, with
events numbered without gaps and every item opened before its deltas and closed once; the
request translation keeps every text, in order, and pairs each call with its output.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.bridge import ResponsesRawRelay, bridge_for
from runtime.translate import TranslationError
from runtime.translate.anthropic import (
    JSON_TOOL,
    AnthropicToOpenAIStream,
    anthropic_response_to_openai,
    openai_chat_to_anthropic,
)
from runtime.translate.responses import chat_to_response, hosted_tools, responses_to_chat
from runtime.translate.responses_stream import ChatToResponsesStream
from runtime.upstream import UpstreamFailure

# --- requests --------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    body = responses_to_chat(
        {"model": "m", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 9}
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 9,
    }


def test_items_map_to_messages() -> None:
    body = responses_to_chat(
        {
            "input": [
                {"role": "developer", "content": "rules"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,AA==",
                            "detail": "low",
                        },
                        {
                            "type": "input_file",
                            "file_data": "data:application/pdf;base64,JV",
                            "filename": "a.pdf",
                        },
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x":1}'},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "two"}],
                },
            ]
        }
    )
    assert body["messages"] == [
        {"role": "system", "content": "rules"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"},
                },
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,JV", "filename": "a.pdf"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_tools_choice_format_and_sampling() -> None:
    body = responses_to_chat(
        {
            "input": "x",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "W", "schema": {"type": "object"}}},
            "temperature": 0.2,
            "top_p": 0.5,
            "reasoning": {"effort": "low"},
            "safety_identifier": "u1",
            "stream": True,
        }
    )
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "W", "schema": {"type": "object"}},
    }
    assert (body["temperature"], body["top_p"], body["parallel_tool_calls"]) == (0.2, 0.5, False)
    assert (body["reasoning_effort"], body["user"]) == ("low", "u1")
    assert body["stream_options"] == {"include_usage": True}
    assert responses_to_chat({"input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in responses_to_chat(
        {"input": "x", "text": {"format": {"type": "text"}}}
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"input": 3}, "input"),
    ],
)
def test_what_needs_openai_is_refused_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(TranslationError) as caught:
        responses_to_chat(body)
    assert caught.value.param == param


_text = st.text(min_size=1, max_size=12)
_message = st.builds(
    lambda role, text: {"role": role, "content": text},
    st.sampled_from(["user", "assistant", "system", "developer"]),
    _text,
)
_call = st.builds(
    lambda i, args: [
        {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": args},
        {"type": "function_call_output", "call_id": f"c{i}", "output": f"out{i}"},
    ],
    st.integers(0, 10_000),
    st.sampled_from(["{}", '{"a": 1}']),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_message.map(lambda m: [m]), _call), min_size=1, max_size=8))
def test_request_translation_keeps_every_text_in_order_and_pairs_calls(
    groups: list[list[dict[str, Any]]],
) -> None:
    items = [item for group in groups for item in group]
    messages = responses_to_chat({"input": items})["messages"]
    expected = [
        i["content"] if "content" in i else i["output"]
        for i in items
        if i.get("type") != "function_call"
    ]
    assert [m["content"] for m in messages if m.get("content") is not None] == [
        t for t in expected if t is not None
    ]
    calls = [c["id"] for m in messages for c in m.get("tool_calls", ())]
    outputs = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert calls == outputs == [i["call_id"] for i in items if i.get("type") == "function_call"]
    for i, message in enumerate(messages):  # every output right after the call asking for it
        if message["role"] == "tool":
            before = [m for m in messages[:i] if m.get("tool_calls")][-1]
            assert message["tool_call_id"] in [c["id"] for c in before["tool_calls"]]


# --- whole answers ----------------------------------------------------------------------------


def _completion(text: str | None, calls: list[tuple[str, str]], finish: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 4,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }


def test_whole_answer_with_text_and_a_call() -> None:
    response = chat_to_response(_completion("Hi", [("f", '{"a":1}')], "tool_calls"))
    assert response["id"] == "resp_abc" and response["object"] == "response"
    assert (response["status"], response["created_at"], response["model"]) == ("completed", 7, "m")
    message, call = response["output"]
    assert message == {
        "id": "msg_abc_0",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}],
    }
    assert call == {
        "id": "fc_abc_1",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_0",
        "name": "f",
        "arguments": '{"a":1}',
    }
    assert response["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 3},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 15,
    }


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete_with_its_reason(finish: str, reason: str) -> None:
    response = chat_to_response(_completion("Hi", [], finish))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}


# --- streams --------------------------------------------------------------------------------


def _chunks(text: list[str], calls: list[tuple[str, list[str]]], finish: str) -> list[Any]:
    head = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 7, "model": "m"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in text]
    for i, (name, pieces) in enumerate(calls):
        opening = {"index": i, "id": f"call_{i}", "type": "function"}
        out.append(
            chunk({"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]})
        )
        out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in pieces]
    out.append(chunk({}, finish))
    usage = _completion(None, [], finish)["usage"]
    out.append({**head, "choices": [], "usage": usage})
    return out


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.text(min_size=1, max_size=6), max_size=5),
    calls=st.lists(
        st.tuples(
            st.sampled_from(["f", "g"]), st.lists(st.text(min_size=1, max_size=5), max_size=4)
        ),
        max_size=3,
    ),
    finish=st.sampled_from(["stop", "length", "tool_calls"]),
)
def test_a_stream_ends_with_what_its_whole_twin_translates_to(
    text: list[str], calls: list[tuple[str, list[str]]], finish: str
) -> None:
    stream = ChatToResponsesStream("m")
    events = [e for c in _chunks(text, calls, finish) for e in stream.feed(c)] + stream.finish()
    assert stream.finish() == []
    whole = chat_to_response(
        _completion("".join(text) or None, [(n, "".join(p)) for n, p in calls], finish)
    )
    last = events[-1][1]
    assert last["response"]["output"] == whole["output"]
    assert last["response"]["usage"] == whole["usage"]
    assert last["response"]["status"] == whole["status"]
    assert events[-1][0] == f"response.{whole['status']}"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(name == data["type"] for name, data in events)
    _check_item_lifecycle(events)


def _check_item_lifecycle(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Every item is added once before its deltas and done once after them, with the text or
    arguments its deltas add up to."""
    added: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    pieces: dict[int, list[str]] = {}
    for name, data in events:
        index = data.get("output_index")
        if name == "response.output_item.added":
            assert index not in added
            added[index] = data["item"]
        elif index is not None:
            assert index in added and index not in done, name
        if name in ("response.output_text.delta", "response.function_call_arguments.delta"):
            pieces.setdefault(index, []).append(data["delta"])
        if name == "response.output_item.done":
            done.add(index)
            item = data["item"]
            assert item["id"] == added[index]["id"]
            got = "".join(pieces.get(index, []))
            if item["type"] == "message":
                assert item["content"][0]["text"] == got
            else:
                assert item["arguments"] == got
    assert done == set(added)


def test_an_upstream_error_chunk_becomes_the_last_event() -> None:
    stream = ChatToResponsesStream("m")
    first = stream.feed({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    error = {"error": {"message": "boom", "type": "server_error", "code": None, "param": None}}
    (event,) = stream.feed(error)
    assert event == (
        "error",
        {
            "type": "error",
            "code": "server_error",
            "message": "boom",
            "param": None,
            "sequence_number": len(first),
        },
    )
    assert stream.feed({"choices": []}) == [] and stream.finish() == []


def test_an_empty_stream_still_completes() -> None:
    stream = ChatToResponsesStream("m")
    names = [name for name, _ in stream.finish()]
    assert names == ["response.created", "response.in_progress", "response.completed"]


# --- response_format to Anthropic: a forced tool --------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_response_format_becomes_a_forced_tool() -> None:
    body = openai_chat_to_anthropic(
        {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "W", "schema": SCHEMA},
            },
        }
    )
    assert body["tools"] == [
        {"name": JSON_TOOL, "description": body["tools"][0]["description"], "input_schema": SCHEMA}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    json_object = openai_chat_to_anthropic(
        {"messages": [], "response_format": {"type": "json_object"}}
    )
    assert json_object["tools"][0]["input_schema"] == {"type": "object"}


def test_with_other_tools_the_answer_tool_is_offered_not_forced() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    body = openai_chat_to_anthropic(
        {"messages": [], "tools": tools, "response_format": {"type": "json_object"}}
    )
    assert [t["name"] for t in body["tools"]] == ["f", JSON_TOOL]
    assert "tool_choice" not in body


def test_a_schema_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(TranslationError) as caught:
        openai_chat_to_anthropic(
            {
                "messages": [],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "array"}},
                },
            }
        )
    assert caught.value.param == "response_format"


def test_the_answer_tool_comes_back_as_text() -> None:
    reply = anthropic_response_to_openai(
        {
            "id": "msg_1",
            "model": "c",
            "content": [
                {"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 1, "output_tokens": 2},
        }
    )
    choice = reply["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"city": "Paris"}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_the_answer_tool_streams_as_text() -> None:
    stream = AnthropicToOpenAIStream("c", include_usage=False, created=1, chunk_id="x")
    events = [
        ("message_start", {"message": {"usage": {"input_tokens": 1}}}),
        (
            "content_block_start",
            {
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {}},
            },
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        ),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
        ("message_stop", {}),
    ]
    chunks = [c for name, data in events for c in stream.feed(name, data)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == '{"city": "Paris"}'
    assert not any("tool_calls" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- the end of a native Responses stream ------------------------------------------------------


def _stream(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + msgspec.json.encode(e) + b"\n\n"
        for e in events
    )


COMPLETE = _stream(
    {"type": "response.created", "sequence_number": 0, "response": {"id": "r"}},
    # NOTE: the answer talks about the event that ends a stream; that must not end it
    {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "delta": '\nevent: response.completed\ndata: {"type":"response.completed"}',
    },
    {"type": "response.completed", "sequence_number": 2, "response": {"id": "r", "output": []}},
)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(COMPLETE)), max_size=10))
def test_responses_raw_relay_finds_the_end_however_the_stream_is_cut(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    parts = [COMPLETE[a:b] for a, b in itertools.pairwise([0, *points, len(COMPLETE)]) if b > a]
    relay = ResponsesRawRelay("openai.responses", b"response.completed")
    assert b"".join(relay.feed(part) for part in parts) == COMPLETE
    assert relay.finish() == b""
    assert relay.sequence == 3


END = COMPLETE.rindex(b"event: response.completed")


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=1, max_value=END), step=st.integers(min_value=1, max_value=50))
def test_responses_raw_relay_refuses_a_stream_cut_short(cut: int, step: int) -> None:
    relay = ResponsesRawRelay("openai.responses", b"response.completed")
    for start in range(0, cut, step):
        relay.feed(COMPLETE[start : min(start + step, cut)])
    with pytest.raises(UpstreamFailure):
        relay.finish()


def test_translated_responses_streams_have_named_events_and_no_done() -> None:
    bridge = bridge_for("openai.responses", "openai", "openai-compatible")
    assert bridge is not None and bridge.path == "/chat/completions"
    relay = bridge.relay(model="m", include_usage=True, steps=(), api="openai.responses")
    chunks = _chunks(["Hi"], [], "stop")
    out = b"".join(relay.feed(b"data: " + msgspec.json.encode(c) + b"\n\n") for c in chunks)
    out += relay.feed(b"data: [DONE]\n\n") + relay.finish()
    assert b"[DONE]" not in out
    names = [line[7:] for line in out.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"response.created" and names[-1] == b"response.completed"
    assert getattr(relay, "sequence", None) == len(names)


def test_native_bridge_only_for_openai_itself() -> None:
    native = bridge_for("openai.responses", "openai", "openai")
    assert native is not None and native.path == "/responses" and native.same_protocol
    for family in ("anthropic", "ollama", "gigachat"):
        bridge = bridge_for("openai.responses", family)
        assert bridge is not None and not bridge.same_protocol


def test_hosted_tools_are_dropped_or_refused() -> None:
    body = {"input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]}
    assert "tools" not in responses_to_chat(body)
    assert hosted_tools(body) == ("tools[0]",)
    with pytest.raises(TranslationError) as caught:
        responses_to_chat(body, drop_hosted=False)
    assert caught.value.param == "tools[0]"
