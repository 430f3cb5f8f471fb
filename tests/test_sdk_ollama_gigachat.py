"""GigaChat and Ollama upstreams behind a served Interlock, driven by the official SDKs.

GigaChat: the OAuth client-credentials token is fetched once for many concurrent requests,
reused, refreshed before it expires, and fetched again when chat answers 401. Ollama: the native
``/api/chat`` (NDJSON streams become OpenAI SSE or Anthropic events), ``/api/generate`` and
``/api/embed``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2  # the transport the anthropic SDK is built on
import openai
import pytest

from tests.served import ServedGateway
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream, Status

CLIENT_KEY = "sk-client-key-that-must-stay-at-the-gateway"
CHAT = "/api/v1/chat/completions"
OAUTH = "/api/v2/oauth"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
EVENT_GRAMMAR = re.compile(
    r"message_start (content_block_start (content_block_delta )*content_block_stop )+"
    r"message_delta message_stop"
)


def gateway_config(up: MockUpstream, refresh_margin_s: float = 60) -> str:
    return f"""
version: 1
upstreams:
  giga:
    kind: gigachat
    base_url: "{up.base_url("gigachat")}"
    oauth:
      token_url: "{up.base_url("gigachat-oauth")}"
      credentials: {{env: IL_TEST_GIGACHAT_CREDENTIALS}}
      scope: GIGACHAT_API_CORP
      refresh_margin_s: {refresh_margin_s}
  local: {{kind: ollama, base_url: "{up.url}"}}
models:
  GigaChat-Pro: {{targets: [{{upstream: giga}}]}}
  llama: {{targets: [{{upstream: local, model: "llama3.2:3b"}}]}}
  nomic: {{targets: [{{upstream: local, model: "nomic-embed-text"}}]}}
"""


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture
def serve(
    served: Callable[[str], ServedGateway], up: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ServedGateway]:
    """`serve(refresh_margin_s=...)` -> a fresh gateway (so a fresh GigaChat token source)."""
    monkeypatch.setenv("IL_TEST_GIGACHAT_CREDENTIALS", GIGACHAT_CREDENTIALS)
    return lambda **settings: served(gateway_config(up, **settings))


@pytest.fixture
def gw(serve: Callable[..., ServedGateway]) -> ServedGateway:
    return serve()


def openai_sdk(gw: ServedGateway) -> openai.OpenAI:
    # PERF: the gateway is plain HTTP; a default httpx client would load CA certificates (~60 ms)
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=httpx.Client(verify=False),
    )


def anthropic_sdk(gw: ServedGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=httpx2.Client(verify=False),
    )


@pytest.fixture
def oai(gw: ServedGateway) -> Iterator[openai.OpenAI]:
    with openai_sdk(gw) as client:
        yield client


@pytest.fixture
def claude(gw: ServedGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic_sdk(gw) as client:
        yield client


def ask(client: openai.OpenAI, text: str = "hi", **params: Any) -> Any:
    return client.chat.completions.create(
        model="GigaChat-Pro", messages=[{"role": "user", "content": text}], **params
    )


def bearer(request: Any) -> str:
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


# --- GigaChat OAuth ---------------------------------------------------------------------------


def test_oauth_token_request_then_chat_with_the_bearer_token(
    oai: openai.OpenAI, up: MockUpstream
) -> None:
    reply = ask(oai, "hello giga")

    assert reply.choices[0].message.content == "echo: hello giga"
    assert reply.model == "GigaChat-Pro"
    token_request, chat = up.requests
    assert token_request.path == OAUTH and chat.path == CHAT
    assert token_request.headers["authorization"] == f"Basic {GIGACHAT_CREDENTIALS}"
    assert UUID4.match(token_request.headers["rquid"])
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert token_request.body == {"scope": "GIGACHAT_API_CORP"}
    assert bearer(chat) == up.issued_tokens[-1]
    assert CLIENT_KEY not in json.dumps(dict(chat.headers))


def test_one_token_for_many_concurrent_requests_then_reused(
    gw: ServedGateway, up: MockUpstream
) -> None:
    async def burst() -> list[str | None]:
        async with openai.AsyncOpenAI(
            base_url=gw.url + "/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=httpx.AsyncClient(verify=False),
        ) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="GigaChat-Pro", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(16)
                )
            )
        return [r.choices[0].message.content for r in replies]

    contents = asyncio.run(burst())
    with openai_sdk(gw) as client:
        for _ in range(3):
            ask(client)

    assert sorted(contents) == sorted(f"echo: n{i}" for i in range(16))
    assert up.oauth_calls == 1
    chats = up.requests_to(CHAT)
    assert len(chats) == 19
    assert {bearer(r) for r in chats} == {up.issued_tokens[-1]}


def test_token_is_refreshed_before_it_expires(
    serve: Callable[..., ServedGateway], up: MockUpstream
) -> None:
    up.gigachat_token_ttl_s = 3.0
    gw = serve(refresh_margin_s=1.5)
    with openai_sdk(gw) as client:
        ask(client)
        first = bearer(up.last_request(CHAT))
        issued = time.monotonic()
        ask(client)  # well inside the token's life: reused
        time.sleep(1.6)  # past refresh_at (expiry - 1.5 s), before the expiry (3 s)
        ask(client)
        elapsed = time.monotonic() - issued

    assert elapsed < 3.0, "too slow to prove a refresh *before* expiry"
    assert up.oauth_calls == 2
    chats = up.requests_to(CHAT)
    assert len(chats) == 3  # no 401 round trip: the new token came first
    assert [bearer(r) for r in chats[:2]] == [first, first]
    assert bearer(chats[2]) != first and bearer(chats[2]) == up.issued_tokens[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_an_expired_token_401_fetches_a_new_one_and_succeeds(
    oai: openai.OpenAI, up: MockUpstream, stream: bool
) -> None:
    ask(oai)
    old = bearer(up.last_request(CHAT))
    up.expire_tokens()

    if stream:
        chunks = list(ask(oai, "again please", stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = ask(oai, "again please").choices[0].message.content

    assert text == "echo: again please"
    assert up.oauth_calls == 2
    paths = [r.path for r in up.requests]
    assert paths == [OAUTH, CHAT, CHAT, OAUTH, CHAT]
    refused, retried = up.requests_to(CHAT)[1:]
    assert bearer(refused) == old and bearer(retried) == up.issued_tokens[-1] != old
    assert refused.raw == retried.raw


def test_a_refused_token_request_is_a_502_without_secrets(
    oai: openai.OpenAI, up: MockUpstream
) -> None:
    up.gigachat_credentials = "c29tZW9uZTplbHNl"  # the mock now refuses ours

    with pytest.raises(openai.APIStatusError) as caught:
        ask(oai)

    assert caught.value.status_code == 502
    text = caught.value.response.text
    assert GIGACHAT_CREDENTIALS not in text and "interlock-secret" not in text
    assert up.requests_to(CHAT) == []


def test_gigachat_streams_to_openai_and_anthropic_clients(
    gw: ServedGateway, up: MockUpstream
) -> None:
    with openai_sdk(gw) as client:
        chunks = list(ask(client, "stream to me", stream=True))
    with (
        anthropic_sdk(gw) as claude,
        claude.messages.stream(
            model="GigaChat-Pro", max_tokens=20, messages=[{"role": "user", "content": "and me"}]
        ) as stream,
    ):
        events = [e.type for e in stream if e.type not in ("text", "ping")]
        final = stream.get_final_message()

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "echo: stream to me"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert EVENT_GRAMMAR.fullmatch(" ".join(events)), events
    assert final.content[0].type == "text" and final.content[0].text == "echo: and me"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    assert up.oauth_calls == 1
    assert [r.body["stream"] for r in up.requests_to(CHAT)] == [True, True]


# --- Ollama -----------------------------------------------------------------------------------


def test_ollama_chat_ndjson_stream_becomes_openai_sse(gw: ServedGateway, up: MockUpstream) -> None:
    body = {
        "model": "llama",
        "messages": [{"role": "user", "content": "tell me more"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    ) as response:
        content_type = response.headers["content-type"]
        text = response.read().decode()

    assert content_type.startswith("text/event-stream")
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    assert blocks[-1] == "data: [DONE]"
    chunks = [json.loads(b[6:]) for b in blocks[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "echo: tell me more"
    )
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    sent = up.last_request("/api/chat")
    assert sent.body["stream"] is True and sent.body["model"] == "llama3.2:3b"
    assert "stream_options" not in sent.body


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ollama_chat_stream_becomes_anthropic_events(
    gw: ServedGateway, up: MockUpstream, mode: str
) -> None:
    params: dict[str, Any] = {
        "model": "llama",
        "max_tokens": 30,
        "system": "be kind",
        "messages": [{"role": "user", "content": "one two"}],
    }
    if mode == "sync":
        with anthropic_sdk(gw) as claude, claude.messages.stream(**params) as stream:
            events = [e.type for e in stream if e.type not in ("text", "ping")]
            final = stream.get_final_message()
    else:

        async def run() -> tuple[list[str], Any]:
            async with (
                anthropic.AsyncAnthropic(
                    base_url=gw.url,
                    api_key=CLIENT_KEY,
                    max_retries=0,
                    http_client=httpx2.AsyncClient(verify=False),
                ) as claude,
                claude.messages.stream(**params) as stream,
            ):
                types = [e.type async for e in stream if e.type not in ("text", "ping")]
                return types, await stream.get_final_message()

        events, final = asyncio.run(run())

    assert EVENT_GRAMMAR.fullmatch(" ".join(events)), events
    assert final.content[0].type == "text" and final.content[0].text == "echo: one two"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)
    sent = up.last_request("/api/chat").body
    assert sent["messages"] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "one two"},
    ]
    assert sent["stream"] is True and sent["options"] == {"num_predict": 30}


def test_ollama_generate_serves_completions(oai: openai.OpenAI, up: MockUpstream) -> None:
    whole = oai.completions.create(
        model="llama", prompt="def add(a, b):", suffix="\n", max_tokens=16, temperature=0.1
    )
    chunks = list(
        oai.completions.create(
            model="llama",
            prompt="def add(a, b):",
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert whole.choices[0].text == "echo: def add(a, b):"
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, 4)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    first, streamed = (r.body for r in up.requests_to("/api/generate"))
    assert first == {
        "model": "llama3.2:3b",
        "prompt": "def add(a, b):",
        "stream": False,
        "suffix": "\n",
        "options": {"temperature": 0.1, "num_predict": 16},
    }
    assert streamed["stream"] is True


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_ollama_embed_serves_embeddings(
    oai: openai.OpenAI, up: MockUpstream, encoding: str | None
) -> None:
    direct = httpx.post(
        up.url + "/api/embed", json={"model": "x", "input": ["red", "green apple"]}
    ).json()["embeddings"]
    params: dict[str, Any] = {"encoding_format": encoding} if encoding else {}

    reply = oai.embeddings.create(model="nomic", input=["red", "green apple"], **params)

    vectors: list[Any] = [d.embedding for d in reply.data]
    if encoding == "base64":  # NOTE: asked explicitly, the SDK hands the client OpenAI's string
        vectors = [list(array.array("f", base64.b64decode(v))) for v in vectors]
    assert vectors == direct
    assert reply.model == "nomic-embed-text"
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 3)
    sent = up.last_request("/api/embed").body
    assert sent == {"model": "nomic-embed-text", "input": ["red", "green apple"]}


def ollama_reply(done_reason: str) -> dict[str, Any]:
    return {
        "model": "llama3.2:3b",
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "truncat"},
        "done": True,
        "done_reason": done_reason,
        "prompt_eval_count": 2,
        "eval_count": 9,
    }


def test_ollama_length_maps_to_length_and_max_tokens(
    oai: openai.OpenAI, claude: anthropic.Anthropic, up: MockUpstream
) -> None:
    up.script("/api/chat", Status(200, body=ollama_reply("length")))
    up.script("/api/chat", Status(200, body=ollama_reply("length")))

    chat = oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}])
    message = claude.messages.create(
        model="llama", max_tokens=9, messages=[{"role": "user", "content": "x"}]
    )

    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 9
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 9)


def test_ollama_errors_reach_each_client_in_its_shape(
    oai: openai.OpenAI, claude: anthropic.Anthropic, up: MockUpstream
) -> None:
    missing = Status(404, body={"error": "model 'llama3.2:3b' not found, try pulling it first"})
    up.script("/api/chat", missing, missing)

    with pytest.raises(openai.NotFoundError) as from_openai:
        oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError) as from_anthropic:
        claude.messages.create(
            model="llama", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )

    assert "not found" in from_openai.value.response.json()["error"]["message"]
    body = from_anthropic.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "not found" in body["error"]["message"]
