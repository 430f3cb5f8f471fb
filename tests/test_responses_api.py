"""``POST /v1/responses`` through the official `openai` SDK against a served Interlock, in front
of every upstream kind on the loopback mock upstreams: natively to an OpenAI Responses upstream
(``kind: openai``), translated to chat completions for an OpenAI-compatible server, and through
chat to Anthropic, Ollama, GigaChat and the in-process mock. Plain and streamed text, function
calls with streamed arguments, JSON-schema output, the stateless refusals, errors in the
Responses shape (bodies and mid-stream), and routes, transforms, limits and the ledger applied
as for chat.

    client ──openai SDK──▶ Interlock /v1/responses ──▶ MockUpstream: /v1/responses (native),
                                                        /v1/chat/completions, /v1/messages,
                                                        /api/chat, GigaChat; or kind: mock
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseInputParam
from pydantic import BaseModel

from runtime.state.ledger import UsageRecord
from runtime.state.ledger_stores import open_ledger_store
from tests.served import ServedGateway
from tests.upstreams import (
    GIGACHAT_CREDENTIALS,
    MockUpstream,
    Status,
    StreamError,
    stream_stopping_short,
)

UPSTREAM_KEYS = {"IL_TEST_KEY": "sk-upstream", "IL_TEST_GIGACHAT": GIGACHAT_CREDENTIALS}
KINDS = ("openai", "compat", "anthropic", "ollama", "gigachat", "mock")
HTTP_KINDS = ("openai", "compat", "anthropic", "ollama", "gigachat")
PATHS = {
    "openai": "/v1/responses",
    "compat": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
    "gigachat": "/api/v1/chat/completions",
}
INSTRUCTIONS = "Answer briefly."
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


class Weather(BaseModel):
    city: str


def gateway_config(up: MockUpstream, extra: str = "") -> str:
    return f"""
version: 1
upstreams:
  openai: {{kind: openai, base_url: "{up.base_url("openai")}", api_key: {{env: IL_TEST_KEY}}}}
  compat:
    kind: openai-compatible
    base_url: "{up.base_url("openai")}"
    api_key: {{env: IL_TEST_KEY}}
  anthropic: {{kind: anthropic, base_url: "{up.url}", api_key: {{env: IL_TEST_KEY}}}}
  ollama: {{kind: ollama, base_url: "{up.url}"}}
  gigachat:
    kind: gigachat
    base_url: "{up.base_url("gigachat")}"
    oauth:
      token_url: "{up.base_url("gigachat-oauth")}"
      credentials: {{env: IL_TEST_GIGACHAT}}
      scope: GIGACHAT_API_PERS
  mock: {{kind: mock, mock: {{stream_chunks: 4}}}}
models:
  to-openai: {{targets: [{{upstream: openai, model: up-openai}}]}}
  to-compat: {{targets: [{{upstream: compat, model: up-compat}}]}}
  to-anthropic: {{targets: [{{upstream: anthropic, model: up-anthropic}}]}}
  to-ollama: {{targets: [{{upstream: ollama, model: up-ollama}}]}}
  to-gigachat: {{targets: [{{upstream: gigachat, model: up-gigachat}}]}}
  to-mock: {{targets: [{{upstream: mock, model: up-mock}}]}}
  pass-openai: {{targets: [{{upstream: openai}}]}}
{extra}
"""


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in UPSTREAM_KEYS.items():
            patch.setenv(name, value)
        with ServedGateway(gateway_config(upstream)) as gateway:
            yield gateway


@pytest.fixture
def serve(
    served: Callable[[str], ServedGateway], up: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], ServedGateway]:
    for name, value in UPSTREAM_KEYS.items():
        monkeypatch.setenv(name, value)
    return lambda extra="": served(gateway_config(up, extra))


@pytest.fixture
def client(gw: ServedGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0) as c:
        yield c


def echo(kind: str, text: str) -> str:
    return ("Echo: " if kind == "mock" else "echo: ") + text


def events_of(client: openai.OpenAI, **params: Any) -> list[Any]:
    return list(client.responses.create(stream=True, **params))


def check_sequence(events: list[Any]) -> None:
    """Numbered 0, 1, 2, ...; one response id throughout."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert len(ids) == 1 and next(iter(ids)).startswith("resp_")


def dedupe(types: list[str]) -> list[str]:
    """Event types with runs of the same type collapsed (``delta, delta`` -> ``delta``)."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


# --- plain text --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_plain_text(client: openai.OpenAI, up: MockUpstream, kind: str) -> None:
    reply = client.responses.create(
        model=f"to-{kind}", input="hello there", instructions=INSTRUCTIONS, max_output_tokens=64
    )
    assert reply.object == "response" and reply.status == "completed"
    assert reply.id.startswith("resp_")
    assert reply.output_text == echo(kind, "hello there")
    assert reply.usage is not None
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    if kind in HTTP_KINDS:
        assert up.last_request(PATHS[kind]).path == PATHS[kind]


def test_native_requests_reach_an_openai_upstream_byte_for_byte(
    gw: ServedGateway, up: MockUpstream
) -> None:
    raw = b'{"model": "pass-openai", "input": [{"role": "user", "content": "hi"}], "x_new": 1}'
    response = httpx.post(
        gw.url + "/v1/responses",
        content=raw,
        headers={"content-type": "application/json", "authorization": "Bearer sk-client"},
    )
    assert response.status_code == 200, response.text
    sent = up.last_request("/v1/responses")
    assert sent.raw == raw
    assert sent.headers["authorization"] == "Bearer sk-upstream"


def test_what_a_chat_upstream_sees(client: openai.OpenAI, up: MockUpstream) -> None:
    list(
        client.responses.create(
            model="to-compat",
            instructions=INSTRUCTIONS,
            input=[
                {"role": "developer", "content": "Be kind."},
                {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            ],
            max_output_tokens=50,
            temperature=0.3,
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
    )
    body = up.last_request("/v1/chat/completions").body
    assert body["model"] == "up-compat"
    assert body["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
    ]
    assert (body["max_tokens"], body["temperature"]) == (50, 0.3)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


# --- streamed text ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_text_follows_the_documented_sequence(client: openai.OpenAI, kind: str) -> None:
    events = events_of(client, model=f"to-{kind}", input="hello there stream")
    check_sequence(events)
    assert dedupe([e.type for e in events]) == TEXT_EVENTS
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == echo(kind, "hello there stream")
    done = next(e for e in events if e.type == "response.output_text.done")
    added = next(e for e in events if e.type == "response.output_item.added")
    assert done.text == deltas and done.item_id == added.item.id
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == deltas
    assert completed.usage is not None and completed.usage.output_tokens > 0
    created = events[0].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None


@pytest.mark.parametrize("kind", KINDS)
def test_stream_helper_accumulates_the_final_response(client: openai.OpenAI, kind: str) -> None:
    with client.responses.stream(model=f"to-{kind}", input="hello helper") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == echo(kind, "hello helper")


@pytest.mark.parametrize("kind", ["openai", "compat", "anthropic"])
def test_stream_wire_format_has_named_events_and_no_done(gw: ServedGateway, kind: str) -> None:
    body = {"model": f"to-{kind}", "input": "wire", "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/responses", json=body, headers={"authorization": "Bearer k"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-interlock-upstream"] == kind
        raw = response.read().decode()
    assert "[DONE]" not in raw
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    for block in blocks:
        name, data = block.split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.completed\n")


# --- function calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_function_call_round_trip(client: openai.OpenAI, up: MockUpstream, kind: str) -> None:
    first = client.responses.create(model=f"to-{kind}", input="weather in Paris?", tools=[WEATHER])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    arguments = json.loads(call.arguments)
    assert arguments == ({} if kind == "mock" else {"city": "Paris"})
    history: ResponseInputParam = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    second = client.responses.create(model=f"to-{kind}", input=history, tools=[WEATHER])
    assert [item.type for item in second.output] == ["message"]
    # NOTE: the Anthropic mock echoes the tool result, which is its last user turn's text
    said = "sunny, 21 C" if kind == "anthropic" else "weather in Paris?"
    assert second.output_text == echo(kind, said)
    if kind == "compat":
        messages = up.last_request("/v1/chat/completions").body["messages"]
        assert messages[1]["tool_calls"][0]["id"] == call.call_id
        assert messages[2] == {
            "role": "tool",
            "tool_call_id": call.call_id,
            "content": "sunny, 21 C",
        }
    if kind == "anthropic":
        messages = up.last_request("/v1/messages").body["messages"]
        assert messages[1]["content"][0]["type"] == "tool_use"
        assert messages[2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_function_call_arguments(client: openai.OpenAI, kind: str) -> None:
    events = events_of(client, model=f"to-{kind}", input="weather in Paris?", tools=[WEATHER])
    check_sequence(events)
    # NOTE: the in-process mock says something before it calls the tool
    expected = TEXT_EVENTS[:-1] + CALL_EVENTS[2:] if kind == "mock" else CALL_EVENTS
    assert dedupe([e.type for e in events]) == expected
    added = [e for e in events if e.type == "response.output_item.added"][-1]
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(deltas) == done.arguments
    if kind in ("openai", "compat", "anthropic"):
        assert len(deltas) > 1  # the mock upstreams split arguments into several deltas
    final = events[-1].response.output[-1]
    assert final.type == "function_call" and final.arguments == done.arguments
    assert final.call_id == added.item.call_id and final.id == added.item.id
    assert json.loads(final.arguments) == ({} if kind == "mock" else {"city": "Paris"})


# --- JSON-schema output -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "compat", "anthropic", "ollama"])
def test_json_schema_output(client: openai.OpenAI, up: MockUpstream, kind: str) -> None:
    parsed = client.responses.parse(model=f"to-{kind}", input="where?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris")
    with client.responses.stream(model=f"to-{kind}", input="where?", text_format=Weather) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Weather(city="Paris")
    if kind == "anthropic":  # structured output through a forced tool
        body = up.last_request("/v1/messages").body
        assert body["tool_choice"] == {"type": "tool", "name": "json_response"}
        assert body["tools"][0]["input_schema"]["properties"] == {
            "city": {"title": "City", "type": "string"}
        }
    if kind == "compat":
        sent = up.last_request("/v1/chat/completions").body["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Weather"


# --- stateless, and what only OpenAI can do -----------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("previous_response_id", "resp_abc"),
        ("store", True),
        ("conversation", "conv_123"),
        ("background", True),
    ],
)
def test_stateful_requests_are_a_clear_400(
    client: openai.OpenAI, up: MockUpstream, param: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="to-openai", input="hi", extra_body={param: value})
    assert caught.value.param == param
    assert caught.value.code == "unsupported_parameter"
    assert "stateless" in caught.value.message
    assert up.requests == []


def test_store_false_is_fine(client: openai.OpenAI) -> None:
    assert client.responses.create(model="to-compat", input="hi", store=False).output_text


@pytest.mark.parametrize("kind", ["compat", "anthropic", "ollama", "mock"])
def test_hosted_tools_are_dropped_and_named(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    raw = client.responses.with_raw_response.create(
        model=f"to-{kind}", input="search", tools=[WEATHER, {"type": "web_search"}]
    )
    assert raw.parse().status == "completed"
    if kind != "mock":  # NOTE: the in-process mock is no translated upstream; nothing to name
        assert raw.headers["x-interlock-dropped-params"] == "tools[1]"
        tools = json.dumps(up.requests[-1].body.get("tools"))
        assert "web_search" not in tools and "get_weather" in tools


@pytest.mark.parametrize("kind", ["compat", "anthropic", "mock"])
def test_a_route_can_refuse_hosted_tools_instead(
    serve: Callable[[str], ServedGateway], up: MockUpstream, kind: str
) -> None:
    gw = serve("routes:\n  - {name: strict, match: {}, action: {hosted_tools: refuse}}")
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as refused:
            c.responses.create(
                model=f"to-{kind}", input="x", tools=[WEATHER, {"type": "web_search"}]
            )
        assert refused.value.param == "tools[1]" and "hosted_tools: refuse" in refused.value.message
        assert c.responses.create(model=f"to-{kind}", input="x", tools=[WEATHER]).status == (
            "completed"
        )
        # NOTE: an upstream that runs hosted tools still gets them
        c.responses.create(model="to-openai", input="x", tools=[{"type": "web_search"}])


def test_hosted_tools_go_to_an_openai_upstream(client: openai.OpenAI, up: MockUpstream) -> None:
    client.responses.create(model="to-openai", input="search", tools=[{"type": "web_search"}])
    assert up.last_request("/v1/responses").body["tools"] == [{"type": "web_search"}]


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_a_404_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


@pytest.mark.parametrize(("kind", "target"), [("anthropic", "anthropic"), ("openai", "openai")])
def test_upstream_529_is_a_503(
    client: openai.OpenAI, up: MockUpstream, kind: str, target: str
) -> None:
    up.script(PATHS[kind], Status(529))
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=f"to-{kind}", input="hi")
    assert caught.value.status_code == 503
    assert caught.value.type == "service_unavailable_error"


@pytest.mark.parametrize("kind", ["openai", "compat", "anthropic"])
def test_upstream_client_errors_keep_their_status(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    up.script(PATHS[kind], Status(400, body=None))
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=f"to-{kind}", input="hi")
    assert caught.value.type == "invalid_request_error"


@pytest.mark.parametrize("kind", ["compat", "anthropic"])
def test_an_upstream_error_mid_stream_is_the_last_event(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    up.script(PATHS[kind], StreamError(after_events=3))
    events = events_of(client, model=f"to-{kind}", input="hello there stream")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "error" and last.message == "Overloaded"
    assert "response.completed" not in [e.type for e in events]


@pytest.mark.parametrize("kind", ["openai", "compat"])
def test_a_stream_that_stops_short_ends_with_an_error_event(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    if kind == "openai":
        created = {"type": "response.created", "sequence_number": 0, "response": {"id": "r"}}
        body = f"event: response.created\ndata: {json.dumps(created)}\n\n"
        up.script("/v1/responses", Status(200, {"content-type": "text/event-stream"}, body))
    else:
        up.script("/v1/chat/completions", stream_stopping_short("openai"))
    events = events_of(client, model=f"to-{kind}", input="hi")
    last = events[-1]
    assert last.type == "error" and last.code == "upstream_error"
    assert last.sequence_number == events[-2].sequence_number + 1


# --- routes, transforms, limits and the ledger ---------------------------------------------------

ROUTED = r"""
routes:
  - name: responses-only
    match: {api: [openai.responses], model: alias-x}
    action: {model: to-compat, transforms: [scrub]}
  - name: tidy
    match: {api: [openai.responses], headers: {x-tidy: "yes"}}
    action: {transforms: [tidy]}
  - name: limited
    match: {api: [openai.responses], model: to-mock}
    action: {limits: [one-per-minute]}
policies:
  transforms:
    scrub:
      request:
        - {op: regex_replace, pattern: "sk-[A-Za-z0-9]{20,}", replacement: "[REDACTED]"}
    tidy:
      response:
        - {op: regex_replace, pattern: "secret", replacement: "[s]", stream_safe: true}
limits:
  backend: {kind: memory}
  policies:
    one-per-minute: {scope: ip, rpm: 1}
"""


def test_routes_and_request_transforms_apply(
    serve: Callable[[str], ServedGateway], up: MockUpstream
) -> None:
    gw = serve(ROUTED)
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        raw = client.responses.with_raw_response.create(
            model="alias-x", input="my key is sk-abcdefghijklmnopqrstuvwx ok"
        )
    assert raw.headers["x-interlock-route"] == "responses-only"
    assert raw.parse().output_text == "echo: my key is [REDACTED] ok"
    sent = up.last_request("/v1/chat/completions").body
    assert sent["messages"] == [{"role": "user", "content": "my key is [REDACTED] ok"}]


@pytest.mark.parametrize("kind", ["openai", "compat", "anthropic"])
def test_response_transforms_apply_to_bodies_and_streams(
    serve: Callable[[str], ServedGateway], kind: str
) -> None:
    gw = serve(ROUTED)
    tidy = {"x-tidy": "yes"}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        whole = client.responses.create(model=f"to-{kind}", input="a secret", extra_headers=tidy)
        with client.responses.stream(
            model=f"to-{kind}", input="a secret", extra_headers=tidy
        ) as stream:
            deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
    assert whole.output_text == deltas == final.output_text == "echo: a [s]"


def test_limits_apply(serve: Callable[[str], ServedGateway]) -> None:
    gw = serve(ROUTED)
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        client.responses.create(model="to-mock", input="one")
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model="to-mock", input="two")
    assert caught.value.response.headers["retry-after"]


def _stored(db: Path) -> dict[str, UsageRecord]:
    async def read() -> list[UsageRecord]:
        store = open_ledger_store("sqlite", path=str(db))
        await store.open()
        try:
            return await store.records()
        finally:
            await store.close()

    return {r.request_id: r for r in asyncio.run(read())}


@pytest.mark.parametrize("kind", ["openai", "compat", "anthropic", "mock"])
def test_the_ledger_records_exact_usage(
    serve: Callable[[str], ServedGateway], tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "usage.db"
    gw = serve(f'usage:\n  store: {{kind: sqlite, path: "{db}"}}\n')
    seen: dict[str, tuple[int, int]] = {}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        whole = client.responses.create(
            model=f"to-{kind}", input="count these words", extra_headers={"x-request-id": "w"}
        )
        assert whole.usage is not None
        seen["w"] = (whole.usage.input_tokens, whole.usage.output_tokens)
        events = events_of(
            client,
            model=f"to-{kind}",
            input="count these words too",
            extra_headers={"x-request-id": "s"},
        )
        usage = events[-1].response.usage
        seen["s"] = (usage.input_tokens, usage.output_tokens)
    gw.stop()  # NOTE: shutdown writes the ledger's queue
    records = _stored(db)
    for request_id, (input_tokens, output_tokens) in seen.items():
        record = records[request_id]
        assert record.api == "openai.responses" and record.status == 200
        assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
        assert not record.estimated
    assert records["s"].stream and not records["w"].stream
