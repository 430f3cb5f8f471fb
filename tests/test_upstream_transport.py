"""Upstreams that break HTTP itself, served on raw loopback sockets: a non-HTTP status line, a bad
chunk size, a reply far larger than `server.max_upstream_body_bytes` (whole, or one endless stream
event), a body that never ends, a reply that stalls after its headers. Each is a 502/504 in the
caller's shape, retried and fallen back from; memory stays bounded. And neither upstream client
adds a `User-Agent` of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp.client_exceptions
import aiohttp.http_exceptions
import anthropic
import httpx
import openai
import pytest

from runtime.bridge import EventRelay, RawRelay
from runtime.upstream import TRANSPORT_ERRORS, UpstreamFailure, make_client
from tests.served import ServedGateway, compile_yaml

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]
OK_BODY = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
MIB = 1024 * 1024


async def _ok(writer: asyncio.StreamWriter) -> None:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(OK_BODY)}"
    writer.write(head.encode() + b"\r\n\r\n" + OK_BODY)


async def _not_http(writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


async def _bad_chunk(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")


async def _huge(writer: asyncio.StreamWriter) -> None:
    """300 MB announced and sent (the gateway should stop reading long before the end)."""
    size = 300 * MIB
    writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
    block = b" " * MIB
    for _ in range(300):
        writer.write(block)
        await writer.drain()


async def _huge_chunked(writer: asyncio.StreamWriter) -> None:
    """300 MB in chunks, no content-length: only a bounded read can stop it."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\n")
    block = b" " * MIB
    for _ in range(300):
        writer.write(b"%x\r\n%s\r\n" % (len(block), block))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def _stall(writer: asyncio.StreamWriter) -> None:
    """Headers, then silence."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def _endless_event(writer: asyncio.StreamWriter) -> None:
    """A stream whose first event never ends: 8 MiB of one JSON string, no newline."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\n")
    start = b'data: {"x":"'
    writer.write(b"%x\r\n%s\r\n" % (len(start), start))
    block = b"a" * (256 * 1024)
    for _ in range(32):
        writer.write(b"%x\r\n%s\r\n" % (len(block), block))
        await writer.drain()
    end = b'"}\n\ndata: [DONE]\n\n'
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))


async def _endless(writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(b"transfer-encoding: chunked\r\n\r\n")
    block = b" " * (256 * 1024)
    while True:
        writer.write(b"%x\r\n%s\r\n" % (len(block), block))
        await writer.drain()


class RawUpstream:
    """A loopback server that answers every request with `behaviour`'s bytes, recording each
    request's headers (lower-cased names)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(5)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await server.serve_forever()

        self._loop.run_until_complete(main())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(":") for line in lines if line)
                )
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(headers)
                await self.behaviour(writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Behaviour], RawUpstream]]:
    yield RawUpstream


def _config(*urls: str, max_body: int | None = None, read_s: float = 5, **route: Any) -> str:
    upstreams = {
        f"u{i}": {"kind": "openai-compatible", "base_url": url, "timeouts": {"read_s": read_s}}
        for i, url in enumerate(urls)
    }
    targets = [{"upstream": name, "model": "m"} for name in upstreams]
    config: dict[str, Any] = {
        "version": 1,
        "upstreams": upstreams,
        "models": {"m": {"targets": targets}},
        **route,
    }
    if max_body is not None:
        config["server"] = {"max_upstream_body_bytes": max_body}
    return json.dumps(config)


def _ask(gw: ServedGateway, **headers: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("behaviour", [_not_http, _bad_chunk], ids=["not-http", "bad-chunk"])
def test_broken_http_is_a_bad_response_that_falls_back(
    served: Callable[[str], ServedGateway],
    raw: Callable[[Behaviour], RawUpstream],
    behaviour: Behaviour,
) -> None:
    broken, good = raw(behaviour), raw(_ok)
    alone = served(_config(broken.url))
    with (
        openai.OpenAI(base_url=alone.url + "/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_error", error
    assert "broke" in error["message"]

    both = served(_config(broken.url, good.url))
    with openai.OpenAI(base_url=both.url + "/v1", api_key="k") as client:
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "fine"
    assert len(good.requests) == 1


def test_broken_http_reaches_anthropic_clients_in_their_shape(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    gw = served(_config(raw(_not_http).url))
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error", body


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


class RssPeak:
    """The largest growth of this process's current RSS over its value at entry, sampled in a
    thread while the block runs (``ru_maxrss`` is a lifetime peak: an earlier test's would hide
    this one's)."""

    def __enter__(self) -> RssPeak:
        self.base = self.peak = _rss_kib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_kib())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_kib())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


@pytest.mark.parametrize(
    "behaviour", [_huge, _huge_chunked, _endless], ids=["300MB", "300MB-chunked", "endless"]
)
def test_oversized_reply_is_refused_with_bounded_memory(
    served: Callable[[str], ServedGateway],
    raw: Callable[[Behaviour], RawUpstream],
    behaviour: Behaviour,
) -> None:
    big, good = raw(behaviour), raw(_ok)
    alone = served(_config(big.url, max_body=4 * MIB))
    with RssPeak() as rss:
        reply = _ask(alone)
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "response_too_large"
    assert "max_upstream_body_bytes" in reply.json()["error"]["message"]
    assert rss.growth_mib < 64, f"RSS grew by {rss.growth_mib:.0f} MiB"

    both = served(_config(big.url, good.url, max_body=4 * MIB))
    assert _ask(both).json()["choices"][0]["message"]["content"] == "fine"


def test_a_reply_within_the_bound_passes(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    gw = served(_config(raw(_ok).url, max_body=1024))
    assert _ask(gw).status_code == 200


def test_no_default_user_agent_reaches_the_upstream(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    up = raw(_ok)
    policies = {"headers": {"quiet": {"request": {"drop": ["user-agent"]}}}}
    plain = served(_config(up.url))
    _ask(plain, **{"user-agent": "my-app/1.0"})
    assert up.requests[-1]["user-agent"] == "my-app/1.0"  # forwarded by default
    httpx.post(
        f"{plain.url}/v1/chat/completions",
        content=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        headers={"content-type": "application/json", "user-agent": ""},
    )
    assert "user-agent" not in up.requests[-1] or up.requests[-1]["user-agent"] == ""

    config = json.loads(_config(up.url))
    config["policies"] = policies
    config["upstreams"]["u0"]["headers"] = ["quiet"]
    dropped = served(json.dumps(config))
    _ask(dropped, **{"user-agent": "my-app/1.0"})
    assert "user-agent" not in up.requests[-1], up.requests[-1]


def _stream_events(gw: ServedGateway, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (event name, decoded data) of every event of a streamed reply."""
    reply = httpx.post(f"{gw.url}{path}", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    events = []
    for block in reply.text.split("\n\n"):
        lines = block.splitlines()
        name = next((line[7:] for line in lines if line.startswith("event: ")), "message")
        data = "".join(line[6:] for line in lines if line.startswith("data: "))
        if data and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events


def test_a_stream_event_over_the_bound_ends_in_an_error_event(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    gw = served(_config(raw(_endless_event).url, max_body=MIB))
    with RssPeak() as rss:
        events = _stream_events(
            gw,
            "/v1/chat/completions",
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert [name for name, _ in events] == ["message"], events
    error = events[0][1]["error"]
    assert error["code"] == "response_too_large", error
    assert "max_upstream_body_bytes" in error["message"]
    assert rss.growth_mib < 64, f"RSS grew by {rss.growth_mib:.0f} MiB"

    translated = _stream_events(  # NOTE: an Anthropic client: the translating relay's decoder
        gw,
        "/v1/messages",
        {
            "model": "m",
            "stream": True,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert translated[-1][0] == "error", translated
    assert translated[-1][1]["type"] == "error"
    assert "max_upstream_body_bytes" in translated[-1][1]["error"]["message"]


def test_a_stalled_reply_is_a_timeout_that_fails_over(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    stalled, good = raw(_stall), raw(_ok)
    alone = served(_config(stalled.url, read_s=0.3))
    started = time.monotonic()
    reply = _ask(alone)
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5

    both = served(_config(stalled.url, good.url, read_s=0.3))
    assert _ask(both).json()["choices"][0]["message"]["content"] == "fine"
    assert len(good.requests) == 1


def test_a_broken_reply_falls_back_to_the_fallback_models_by_default(
    served: Callable[[str], ServedGateway], raw: Callable[[Behaviour], RawUpstream]
) -> None:
    broken, good = raw(_not_http), raw(_ok)
    config = json.loads(_config(broken.url, good.url))
    config["models"] = {
        "m": {"targets": [{"upstream": "u0", "model": "m"}], "fallback": {"models": ["spare"]}},
        "spare": {"targets": [{"upstream": "u1", "model": "m"}]},
    }
    reply = _ask(served(json.dumps(config)))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "fine"
    assert len(broken.requests) >= 1 and len(good.requests) == 1


# NOTE: raised only by aiohttp's websocket client, which Interlock does not use
_WEBSOCKET_ONLY = frozenset({aiohttp.client_exceptions.WSMessageTypeError})


def test_every_aiohttp_client_exception_is_a_transport_error() -> None:
    classes = [getattr(aiohttp.client_exceptions, n) for n in aiohttp.client_exceptions.__all__]
    classes += [
        c
        for c in vars(aiohttp.http_exceptions).values()
        if inspect.isclass(c) and c.__module__ == aiohttp.http_exceptions.__name__
    ]
    errors = [c for c in classes if inspect.isclass(c) and issubclass(c, BaseException)]
    assert len(errors) > 30  # NOTE: the walk found aiohttp's classes, not an empty list
    missed = [
        c.__name__
        for c in errors
        if c not in _WEBSOCKET_ONLY and not issubclass(c, TRANSPORT_ERRORS)
    ]
    assert missed == []


def test_oauth_token_requests_carry_no_user_agent(raw: Callable[[Behaviour], RawUpstream]) -> None:
    up = raw(_ok)
    table = compile_yaml(_config(up.url))
    upstream = table.upstreams["u0"]

    async def fetch() -> None:
        async with make_client(upstream) as client:
            await client.post(up.url + "/token", content=b"grant_type=client_credentials")

    asyncio.run(fetch())
    assert "user-agent" not in up.requests[-1], up.requests[-1]


@pytest.mark.parametrize(
    ("framing", "chunk"),
    [
        ("ndjson", b'{"x":"' + b"a" * 200),  # one line without its newline
        ("sse", b"data: a\n" * 40),  # one event of many data lines, no blank line
        ("raw", b"data: a\n" * 40),
    ],
)
def test_relays_bound_one_event(framing: str, chunk: bytes) -> None:
    relay: RawRelay | EventRelay
    if framing == "raw":
        relay = RawRelay("openai.chat", b"[DONE]", max_event=100)
    else:
        relay = EventRelay("openai.chat", framing, None, (), b"[DONE]", max_event=100)
    assert relay.feed(chunk[:50]) == b""  # NOTE: under the bound: held, no error
    with pytest.raises(UpstreamFailure) as caught:
        relay.feed(chunk[50:])
    assert caught.value.code == "response_too_large"
