"""The README's promise: the official SDKs work unchanged against `examples/quickstart.yaml`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.served import ServedGateway

QUICKSTART = (Path(__file__).parent.parent / "examples" / "quickstart.yaml").read_text()


@pytest.fixture
def gw(
    served: Callable[[str], ServedGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ServedGateway:
    monkeypatch.chdir(tmp_path)  # NOTE: the quickstart's ledger file goes in the working directory
    return served(QUICKSTART)


def test_openai_chat_and_stream(gw: ServedGateway) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content == "Echo: hello"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    client.close()


def test_anthropic_messages_and_stream(gw: ServedGateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    message = client.messages.create(
        model="claude-haiku", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "Echo: hi"
    with client.messages.stream(
        model="claude-haiku", max_tokens=50, messages=[{"role": "user", "content": "yo"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: yo"
    assert final.stop_reason == "end_turn"
    client.close()


def test_h2c_prior_knowledge(gw: ServedGateway) -> None:
    with httpx.Client(http1=False, http2=True) as client:
        reply = client.post(
            gw.url + "/v1/chat/completions",
            json={"model": "any", "messages": [{"role": "user", "content": "over h2"}]},
        )
    assert reply.http_version == "HTTP/2"
    assert reply.json()["choices"][0]["message"]["content"] == "Echo: over h2"


def test_responses_and_model_retrieval(gw: ServedGateway) -> None:
    openai_client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    anthropic_client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    response = openai_client.responses.create(model="gpt-4o-mini", input="hello")
    assert response.output_text == "Echo: hello"
    with openai_client.responses.stream(model="gpt-4o-mini", input="stream") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == "Echo: stream"
    assert openai_client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert anthropic_client.models.retrieve("claude-haiku").display_name == "claude-haiku"
    openai_client.close()
    anthropic_client.close()
