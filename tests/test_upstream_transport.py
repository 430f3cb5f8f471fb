"""Upstreams that break HTTP itself, served on raw loopback sockets: a non-HTTP status line, a bad
chunk size, a reply far larger than `server.max_upstream_body_bytes`, a body that never ends.
Each is a `bad_response`: a 502 in the caller's shape, retried and fallen back from; memory stays
bounded. And the upstream client adds no `User-Agent` of its own.
"""

from __future__ import annotations

import asyncio
import json
import resource
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.served import ServedGateway

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


def _config(*urls: str, max_body: int | None = None, **route: Any) -> str:
    upstreams = {
        f"u{i}": {"kind": "openai-compatible", "base_url": url, "timeouts": {"read_s": 5}}
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


@pytest.mark.parametrize("behaviour", [_huge, _endless], ids=["300MB", "endless"])
def test_oversized_reply_is_refused_with_bounded_memory(
    served: Callable[[str], ServedGateway],
    raw: Callable[[Behaviour], RawUpstream],
    behaviour: Behaviour,
) -> None:
    big, good = raw(behaviour), raw(_ok)
    alone = served(_config(big.url, max_body=4 * MIB))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, peak so far
    reply = _ask(alone)
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "response_too_large"
    assert "max_upstream_body_bytes" in reply.json()["error"]["message"]
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert peak_growth_mib < 64, f"peak RSS grew by {peak_growth_mib:.0f} MiB"

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
