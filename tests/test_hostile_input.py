"""Hostile request bodies through every translation direction and the built-in mock: a bad-input
corpus generated with Hypothesis from the translators' own request types
(`runtime.translate.shapes`) and from rich valid bodies, with one to three fields made hostile
(another JSON type, null, huge, deeply nested).

Over a real socket, whatever arrives, Interlock answers below 500, every error in the shape of
the API called (OpenAI ``{"error": {...}}``, Anthropic ``{"type": "error", "error": {...}}``),
and it still answers a good request afterwards. The same corpus goes straight into the
translators too, many more examples per second: what they raise is a `TranslationError` (the
400) and nothing else. A few named cases pin that an ill-typed field is a 400 naming the field's
path.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.table import MockSettings
from runtime.bridge import bridge_for
from runtime.errors import GatewayError
from runtime.heads import DECODERS, check_head
from runtime.mock import MockProvider
from runtime.translate import TranslationError
from runtime.translate.anthropic import estimate_input_tokens
from runtime.translate.shapes import REQUEST_SHAPES
from runtime.translate.unsupported import translate_dropping
from tests.served import ServedGateway
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream

EXAMPLES = 60  # per direction over the socket (21 directions)
IN_PROCESS_EXAMPLES = 300  # per direction, straight into the translators
JSON = {"content-type": "application/json"}
IMAGE = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}

# --- rich valid bodies of each client API: every field the translators read ------------------

CHAT: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather",
                "parameters": SCHEMA,
                "strict": False,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "parallel_tool_calls": True,
    "max_tokens": 32,
    "max_completion_tokens": 32,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["\n\n"],
    "user": "u-1",
    "reasoning_effort": "low",
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    "seed": 7,
}
MESSAGES: dict[str, Any] = {
    "max_tokens": 32,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    "title": "notes",
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "P"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                    "is_error": False,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [{"name": "weather", "description": "The weather", "input_schema": SCHEMA}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "temperature": 0.5,
    "stop_sequences": ["\n\n"],
    "metadata": {"user_id": "u-1"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "output_config": {"effort": "low"},
}
COUNT_TOKENS = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
RESPONSES: dict[str, Any] = {
    "instructions": "Be brief.",
    "input": [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": IMAGE, "detail": "low"},
            ],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A"}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [{"type": "function", "name": "weather", "parameters": SCHEMA, "strict": False}],
    "tool_choice": {"type": "function", "name": "weather"},
    "parallel_tool_calls": True,
    "max_output_tokens": 32,
    "temperature": 0.5,
    "top_p": 0.9,
    "metadata": {"k": "v"},
    "reasoning": {"effort": "low"},
    "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}},
    "user": "u-1",
}
COMPLETIONS = {"prompt": "Say hi", "max_tokens": 16, "temperature": 0.5, "stop": "\n", "user": "u"}
EMBEDDINGS = {"input": ["a", "b"], "encoding_format": "float", "user": "u"}


# parts an upstream cannot take at all (a 400 before anything else would be translated)
UNSENDABLE = {
    "gigachat": lambda part: part.get("type") in ("image", "image_url", "input_image"),
    "ollama": lambda part: isinstance(part.get("source"), dict) and part["source"]["type"] == "url",
}


def without(value: Any, drop: Any) -> Any:
    """`value` without the objects inside lists for which `drop` is true."""
    if isinstance(value, dict):
        return {k: without(v, drop) for k, v in value.items()}
    if isinstance(value, list):
        return [without(v, drop) for v in value if not (isinstance(v, dict) and drop(v))]
    return value


@dataclass(frozen=True)
class Direction:
    api: str
    path: str
    model: str
    rich: dict[str, Any]

    @property
    def family(self) -> str:
        return "anthropic" if self.api.startswith("anthropic.") else "openai"

    @property
    def seed(self) -> dict[str, Any]:
        """The rich body minus what this upstream cannot take at all."""
        drop = UNSENDABLE.get(self.model)
        seed = self.rich if drop is None else without(self.rich, drop)
        if (self.api, self.model) == ("anthropic.messages", "ollama"):
            # NOTE: disable_parallel_tool_use is refused as parallel_tool_calls, not dropped
            seed = {k: v for k, v in seed.items() if k != "tool_choice"}
        return seed

    def __str__(self) -> str:
        return f"{self.api}->{self.model}"


CHAT_PATH, MESSAGES_PATH, RESPONSES_PATH = "/v1/chat/completions", "/v1/messages", "/v1/responses"
COUNT_PATH = "/v1/messages/count_tokens"
DIRECTIONS = [
    *(Direction("openai.chat", CHAT_PATH, m, CHAT) for m in ("anthropic", "ollama", "gigachat")),
    *(
        Direction("anthropic.messages", MESSAGES_PATH, m, MESSAGES)
        for m in ("openai", "ollama", "gigachat")
    ),
    *(Direction("anthropic.count_tokens", COUNT_PATH, m, COUNT_TOKENS) for m in ("openai",)),
    *(
        Direction("openai.responses", RESPONSES_PATH, m, RESPONSES)
        for m in ("compat", "anthropic", "ollama", "gigachat")
    ),
    Direction("openai.completions", "/v1/completions", "anthropic", COMPLETIONS),
    Direction("openai.completions", "/v1/completions", "ollama", COMPLETIONS),
    *(
        Direction("openai.embeddings", "/v1/embeddings", m, EMBEDDINGS)
        for m in ("ollama", "gigachat")
    ),
    Direction("openai.chat", CHAT_PATH, "mock", CHAT),
    Direction("anthropic.messages", MESSAGES_PATH, "mock", MESSAGES),
    Direction("anthropic.count_tokens", COUNT_PATH, "mock", COUNT_TOKENS),
    Direction("openai.responses", RESPONSES_PATH, "mock", RESPONSES),
    Direction("openai.completions", "/v1/completions", "mock", COMPLETIONS),
    Direction("openai.embeddings", "/v1/embeddings", "mock", EMBEDDINGS),
]
# the fields a body needs to get past routing, so that hostile fields reach translation
REQUIRED: dict[str, dict[str, Any]] = {
    "openai.chat": {"messages": [{"role": "user", "content": "hi"}]},
    "anthropic.messages": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    "anthropic.count_tokens": {"messages": [{"role": "user", "content": "hi"}]},
    "openai.responses": {"input": "hi"},
    "openai.completions": {"prompt": "hi"},
    "openai.embeddings": {"input": "hi"},
}

# --- hostile values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deep:
    """JSON nested `depth` levels deep, spliced into the encoded body (json.dumps cannot)."""

    depth: int


WORDS = (
    *("user", "assistant", "system", "developer", "tool", "function", "message"),
    *("text", "image", "image_url", "document", "file", "tool_use", "tool_result", "refusal"),
    *("function_call", "function_call_output", "input_text", "input_image", "input_file"),
    *("output_text", "reasoning", "base64", "url", "content", "json_schema", "json_object"),
    *("auto", "none", "required", "any", "enabled", "adaptive", "allowed_tools", "web_search"),
    *(IMAGE, PDF, "data:text/plain;base64,aGk=", "https://x.test/a.png", "{}", '{"a": 1}', ""),
)
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
HOSTILE = st.one_of(
    LEAF,
    st.sampled_from([1e308, -(2**64), 2**64, "x" * 100_000, [None], [[[]]], {"type": 5}]),
    st.lists(LEAF, max_size=3),
    st.dictionaries(st.sampled_from(("type", "text", "name", "role", "url")), LEAF, max_size=3),
    st.integers(min_value=50, max_value=3000).map(Deep),
)


def from_type(t: msgspec.inspect.Type, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the msgspec type `t` (a Struct as an object with some of its fields)."""
    mi = msgspec.inspect
    if isinstance(t, mi.StructType):
        if depth > 3:
            return st.just({})
        fields = {f.encode_name: from_type(f.type, depth + 1) for f in t.fields}
        return st.fixed_dictionaries({}, optional=fields)
    if isinstance(t, mi.UnionType):
        return st.one_of([from_type(member, depth) for member in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(from_type(t.item_type, depth + 1), max_size=0 if depth > 3 else 3)
    if isinstance(t, mi.DictType):
        return OBJECTS
    simple: dict[type, st.SearchStrategy[Any]] = {
        mi.StrType: st.one_of(st.sampled_from(WORDS), st.text(max_size=8)),
        mi.IntType: st.integers(min_value=1, max_value=5000),
        mi.FloatType: st.floats(min_value=0, max_value=1),
        mi.BoolType: st.booleans(),
        mi.NoneType: st.none(),
    }
    return simple.get(type(t), LEAF)


# NOTE: JSON schemas and tool inputs are the client's own objects, forwarded as they are: the
# upstream judges what is inside them (the test's mock upstream would fail on a broken schema)
OPAQUE = frozenset({"parameters", "input_schema", "schema", "input", "metadata"})
OBJECTS = st.sampled_from([{}, {"type": "object"}, SCHEMA])


def paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into `value` (keys and indices), the value itself and the inside of `OPAQUE`
    objects excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        yield (*at, key)
        if isinstance(item, list) or (isinstance(item, dict) and key not in OPAQUE):
            yield from paths(item, (*at, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """`value` with `new` at `path`; unchanged where an earlier replacement removed the path."""
    if not path:
        return new
    key = path[0]
    if isinstance(value, dict) and key in value:
        return {**value, key: replaced(value[key], path[1:], new)}
    if isinstance(value, list) and isinstance(key, int) and key < len(value):
        return [*value[:key], replaced(value[key], path[1:], new), *value[key + 1 :]]
    return value


WRONG: tuple[Any, ...] = (5, 1.5, "x", True, ["x"], [5], {"type": 5}, {})


@dataclass(frozen=True)
class Wrong:
    """Stands for a value of another JSON type than the one it replaces (`WRONG[index]` or the
    next one of another type)."""

    index: int

    def instead_of(self, value: Any) -> Any:
        for step in range(len(WRONG)):
            candidate = WRONG[(self.index + step) % len(WRONG)]
            if type(candidate) is not type(value):
                return candidate
        raise AssertionError(value)


# NOTE: a path index drawn from a wide range, so that every path is as likely (Hypothesis
# favours the first elements of sampled_from); no flatmap, which is slow to draw from
CHANGES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**32),
        st.one_of(st.integers(min_value=0, max_value=len(WRONG) - 1).map(Wrong), HOSTILE),
    ),
    min_size=1,
    max_size=3,
)


def mutate(body: dict[str, Any], changes: list[tuple[int, Any]]) -> dict[str, Any]:
    """`body` with one to three fields (at any depth) replaced by hostile values."""
    # NOTE: top-level fields are mostly checked before translation (runtime.heads, and
    # tests/test_bad_input.py); the nested ones are what only translation reads
    where = [at for at in paths(body) for _ in range(1 if len(at) == 1 else 3)]
    out: Any = body
    for n, new in changes if where else ():
        at = where[n % len(where)]
        if isinstance(new, Wrong):
            new = new.instead_of(at_path(body, at))
        out = replaced(out, at, new)
    return dict(out)


def at_path(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def routable(body: dict[str, Any], direction: Direction) -> dict[str, Any]:
    """A generated `body` with the fields routing checks (`runtime.heads`) from the seed, so
    that it reaches translation; a generated non-empty message list is kept."""
    head = msgspec.inspect.type_info(DECODERS[direction.api].type)
    assert isinstance(head, msgspec.inspect.StructType)
    out = {**REQUIRED[direction.api], **body}
    for field in head.fields:
        name = field.encode_name
        if name in ("messages", "input") and isinstance(body.get(name), list) and body[name]:
            continue
        out.pop(name, None)
        if name in direction.seed:
            out[name] = direction.seed[name]
        elif name in REQUIRED[direction.api]:
            out[name] = REQUIRED[direction.api][name]
    return out


def bodies(direction: Direction) -> st.SearchStrategy[dict[str, Any]]:
    """The rich body or one generated from the translator's request type, with one to three
    hostile fields."""
    shape = msgspec.inspect.type_info(REQUEST_SHAPES[direction.api])
    generated = from_type(shape).map(lambda b: routable(b, direction))
    return st.builds(mutate, st.one_of(st.just(direction.seed), generated), CHANGES)


def encode(body: dict[str, Any]) -> bytes:
    deep: list[Deep] = []

    def mark(value: object) -> str:
        if isinstance(value, Deep):
            deep.append(value)
            return f"@deep{len(deep) - 1}@"
        raise TypeError(value)

    raw = json.dumps(body, default=mark).encode()
    for i, value in enumerate(deep):
        raw = raw.replace(f'"@deep{i}@"'.encode(), b"[" * value.depth + b"]" * value.depth)
    return raw


# --- the served gateway ------------------------------------------------------------------------


def gateway_config(up: MockUpstream) -> str:
    return f"""
version: 1
upstreams:
  compat: {{kind: openai-compatible, base_url: "{up.base_url("openai")}", api_key: sk-x}}
  openai: {{kind: openai, base_url: "{up.base_url("openai")}", api_key: sk-x}}
  anthropic: {{kind: anthropic, base_url: "{up.url}", api_key: sk-x}}
  ollama: {{kind: ollama, base_url: "{up.url}"}}
  gigachat:
    kind: gigachat
    base_url: "{up.base_url("gigachat")}"
    oauth:
      token_url: "{up.base_url("gigachat-oauth")}"
      credentials: {{env: IL_TEST_GIGACHAT}}
      scope: GIGACHAT_API_PERS
  mock: {{kind: mock}}
models:
  compat: {{targets: [{{upstream: compat}}]}}
  openai: {{targets: [{{upstream: openai}}]}}
  anthropic: {{targets: [{{upstream: anthropic}}]}}
  ollama: {{targets: [{{upstream: ollama}}]}}
  gigachat: {{targets: [{{upstream: gigachat}}]}}
  mock: {{targets: [{{upstream: mock}}]}}
routes:
  - name: drop
    match: {{headers: {{x-drop: {{present: true}}}}}}
    action: {{drop_unsupported: true}}
"""


@pytest.fixture(scope="module")
def http(upstream: MockUpstream) -> Iterator[httpx.Client]:
    upstream.reset()  # NOTE: the session's server: an earlier module may have changed its settings
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IL_TEST_GIGACHAT", GIGACHAT_CREDENTIALS)
        with (
            ServedGateway(gateway_config(upstream)) as gateway,
            httpx.Client(base_url=gateway.url, timeout=20) as client,
        ):
            yield client


def send(
    http: httpx.Client, direction: Direction, body: dict[str, Any], *, drop: bool = False
) -> httpx.Response:
    """POST `body` to `direction`; `drop`: through a route that drops what the upstream cannot
    honour instead of refusing it."""
    body = {**body, "model": direction.model}
    headers = {**JSON, "x-drop": "1"} if drop else JSON
    return http.post(direction.path, content=encode(body), headers=headers)


def assert_answered(response: httpx.Response, family: str, sent: dict[str, Any]) -> None:
    """Below 500, no traceback, and an error is in the caller's shape."""
    text = response.text
    context = (response.status_code, text[:300], json.dumps(sent, default=str)[:600])
    assert response.status_code < 500, context
    assert "Traceback" not in text, context
    if response.status_code < 400:
        return
    body = response.json()
    if family == "openai":
        assert set(body) == {"error"}, context
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], context
    else:
        assert set(body) == {"type", "error"} and body["type"] == "error", context
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], context


@pytest.mark.parametrize("direction", DIRECTIONS, ids=str)
def test_hostile_bodies_never_5xx(http: httpx.Client, direction: Direction) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(direction), drop=st.booleans())
    def check(body: dict[str, Any], drop: bool) -> None:
        assert_answered(send(http, direction, body, drop=drop), direction.family, body)

    check()
    good = send(http, direction, REQUIRED[direction.api])
    assert good.status_code == 200, good.text


# --- the same corpus straight into the translators: many more examples, same verdict -------------

UPSTREAMS = {  # a test model -> (upstream family, kind)
    "compat": ("openai", "openai-compatible"),
    "openai": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
    "ollama": ("ollama", "ollama"),
    "gigachat": ("gigachat", "gigachat"),
}


def translate(direction: Direction, body: dict[str, Any], *, drop: bool) -> None:
    """What the gateway does with `body` before calling the upstream of `direction`."""
    if direction.model == "mock":
        reply = asyncio.run(
            MockProvider(MockSettings()).call(direction.api, body, "m", stream=False)
        )
        assert reply.status == 200
        return
    bridge = bridge_for(direction.api, *UPSTREAMS[direction.model])
    if bridge is None:
        estimate_input_tokens(body)
    elif bridge.request is not None and drop:
        translate_dropping(bridge.request, body)
    elif bridge.request is not None:
        bridge.request(body)


@pytest.mark.parametrize("direction", DIRECTIONS, ids=str)
def test_translators_refuse_hostile_bodies_only_with_a_client_error(direction: Direction) -> None:
    @settings(
        max_examples=IN_PROCESS_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(direction), drop=st.booleans())
    def check(body: dict[str, Any], drop: bool) -> None:
        try:
            raw = encode(body)
            head = DECODERS[direction.api].decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return  # refused before translation (tests/test_bad_input.py)
        try:
            check_head(head)
            translate(direction, msgspec.json.decode(raw), drop=drop)
        except TranslationError as exc:
            assert exc.message
        except GatewayError as exc:
            assert exc.status == 400, exc

    check()


# --- ill-typed fields are a 400 naming the field ------------------------------------------------

NAMED = [
    ("anthropic.messages", "openai", {"stop_sequences": 5}, "stop_sequences"),
    (
        "anthropic.messages",
        "openai",
        {"messages": [{"role": "user", "content": [{"type": "image", "source": 5}]}]},
        "messages[0].content[0].source",
    ),
    (
        "anthropic.messages",
        "ollama",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
    ),
    ("anthropic.count_tokens", "openai", {"stop_sequences": 5}, "stop_sequences"),
    (
        "anthropic.count_tokens",
        "mock",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
    ),
    (
        "openai.chat",
        "anthropic",
        {"messages": [{"role": "assistant", "tool_calls": "x"}]},
        "messages[0].tool_calls",
    ),
    (
        "openai.chat",
        "gigachat",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
    ),
    ("openai.chat", "mock", {"stop": 5}, "stop"),
    (
        "openai.responses",
        "anthropic",
        {"tool_choice": {"type": "allowed_tools", "tools": 5}},
        "tool_choice.tools",
    ),
    ("openai.responses", "mock", {"input": [{"role": []}]}, "input[0].role"),
    ("openai.embeddings", "ollama", {"dimensions": "x"}, "dimensions"),
]


@pytest.mark.parametrize(("api", "model", "fields", "param"), NAMED)
def test_ill_typed_field_is_a_400_naming_it(
    http: httpx.Client, api: str, model: str, fields: dict[str, Any], param: str
) -> None:
    direction = next(d for d in DIRECTIONS if d.api == api)
    direction = Direction(api, direction.path, model, direction.rich)
    response = send(http, direction, {**REQUIRED[api], **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if direction.family == "openai":
        assert error["param"] == param, error
    else:
        assert error["type"] == "invalid_request_error", error
    assert re.search(rf"\b{re.escape(param)}\b", error["message"]), error
