"""A client that goes away makes Interlock drop the upstream request at once, over real sockets.

The loopback mock counts responses abandoned by their client (`cancelled`); each test hangs up
on the gateway mid-stream or mid-wait and then waits for the upstream to see the gateway hang up.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from runtime.app import _DisconnectGuard
from runtime.connections import DISCONNECT, CloseHooks
from tests.served import ServedGateway
from tests.upstreams import Delay, Hang, MockUpstream, SlowStream, Status

Served = Callable[[str], ServedGateway]
CHAT = [{"role": "user", "content": "tell me a long story"}]
OPENAI_CHAT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "tell me a long story"}
]
ANTHROPIC_CHAT: list[MessageParam] = [{"role": "user", "content": "tell me a long story"}]
TIMEOUTS = {"connect_s": 1, "read_s": 5, "first_byte_s": 5, "total_s": 10}
LONG = SlowStream(events=200, interval_s=0.05)  # ten seconds of stream


def _config(up: MockUpstream, **upstream: Any) -> str:
    spec = {"timeouts": TIMEOUTS, **upstream}
    return json.dumps(
        {
            "version": 1,
            "upstreams": {
                "oai": {
                    "kind": "openai",
                    "base_url": up.base_url("openai"),
                    "api_key": "sk-t",
                    **spec,
                },
                "ant": {"kind": "anthropic", "base_url": up.url, "api_key": "sk-t", **spec},
            },
            "models": {
                "gpt": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
                "claude": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
            },
        }
    )


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


def _assert_cancelled_soon(up: MockUpstream, hung_up_at: float, count: int = 1) -> None:
    assert up.wait_cancelled(count, timeout=2.0), "the upstream request was never cancelled"
    assert time.monotonic() - hung_up_at < 1.0


def _assert_idle(gw: ServedGateway) -> None:
    deadline = time.monotonic() + 2
    while gw.gateway.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.gateway.in_flight == 0


@pytest.mark.parametrize("model", ["gpt", "claude"])  # same protocol, translated
def test_openai_stream_disconnect_cancels_the_upstream(
    served: Served, up: MockUpstream, model: str
) -> None:
    gw = served(_config(up))
    up.script("*", LONG)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10)
    stream = client.chat.completions.create(
        model=model,
        messages=OPENAI_CHAT,
        stream=True,
    )
    received = [next(stream), next(stream), next(stream)]
    assert received[-1].choices
    stream.close()
    hung_up_at = time.monotonic()
    _assert_cancelled_soon(up, hung_up_at)
    _assert_idle(gw)
    client.close()


@pytest.mark.parametrize("model", ["claude", "gpt"])  # same protocol, translated
def test_anthropic_stream_disconnect_cancels_the_upstream(
    served: Served, up: MockUpstream, model: str
) -> None:
    gw = served(_config(up))
    up.script("*", LONG)
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=10)
    with client.messages.stream(model=model, max_tokens=50, messages=ANTHROPIC_CHAT) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    hung_up_at = time.monotonic()
    _assert_cancelled_soon(up, hung_up_at)
    _assert_idle(gw)
    client.close()


def test_raw_stream_disconnect_before_any_byte_cancels_the_upstream(
    served: Served, up: MockUpstream
) -> None:
    gw = served(_config(up))
    up.script("openai", Delay(5.0, then=LONG))
    body = {"model": "gpt", "messages": CHAT, "stream": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=0.3)
    hung_up_at = time.monotonic()
    _assert_cancelled_soon(up, hung_up_at)
    _assert_idle(gw)


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_non_stream_disconnect_while_the_upstream_hangs(
    served: Served, up: MockUpstream, model: str
) -> None:
    gw = served(_config(up))
    up.script("*", Hang())
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=model, messages=OPENAI_CHAT)
    hung_up_at = time.monotonic()
    _assert_cancelled_soon(up, hung_up_at)
    _assert_idle(gw)
    assert len(up.requests) == 1
    client.close()


def test_anthropic_non_stream_disconnect_while_the_upstream_hangs(
    served: Served, up: MockUpstream
) -> None:
    gw = served(_config(up))
    up.script("anthropic", Hang())
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model="claude", max_tokens=5, messages=ANTHROPIC_CHAT)
    _assert_cancelled_soon(up, time.monotonic())
    client.close()


def test_disconnect_during_backoff_stops_the_retries(served: Served, up: MockUpstream) -> None:
    retry = {"attempts": 3, "backoff": {"initial_ms": 600, "multiplier": 1, "jitter": "none"}}
    gw = served(_config(up, retry=retry))
    up.script("openai", Status(503), Status(503), Status(503))
    body = {"model": "gpt", "messages": CHAT}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=0.2)
    _assert_idle(gw)
    time.sleep(0.7)  # past the backoff: a retry would have been sent by now
    assert len(up.requests) == 1


def test_cancelled_requests_do_not_trip_the_breaker(served: Served, up: MockUpstream) -> None:
    breaker = {"failure_threshold": 1, "cooldown_s": 30}
    gw = served(_config(up, circuit_breaker=breaker))
    up.script("openai", Hang(), Hang())
    body = {"model": "gpt", "messages": CHAT}
    for count in (1, 2):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=0.2)
        assert up.wait_cancelled(count, timeout=2)
    _assert_idle(gw)
    response = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=5)
    assert response.status_code == 200, response.text
    assert len(up.requests) == 3


def test_the_gateway_keeps_serving_after_disconnects(served: Served, up: MockUpstream) -> None:
    gw = served(_config(up))
    up.script("openai", LONG, LONG, LONG)
    for _ in range(3):
        with (
            httpx.Client(timeout=5) as client,
            client.stream(
                "POST",
                gw.url + "/v1/chat/completions",
                json={"model": "gpt", "messages": CHAT, "stream": True},
            ) as response,
        ):
            assert response.status_code == 200
            next(response.iter_raw())
    assert up.wait_cancelled(3, timeout=3)
    _assert_idle(gw)
    reply = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "gpt", "messages": CHAT}, timeout=5
    )
    assert reply.json()["choices"][0]["message"]["content"] == "echo: tell me a long story"


# --- Interlock's own server: disconnects reach the app through the stream's CloseHooks --------
# (The tests above serve the app with Hypercorn's stock `serve`, where the guard falls back to
# a watcher task reading ``http.disconnect``; `interlock serve` runs the connection layer of
# `runtime/connections.py`, which calls the guard back instead.)


@pytest.fixture
def own_server(interlock: Callable[..., Any], up: MockUpstream, tmp_path: Path) -> Any:
    path = tmp_path / "interlock.yaml"
    path.write_text(_config(up))  # NOTE: JSON is YAML
    return interlock(path)


def test_own_server_stream_disconnect_cancels_the_upstream(
    own_server: Any, up: MockUpstream
) -> None:
    up.script("*", LONG)
    client = openai.OpenAI(base_url=own_server.url + "/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(model="gpt", messages=OPENAI_CHAT, stream=True)
    assert [next(stream), next(stream)][-1].choices
    stream.close()
    _assert_cancelled_soon(up, time.monotonic())
    own_server.wait_log(r'"status": ?499')
    client.close()


def test_own_server_non_stream_disconnect_while_the_upstream_hangs(
    own_server: Any, up: MockUpstream
) -> None:
    up.script("*", Hang())
    client = openai.OpenAI(base_url=own_server.url + "/v1", api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt", messages=OPENAI_CHAT)
    _assert_cancelled_soon(up, time.monotonic())
    own_server.wait_log(r'"status": ?499')
    client.close()


def test_own_server_completed_exchanges_are_never_counted_as_disconnects(
    own_server: Any, up: MockUpstream
) -> None:
    """The hooks run when every exchange ends (the stream closes then too): after the last
    `send`, when the guard has finished, so a whole keep-alive series answers 200 and logs 200."""
    client = openai.OpenAI(base_url=own_server.url + "/v1", api_key="k", max_retries=0)
    for n in range(20):
        if n % 2:
            chunks = list(
                client.chat.completions.create(model="gpt", messages=OPENAI_CHAT, stream=True)
            )
            assert chunks
        else:
            assert client.chat.completions.create(model="gpt", messages=OPENAI_CHAT).choices
    own_server.wait_log(r"(?s)(\"status\": ?200.*){20}")
    assert not re.search(r'"status": ?499', own_server.log)
    client.close()


def test_close_hooks_run_soon_and_a_finished_guard_never_cancels() -> None:
    async def main() -> None:
        async def request(hooks: CloseHooks, finish_first: bool) -> bool:
            guard = _DisconnectGuard(_never, {DISCONNECT: hooks})
            hooks.close()  # NOTE: the exchange ends inside the last send...
            assert not guard.gone  # ...and the hook has not run yet
            if finish_first:
                guard.finish()  # ...then the endpoint finishes the guard, no await between
            await asyncio.sleep(0.05)
            return guard.gone

        assert await asyncio.create_task(request(CloseHooks(), finish_first=True)) is False
        task = asyncio.create_task(request(CloseHooks(), finish_first=False))
        with pytest.raises(asyncio.CancelledError):
            await task

        late = CloseHooks()
        late.close()
        ran: list[str] = []
        late.add(lambda: ran.append("late"))  # a client gone before the app asked still counts
        await asyncio.sleep(0)
        assert ran == ["late"]

    asyncio.run(main())


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}
