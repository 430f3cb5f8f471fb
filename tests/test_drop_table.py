"""The README's "No silent drops" table, row by row: for each client API and upstream family, a
request field is mapped (the upstream receives its counterpart), dropped (the upstream receives
nothing of it and the answer does not depend on it), or refused (a 400 naming the parameter). A
route with ``drop_unsupported: true`` drops what would be refused and names it in the
``x-interlock-dropped-params`` header."""

from __future__ import annotations

import array
import base64
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from runtime.bridge import bridge_for
from runtime.translate import TranslationError
from runtime.translate.common import embeddings_as_base64
from runtime.translate.unsupported import translate_dropping
from tests.served import ServedGateway, two_protocol_config
from tests.upstreams import MockUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETIONS = {"model": "m", "prompt": "hi"}
EMBEDDINGS = {"model": "m", "input": "hi"}
MESSAGES = {**CHAT, "max_tokens": 100}
RESPONSES = {"model": "m", "input": "hi"}
BASE: dict[str, dict[str, Any]] = {
    "openai.chat": CHAT,
    "openai.completions": COMPLETIONS,
    "openai.embeddings": EMBEDDINGS,
    "anthropic.messages": MESSAGES,
    "openai.responses": RESPONSES,
}
FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
FN2 = {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}
RESPONSES_FN = {"type": "function", "name": "f", "parameters": {"type": "object"}}
LOGPROBS = "message.output_text.logprobs"


def allowed(mode: str, *names: str) -> dict[str, Any]:
    """Chat's ``tool_choice`` that allows only the functions `names`."""
    tools = [{"type": "function", "function": {"name": name}} for name in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="
TEXT_FILE = "data:text/plain;base64," + base64.b64encode(b"hello, file").decode()
CUSTOM = {"type": "custom", "custom": {"name": "g"}}
CLIENT_TOOL = {"name": "f", "input_schema": {"type": "object"}}
SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search"}


def translate(api: str, family: str, extra: dict[str, Any]) -> dict[str, Any]:
    bridge = bridge_for(api, family, "openai-compatible")
    assert bridge is not None and bridge.request is not None
    return bridge.request({**BASE[api], **extra})


def absent(*names: str) -> Callable[[dict[str, Any]], bool]:
    """Dropped: none of `names` reaches the upstream, at the top level or in Ollama's options."""
    return lambda b: not any(n in b or n in b.get("options", {}) for n in names)


def user_says(*parts: dict[str, Any]) -> dict[str, Any]:
    """Chat ``messages`` whose one user message has `parts`."""
    return {"messages": [{"role": "user", "content": list(parts)}]}


def first_content(body: dict[str, Any]) -> Any:
    return body["messages"][0]["content"]


Predicate = Callable[[dict[str, Any]], bool]

# (client API, fields, upstream family, what the upstream receives)
PASSED: list[tuple[str, dict[str, Any], str, Predicate]] = [
    # --- OpenAI chat -> Anthropic
    ("openai.chat", {"seed": 7}, "anthropic", absent("seed")),
    ("openai.chat", {"service_tier": "flex"}, "anthropic", absent("service_tier")),
    ("openai.chat", {"metadata": {"a": "b"}}, "anthropic", absent("metadata")),
    ("openai.chat", {"store": True}, "anthropic", absent("store")),
    ("openai.chat", {"prompt_cache_key": "k"}, "anthropic", absent("prompt_cache_key")),
    ("openai.chat", {"prediction": {"type": "content"}}, "anthropic", absent("prediction")),
    (
        "openai.chat",
        {"stream_options": {"include_usage": True}},
        "anthropic",
        absent("stream_options"),
    ),
    ("openai.chat", {"user": "u"}, "anthropic", lambda b: b["metadata"] == {"user_id": "u"}),
    (
        "openai.chat",
        {"safety_identifier": "s"},
        "anthropic",
        lambda b: b["metadata"] == {"user_id": "s"},
    ),
    ("openai.chat", {"stop": "END"}, "anthropic", lambda b: b["stop_sequences"] == ["END"]),
    (
        "openai.chat",
        {"tools": [FN], "parallel_tool_calls": False},
        "anthropic",
        lambda b: b["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True},
    ),
    (
        "openai.chat",
        {"frequency_penalty": 0, "presence_penalty": 0},
        "anthropic",
        absent("frequency_penalty", "presence_penalty"),
    ),
    (
        "openai.chat",
        {"logprobs": False, "top_logprobs": 0},
        "anthropic",
        absent("logprobs", "top_logprobs"),
    ),
    ("openai.chat", {"logit_bias": {}}, "anthropic", absent("logit_bias")),
    ("openai.chat", {"modalities": ["text"]}, "anthropic", absent("modalities")),
    ("openai.chat", {"verbosity": "medium"}, "anthropic", absent("verbosity")),
    ("openai.chat", {"temperature": 1.5}, "anthropic", lambda b: b["temperature"] == 1),
    # --- OpenAI chat -> Ollama
    ("openai.chat", {"seed": 7}, "ollama", lambda b: b["options"]["seed"] == 7),
    (
        "openai.chat",
        {"frequency_penalty": 0.5, "presence_penalty": 0.2},
        "ollama",
        lambda b: (
            b["options"]["frequency_penalty"] == 0.5 and b["options"]["presence_penalty"] == 0.2
        ),
    ),
    ("openai.chat", {"stop": ["END"]}, "ollama", lambda b: b["options"]["stop"] == ["END"]),
    (
        "openai.chat",
        {"tools": [FN], "tool_choice": "none"},
        "ollama",
        absent("tools", "tool_choice"),
    ),
    ("openai.chat", {"tools": [FN], "tool_choice": "auto"}, "ollama", lambda b: b["tools"] == [FN]),
    (
        "openai.chat",
        {"tools": [FN], "parallel_tool_calls": True},
        "ollama",
        absent("parallel_tool_calls"),
    ),
    (
        "openai.chat",
        {"user": "u", "metadata": {"a": "b"}, "service_tier": "auto"},
        "ollama",
        absent("user", "metadata", "service_tier"),
    ),
    ("openai.chat", {"reasoning_effort": "high"}, "ollama", absent("reasoning_effort", "think")),
    # --- OpenAI chat -> GigaChat
    (
        "openai.chat",
        {"seed": 7, "user": "u", "service_tier": "auto"},
        "gigachat",
        absent("seed", "user", "service_tier"),
    ),
    (
        "openai.chat",
        {"tools": [FN], "parallel_tool_calls": False},
        "gigachat",
        absent("parallel_tool_calls"),
    ),
    ("openai.chat", {"stop": []}, "gigachat", absent("stop")),
    (
        "openai.chat",
        {"response_format": {"type": "json_object"}},
        "gigachat",
        lambda b: b["response_format"] == {"type": "json_schema", "schema": {"type": "object"}},
    ),
    (
        "openai.chat",
        {"reasoning_effort": "xhigh"},
        "gigachat",
        lambda b: b["reasoning_effort"] == "high",
    ),
    ("openai.chat", {"max_completion_tokens": 9}, "gigachat", lambda b: b["max_tokens"] == 9),
    # --- legacy completions
    ("openai.completions", {"seed": 7}, "anthropic", absent("seed")),
    ("openai.completions", {"user": "u"}, "anthropic", lambda b: b["metadata"] == {"user_id": "u"}),
    (
        "openai.completions",
        {"stop": "END", "max_tokens": 5},
        "anthropic",
        lambda b: b["stop_sequences"] == ["END"] and b["max_tokens"] == 5,
    ),
    ("openai.completions", {"suffix": ")"}, "ollama", lambda b: b["suffix"] == ")"),
    (
        "openai.completions",
        {"seed": 7, "presence_penalty": 1},
        "ollama",
        lambda b: b["options"] == {"seed": 7, "presence_penalty": 1},
    ),
    (
        "openai.completions",
        {"user": "u", "echo": False, "best_of": 1},
        "ollama",
        absent("user", "echo", "best_of"),
    ),
    # --- embeddings
    ("openai.embeddings", {"dimensions": 8}, "ollama", lambda b: b["dimensions"] == 8),
    ("openai.embeddings", {"user": "u"}, "ollama", absent("user")),
    (
        "openai.embeddings",
        {"user": "u", "encoding_format": "float"},
        "gigachat",
        absent("user", "encoding_format"),
    ),
    # --- Anthropic messages -> OpenAI chat (and on through chat to Ollama, GigaChat)
    ("anthropic.messages", {"service_tier": "auto"}, "openai", absent("service_tier")),
    ("anthropic.messages", {"metadata": {"user_id": "u"}}, "openai", lambda b: b["user"] == "u"),
    ("anthropic.messages", {"stop_sequences": ["END"]}, "openai", lambda b: b["stop"] == ["END"]),
    (
        "anthropic.messages",
        {"tools": [CLIENT_TOOL]},
        "openai",
        lambda b: b["tools"][0]["function"]["name"] == "f",
    ),
    (
        "anthropic.messages",
        {"tools": [CLIENT_TOOL], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        "openai",
        lambda b: b["tool_choice"] == "required" and b["parallel_tool_calls"] is False,
    ),
    ("anthropic.messages", {"mcp_servers": []}, "openai", absent("mcp_servers")),
    (
        "anthropic.messages",
        {"cache_control": {"type": "ephemeral"}},
        "openai",
        absent("cache_control"),
    ),
    ("anthropic.messages", {"top_k": 5}, "ollama", lambda b: b["options"]["top_k"] == 5),
    # --- Responses (off kind: openai, as chat; "openai" here is an OpenAI-compatible server)
    (
        "openai.responses",
        {"include": ["reasoning.encrypted_content", "file_search_call.results"]},
        "anthropic",
        absent("include"),
    ),
    ("openai.responses", {"max_tool_calls": 3}, "openai", absent("max_tool_calls")),
    (
        "openai.responses",
        {"prompt_cache_key": "k", "prompt_cache_retention": "24h"},
        "openai",
        absent("prompt_cache_key", "prompt_cache_retention"),
    ),
    ("openai.responses", {"service_tier": "flex"}, "openai", absent("service_tier")),
    ("openai.responses", {"truncation": "auto"}, "anthropic", absent("truncation")),
    ("openai.responses", {"truncation": "disabled"}, "openai", absent("truncation")),
    (
        "openai.responses",
        {"text": {"verbosity": "low"}},
        "openai",
        lambda b: b["verbosity"] == "low",
    ),
    ("openai.responses", {"text": {"verbosity": "medium"}}, "anthropic", absent("verbosity")),
    (
        "openai.responses",
        {"stream_options": {"include_obfuscation": False}},
        "anthropic",
        absent("stream_options"),
    ),
    (
        "openai.responses",
        {"tools": [RESPONSES_FN], "parallel_tool_calls": False},
        "anthropic",
        lambda b: b["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True},
    ),
    (
        "openai.responses",
        {"tools": [RESPONSES_FN], "parallel_tool_calls": False},
        "openai",
        lambda b: b["parallel_tool_calls"] is False,
    ),
    (
        "openai.responses",
        {"tools": [RESPONSES_FN], "parallel_tool_calls": False},
        "gigachat",
        absent("parallel_tool_calls"),
    ),
    (
        "openai.responses",
        {"safety_identifier": "s"},
        "anthropic",
        lambda b: b["metadata"] == {"user_id": "s"},
    ),
    ("openai.responses", {"user": "u"}, "openai", lambda b: b["user"] == "u"),
    ("openai.responses", {"user": "u"}, "ollama", absent("user")),
    ("openai.responses", {"metadata": {"a": "b"}}, "openai", absent("metadata")),
    ("openai.responses", {"metadata": {"a": "b"}}, "anthropic", absent("metadata")),
    ("openai.responses", {"store": False}, "openai", absent("store")),
    (
        "openai.responses",
        {"reasoning": {"effort": "high", "summary": "auto"}},
        "anthropic",
        lambda b: b["thinking"] == {"type": "enabled", "budget_tokens": 16384},
    ),
    (
        "openai.responses",
        {"reasoning": {"effort": "low", "summary": "detailed"}},
        "openai",
        lambda b: b["reasoning_effort"] == "low" and "reasoning" not in b,
    ),
    ("openai.responses", {"reasoning": {"effort": "high"}}, "ollama", absent("reasoning_effort")),
    # --- content parts
    (
        "openai.chat",
        user_says({"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}),
        "anthropic",
        lambda b: (
            first_content(b)
            == [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                }
            ]
        ),
    ),
    (
        "openai.chat",
        user_says({"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}),
        "ollama",
        lambda b: b["messages"][0]["images"] == ["iVBORw0KGgo="] and "detail" not in str(b),
    ),
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}}),
        "anthropic",
        lambda b: (
            first_content(b)
            == [
                {
                    "type": "document",
                    "source": {
                        "type": "base64",
                        "media_type": "application/pdf",
                        "data": "JVBERi0xLjQ=",
                    },
                    "title": "a.pdf",
                }
            ]
        ),
    ),
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_data": TEXT_FILE}}),
        "anthropic",
        lambda b: (
            first_content(b)[0]["source"]
            == {"type": "text", "media_type": "text/plain", "data": "hello, file"}
        ),
    ),
    (
        "anthropic.messages",
        user_says(
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
            }
        ),
        "openai",
        lambda b: (
            first_content(b)
            == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]
        ),
    ),
    (
        "anthropic.messages",
        user_says({"type": "document", "source": {"type": "text", "data": "notes"}}),
        "openai",
        lambda b: first_content(b) == [{"type": "text", "text": "notes"}],
    ),
    (
        "anthropic.messages",
        user_says(
            {
                "type": "document",
                "source": {"type": "content", "content": [{"type": "text", "text": "a"}]},
            }
        ),
        "openai",
        lambda b: first_content(b) == [{"type": "text", "text": "a"}],
    ),
    (
        "anthropic.messages",
        user_says(
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            }
        ),
        "openai",
        lambda b: first_content(b)[0]["file"]["file_data"] == "data:application/pdf;base64,JVBE",
    ),
    # --- embeddings: encoding_format is applied to the answer (see the tests below)
    ("openai.embeddings", {"encoding_format": "base64"}, "ollama", absent("encoding_format")),
    ("openai.embeddings", {"encoding_format": "base64"}, "gigachat", absent("encoding_format")),
    # --- allowed_tools: only the allowed tools are offered, tool_choice is the mode
    (
        "openai.chat",
        {"tools": [FN, FN2], "tool_choice": allowed("required", "g")},
        "anthropic",
        lambda b: [t["name"] for t in b["tools"]] == ["g"] and b["tool_choice"] == {"type": "any"},
    ),
    (
        "openai.chat",
        {"tools": [FN, FN2], "tool_choice": allowed("auto", "f")},
        "ollama",
        lambda b: b["tools"] == [FN] and "tool_choice" not in b,
    ),
    (
        "openai.chat",
        {"tools": [FN, FN2], "tool_choice": allowed("required", "g")},
        "gigachat",
        lambda b: (
            [f["name"] for f in b["functions"]] == ["g"] and b["function_call"] == {"name": "g"}
        ),
    ),
    (
        "openai.responses",
        {
            "tools": [RESPONSES_FN, {**RESPONSES_FN, "name": "g"}],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "f"}],
            },
        },
        "anthropic",
        lambda b: [t["name"] for t in b["tools"]] == ["f"] and b["tool_choice"] == {"type": "auto"},
    ),
    # --- GigaChat forces one named function
    (
        "openai.chat",
        {"tools": [FN], "tool_choice": "required"},
        "gigachat",
        lambda b: b["function_call"] == {"name": "f"},
    ),
    (
        "openai.chat",
        {"tools": [FN, FN2], "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "gigachat",
        lambda b: b["function_call"] == {"name": "g"},
    ),
]

# (client API, fields, upstream family, the parameter the 400 names)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("openai.chat", {"frequency_penalty": 0.5}, "anthropic", "frequency_penalty"),
    ("openai.chat", {"presence_penalty": -1}, "anthropic", "presence_penalty"),
    ("openai.chat", {"logprobs": True}, "anthropic", "logprobs"),
    ("openai.chat", {"top_logprobs": 3}, "anthropic", "top_logprobs"),
    ("openai.chat", {"logit_bias": {"50256": -100}}, "anthropic", "logit_bias"),
    ("openai.chat", {"audio": {"voice": "alloy", "format": "wav"}}, "anthropic", "audio"),
    ("openai.chat", {"modalities": ["text", "audio"]}, "anthropic", "modalities"),
    ("openai.chat", {"web_search_options": {}}, "anthropic", "web_search_options"),
    ("openai.chat", {"verbosity": "low"}, "anthropic", "verbosity"),
    ("openai.chat", {"functions": [FN["function"]]}, "anthropic", "functions"),
    ("openai.chat", {"function_call": {"name": "f"}}, "anthropic", "function_call"),
    ("openai.chat", {"tools": [FN, CUSTOM]}, "anthropic", "tools[1]"),
    ("openai.chat", {"logprobs": True}, "ollama", "logprobs"),
    ("openai.chat", {"logit_bias": {"1": 1}}, "ollama", "logit_bias"),
    ("openai.chat", {"tools": [CUSTOM]}, "ollama", "tools[0]"),
    ("openai.chat", {"tools": [FN], "tool_choice": "required"}, "ollama", "tool_choice"),
    ("openai.chat", {"tools": [FN], "parallel_tool_calls": False}, "ollama", "parallel_tool_calls"),
    ("openai.chat", {"stop": ["END"]}, "gigachat", "stop"),
    ("openai.chat", {"frequency_penalty": 1}, "gigachat", "frequency_penalty"),
    ("openai.chat", {"top_logprobs": 2}, "gigachat", "top_logprobs"),
    ("openai.chat", {"tools": [CUSTOM]}, "gigachat", "tools[0]"),
    ("openai.completions", {"n": 2}, "anthropic", "n"),
    ("openai.completions", {"n": 2}, "ollama", "n"),
    ("openai.completions", {"suffix": ")"}, "anthropic", "suffix"),
    ("openai.completions", {"echo": True}, "anthropic", "echo"),
    ("openai.completions", {"best_of": 3}, "ollama", "best_of"),
    ("openai.completions", {"logprobs": 0}, "ollama", "logprobs"),
    ("openai.completions", {"logit_bias": {"1": 1}}, "anthropic", "logit_bias"),
    ("openai.completions", {"frequency_penalty": 1}, "anthropic", "frequency_penalty"),
    ("openai.embeddings", {"dimensions": 8}, "gigachat", "dimensions"),
    ("anthropic.messages", {"tools": [CLIENT_TOOL, SERVER_TOOL]}, "openai", "tools[1]"),
    (
        "anthropic.messages",
        {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
        "openai",
        "mcp_servers",
    ),
    ("anthropic.messages", {"container": "c1"}, "gigachat", "container"),
    ("anthropic.messages", {"context_management": {"edits": []}}, "openai", "context_management"),
    ("anthropic.messages", {"inference_geo": "us"}, "ollama", "inference_geo"),
    ("openai.chat", {"tools": [FN, FN2], "tool_choice": "required"}, "gigachat", "tool_choice"),
    (
        "openai.chat",
        {"tools": [FN, FN2], "tool_choice": allowed("required", "f", "g")},
        "gigachat",
        "tool_choice",
    ),
    (
        "openai.chat",
        {"tools": [FN], "tool_choice": allowed("required", "f")},
        "ollama",
        "tool_choice",
    ),
    (
        "anthropic.messages",
        {"tools": [CLIENT_TOOL, {**CLIENT_TOOL, "name": "g"}], "tool_choice": {"type": "any"}},
        "gigachat",
        "tool_choice",
    ),
    # --- Responses (off kind: openai)
    ("openai.responses", {"prompt": {"id": "pmpt_1", "version": "2"}}, "openai", "prompt"),
    ("openai.responses", {"prompt": {"id": "pmpt_1"}}, "anthropic", "prompt"),
    (
        "openai.responses",
        {"include": ["reasoning.encrypted_content", LOGPROBS]},
        "anthropic",
        "include[1]",
    ),
    ("openai.responses", {"include": [LOGPROBS]}, "openai", "include[0]"),
    ("openai.responses", {"text": {"verbosity": "low"}}, "anthropic", "text.verbosity"),
    ("openai.responses", {"text": {"verbosity": "high"}}, "gigachat", "text.verbosity"),
    (
        "openai.responses",
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "array"}}}},
        "anthropic",
        "text.format",
    ),
    (
        "openai.responses",
        {"tools": [RESPONSES_FN], "parallel_tool_calls": False},
        "ollama",
        "parallel_tool_calls",
    ),
    ("openai.responses", {"top_logprobs": 3}, "anthropic", "top_logprobs"),
    (
        "openai.responses",
        {"tools": [RESPONSES_FN, {**RESPONSES_FN, "name": "g"}], "tool_choice": "required"},
        "gigachat",
        "tool_choice",
    ),
]

# (client API, fields, upstream family, the part the 400 names): malformed for the target, so
# a 400 even with drop_unsupported (only whole fields and list elements are dropped)
PART_REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "openai.chat",
        user_says(
            {"type": "text", "text": "listen"},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
        ),
        family,
        "messages[0].content[1]",
    )
    for family in ("anthropic", "ollama", "gigachat")
] + [
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_data": "data:application/zip;base64,UEsDBA=="}}),
        "anthropic",
        "messages[0].content[0]",
    ),
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_id": "file-abc"}}),
        "anthropic",
        "messages[0].content[0]",
    ),
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_data": PDF}}),
        "ollama",
        "messages[0].content[0]",
    ),
    (
        "openai.chat",
        user_says({"type": "file", "file": {"file_data": PDF}}),
        "gigachat",
        "messages[0].content[0]",
    ),
    (
        "openai.chat",
        user_says({"type": "image_url", "image_url": {"url": PNG}}),
        "gigachat",
        "messages[0].content[0]",
    ),
    (
        "anthropic.messages",
        user_says({"type": "image", "source": {"type": "file", "file_id": "file_1"}}),
        "openai",
        "messages[0].content[0]",
    ),
    (
        "anthropic.messages",
        user_says(
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
        ),
        "openai",
        "messages[0].content[0]",
    ),
]


@pytest.mark.parametrize(
    ("api", "extra", "family", "received"),
    PASSED,
    ids=[f"{a}-{'+'.join(e)}-{f}" for a, e, f, _ in PASSED],
)
def test_passed(api: str, extra: dict[str, Any], family: str, received: Predicate) -> None:
    assert received(translate(api, family, extra))


@pytest.mark.parametrize(
    ("api", "extra", "family", "param"),
    REFUSED,
    ids=[f"{a}-{'+'.join(e)}-{f}" for a, e, f, _ in REFUSED],
)
def test_refused(api: str, extra: dict[str, Any], family: str, param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        translate(api, family, extra)
    assert caught.value.param == param and caught.value.droppable
    assert param in caught.value.message


@pytest.mark.parametrize(
    ("api", "extra", "family", "param"),
    REFUSED,
    ids=[f"{a}-{'+'.join(e)}-{f}" for a, e, f, _ in REFUSED],
)
def test_refused_is_dropped_on_request(
    api: str, extra: dict[str, Any], family: str, param: str
) -> None:
    bridge = bridge_for(api, family, "openai-compatible")
    assert bridge is not None and bridge.request is not None
    body, dropped = translate_dropping(bridge.request, {**BASE[api], **extra})
    assert dropped == (param,)
    assert "messages" in body or "prompt" in body or "input" in body


@pytest.mark.parametrize(
    ("api", "extra", "family", "param"),
    PART_REFUSED,
    ids=[f"{a}-{e['messages'][0]['content'][-1]['type']}-{f}" for a, e, f, _ in PART_REFUSED],
)
def test_part_refused(api: str, extra: dict[str, Any], family: str, param: str) -> None:
    bridge = bridge_for(api, family, "openai-compatible")
    assert bridge is not None and bridge.request is not None
    with pytest.raises(TranslationError) as caught:
        translate_dropping(bridge.request, {**BASE[api], **extra})
    assert caught.value.param == param and not caught.value.droppable


def user_item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}

# the same for a Responses client: the 400 names its input item, not the chat message made of it
RESPONSES_PART_REFUSED: list[tuple[dict[str, Any], str, str]] = [
    (
        {
            "instructions": "Be brief.",
            "input": [
                user_item(
                    {"type": "input_text", "text": "x"},
                    {"type": "input_file", "file_id": "file-1"},
                )
            ],
        },
        "anthropic",
        "input[0].content[1]",
    ),
    (
        {"input": [user_item({"type": "input_image", "image_url": "https://x/y.png"})]},
        "ollama",
        "input[0].content[0].image_url",
    ),
    (
        {
            "input": [
                user_item({"type": "input_text", "text": "x"}),
                {"type": "reasoning", "summary": []},
                CALL,
                {**CALL, "call_id": "c2", "name": "g"},
                {"type": "function_call_output", "call_id": "c1", "output": "{}"},
                {"type": "function_call_output", "call_id": "c3", "output": "{}"},
            ]
        },
        "gigachat",
        "input[5].call_id",
    ),
    (  # chat tool messages carry text only: an image a function returned is not dropped
        {
            "input": [
                user_item({"type": "input_text", "text": "x"}),
                CALL,
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [
                        {"type": "input_text", "text": "see"},
                        {"type": "input_image", "image_url": PNG},
                    ],
                },
            ]
        },
        "openai",
        "input[2].output[1]",
    ),
]


@pytest.mark.parametrize(
    ("extra", "family", "param"),
    RESPONSES_PART_REFUSED,
    ids=[p for *_, p in RESPONSES_PART_REFUSED],
)
def test_responses_part_refused(extra: dict[str, Any], family: str, param: str) -> None:
    bridge = bridge_for("openai.responses", family, "openai-compatible")
    assert bridge is not None and bridge.request is not None
    with pytest.raises(TranslationError) as caught:
        translate_dropping(bridge.request, {**RESPONSES, **extra})
    assert caught.value.param == param and not caught.value.droppable


def test_dropping_a_key_of_an_object_keeps_the_rest_and_the_client_body() -> None:
    bridge = bridge_for("openai.responses", "anthropic")
    assert bridge is not None and bridge.request is not None
    text = {"verbosity": "low", "format": {"type": "json_object"}}
    body = {**RESPONSES, "text": text, "include": [LOGPROBS], "prompt": {"id": "p"}}
    out, dropped = translate_dropping(bridge.request, body)
    assert dropped == ("prompt", "include[0]", "text.verbosity")
    assert out["tool_choice"] == {"type": "tool", "name": "json_response"}  # format kept
    assert body["text"] == text  # NOTE: the client's body is left alone


def test_gigachat_embeddings_answer_base64_when_asked() -> None:
    bridge = bridge_for("openai.embeddings", "gigachat")
    assert bridge is not None and bridge.response is not None
    vector = [0.5, -0.25, 1.0]
    answer = bridge.response(
        {"model": "Embeddings", "data": [{"embedding": vector, "index": 0, "usage": {}}]}
    )
    encoded = embeddings_as_base64(answer)["data"][0]["embedding"]
    assert list(array.array("f", base64.b64decode(encoded))) == vector


def test_dropping_names_list_elements_as_the_client_sent_them() -> None:
    bridge = bridge_for("openai.chat", "anthropic")
    assert bridge is not None and bridge.request is not None
    body = {**CHAT, "tools": [CUSTOM, FN, CUSTOM], "top_logprobs": 2}
    out, dropped = translate_dropping(bridge.request, body)
    assert dropped == ("top_logprobs", "tools[0]", "tools[2]")
    assert [t["name"] for t in out["tools"]] == ["f"]
    assert body["tools"] == [CUSTOM, FN, CUSTOM]  # NOTE: the client's body is left alone


def test_a_structural_refusal_is_never_dropped() -> None:
    bridge = bridge_for("openai.chat", "ollama")
    assert bridge is not None and bridge.request is not None
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    with pytest.raises(TranslationError) as caught:
        translate_dropping(bridge.request, body)
    assert caught.value.param == "messages[0].content[0].image_url"


# --- served: the route option and its header --------------------------------------------------


@pytest.fixture
def gw(served: Callable[[str], ServedGateway], upstream_reset: MockUpstream) -> ServedGateway:
    lenient = {
        "lenient-openai": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
        "lenient-anthropic": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
    }
    route = {
        "name": "lenient",
        "match": {"model": ["lenient-openai", "lenient-anthropic"]},
        "action": {"drop_unsupported": True},
    }
    return served(two_protocol_config(upstream_reset, models=lenient, routes=[route]))


def test_openai_client_refused_without_the_option(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with (
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(
            model="to-anthropic", messages=[{"role": "user", "content": "hi"}], logprobs=True
        )
    assert caught.value.param == "logprobs"
    assert upstream_reset.requests == []


def test_openai_client_dropped_with_the_option(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="lenient-anthropic",
            messages=[{"role": "user", "content": "hi"}],
            n=2,
            logprobs=True,
            top_logprobs=2,
        )
    assert raw.headers["x-interlock-dropped-params"] == "logprobs,top_logprobs,n"
    assert raw.parse().choices[0].message.content
    sent = upstream_reset.last_request("/v1/messages").body
    assert "logprobs" not in sent and "n" not in sent


def test_anthropic_client_dropped_with_the_option_streamed(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client,
        client.messages.with_streaming_response.create(
            model="lenient-openai",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"top_k": 5},
        ) as raw,
    ):
        assert raw.headers["x-interlock-dropped-params"] == "top_k"
        text = raw.read().decode()
    assert "message_stop" in text
    assert "top_k" not in upstream_reset.last_request("/v1/chat/completions").body


def test_responses_client_refused_then_dropped_with_the_option(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    asked: dict[str, Any] = {"input": "hi", "text": {"verbosity": "low"}, "include": [LOGPROBS]}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="to-anthropic", **asked)
        assert caught.value.param == "include[0]"
        assert upstream_reset.requests == []
        raw = client.responses.with_raw_response.create(model="lenient-anthropic", **asked)
    assert raw.headers["x-interlock-dropped-params"] == "include[0],text.verbosity"
    assert raw.parse().output_text
    assert "verbosity" not in upstream_reset.last_request("/v1/messages").body


def test_no_header_when_nothing_was_dropped(gw: ServedGateway) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="lenient-anthropic", messages=[{"role": "user", "content": "hi"}]
        )
    assert "x-interlock-dropped-params" not in raw.headers


def test_a_refusal_through_chat_names_the_anthropic_field() -> None:
    with pytest.raises(TranslationError) as caught:
        translate("anthropic.messages", "gigachat", {"stop_sequences": ["END"]})
    assert caught.value.param == "stop_sequences" and caught.value.droppable
    assert "stop_sequences" in caught.value.message
    bridge = bridge_for("anthropic.messages", "gigachat")
    assert bridge is not None and bridge.request is not None
    body, dropped = translate_dropping(bridge.request, {**MESSAGES, "stop_sequences": ["END"]})
    assert dropped == ("stop_sequences",) and "stop" not in body


def test_images_a_tool_returned_follow_the_tool_message_for_chat_upstreams() -> None:
    """Anthropic tool_result content is text only in a chat tool message; its images go into
    the user message of the same turn, after the tool messages, instead of vanishing."""
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
    }
    messages = [
        {"role": "user", "content": "look"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [
                        {"type": "text", "text": "a screenshot"},
                        image,
                    ],
                },
            ],
        },
    ]
    sent = translate("anthropic.messages", "openai", {"messages": messages})
    tool, after = sent["messages"][-2], sent["messages"][-1]
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "a screenshot"}
    assert after["role"] == "user"
    assert after["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
    ]


def test_anthropic_refusals_name_the_anthropic_field_and_drop_it() -> None:
    """A chat-level refusal reached from an Anthropic request names the field the client sent
    (and words the message right), and drop_unsupported removes that field."""
    tools = [CLIENT_TOOL]
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    bridge = bridge_for("anthropic.messages", "ollama", "openai-compatible")
    assert bridge is not None and bridge.request is not None
    body = {**MESSAGES, "tools": tools, "tool_choice": choice}
    with pytest.raises(TranslationError) as caught:
        bridge.request(body)
    assert caught.value.param == "tool_choice.disable_parallel_tool_use"
    sent, dropped = translate_dropping(bridge.request, body)
    assert dropped == ("tool_choice.disable_parallel_tool_use",)
    assert "parallel_tool_calls" not in sent

    gigachat = bridge_for("anthropic.messages", "gigachat", "gigachat")
    assert gigachat is not None and gigachat.request is not None
    with pytest.raises(TranslationError) as stop:
        gigachat.request({**MESSAGES, "stop_sequences": ["END"]})
    assert stop.value.param == "stop_sequences"
    assert "no stop sequences: remove stop_sequences" in stop.value.message
