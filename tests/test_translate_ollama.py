"""OpenAI chat/completions/embeddings <-> Ollama native API, by example."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from runtime.sse import NDJSONDecoder
from runtime.translate import TranslationError
from runtime.translate.ollama import (
    OllamaToCompletionsStream,
    OllamaToOpenAIStream,
    completions_to_ollama,
    embeddings_to_ollama,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_generate_to_completions,
    openai_chat_to_ollama,
)

Json = dict[str, Any]


def test_chat_request_with_everything() -> None:
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    body = openai_chat_to_ollama(
        {
            "model": "llama3.2",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is "},
                        {"type": "text", "text": "this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            ],
            "tools": tools,
            "tool_choice": "auto",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 64,
            "max_tokens": 10,
            "stop": "END",
            "seed": 7,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.3,
            "response_format": {"type": "json_object"},
            "stream": True,
            "user": "u",
        }
    )
    assert body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": ["iVBO"]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "function": {"name": "weather", "arguments": {"city": "Paris"}},
                        "id": "call_1",
                    }
                ],
            },
            {"role": "tool", "content": "18C", "tool_name": "weather", "tool_call_id": "call_1"},
        ],
        "stream": True,
        "tools": tools,
        "options": {
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 7,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.3,
            "num_predict": 64,
            "stop": ["END"],
        },
        "format": "json",
    }


def test_stream_is_always_explicit_and_schema_format() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    body = openai_chat_to_ollama(
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5,
            "stop": ["a", "b"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema},
            },
        }
    )
    assert body["stream"] is False
    assert body["options"] == {"num_predict": 5, "stop": ["a", "b"]}
    assert body["format"] == schema
    assert "options" not in openai_chat_to_ollama({"messages": []})


def test_http_image_url_is_rejected() -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_ollama(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                        ],
                    }
                ]
            }
        )
    assert err.value.param == "messages[0].content[0].image_url"


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(TranslationError):
        openai_chat_to_ollama({"messages": [{"role": "function", "content": "x"}]})


def test_tool_name_prefers_explicit_name() -> None:
    body = openai_chat_to_ollama(
        {"messages": [{"role": "tool", "name": "f", "tool_call_id": "zzz", "content": "1"}]}
    )
    assert body["messages"] == [
        {"role": "tool", "content": "1", "tool_name": "f", "tool_call_id": "zzz"}
    ]


def test_chat_response() -> None:
    resp = {
        "model": "llama3.2",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": {"role": "assistant", "content": "Hello!"},
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 26,
        "eval_count": 298,
        "total_duration": 5191566416,
    }
    assert ollama_chat_to_openai(resp, completion_id="chatcmpl-1", created=9) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 9,
        "model": "llama3.2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324},
    }


def test_chat_response_with_tool_calls() -> None:
    resp = {
        "model": "m",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        "done": True,
        "done_reason": "stop",
    }
    out = ollama_chat_to_openai(resp)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert out["id"].startswith("chatcmpl-")


def openai_snapshot(chunks: list[Json]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.current_completion_snapshot


def test_chat_stream_from_ndjson_bytes() -> None:
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "m",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "a", "arguments": {"x": 1}}},
                    {"id": "given", "function": {"name": "b", "arguments": {}}},
                ],
            },
            "done": False,
        },
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 7,
        },
    ]
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    decoder = NDJSONDecoder()
    stream = OllamaToOpenAIStream("m", include_usage=True, created=1, chunk_id="chatcmpl-o")
    chunks: list[Json] = []
    for i in range(0, len(raw), 11):
        for line in decoder.feed(raw[i : i + 11]):
            chunks.extend(stream.feed(json.loads(line)))
    chunks.extend(stream.finish())
    deltas: list[Json] = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[:3] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
    ]
    assert deltas[3]["tool_calls"][0]["index"] == 0
    assert deltas[4]["tool_calls"][0]["index"] == 1
    assert deltas[4]["tool_calls"][0]["id"] == "given"
    assert deltas[5] == {}
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[6]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    snapshot = openai_snapshot(chunks)
    message = snapshot.choices[0].message
    assert message.content == "Hello"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("a", {"x": 1}),
        ("b", {}),
    ]


def test_chat_stream_length_error_and_truncation() -> None:
    stream = OllamaToOpenAIStream("m", include_usage=False, created=1, chunk_id="c")
    out = stream.feed({"message": {"content": "x"}, "done": True, "done_reason": "length"})
    assert [c["choices"][0]["finish_reason"] for c in out] == [None, None, "length"]
    assert all("usage" not in c for c in out)
    assert stream.feed({"message": {"content": "late"}}) == []

    failing = OllamaToOpenAIStream("m", include_usage=False, created=1, chunk_id="c")
    assert failing.feed({"error": "model crashed"}) == [
        {"error": {"message": "model crashed", "type": "server_error", "param": None, "code": None}}
    ]
    assert failing.finish() == []

    cut = OllamaToOpenAIStream("m", include_usage=True, created=1, chunk_id="c")
    chunks = cut.feed({"message": {"content": "x"}, "done": False}) + cut.finish()
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


def test_completions_request_and_response() -> None:
    assert completions_to_ollama(
        {
            "model": "codellama",
            "prompt": "def f(",
            "suffix": "    return x",
            "max_tokens": 8,
            "temperature": 0,
            "echo": True,
        }
    ) == {
        "model": "codellama",
        "prompt": "def f(",
        "stream": False,
        "suffix": "    return x",
        "options": {"temperature": 0, "num_predict": 8},
    }
    with pytest.raises(TranslationError):
        completions_to_ollama({"prompt": [1, 2]})
    resp = {
        "model": "codellama",
        "response": "x):",
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 2,
    }
    assert ollama_generate_to_completions(resp, completion_id="cmpl-1", created=4) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 4,
        "model": "codellama",
        "choices": [{"text": "x):", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_completions_stream() -> None:
    stream = OllamaToCompletionsStream("m", include_usage=True, created=1, chunk_id="cmpl-s")
    chunks = stream.feed({"response": "He", "done": False})
    chunks += stream.feed(
        {
            "response": "y",
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 1,
            "eval_count": 2,
        }
    )
    chunks += stream.finish()
    assert [c["choices"][0]["text"] for c in chunks[:3]] == ["He", "y", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "length"]
    assert chunks[3] == {
        "id": "cmpl-s",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    assert (
        OllamaToCompletionsStream("m", include_usage=False, created=1, chunk_id="c").feed(
            {"error": "x"}
        )[0]["error"]["message"]
        == "x"
    )


def test_embeddings_request() -> None:
    assert embeddings_to_ollama(
        {"model": "nomic", "input": ["a", "b"], "dimensions": 8, "user": "u"}
    ) == {
        "model": "nomic",
        "input": ["a", "b"],
        "dimensions": 8,
    }
    assert embeddings_to_ollama({"model": "nomic", "input": "a"})["input"] == "a"


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2]], None, 5])
def test_embeddings_token_input_is_rejected(value: object) -> None:
    with pytest.raises(TranslationError) as err:
        embeddings_to_ollama({"model": "nomic", "input": value})
    assert err.value.param == "input"


def test_embeddings_response_float_and_base64() -> None:
    resp = {"model": "nomic", "embeddings": [[0.5, -1.0], [0.25, 2.0]], "prompt_eval_count": 4}
    assert ollama_embed_to_openai(resp) == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5, -1.0], "index": 0},
            {"object": "embedding", "embedding": [0.25, 2.0], "index": 1},
        ],
        "model": "nomic",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    encoded = ollama_embed_to_openai(resp, model="alias", encoding_format="base64")
    assert encoded["model"] == "alias"
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == (0.25, 2.0)
