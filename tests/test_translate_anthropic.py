"""OpenAI chat <-> Anthropic messages: every mapping by example.

Streams are tested in test_translate_anthropic_stream.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.translate import TranslationError
from runtime.translate.anthropic import (
    anthropic_id,
    anthropic_response_to_completions,
    anthropic_response_to_openai,
    anthropic_to_openai_chat,
    completions_to_anthropic,
    count_request_chars,
    estimate_tokens,
    openai_chat_to_anthropic,
    openai_id,
    openai_response_to_anthropic,
    sanitize_tool_id,
)

Json = dict[str, Any]
WEATHER_SCHEMA: Json = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def call(call_id: str, name: str, arguments: object) -> Json:
    """An OpenAI assistant tool call."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_use(tool_id: str, name: str, value: Json) -> Json:
    """An Anthropic tool_use block."""
    return {"type": "tool_use", "id": tool_id, "name": name, "input": value}


def text(value: str) -> Json:
    """A text block (Anthropic) or text part (OpenAI): both have this shape."""
    return {"type": "text", "text": value}


# --- requests: OpenAI -> Anthropic -----------------------------------------------------------


def test_minimal_request_gets_default_max_tokens() -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    assert openai_chat_to_anthropic(body) == {
        "model": "claude",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4096,
    }
    assert openai_chat_to_anthropic(body, default_max_tokens=10)["max_tokens"] == 10


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    body = {"messages": [], "max_tokens": 5, "max_completion_tokens": 7}
    assert openai_chat_to_anthropic(body)["max_tokens"] == 7
    assert openai_chat_to_anthropic({"messages": [], "max_tokens": 5})["max_tokens"] == 5


def test_system_and_developer_messages_become_system() -> None:
    single = openai_chat_to_anthropic({"messages": [{"role": "system", "content": "Be brief."}]})
    assert single["system"] == "Be brief."
    assert single["messages"] == []
    many = openai_chat_to_anthropic(
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "user", "content": "Hi"},
                {"role": "developer", "content": [text("B")]},
            ]
        }
    )
    assert many["system"] == [text("A"), text("B")]
    assert many["messages"] == [{"role": "user", "content": "Hi"}]


def test_empty_system_is_omitted_and_cache_control_kept() -> None:
    assert "system" not in openai_chat_to_anthropic(
        {"messages": [{"role": "system", "content": ""}]}
    )
    part = {"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}
    body = openai_chat_to_anthropic({"messages": [{"role": "system", "content": [part]}]})
    assert body["system"] == [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]


def test_multipart_user_content_with_images() -> None:
    body = openai_chat_to_anthropic(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        text("What is this?"),
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                        {"type": "image_url", "image_url": "https://x.test/old-style.jpg"},
                        text(""),
                    ],
                }
            ]
        }
    )
    assert body["messages"][0]["content"] == [
        text("What is this?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/old-style.jpg"}},
    ]


def test_pdf_file_part_becomes_document() -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
    }
    body = openai_chat_to_anthropic({"messages": [{"role": "user", "content": [part]}]})
    assert body["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        }
    ]
    back = anthropic_to_openai_chat(body)
    assert back["messages"][0]["content"] == [part]


def test_image_without_url_is_rejected() -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        )
    assert err.value.param == "messages[0].content[0]"


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic({"messages": [{"role": "wizard", "content": "x"}]})
    assert err.value.param == "messages[0].role"


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Get weather",
                "parameters": WEATHER_SCHEMA,
            },
        },
        {"type": "function", "function": {"name": "noargs"}},
        {"type": "custom", "custom": {"name": "grammar"}},
    ]
    body = openai_chat_to_anthropic({"messages": [], "tools": tools, "tool_choice": "required"})
    assert body["tools"] == [
        {"name": "weather", "description": "Get weather", "input_schema": WEATHER_SCHEMA},
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            None,
            {"type": "tool", "name": "weather"},
        ),
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice_mapping(choice: object, parallel: object, expected: Json | None) -> None:
    body: Json = {"messages": [], "tools": [{"type": "function", "function": {"name": "weather"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert openai_chat_to_anthropic(body).get("tool_choice") == expected
    if choice is not None:
        back = anthropic_to_openai_chat(openai_chat_to_anthropic(body))
        assert back.get("tool_choice") == choice
        assert back.get("parallel_tool_calls") == (
            False if parallel is False and choice != "none" else None
        )


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in openai_chat_to_anthropic({"messages": [], "tool_choice": "auto"})


def test_tool_calls_and_results() -> None:
    body = openai_chat_to_anthropic(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        call("call_1", "weather", '{"city": "Paris"}'),
                        call("call_2", "weather", '{"city": "Rome"}'),
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [text("25C")],
                },
                {"role": "user", "content": "Thanks"},
            ]
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                text("Checking."),
                tool_use("call_1", "weather", {"city": "Paris"}),
                tool_use("call_2", "weather", {"city": "Rome"}),
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [text("25C")],
                },
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [("", {}), ("not json", {}), ("[1, 2]", {}), ('{"a": [1]}', {"a": [1]}), (None, {})],
)
def test_malformed_tool_arguments_become_empty_input(arguments: object, expected: Json) -> None:
    calls = [call("c", "f", arguments)]
    body = openai_chat_to_anthropic(
        {"messages": [{"role": "assistant", "content": None, "tool_calls": calls}]}
    )
    assert body["messages"][0]["content"] == [tool_use("c", "f", expected)]


def test_tool_ids_are_sanitized_consistently() -> None:
    assert sanitize_tool_id("call_abc-1") == "call_abc-1"
    assert sanitize_tool_id("call:1.x") == "call_1_x"
    assert sanitize_tool_id("") == "toolu_empty"
    body = openai_chat_to_anthropic(
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "fc:1", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "fc:1", "content": "ok"},
            ]
        }
    )
    assert body["messages"][0]["content"][0]["id"] == "fc_1"
    assert body["messages"][1]["content"][0]["tool_use_id"] == "fc_1"


def test_sampling_stop_stream_and_user() -> None:
    body = openai_chat_to_anthropic(
        {
            "messages": [],
            "temperature": 1.7,
            "top_p": 0.9,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-42",
            "n": 1,
            "seed": 3,
            "presence_penalty": 0.5,
        }
    )
    assert body == {
        "messages": [],
        "max_tokens": 4096,
        "temperature": 1,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u-42"},
    }
    assert openai_chat_to_anthropic({"messages": [], "stop": ["a", "b"]})["stop_sequences"] == [
        "a",
        "b",
    ]
    assert "stream" not in openai_chat_to_anthropic({"messages": [], "stream": False})
    assert openai_chat_to_anthropic({"messages": [], "top_p": 0.5})["top_p"] == 0.5
    assert openai_chat_to_anthropic({"messages": [], "temperature": -1})["temperature"] == 0


def test_assistant_refusal_becomes_text() -> None:
    body = openai_chat_to_anthropic(
        {"messages": [{"role": "assistant", "content": None, "refusal": "I can't."}]}
    )
    assert body["messages"][0]["content"] == [text("I can't.")]


# --- requests: Anthropic -> OpenAI -----------------------------------------------------------


def test_anthropic_request_to_openai() -> None:
    body = anthropic_to_openai_chat(
        {
            "model": "gpt-x",
            "max_tokens": 100,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        text("Look:"),
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/jpeg",
                                "data": "/9j/",
                            },
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        text("Let me check."),
                        tool_use("toolu_1", "weather", {"city": "Paris"}),
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [text("18C")],
                            "is_error": False,
                        },
                        text("And tomorrow?"),
                    ],
                },
            ],
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "top_p": 0.8,
            "stream": True,
            "tools": [
                {"name": "weather", "description": "Get weather", "input_schema": WEATHER_SCHEMA},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
            ],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
    )
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": [text("Be brief.")]},
            {
                "role": "user",
                "content": [
                    text("Look:"),
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [call("toolu_1", "weather", '{"city": "Paris"}')],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": [text("And tomorrow?")]},
        ],
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Get weather",
                    "parameters": WEATHER_SCHEMA,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "user": "u-1",
        "reasoning_effort": "low",
    }


def test_anthropic_request_max_tokens_key_and_plain_strings() -> None:
    body = anthropic_to_openai_chat(
        {
            "max_tokens": 9,
            "system": "S",
            "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        },
        max_tokens_key="max_completion_tokens",
    )
    assert body == {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ],
        "max_completion_tokens": 9,
    }


def test_assistant_with_only_tool_use_has_null_content() -> None:
    body = anthropic_to_openai_chat(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [tool_use("t", "f", {})],
                }
            ]
        }
    )
    assert body["messages"][0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("t", "f", "{}")],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_anthropic_tool_choice_to_openai(choice: Json, expected: object) -> None:
    body = anthropic_to_openai_chat(
        {
            "messages": [],
            "tools": [{"name": "f", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": choice,
        }
    )
    assert body["tool_choice"] == expected


def test_text_document_becomes_text() -> None:
    body = anthropic_to_openai_chat(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
                        }
                    ],
                }
            ]
        }
    )
    assert body["messages"] == [{"role": "user", "content": [text("doc")]}]


# --- legacy completions ----------------------------------------------------------------------


def test_completions_request() -> None:
    assert completions_to_anthropic(
        {
            "model": "m",
            "prompt": ["Say hi"],
            "max_tokens": 16,
            "stop": "\n",
            "echo": True,
            "suffix": "x",
        }
    ) == {
        "model": "m",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 16,
        "stop_sequences": ["\n"],
    }


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2, 3], None, [[1]]])
def test_completions_prompt_must_be_one_string(prompt: object) -> None:
    with pytest.raises(TranslationError) as err:
        completions_to_anthropic({"prompt": prompt})
    assert err.value.param == "prompt"


def test_completions_response() -> None:
    resp = {
        "id": "msg_9",
        "model": "claude",
        "content": [text("Hi "), text("there")],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    assert anthropic_response_to_completions(resp, created=5) == {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 5,
        "model": "claude",
        "choices": [{"text": "Hi there", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


# --- responses -------------------------------------------------------------------------------


def test_anthropic_response_to_openai() -> None:
    resp = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet",
        "content": [
            text("Let me check."),
            tool_use("toolu_1", "weather", {"city": "Paris"}),
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2,
        },
    }
    assert anthropic_response_to_openai(resp, created=123) == {
        "id": "chatcmpl-01abc",
        "object": "chat.completion",
        "created": 123,
        "model": "claude-sonnet",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [call("toolu_1", "weather", '{"city": "Paris"}')],
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 15,
            "completion_tokens": 5,
            "total_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason: str | None, finish: str) -> None:
    resp = {"content": [text("x")], "stop_reason": stop_reason}
    assert anthropic_response_to_openai(resp)["choices"][0]["finish_reason"] == finish


def test_openai_response_to_anthropic() -> None:
    resp = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure.",
                    "tool_calls": [call("call_1", "weather", '{"city":"Rome"}')],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 7,
            "total_tokens": 27,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    assert openai_response_to_anthropic(resp) == {
        "id": "msg_xyz",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [
            text("Sure."),
            tool_use("call_1", "weather", {"city": "Rome"}),
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 16, "output_tokens": 7, "cache_read_input_tokens": 4},
    }


@pytest.mark.parametrize(
    ("finish", "has_tools", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),
        (None, False, "end_turn"),
    ],
)
def test_finish_reason_to_stop_reason(
    finish: str | None, has_tools: bool, stop_reason: str
) -> None:
    message: Json = {"role": "assistant", "content": "x"}
    if has_tools:
        message["tool_calls"] = [call("c", "f", "{}")]
    resp = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    assert openai_response_to_anthropic(resp)["stop_reason"] == stop_reason


def test_openai_refusal_and_empty_response() -> None:
    refused = openai_response_to_anthropic(
        {
            "choices": [
                {"message": {"content": None, "refusal": "No."}, "finish_reason": "content_filter"}
            ]
        }
    )
    assert refused["content"] == [text("No.")]
    assert refused["stop_reason"] == "refusal"
    empty = openai_response_to_anthropic({"choices": []})
    assert empty["content"] == []
    assert empty["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert empty["id"].startswith("msg_")


def test_ids_map_both_ways() -> None:
    assert openai_id("msg_01") == "chatcmpl-01"
    assert anthropic_id("chatcmpl-01") == "msg_01"
    assert anthropic_id("cmpl-01") == "msg_01"
    assert anthropic_id(openai_id("msg_abc")) == "msg_abc"
    assert openai_id(anthropic_id("chatcmpl-abc")) == "chatcmpl-abc"
    assert openai_id(None).startswith("chatcmpl-")


def test_estimate_tokens_and_count_chars() -> None:
    assert estimate_tokens(0) == 1
    assert estimate_tokens(4) == 1
    assert estimate_tokens(5) == 2
    assert estimate_tokens(400) == 100
    body = {
        "system": "ab",
        "messages": [
            {"role": "user", "content": "cde"},
            {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "content": [text("xy")]}],
            },
        ],
    }
    assert count_request_chars(body) == 2 + 3 + 1 + 2 + 2


@pytest.mark.parametrize(
    ("body", "param"),
    [({"messages": "hi"}, "messages"), ({"messages": ["hi"]}, "messages[0]")],
)
def test_malformed_anthropic_request_is_a_translation_error(body: Json, param: str) -> None:
    with pytest.raises(TranslationError) as err:
        anthropic_to_openai_chat(body)
    assert err.value.param == param


def test_tools_without_schema_are_skipped() -> None:
    body = anthropic_to_openai_chat(
        {"messages": [{"role": "user", "content": [text("ok")]}], "tools": [{"name": "no_schema"}]}
    )
    assert body == {"messages": [{"role": "user", "content": [text("ok")]}]}


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("messages", [{"role": "user", "content": ["junk"]}], "messages[0].content[0]"),
        ("messages", [{"role": "assistant", "content": [text("a"), 7]}], "messages[0].content[1]"),
        ("tools", ["junk"], "tools[0]"),
        ("metadata", "junk", "metadata"),
    ],
)
def test_ill_typed_fields_are_refused_by_path(field: str, value: object, param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(TranslationError) as caught:
        anthropic_to_openai_chat(body)
    assert caught.value.param == param and not caught.value.droppable
