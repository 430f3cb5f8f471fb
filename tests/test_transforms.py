"""Transform pipelines: compile, check (located diagnostics) and run on each API's bodies."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.diagnostics import Span
from compiler.transforms import (
    AddStep,
    DropStep,
    RegexReplaceStep,
    SetStep,
    TransformPipeline,
    apply_request_steps,
    apply_response_steps,
    apply_stream_steps,
    check_transform_pipeline,
    compile_step,
    compile_transform_pipeline,
)

APIS = (
    "openai.chat",
    "openai.completions",
    "openai.embeddings",
    "anthropic.messages",
    "anthropic.count_tokens",
)


def span_for(suffix: str) -> Span:
    return Span("t.yaml", 10, 20, suffix)


def regex(pattern: str, replacement: str, **more: Any) -> RegexReplaceStep:
    step = compile_step(
        {"op": "regex_replace", "pattern": pattern, "replacement": replacement, **more}
    )
    assert isinstance(step, RegexReplaceStep)
    return step


SCRUB = regex("sk-[A-Za-z0-9]{20,}", "[REDACTED]", flags=["ignorecase"])
KEY = "sk-" + "a" * 24

# --- compiling ---------------------------------------------------------------------------------


def test_documented_pipeline_compiles() -> None:
    pipeline = compile_transform_pipeline(
        "scrub-secrets",
        {
            "request": [
                {
                    "op": "regex_replace",
                    "pattern": "sk-[A-Za-z0-9]{20,}",
                    "replacement": "[REDACTED]",
                    "flags": ["ignorecase"],
                    "target": "text",
                },
                {"op": "drop", "path": "$.metadata"},
                {"op": "set", "path": "$.user", "value": "interlock"},
                {"op": "add", "path": "$.stop", "value": "\n\nHuman:"},
            ],
            "response": [
                {
                    "op": "regex_replace",
                    "pattern": "(?i)internal-host-\\d+",
                    "replacement": "[host]",
                    "stream_safe": True,
                }
            ],
        },
    )
    assert isinstance(pipeline, TransformPipeline)
    first, drop, set_, add = pipeline.request
    assert isinstance(first, RegexReplaceStep) and first.pattern.flags & re.IGNORECASE
    assert first.target_text and not first.stream_safe and first.op == "regex_replace"
    assert isinstance(drop, DropStep) and drop.stream_safe and drop.path.source == "$.metadata"
    assert isinstance(set_, SetStep) and set_.value == "interlock"
    assert isinstance(add, AddStep) and add.op == "add"
    assert pipeline.response[0].stream_safe

    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": f"my key is {KEY.upper()}"}],
        "metadata": {"note": "x"},
        "stop": ["\n\nUser:"],
    }
    assert apply_request_steps(pipeline.request, body, "openai.chat")
    assert body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "my key is [REDACTED]"}],
        "user": "interlock",
        "stop": ["\n\nUser:", "\n\nHuman:"],
    }


def test_paths_target_selected_strings_only() -> None:
    step = regex("secret", "***", paths=["$.metadata.*", "$.user"])
    assert not step.target_text
    body: dict[str, Any] = {
        "metadata": {"a": "a secret", "n": 1, "deep": {"b": "secret"}},
        "user": "secret-user",
        "messages": [{"role": "user", "content": "secret"}],
    }
    assert apply_request_steps([step], body, "openai.chat")
    assert body["metadata"] == {"a": "a ***", "n": 1, "deep": {"b": "secret"}}
    assert body["user"] == "***-user"
    assert body["messages"][0]["content"] == "secret"
    both = regex("secret", "***", paths=["$.user"], target="text")
    assert both.target_text and len(both.paths) == 1


def test_replacement_uses_python_re_syntax() -> None:
    step = regex(r"(?P<user>\w+)@(\w+)\.com", r"\g<user> at \2")
    body = {"prompt": ["mail bob@example.com", [1, 2]]}
    assert apply_request_steps([step], body, "openai.completions")
    assert body == {"prompt": ["mail bob at example", [1, 2]]}


def test_flags() -> None:
    step = regex(" a . b # spaced", "X", flags=["verbose", "dotall", "multiline", "ignorecase"])
    assert step.flags == ("verbose", "dotall", "multiline", "ignorecase")
    assert step.rewrite("A\nB") == "X"


def test_unchanged_bodies_report_no_change() -> None:
    body = {"messages": [{"role": "user", "content": "nothing here"}]}
    before = copy.deepcopy(body)
    steps = [SCRUB, compile_step({"op": "drop", "path": "$.metadata"})]
    assert not apply_request_steps(steps, body, "openai.chat")
    assert body == before
    same = regex("a", "a")
    assert not apply_request_steps([same], {"prompt": "banana"}, "openai.completions")


def test_set_and_add_values_are_frozen_and_copied() -> None:
    step = compile_step({"op": "set", "path": "$.metadata", "value": {"tags": ["a"]}})
    assert isinstance(step, SetStep)
    with pytest.raises(TypeError):
        step.value["tags"] = []
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    apply_request_steps([step], first, "openai.chat")
    apply_request_steps([step], second, "openai.chat")
    first["metadata"]["tags"].append("b")
    assert second == {"metadata": {"tags": ["a"]}}


def test_stream_steps_run_only_stream_safe_steps() -> None:
    unsafe = regex("a", "b")
    safe = regex("c", "d", stream_safe=True)
    drop = compile_step({"op": "drop", "path": "$.usage"})
    chunk = {"choices": [{"delta": {"content": "ac"}}], "usage": {"total_tokens": 1}}
    assert apply_stream_steps([unsafe, safe, drop], chunk, "openai.chat")
    assert chunk == {"choices": [{"delta": {"content": "ad"}}]}


# --- text targeting, concrete ------------------------------------------------------------------


def test_anthropic_request_text_excludes_tool_inputs() -> None:
    body = {
        "model": KEY,
        "system": [{"type": "text", "text": KEY}],
        "messages": [
            {"role": "user", "content": KEY},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": KEY},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": KEY}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": KEY}],
            },
        ],
    }
    assert apply_request_steps([SCRUB], body, "anthropic.messages")
    assert body["model"] == KEY
    assert body["system"] == [{"type": "text", "text": "[REDACTED]"}]
    messages = body["messages"]
    assert isinstance(messages, list)
    assert messages[0]["content"] == "[REDACTED]"
    assert messages[1]["content"][0]["text"] == "[REDACTED]"
    assert messages[1]["content"][1]["input"] == {"q": KEY}
    assert messages[2]["content"][0]["content"] == KEY


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (
            "openai.chat",
            {"choices": [{"message": {"content": KEY, "tool_calls": [{"arguments": KEY}]}}]},
            {
                "choices": [
                    {"message": {"content": "[REDACTED]", "tool_calls": [{"arguments": KEY}]}}
                ]
            },
        ),
        ("openai.completions", {"choices": [{"text": KEY}]}, {"choices": [{"text": "[REDACTED]"}]}),
        (
            "anthropic.messages",
            {"content": [{"type": "text", "text": KEY}, {"type": "tool_use", "input": {"a": KEY}}]},
            {
                "content": [
                    {"type": "text", "text": "[REDACTED]"},
                    {"type": "tool_use", "input": {"a": KEY}},
                ]
            },
        ),
        ("openai.embeddings", {"data": [{"embedding": [0.1]}], "model": KEY}, None),
        ("anthropic.count_tokens", {"input_tokens": 3, "note": KEY}, None),
    ],
)
def test_response_text(api: str, body: dict[str, Any], expected: dict[str, Any] | None) -> None:
    before = copy.deepcopy(body)
    assert apply_response_steps([SCRUB], body, api) is (expected is not None)
    assert body == (expected if expected is not None else before)


@pytest.mark.parametrize(
    ("api", "event", "expected"),
    [
        (
            "openai.chat",
            {"choices": [{"delta": {"content": KEY}}]},
            {"choices": [{"delta": {"content": "[REDACTED]"}}]},
        ),
        ("openai.completions", {"choices": [{"text": KEY}]}, {"choices": [{"text": "[REDACTED]"}]}),
        (
            "anthropic.messages",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": KEY},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "[REDACTED]"},
            },
        ),
        (
            "anthropic.messages",
            {"type": "content_block_start", "content_block": {"type": "text", "text": KEY}},
            {
                "type": "content_block_start",
                "content_block": {"type": "text", "text": "[REDACTED]"},
            },
        ),
        (
            "anthropic.messages",
            {
                "type": "content_block_delta",
                "delta": {"type": "input_json_delta", "partial_json": KEY},
            },
            None,
        ),
    ],
)
def test_stream_text(api: str, event: dict[str, Any], expected: dict[str, Any] | None) -> None:
    before = copy.deepcopy(event)
    safe = regex(SCRUB.pattern.pattern, "[REDACTED]", stream_safe=True)
    assert apply_stream_steps([safe], event, api) is (expected is not None)
    assert event == (expected if expected is not None else before)


def test_malformed_bodies_are_left_alone() -> None:
    for api in APIS:
        for body in ({"messages": "x", "prompt": 3, "input": None, "system": 1}, {}):
            assert not apply_request_steps([SCRUB], body, api)
            assert not apply_response_steps([SCRUB], {"choices": [1, {"message": 2}]}, api)
            assert not apply_stream_steps([SCRUB], {"choices": ["x"], "delta": 1}, api)


# --- checks ------------------------------------------------------------------------------------


def check(spec: dict[str, Any], **kwargs: Any) -> list[tuple[str, str, int]]:
    found = check_transform_pipeline("p", spec, span_for, **kwargs)
    return [(d.code, d.span.path, d.span.col) for d in found]


def test_check_accepts_valid_pipelines() -> None:
    spec = {
        "request": [
            {"op": "regex_replace", "pattern": "(a)(?P<b>b)", "replacement": r"\1\g<b>\g<0>"},
            {"op": "set", "path": "$.a[0].b", "value": [1, {"x": None}]},
            {"op": "add", "path": "$['stop']", "value": "x"},
            {"op": "drop", "path": "$..secret"},
        ],
        "response": [{"op": "regex_replace", "pattern": "x", "paths": ["$.a[*]"]}],
    }
    assert check(spec) == []


def test_regex_errors_point_inside_the_pattern() -> None:
    spec = {
        "request": [
            {"op": "regex_replace", "pattern": "ok-(unclosed", "replacement": "x"},
            {"op": "regex_replace", "pattern": "(a)", "replacement": r"x\2"},
            {"op": "regex_replace", "pattern": "(a)", "replacement": r"\g<nope>"},
            {"op": "regex_replace", "pattern": "a", "replacement": "tail\\"},
        ]
    }
    assert check(spec) == [
        ("regex.invalid", "request[0].pattern", 20 + 3),
        ("regex.invalid", "request[1].replacement", 20 + 2),
        ("regex.invalid", "request[2].replacement", 20 + 0),
        ("regex.invalid", "request[3].replacement", 20 + 4),
    ]
    message = check_transform_pipeline("p", spec, span_for)[0].message
    assert "unterminated subpattern" in message


def test_jsonpath_errors_point_inside_the_path() -> None:
    spec = {
        "response": [
            {"op": "drop", "path": "$.a["},
            {"op": "regex_replace", "pattern": "a", "paths": ["$.ok", "$.b | $.c"]},
        ]
    }
    assert check(spec) == [
        ("jsonpath.invalid", "response[0].path", 20 + 4),
        ("jsonpath.invalid", "response[1].paths[1]", 20 + 4),
    ]


def test_unsupported_paths() -> None:
    spec = {
        "request": [
            {"op": "set", "path": "$..user", "value": 1},
            {"op": "add", "path": "$.stop[*]", "value": "x"},
            {"op": "drop", "path": "$"},
            {"op": "set", "path": "$", "value": {}},
            {"op": "drop", "path": "$.messages[*].name"},
        ]
    }
    assert [(code, path) for code, path, _ in check(spec)] == [
        ("jsonpath.unsupported", "request[0].path"),
        ("jsonpath.unsupported", "request[1].path"),
        ("jsonpath.unsupported", "request[2].path"),
        ("jsonpath.unsupported", "request[3].path"),
    ]


def test_non_json_values_are_reported() -> None:
    spec = {"request": [{"op": "set", "path": "$.a", "value": {1, 2}}]}
    assert check(spec) == [("schema.type", "request[0].value", 20)]


def test_span_at_maps_offsets() -> None:
    seen: list[tuple[str, int]] = []

    def span_at(suffix: str, offset: int) -> Span:
        seen.append((suffix, offset))
        return Span("t.yaml", 1, 100 + offset, suffix)

    spec = {"request": [{"op": "regex_replace", "pattern": "ab[", "replacement": ""}]}
    assert check(spec, span_at=span_at) == [("regex.invalid", "request[0].pattern", 102)]
    assert seen == [("request[0].pattern", 2)]


# --- properties --------------------------------------------------------------------------------

MARK = "SECRET"
GONE = "[gone]"
MARKER = regex(MARK, GONE, stream_safe=True)

texts = st.text(alphabet="SECRTab ", max_size=10) | st.builds(
    lambda a, b: a + MARK + b, st.text(alphabet="SECRT ", max_size=4), st.text("ab", max_size=3)
)


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An object whose fields are each present or absent."""
    return st.fixed_dictionaries({}, optional=fields)


text_block = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
# NOTE: a block that has a "text" field but is not a text block must be left alone.
odd_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["document", "thinking", "input_text"]), "text": texts}
)
image_part = st.fixed_dictionaries(
    {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": texts})}
)
tool_use = st.fixed_dictionaries(
    {
        "type": st.just("tool_use"),
        "id": texts,
        "name": texts,
        "input": st.dictionaries(texts, texts),
    }
)
tool_result = st.fixed_dictionaries(
    {
        "type": st.just("tool_result"),
        "tool_use_id": texts,
        "content": texts | st.lists(text_block, max_size=2),
    }
)
tool_calls = st.lists(
    st.fixed_dictionaries({"id": texts, "function": obj(name=texts, arguments=texts)}), max_size=2
)
string_or_list = texts | st.lists(texts | st.lists(st.integers(0, 9), max_size=2), max_size=3)

REQUESTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "openai.chat": obj(
        model=texts,
        user=texts,
        metadata=st.dictionaries(texts, texts, max_size=2),
        messages=st.lists(
            obj(
                role=texts,
                name=texts,
                content=texts | st.lists(text_block | image_part | odd_block, max_size=3),
                tool_calls=tool_calls,
            ),
            max_size=3,
        ),
        tools=st.lists(obj(function=obj(name=texts, description=texts)), max_size=2),
    ),
    "openai.completions": obj(model=texts, prompt=string_or_list, suffix=texts),
    "openai.embeddings": obj(model=texts, input=string_or_list, user=texts),
}
REQUESTS["anthropic.messages"] = REQUESTS["anthropic.count_tokens"] = obj(
    model=texts,
    system=texts | st.lists(text_block | odd_block, max_size=2),
    metadata=obj(user_id=texts),
    messages=st.lists(
        obj(
            role=texts,
            content=texts | st.lists(text_block | tool_use | tool_result | odd_block, max_size=3),
        ),
        max_size=3,
    ),
)

RESPONSES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "openai.chat": obj(
        id=texts,
        model=texts,
        choices=st.lists(
            obj(message=obj(role=texts, content=texts, tool_calls=tool_calls), finish_reason=texts),
            max_size=2,
        ),
    ),
    "openai.completions": obj(model=texts, choices=st.lists(obj(text=texts, logprobs=texts))),
    "openai.embeddings": obj(model=texts, data=st.lists(obj(object=texts), max_size=2)),
    "anthropic.messages": obj(
        model=texts,
        stop_sequence=texts,
        content=st.lists(text_block | tool_use | odd_block, max_size=3),
    ),
    "anthropic.count_tokens": obj(input_tokens=st.integers(0, 9), note=texts),
}

STREAMS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "openai.chat": obj(
        model=texts,
        choices=st.lists(
            obj(delta=obj(role=texts, content=texts, tool_calls=tool_calls)), max_size=2
        ),
    ),
    "openai.completions": obj(model=texts, choices=st.lists(obj(text=texts), max_size=2)),
    "openai.embeddings": obj(model=texts),
    "anthropic.messages": st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("content_block_delta"),
                "delta": st.fixed_dictionaries({"type": st.just("text_delta"), "text": texts})
                | st.fixed_dictionaries(
                    {"type": st.just("input_json_delta"), "partial_json": texts}
                )
                | st.fixed_dictionaries({"type": st.just("thinking_delta"), "text": texts}),
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("content_block_start"),
                "content_block": text_block | tool_use | odd_block,
            }
        ),
        st.fixed_dictionaries(
            {"type": st.just("message_start"), "message": obj(model=texts, content=st.just([]))}
        ),
    ),
    "anthropic.count_tokens": obj(note=texts),
}

Loc = tuple[Any, ...]


def is_text_block(doc: Any, loc: Loc) -> bool:
    """`loc` ends in ``..., i, "text"`` and the block at ``..., i`` is a text block."""
    parent = doc
    for key in loc[:-1]:
        parent = parent[key]
    return loc[-1] == "text" and isinstance(parent, dict) and parent.get("type") == "text"


def shape(loc: Loc) -> tuple[Any, ...]:
    """The location with array indices replaced by ``*``."""
    return tuple("*" if isinstance(k, int) else k for k in loc)


TextPredicate = Callable[[Any, Loc], bool]

REQUEST_TEXT: dict[str, TextPredicate] = {
    "openai.chat": lambda d, loc: (
        shape(loc) == ("messages", "*", "content")
        or (shape(loc) == ("messages", "*", "content", "*", "text") and is_text_block(d, loc))
    ),
    "openai.completions": lambda d, loc: shape(loc) in {("prompt",), ("prompt", "*")},
    "openai.embeddings": lambda d, loc: shape(loc) in {("input",), ("input", "*")},
    "anthropic.messages": lambda d, loc: (
        shape(loc) in {("system",), ("messages", "*", "content")}
        or (
            shape(loc) in {("system", "*", "text"), ("messages", "*", "content", "*", "text")}
            and is_text_block(d, loc)
        )
    ),
}
REQUEST_TEXT["anthropic.count_tokens"] = REQUEST_TEXT["anthropic.messages"]
RESPONSE_TEXT: dict[str, TextPredicate] = {
    "openai.chat": lambda d, loc: shape(loc) == ("choices", "*", "message", "content"),
    "openai.completions": lambda d, loc: shape(loc) == ("choices", "*", "text"),
    "openai.embeddings": lambda d, loc: False,
    "anthropic.messages": lambda d, loc: (
        shape(loc) == ("content", "*", "text") and is_text_block(d, loc)
    ),
    "anthropic.count_tokens": lambda d, loc: False,
}
STREAM_TEXT: dict[str, TextPredicate] = {
    "openai.chat": lambda d, loc: shape(loc) == ("choices", "*", "delta", "content"),
    "openai.completions": lambda d, loc: shape(loc) == ("choices", "*", "text"),
    "openai.embeddings": lambda d, loc: False,
    "anthropic.messages": lambda d, loc: (
        (
            d.get("type") == "content_block_delta"
            and loc == ("delta", "text")
            and d["delta"].get("type") == "text_delta"
        )
        or (
            d.get("type") == "content_block_start"
            and loc == ("content_block", "text")
            and d["content_block"].get("type") == "text"
        )
    ),
    "anthropic.count_tokens": lambda d, loc: False,
}


def strings(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*loc, i))


def assert_only_text_changed(before: Any, after: Any, is_text: TextPredicate) -> None:
    assert len(list(strings(before))) == len(list(strings(after)))
    for (loc, old), (loc2, new) in zip(strings(before), strings(after), strict=True):
        assert loc == loc2
        expected = old.replace(MARK, GONE) if is_text(before, loc) else old
        assert new == expected, (loc, old, new)


def bodies(table: dict[str, st.SearchStrategy[dict[str, Any]]]) -> st.SearchStrategy[Any]:
    return st.sampled_from(APIS).flatmap(lambda api: st.tuples(st.just(api), table[api]))


@settings(max_examples=200, deadline=None)
@given(bodies(REQUESTS))
def test_request_text_targets_only_text(case: tuple[str, dict[str, Any]]) -> None:
    api, body = case
    before = copy.deepcopy(body)
    changed = apply_request_steps([MARKER], body, api)
    assert_only_text_changed(before, body, REQUEST_TEXT[api])
    assert changed == (body != before)


@settings(max_examples=200, deadline=None)
@given(bodies(RESPONSES))
def test_response_text_targets_only_text(case: tuple[str, dict[str, Any]]) -> None:
    api, body = case
    before = copy.deepcopy(body)
    changed = apply_response_steps([MARKER], body, api)
    assert_only_text_changed(before, body, RESPONSE_TEXT[api])
    assert changed == (body != before)


@settings(max_examples=200, deadline=None)
@given(bodies(STREAMS))
def test_stream_text_targets_only_text(case: tuple[str, dict[str, Any]]) -> None:
    api, event = case
    before = copy.deepcopy(event)
    changed = apply_stream_steps([MARKER], event, api)
    assert_only_text_changed(before, event, STREAM_TEXT[api])
    assert changed == (event != before)


@settings(max_examples=150, deadline=None)
@given(bodies(REQUESTS))
def test_regex_replace_is_idempotent_when_the_replacement_cannot_match(
    case: tuple[str, dict[str, Any]],
) -> None:
    api, body = case
    apply_request_steps([MARKER], body, api)
    once = copy.deepcopy(body)
    assert not apply_request_steps([MARKER], body, api)
    assert body == once


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["a", "b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner),
    max_leaves=15,
)
json_docs = st.dictionaries(st.sampled_from("abc"), json_values, max_size=3)
index_free_paths = st.lists(
    st.sampled_from([".a", ".b", ".c", ".*", "..a", "..*", "[*]"]), min_size=1, max_size=3
).map(lambda parts: "$" + "".join(parts))
singular_paths = st.lists(
    st.sampled_from([".a", ".b", "[0]", "[-1]", "[1]"]), min_size=1, max_size=3
).map(lambda parts: "$" + "".join(parts))


def snapshot(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(json_docs, index_free_paths)
def test_drop_is_idempotent(doc: dict[str, Any], path: str) -> None:
    # NOTE: only without index selectors: dropping `$.a[0]` again drops the next element.
    step = compile_step({"op": "drop", "path": path})
    apply_request_steps([step], doc, "openai.chat")
    once = snapshot(doc)
    assert not apply_request_steps([step], doc, "openai.chat")
    assert snapshot(doc) == once


@settings(max_examples=200, deadline=None)
@given(json_docs, singular_paths, json_values)
def test_set_is_idempotent(doc: dict[str, Any], path: str, value: Any) -> None:
    step = compile_step({"op": "set", "path": path, "value": value})
    apply_request_steps([step], doc, "openai.chat")
    once = snapshot(doc)
    apply_request_steps([step], doc, "openai.chat")
    assert snapshot(doc) == once
