"""Every upstream failure path, over real loopback sockets with the official SDKs.

Each test asserts what the client sees (status, error shape, SDK exception, stream error event)
and what the upstream saw (how many attempts, when, whether a fallback target was reached).
Timeouts, backoffs and cooldowns are a fraction of a second so the whole file stays fast.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.served import ServedGateway
from tests.upstreams import (
    CloseMidStream,
    Delay,
    Hang,
    Malformed,
    MockUpstream,
    SlowBody,
    SlowStream,
    Status,
    StreamError,
)

Served = Callable[[str], ServedGateway]
MakeUpstream = Callable[..., MockUpstream]
CHAT = [{"role": "user", "content": "hello there"}]
OPENAI_CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
ANTHROPIC_CHAT: list[MessageParam] = [{"role": "user", "content": "hello there"}]
FAST = {"connect_s": 1, "read_s": 1, "first_byte_s": 1, "total_s": 3}
NO_RETRY = {"attempts": 1}


COMBINATIONS = [  # (client API, upstream protocol)
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("openai", "anthropic"),
    ("anthropic", "openai"),
]


def retry(attempts: int, initial_ms: float = 50, multiplier: float = 1.0, **extra: Any) -> Any:
    backoff = {"initial_ms": initial_ms, "max_ms": 2000, "multiplier": multiplier, "jitter": "none"}
    return {"attempts": attempts, "backoff": backoff, **extra}


def oai(base: MockUpstream | str, **settings: Any) -> dict[str, Any]:
    """An OpenAI upstream at a mock server (or a bare base URL)."""
    url = base.base_url("openai") if isinstance(base, MockUpstream) else base
    return {
        "kind": "openai",
        "base_url": url,
        "api_key": "sk-interlock-test",
        "timeouts": FAST,
        "retry": NO_RETRY,
        **settings,
    }


def ant(base: MockUpstream, **settings: Any) -> dict[str, Any]:
    return {
        "kind": "anthropic",
        "base_url": base.url,
        "api_key": "sk-ant-interlock-test",
        "timeouts": FAST,
        "retry": NO_RETRY,
        **settings,
    }


def config(upstreams: dict[str, Any], models: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"version": 1, "upstreams": upstreams, "models": models, **extra})


def target(upstream: str, model: str = "up-model", **extra: Any) -> dict[str, Any]:
    return {"upstream": upstream, "model": model, **extra}


def one_model(upstream: dict[str, Any], name: str = "m", **model: Any) -> str:
    return config({"up": upstream}, {name: {"targets": [target("up")], **model}})


def chat(gw: ServedGateway, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "m", "messages": CHAT, **body}, timeout=10
    )


def messages(gw: ServedGateway, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/messages",
        json={"model": "m", "max_tokens": 20, "messages": CHAT, **body},
        timeout=10,
    )


def openai_client(gw: ServedGateway, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1", api_key="unused", **{"max_retries": 0, "timeout": 10, **options}
    )


def anthropic_client(gw: ServedGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=10)


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def anthropic_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    error: dict[str, Any] = body["error"]
    return error


def error_body(exc: openai.APIError | anthropic.APIError) -> dict[str, Any]:
    """The decoded error body an SDK exception carries."""
    assert isinstance(exc.body, dict), exc.body
    return exc.body


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text


def read_anthropic_stream(gw: ServedGateway) -> None:
    with (
        anthropic_client(gw) as client,
        client.messages.stream(model="m", max_tokens=20, messages=ANTHROPIC_CHAT) as stream,
    ):
        for _ in stream:
            pass


def gaps(up: MockUpstream, path: str = "*") -> list[float]:
    times = [r.time for r in up.requests_to(path)]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def unanswered_url() -> Iterator[str]:
    """A loopback URL whose listener never accepts and whose backlog is full: connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    for sock in [*fillers, listener]:
        sock.close()


# --- connection refused -------------------------------------------------------------------------


def test_connection_refused_is_502_after_the_configured_retries(
    served: Served, closed_url: str
) -> None:
    gw = served(one_model(oai(closed_url, retry=retry(3, initial_ms=150))))
    started = time.monotonic()
    error = openai_error(chat(gw), 502)
    elapsed = time.monotonic() - started
    assert error["code"] == "upstream_error" and "connect" in error["message"]
    assert elapsed >= 0.3  # two backoffs of 150 ms: three attempts were made
    with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_connection_refused_without_retry_fails_at_once(served: Served, closed_url: str) -> None:
    gw = served(one_model(oai(closed_url)))
    started = time.monotonic()
    anthropic_error(messages(gw), 502)
    assert time.monotonic() - started < 0.5


def test_connection_refused_fails_over_to_the_next_target(
    served: Served, up: MockUpstream, closed_url: str
) -> None:
    gw = served(
        config(
            {"dead": oai(closed_url, retry=retry(2)), "live": oai(up)},
            {
                "m": {
                    "targets": [
                        target("dead", priority=1),
                        target("live", "live-model", priority=2),
                    ]
                }
            },
        )
    )
    with openai_client(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=OPENAI_CHAT)
    assert raw.headers["x-interlock-upstream"] == "live"
    assert raw.parse().choices[0].message.content == "echo: hello there"
    assert [r.body["model"] for r in up.requests] == ["live-model"]


def test_connection_refused_falls_back_to_the_fallback_model(
    served: Served, up: MockUpstream, closed_url: str
) -> None:
    gw = served(
        config(
            {"dead": oai(closed_url), "live": ant(up)},
            {
                "m": {
                    "targets": [target("dead")],
                    "fallback": {"models": ["backup"], "on": ["connect"]},
                },
                "backup": {"targets": [target("live", "claude-backup")]},
            },
        )
    )
    with anthropic_client(gw) as client:
        raw = client.messages.with_raw_response.create(
            model="m", max_tokens=20, messages=ANTHROPIC_CHAT
        )
    assert raw.headers["x-interlock-model"] == "claude-backup"
    assert text_of(raw.parse()) == "echo: hello there"
    assert [r.body["model"] for r in up.requests] == ["claude-backup"]


def test_fallback_is_only_for_the_listed_failure_classes(
    served: Served, up: MockUpstream, closed_url: str
) -> None:
    gw = served(
        config(
            {"dead": oai(closed_url), "live": oai(up)},
            {
                "m": {
                    "targets": [target("dead")],
                    "fallback": {"models": ["backup"], "on": ["server_error"]},
                },
                "backup": {"targets": [target("live")]},
            },
        )
    )
    openai_error(chat(gw), 502)
    assert up.requests == []


# --- timeouts -----------------------------------------------------------------------------------


def test_connect_timeout_is_504(served: Served, unanswered_url: str) -> None:
    timeouts = {**FAST, "connect_s": 0.2, "first_byte_s": 2}
    gw = served(one_model(oai(unanswered_url, timeouts=timeouts)))
    started = time.monotonic()
    error = openai_error(chat(gw), 504)
    assert time.monotonic() - started < 1.5
    assert error["code"] == "upstream_timeout" and "connect" in error["message"]
    with anthropic_client(gw) as client, pytest.raises(anthropic.GatewayTimeoutError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert error_body(caught.value)["error"]["type"] == "timeout_error"


def test_connect_timeout_is_retried_and_falls_back_as_connect(
    served: Served, up: MockUpstream, unanswered_url: str
) -> None:
    timeouts = {**FAST, "connect_s": 0.15}
    gw = served(
        config(
            {
                "dead": oai(
                    unanswered_url, timeouts=timeouts, retry=retry(2, on_errors=["connect"])
                ),
                "live": oai(up),
            },
            {
                "m": {
                    "targets": [target("dead")],
                    "fallback": {"models": ["b"], "on": ["connect"]},
                },
                "b": {"targets": [target("live", "b-model")]},
            },
        )
    )
    started = time.monotonic()
    assert chat(gw).status_code == 200
    assert time.monotonic() - started >= 0.3  # two connect timeouts before the fallback
    assert [r.body["model"] for r in up.requests] == ["b-model"]


def test_first_byte_timeout_is_504_and_abandons_the_upstream(
    served: Served, up: MockUpstream
) -> None:
    gw = served(one_model(oai(up, timeouts={**FAST, "first_byte_s": 0.3})))
    up.script("openai", Hang())
    started = time.monotonic()
    with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert up.wait_cancelled(1, timeout=2)  # the gateway hung up on the upstream
    assert len(up.requests) == 1


def test_first_byte_timeout_is_retried(served: Served, up: MockUpstream) -> None:
    gw = served(
        one_model(
            oai(up, timeouts={**FAST, "first_byte_s": 0.3}, retry=retry(2, on_errors=["timeout"]))
        )
    )
    up.script("openai", Delay(1.0))
    assert chat(gw).json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert len(up.requests) == 2


def test_read_timeout_is_504(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, timeouts={**FAST, "read_s": 0.2})))
    up.script("openai", SlowBody(0.6, chunks=3))
    started = time.monotonic()
    error = openai_error(chat(gw), 504)
    assert time.monotonic() - started < 1.0  # the whole body takes 1.2 s
    assert error["code"] == "upstream_timeout"
    assert up.wait_cancelled(1, timeout=2)


def test_total_timeout_is_504_while_reading_the_body(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, timeouts={**FAST, "read_s": 1, "total_s": 0.5})))
    up.script("openai", SlowBody(0.25, chunks=8))  # each read in time, the whole 1.75 s: too long
    started = time.monotonic()
    error = anthropic_error(messages(gw), 504)
    assert 0.5 <= time.monotonic() - started < 1.3
    assert error["type"] == "timeout_error"


def test_total_timeout_bounds_the_first_byte_too(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, timeouts={**FAST, "first_byte_s": 5, "total_s": 0.4})))
    up.script("openai", SlowStream(events=40, interval_s=0.05))  # non-stream: 2 s to the headers
    started = time.monotonic()
    openai_error(chat(gw), 504)
    assert time.monotonic() - started < 1.5


def test_total_timeout_of_a_stream_is_an_in_stream_error(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, timeouts={**FAST, "total_s": 0.5})))
    up.script("openai", SlowStream(events=60, interval_s=0.05))
    with openai_client(gw) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=OPENAI_CHAT,
            stream=True,
        )
        received: list[ChatCompletionChunk] = []
        with pytest.raises(openai.APIError) as caught:
            received.extend(stream)
    assert len(received) >= 3  # data went out before the clock ran out
    assert caught.value.code == "upstream_timeout"
    assert up.wait_cancelled(1, timeout=2)


# --- 5xx, 429, malformed ------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_502(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(3, initial_ms=100, multiplier=2))))
    up.script("openai", Status(503), Status(500), Status(502))
    with (
        openai_client(gw, max_retries=2) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "upstream_error"
    # the SDK obeyed x-should-retry (one gateway request), the gateway made three attempts
    assert len(up.requests) == 3
    first, second = gaps(up)
    assert 0.09 <= first < 0.5 and 0.19 <= second < 0.7  # backoff 100 ms, then 200 ms


def test_5xx_then_success(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(ant(up, retry=retry(3, on_status=[500, 529]))))
    up.script("anthropic", Status(529), Status(500))
    with anthropic_client(gw) as client:
        reply = client.messages.create(model="m", max_tokens=20, messages=ANTHROPIC_CHAT)
    assert text_of(reply) == "echo: hello there"
    assert len(up.requests) == 3


def test_status_not_in_on_status_is_not_retried(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(3, on_status=[502]))))
    up.script("openai", Status(503))
    openai_error(chat(gw), 502)
    assert len(up.requests) == 1


def test_429_retry_after_is_waited_for(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(2, initial_ms=10))))
    up.script("openai", Status(429, headers={"retry-after": "0.5"}))
    assert chat(gw).status_code == 200
    (gap,) = gaps(up)
    assert 0.45 <= gap < 1.5


def test_429_retry_after_ms_is_waited_for(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(ant(up, retry=retry(2, initial_ms=10))))
    up.script("anthropic", Status(429, headers={"retry-after-ms": "300"}))
    assert messages(gw).status_code == 200
    (gap,) = gaps(up)
    assert 0.28 <= gap < 1.2


def test_429_retry_after_beyond_the_maximum_fails_over(
    served: Served, up: MockUpstream, make_upstream: MakeUpstream
) -> None:
    other = make_upstream()
    gw = served(
        config(
            {"first": oai(up, retry=retry(3, max_retry_after_s=1)), "second": oai(other)},
            {"m": {"targets": [target("first", priority=1), target("second", priority=2)]}},
        )
    )
    up.script("openai", Status(429, headers={"retry-after": "30"}))
    started = time.monotonic()
    response = chat(gw)
    assert response.status_code == 200
    assert response.headers["x-interlock-upstream"] == "second"
    assert time.monotonic() - started < 2.0  # not waited for
    assert len(up.requests) == 1 and len(other.requests) == 1


def test_final_429_is_a_rate_limit_error(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(2, initial_ms=10, max_retry_after_s=1))))
    up.script(
        "openai",
        Status(429, headers={"retry-after": "0.1"}),
        Status(429, headers={"retry-after": "7"}),
    )
    with openai_client(gw) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "upstream_rate_limited"
    assert len(up.requests) == 2
    up.script("openai", Status(429), Status(429))
    with anthropic_client(gw) as client, pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="m", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert error_body(limited.value)["error"]["type"] == "rate_limit_error"


def test_malformed_json_is_retried(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(2))))
    up.script("openai", Malformed())
    with openai_client(gw) as client:
        reply = client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert reply.choices[0].message.content == "echo: hello there"
    assert len(up.requests) == 2


@pytest.mark.parametrize("upstream_kind", ["openai", "anthropic"])
def test_malformed_json_is_502_never_a_broken_200(
    served: Served, up: MockUpstream, upstream_kind: str
) -> None:
    spec = oai(up, retry=retry(2)) if upstream_kind == "openai" else ant(up, retry=retry(2))
    gw = served(one_model(spec))
    up.script(upstream_kind, Malformed(), Malformed(), Malformed(), Malformed())
    with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert caught.value.status_code == 502 and "malformed" in caught.value.message
    assert len(up.requests) == 2
    error = anthropic_error(messages(gw), 502)
    assert error["type"] == "api_error" and "malformed" in error["message"]


@pytest.mark.parametrize(("client_api", "upstream_kind"), COMBINATIONS)
@pytest.mark.parametrize("reply", ["[]", "3", "null", '"text"'])
def test_upstream_json_that_is_no_object_is_502(
    served: Served, up: MockUpstream, client_api: str, upstream_kind: str, reply: str
) -> None:
    gw = served(one_model(oai(up) if upstream_kind == "openai" else ant(up)))
    up.script(upstream_kind, Status(200, body=reply))
    if client_api == "openai":
        assert "malformed" in openai_error(chat(gw), 502)["message"]
    else:
        assert "malformed" in anthropic_error(messages(gw), 502)["message"]


# --- streams that break -------------------------------------------------------------------------


def _sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def test_openai_stream_closed_mid_way_ends_with_an_error_chunk(
    served: Served, up: MockUpstream
) -> None:
    gw = served(one_model(oai(up)))
    up.script("openai", CloseMidStream(after_events=3))
    with openai_client(gw) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=OPENAI_CHAT,
            stream=True,
        )
        received: list[ChatCompletionChunk] = []
        with pytest.raises(openai.APIError) as caught:
            received.extend(stream)
    assert len(received) == 3
    assert "upstream stream broke" in caught.value.message
    up.script("openai", CloseMidStream(after_events=3))
    events = _sse_events(chat(gw, stream=True).text)
    assert [json.loads(d).get("error") is not None for _, d in events] == [False] * 3 + [True]


def test_anthropic_stream_closed_mid_way_ends_with_an_error_event(
    served: Served, up: MockUpstream
) -> None:
    gw = served(one_model(ant(up)))
    up.script("anthropic", CloseMidStream(after_events=4))
    with pytest.raises(anthropic.APIStatusError) as caught:
        read_anthropic_stream(gw)
    assert "upstream stream broke" in str(caught.value)
    up.script("anthropic", CloseMidStream(after_events=4))
    events = _sse_events(messages(gw, stream=True).text)
    assert [name for name, _ in events][-1] == "error" and len(events) == 5
    assert json.loads(events[-1][1])["error"]["type"] == "api_error"


@pytest.mark.parametrize(("client_api", "upstream_kind"), COMBINATIONS)
@pytest.mark.parametrize("failure", ["close", "malformed", "early-end"])
def test_broken_stream_is_never_a_silent_truncation(
    served: Served, up: MockUpstream, client_api: str, upstream_kind: str, failure: str
) -> None:
    gw = served(one_model(oai(up) if upstream_kind == "openai" else ant(up)))
    if failure == "close":
        up.script(upstream_kind, CloseMidStream(after_events=3))
    elif failure == "malformed":
        up.script(upstream_kind, Malformed())
    else:  # a clean HTTP end after the first event, without [DONE] / message_stop
        first = _first_event(upstream_kind)
        up.script(
            upstream_kind, Status(200, headers={"content-type": "text/event-stream"}, body=first)
        )
    response = chat(gw, stream=True) if client_api == "openai" else messages(gw, stream=True)
    assert response.status_code == 200
    last_name, last_data = _sse_events(response.text)[-1]
    if client_api == "openai":
        assert last_data != "[DONE]" and "error" in json.loads(last_data), response.text
    else:
        assert last_name == "error", response.text
        assert json.loads(last_data)["type"] == "error"


def _first_event(kind: str) -> str:
    if kind == "openai":
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}
            ],
        }
        return f"data: {json.dumps(chunk)}\n\n"
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "up",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    }
    return f"event: message_start\ndata: {json.dumps(start)}\n\n"


def test_upstream_in_stream_error_reaches_the_client(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(ant(up)))
    up.script("anthropic", StreamError(after_events=3, message="Overloaded right now"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        read_anthropic_stream(gw)
    assert "Overloaded right now" in str(caught.value)
    up.script("anthropic", StreamError(after_events=3, message="Overloaded right now"))
    with openai_client(gw) as client, pytest.raises(openai.APIError) as translated:
        for _ in client.chat.completions.create(
            model="m",
            messages=OPENAI_CHAT,
            stream=True,
        ):
            pass
    assert "Overloaded right now" in translated.value.message


@pytest.mark.parametrize(("client_api", "upstream_kind"), COMBINATIONS)
def test_upstream_in_stream_error_is_the_streams_last_event(
    served: Served, up: MockUpstream, client_api: str, upstream_kind: str
) -> None:
    gw = served(one_model(oai(up) if upstream_kind == "openai" else ant(up)))
    up.script(upstream_kind, StreamError(after_events=2, message="boom"))
    response = chat(gw, stream=True) if client_api == "openai" else messages(gw, stream=True)
    events = _sse_events(response.text)
    errors = [i for i, (name, data) in enumerate(events) if name == "error" or '"error"' in data]
    assert errors == [len(events) - 1], events  # one error, and nothing after it
    assert "boom" in events[-1][1]


def _two_upstreams(
    served: Served, up: MockUpstream, other: MockUpstream, **first: Any
) -> ServedGateway:
    return served(
        config(
            {"first": oai(up, **first), "second": oai(other)},
            {"m": {"targets": [target("first", priority=1), target("second", priority=2)]}},
        )
    )


@pytest.mark.parametrize(
    "before_first_byte",
    [Status(503), CloseMidStream(after_events=0), Delay(1.0)],
    ids=["503", "closed", "slow"],
)
def test_stream_fails_over_before_the_first_byte(
    served: Served, up: MockUpstream, make_upstream: MakeUpstream, before_first_byte: Any
) -> None:
    other = make_upstream()
    gw = _two_upstreams(served, up, other, timeouts={**FAST, "first_byte_s": 0.3})
    up.script("openai", before_first_byte)
    with openai_client(gw) as client:
        chunks = list(client.chat.completions.create(model="m", messages=OPENAI_CHAT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert len(up.requests) == 1 and len(other.requests) == 1


def test_stream_never_fails_over_after_the_first_byte(
    served: Served, up: MockUpstream, make_upstream: MakeUpstream
) -> None:
    other = make_upstream()
    gw = _two_upstreams(served, up, other)
    up.script("openai", CloseMidStream(after_events=2))
    events = _sse_events(chat(gw, stream=True).text)
    assert "error" in json.loads(events[-1][1]) and len(events) == 3
    assert len(up.requests) == 1 and other.requests == []


# --- circuit breaker ----------------------------------------------------------------------------

BREAKER = {"failure_threshold": 2, "cooldown_s": 0.5, "half_open_probes": 1}


def test_breaker_opens_half_opens_and_closes(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, circuit_breaker=BREAKER)))
    client = anthropic_client(gw)
    up.script("openai", Status(503), Status(503))
    openai_error(chat(gw), 502)
    openai_error(chat(gw), 502)
    for _ in range(3):  # open: refused without touching the upstream
        error = openai_error(response := chat(gw), 503)
        assert error["code"] == "no_healthy_upstream"
        assert response.headers["x-should-retry"] == "false"
    with client, pytest.raises(anthropic.ServiceUnavailableError):
        client.messages.create(model="m", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert len(up.requests) == 2
    time.sleep(0.55)  # cooldown over: one probe goes through and closes the breaker
    assert chat(gw).status_code == 200
    assert len(up.requests) == 3
    up.script("openai", Status(503))
    openai_error(chat(gw), 502)  # closed again: one failure is below the threshold
    assert chat(gw).status_code == 200
    assert len(up.requests) == 5


def test_failed_half_open_probe_reopens(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, circuit_breaker=BREAKER)))
    up.script("openai", Status(503), Status(503), Status(503))
    openai_error(chat(gw), 502)
    openai_error(chat(gw), 502)
    time.sleep(0.55)
    openai_error(chat(gw), 502)  # the probe fails
    assert openai_error(chat(gw), 503)["code"] == "no_healthy_upstream"
    assert len(up.requests) == 3


def test_open_breaker_sends_traffic_to_the_next_target(
    served: Served, up: MockUpstream, make_upstream: MakeUpstream
) -> None:
    other = make_upstream()
    gw = _two_upstreams(served, up, other, circuit_breaker={**BREAKER, "failure_threshold": 1})
    up.script("openai", Status(500))
    assert chat(gw).headers["x-interlock-upstream"] == "second"  # first failed, then fail over
    assert chat(gw).headers["x-interlock-upstream"] == "second"  # first is skipped (open)
    assert len(up.requests) == 1 and len(other.requests) == 2


def test_breaker_opening_mid_retries_reports_the_real_failure(
    served: Served, up: MockUpstream
) -> None:
    gw = served(one_model(oai(up, retry=retry(3), circuit_breaker=BREAKER)))
    up.script("openai", Status(503), Status(503), Status(503))
    error = openai_error(chat(gw), 502)
    assert error["code"] == "upstream_error" and "503" in error["message"]
    assert len(up.requests) == 2  # the breaker stopped the third attempt
    assert openai_error(chat(gw), 503)["code"] == "no_healthy_upstream"


def test_breaker_state_survives_a_swap_that_keeps_the_target(
    served: Served, up: MockUpstream
) -> None:
    slow = {**BREAKER, "cooldown_s": 30}
    gw = served(one_model(oai(up, circuit_breaker=slow)))
    up.script("openai", Status(503), Status(503))
    openai_error(chat(gw), 502)
    openai_error(chat(gw), 502)
    before = gw.version
    unchanged_target = config(
        {"up": oai(up, circuit_breaker=slow)},
        {
            "m": {"targets": [target("up")], "aliases": ["m-alias"]},
            "other": {"targets": [target("up", "other-model")]},
        },
    )
    assert gw.swap(unchanged_target) != before
    assert openai_error(chat(gw), 503)["code"] == "no_healthy_upstream"
    assert openai_error(chat(gw, model="m-alias"), 503)["code"] == "no_healthy_upstream"
    assert chat(gw, model="other").status_code == 200  # another target: its own breaker
    assert len(up.requests) == 3
    changed_target = one_model(oai(up, circuit_breaker=slow, timeouts={**FAST, "read_s": 2}))
    gw.swap(changed_target)
    assert chat(gw).status_code == 200  # a new target state id: a fresh breaker
    assert len(up.requests) == 4


# --- upstream 4xx -------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_kind", ["openai", "anthropic"])
def test_upstream_401_is_502_upstream_auth_failed(
    served: Served, make_upstream: MakeUpstream, upstream_kind: str
) -> None:
    strict = make_upstream(required_key="the-right-key")
    spec = oai(strict) if upstream_kind == "openai" else ant(strict)
    gw = served(one_model({**spec, "retry": retry(3)}))
    response = chat(gw)
    error = openai_error(response, 502)
    assert error["code"] == "upstream_auth_failed"
    assert response.headers["x-should-retry"] == "false"
    assert "interlock-test" not in response.text  # never the gateway's upstream key
    assert len(strict.requests) == 1  # not retried
    with anthropic_client(gw) as client, pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert caught.value.status_code == 502


def test_upstream_403_is_502_upstream_auth_failed(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(3))))
    up.script("openai", Status(403))
    with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=OPENAI_CHAT)
    assert caught.value.code == "upstream_auth_failed"
    assert len(up.requests) == 1


def test_upstream_400_passes_through_in_the_openai_shape(served: Served, up: MockUpstream) -> None:
    gw = served(one_model(oai(up, retry=retry(3))))
    body = {
        "error": {
            "message": "presence_penalty must be <= 2",
            "type": "invalid_request_error",
            "param": "presence_penalty",
            "code": "invalid_value",
        }
    }
    up.script("openai", Status(400, body=body))
    with openai_client(gw) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m",
            messages=OPENAI_CHAT,
            presence_penalty=9,  # NOTE: not a field Interlock reads, so the upstream judges it
        )
    assert caught.value.body == body["error"]
    assert len(up.requests) == 1  # a client error is not retried


def test_upstream_400_passes_through_in_the_anthropic_shape(
    served: Served, up: MockUpstream
) -> None:
    gw = served(one_model(ant(up)))
    up.script(
        "anthropic",
        Status(
            400,
            body={
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
            },
        ),
    )
    with anthropic_client(gw) as client, pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
    }


@pytest.mark.parametrize(
    ("status", "openai_class", "anthropic_class"),
    [
        (400, openai.BadRequestError, anthropic.BadRequestError),
        (404, openai.NotFoundError, anthropic.NotFoundError),
        (422, openai.UnprocessableEntityError, anthropic.UnprocessableEntityError),
    ],
)
def test_upstream_4xx_is_translated_to_the_callers_shape(
    served: Served,
    up: MockUpstream,
    status: int,
    openai_class: type[openai.APIStatusError],
    anthropic_class: type[anthropic.APIStatusError],
) -> None:
    gw = served(
        config(
            {"o": oai(up), "a": ant(up)},
            {
                "to-anthropic": {"targets": [target("a")]},
                "to-openai": {"targets": [target("o")]},
            },
        )
    )
    up.script("anthropic", Status(status))
    with openai_client(gw) as client, pytest.raises(openai_class) as from_anthropic:
        client.chat.completions.create(model="to-anthropic", messages=OPENAI_CHAT)
    assert set(error_body(from_anthropic.value)) == {"message", "type", "param", "code"}
    up.script("openai", Status(status))
    with anthropic_client(gw) as client, pytest.raises(anthropic_class) as from_openai:
        client.messages.create(model="to-openai", max_tokens=5, messages=ANTHROPIC_CHAT)
    assert error_body(from_openai.value)["type"] == "error"
    assert set(error_body(from_openai.value)["error"]) == {"type", "message"}
