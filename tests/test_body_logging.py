"""Body and header logging over loopback: a served Interlock, mock upstreams, the official SDKs.

Each access line carries the request body as sent upstream and the response body (a stream's
assembled text, tool calls and usage), cut at ``log_body_max_bytes``, with secrets of every shape
masked: the upstream key (from the environment), a ``redact`` pattern, a forced header secret and
the client's own key. Headers in both directions, credentials masked; a route can be quiet."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from compiler import compile_texts
from runtime.exchange import StreamTranscript
from tests.served import ServedGateway
from tests.test_access_log import read_lines
from tests.upstreams import MockUpstream

Served = Callable[[str], ServedGateway]
CLIENT_KEY = "il-bodylog-client-key-0123456789"
UPSTREAM_KEY = "sk-bodylog-upstream-key-9876543210"
TENANT_TOKEN = "tenant-token-5f1e2d3c4b"
ACCOUNT = "ACCT-482915"  # matched by the config's redact pattern
SALT = "0123456789abcdef"
GOOG_KEY = "AIza-bodylog-goog-key-24680"  # sent by the client, named like a credential
TEAM_TOKEN = "team-token-13579-bodylog"
SECRETS = (CLIENT_KEY, UPSTREAM_KEY, TENANT_TOKEN, ACCOUNT, GOOG_KEY, TEAM_TOKEN)
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def up(make_upstream: Callable[..., MockUpstream], monkeypatch: pytest.MonkeyPatch) -> MockUpstream:
    monkeypatch.setenv("IL_BODYLOG_UPSTREAM_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("IL_BODYLOG_TENANT", TENANT_TOKEN)
    return make_upstream(required_key=UPSTREAM_KEY)


def config(
    up: MockUpstream, log: Path, extra: dict[str, Any] | None = None, **observability: Any
) -> str:
    key = {"env": "IL_BODYLOG_UPSTREAM_KEY"}
    digest = hashlib.sha256((SALT + CLIENT_KEY).encode()).hexdigest()
    return json.dumps(
        {
            "version": 1,
            "upstreams": {
                "oai": {
                    "kind": "openai",
                    "base_url": up.base_url("openai"),
                    "api_key": key,
                    "headers": ["tenant"],
                },
                "ant": {"kind": "anthropic", "base_url": up.url, "api_key": key},
            },
            "policies": {
                "headers": {
                    "tenant": {
                        "request": {"force": {"x-tenant-token": {"env": "IL_BODYLOG_TENANT"}}}
                    }
                }
            },
            "models": {
                "to-openai": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
                "to-anthropic": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
                "quiet": {"targets": [{"upstream": "oai", "model": "gpt-quiet"}]},
                "loud": {"targets": [{"upstream": "oai", "model": "gpt-loud"}]},
            },
            "routes": [
                {"name": "quiet", "match": {"model": "quiet"}, "action": {"log_bodies": False}},
                {"name": "loud", "match": {"model": "loud"}, "action": {"log_bodies": True}},
                {"name": "main", "match": {}, "action": {}},
            ],
            "auth": {"required": True, "keys": [{"id": "ci", "hash": f"sha256:{SALT}:{digest}"}]},
            "observability": {
                "access_log": {"format": "json", "destination": str(log)},
                "log_bodies": True,
                "log_headers": True,
                "redact": ["ACCT-\\d{6}"],
                **observability,
            },
            **(extra or {}),
        }
    )


def openai_client(gw: ServedGateway, rid: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=10,
        default_headers={"x-request-id": rid},
    )


def anthropic_client(gw: ServedGateway, rid: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=10,
        default_headers={"x-request-id": rid},
    )


PROMPT = f"my account is {ACCOUNT} and the key is {UPSTREAM_KEY}"


def assert_no_secret(log: Path) -> None:
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text


def test_plain_openai_bodies_and_headers_are_logged_masked(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log))
    with openai_client(gw, "plain") as client:
        reply = client.chat.completions.create(
            model="to-openai",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-goog-api-key": GOOG_KEY, "x-team-token": TEAM_TOKEN},
        )
    assert reply.choices[0].message.content == f"echo: {PROMPT}"
    [line] = read_lines(log, 1)
    assert line["request_headers"]["x-goog-api-key"] == "***"
    assert line["request_headers"]["x-team-token"] == "***"
    sent = line["request_body"]
    assert '"model":"gpt-up"' in sent  # as sent upstream: the target's model name
    assert "my account is *** and the key is ***" in sent
    assert '"content":"echo: my account is *** and the key is ***"' in line["response_body"]
    assert line["request_headers"]["authorization"] == "***"
    assert line["request_headers"]["x-request-id"] == "plain"
    upstream_headers = line["upstream_headers"]
    assert upstream_headers["authorization"] == "***"
    assert upstream_headers["x-tenant-token"] == "***"  # a forced secret, masked by value
    assert upstream_headers["x-request-id"] == "plain"
    assert line["response_headers"]["content-type"] == "application/json"
    assert line["response_headers"]["x-request-id"] == "plain"
    assert_no_secret(log)


def test_streamed_openai_logs_text_tool_calls_and_usage(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log))
    with openai_client(gw, "text") as client:
        chunks = list(
            client.chat.completions.create(
                model="to-openai",
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert len(chunks) > 3
    with openai_client(gw, "tools") as client:
        list(
            client.chat.completions.create(
                model="to-openai",
                messages=[{"role": "user", "content": "weather?"}],
                tools=[WEATHER_TOOL],
                stream=True,
            )
        )
    lines = {line["request_id"]: line for line in read_lines(log, 2)}
    text = json.loads(lines["text"]["response_body"])
    assert text["stream"] is True and text["finish"] == "stop"
    assert text["text"] == "echo: my account is *** and the key is ***"
    assert text["usage"]["prompt_tokens"] > 0 and text["usage"]["completion_tokens"] > 0
    assert '"stream":true' in lines["text"]["request_body"]
    tools = json.loads(lines["tools"]["response_body"])
    [call] = tools["tool_calls"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert tools["finish"] == "tool_calls"
    assert lines["tools"]["response_headers"]["content-type"].startswith("text/event-stream")
    assert_no_secret(log)


def test_a_metered_stream_logs_the_usage_its_client_did_not_ask_for(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    ledger = {"usage": {"store": {"kind": "sqlite", "path": str(tmp_path / "usage.db")}}}
    gw = served(config(up, log, ledger))
    with openai_client(gw, "metered") as client:
        chunks = list(
            client.chat.completions.create(
                model="to-openai", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for it
    [line] = read_lines(log, 1)
    transcript = json.loads(line["response_body"])
    assert transcript["text"] == "echo: hi"
    assert transcript["usage"]["input_tokens"] > 0 and transcript["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(
    ("model", "upstream_model", "translated"),
    [("to-anthropic", "claude-up", False), ("to-openai", "gpt-up", True)],
)
def test_anthropic_client_streams_and_plain_answers_are_logged(
    served: Served,
    up: MockUpstream,
    tmp_path: Path,
    model: str,
    upstream_model: str,
    translated: bool,
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log))
    with (
        anthropic_client(gw, "stream") as client,
        client.messages.stream(
            model=model, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
        ) as stream,
    ):
        assert stream.get_final_text() == f"echo: {PROMPT}"
    with anthropic_client(gw, "plain") as client:
        message = client.messages.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": "hi there"}]
        )
        assert message.content[0].type == "text"
    lines = {line["request_id"]: line for line in read_lines(log, 2)}
    streamed = lines["stream"]
    assert f'"model":"{upstream_model}"' in streamed["request_body"]
    # the body as it went upstream: translated to OpenAI chat (which asks for stream usage)
    assert ('"stream_options"' in streamed["request_body"]) is translated
    transcript = json.loads(streamed["response_body"])
    assert transcript["text"] == "echo: my account is *** and the key is ***"
    assert transcript["finish"] == "end_turn"
    assert transcript["usage"]["output_tokens"] > 0
    credentials = {"authorization", "x-api-key"} & set(streamed["request_headers"])
    assert credentials and {streamed["request_headers"][name] for name in credentials} == {"***"}
    assert streamed["upstream_headers"]["authorization" if translated else "x-api-key"] == "***"
    assert '"text":"echo: hi there"' in lines["plain"]["response_body"]
    assert_no_secret(log)


def test_bodies_are_cut_at_the_configured_size(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log, log_body_max_bytes=256))
    long_text = ("lorem ipsum " * 200) + ACCOUNT
    with openai_client(gw, "long") as client:
        client.chat.completions.create(
            model="to-openai", messages=[{"role": "user", "content": long_text}]
        )
    [line] = read_lines(log, 1)
    for field in ("request_body", "response_body"):
        body, _, note = line[field].partition("…[truncated, ")
        assert len(body.encode()) <= 256 and note.endswith(" bytes]")
        assert int(note.split()[0]) > 2400
    assert_no_secret(log)


def test_a_secret_straddling_the_cut_is_masked_whole(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log, log_body_max_bytes=128))
    filler = "x" * 90
    with openai_client(gw, "cut") as client:
        client.chat.completions.create(
            model="to-openai", messages=[{"role": "user", "content": filler + UPSTREAM_KEY}]
        )
    [line] = read_lines(log, 1)
    assert UPSTREAM_KEY[:10] not in line["request_body"]
    assert_no_secret(log)


def test_a_route_can_be_quiet_or_loud(served: Served, up: MockUpstream, tmp_path: Path) -> None:
    quiet_log, loud_log = tmp_path / "quiet.log", tmp_path / "loud.log"
    quiet_gw = served(config(up, quiet_log))
    loud_gw = served(config(up, loud_log, log_bodies=False, log_headers=False))
    for gw in (quiet_gw, loud_gw):
        for model in ("quiet", "loud", "to-openai"):
            with openai_client(gw, model) as client:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )
    quiet = {line["request_id"]: line for line in read_lines(quiet_log, 3)}
    assert "request_body" not in quiet["quiet"] and "response_body" not in quiet["quiet"]
    assert quiet["quiet"]["request_headers"]["authorization"] == "***"  # headers: still on
    assert "gpt-loud" in quiet["loud"]["request_body"]
    assert "gpt-up" in quiet["to-openai"]["request_body"]
    loud = {line["request_id"]: line for line in read_lines(loud_log, 3)}
    assert (
        "gpt-loud" in loud["loud"]["request_body"] and "echo: hi" in loud["loud"]["response_body"]
    )
    assert "request_body" not in loud["quiet"] and "request_body" not in loud["to-openai"]
    assert "request_headers" not in loud["loud"]


def test_refused_requests_log_the_client_body_and_the_error(
    served: Served, up: MockUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = served(config(up, log))
    with openai_client(gw, "missing") as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": PROMPT}]
        )
    [line] = read_lines(log, 1)
    assert line["upstream"] is None and line["upstream_headers"] is None
    assert "no-such-model" in line["request_body"] and "***" in line["request_body"]
    assert "model_not_found" in line["response_body"]
    assert_no_secret(log)


def test_body_logging_is_no_longer_a_warning() -> None:
    text = "version: 1\nobservability: {log_bodies: true, redact: ['x+'], log_headers: true}\n"
    result = compile_texts([("c.yaml", text)])
    assert result.table is not None and result.warnings == ()
    unknown = compile_texts([("c.yaml", "version: 1\nobservability: {log_body_max_bytes: 10}\n")])
    assert [e.code for e in unknown.errors] == ["schema.minimum"]


def test_transcript_assembles_responses_stream_events() -> None:
    transcript = StreamTranscript("openai.responses", keep=1000)
    events = [
        {"type": "response.output_text.delta", "delta": "hel"},
        {"type": "response.output_text.delta", "delta": "lo"},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "call_id": "c1", "name": "f"},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"},
        {
            "type": "response.completed",
            "response": {"status": "completed", "usage": {"input_tokens": 3}},
        },
    ]
    for event in events:
        transcript.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    assert transcript.result() == {
        "stream": True,
        "text": "hello",
        "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}],
        "finish": "completed",
        "usage": {"input_tokens": 3},
    }


def test_logging_bodies_without_an_access_log_is_a_warning() -> None:
    text = """
version: 1
upstreams: {u: {kind: mock}}
models: {m: {targets: [{upstream: u}]}}
routes: [{name: r, match: {}, action: {log_bodies: true}}]
observability:
  access_log: {enabled: false}
  log_headers: true
"""
    result = compile_texts([("c.yaml", text)])
    assert result.table is not None
    found = {(w.code, w.span.path) for w in result.warnings}
    assert found == {
        ("log.no_access_log", "$.observability.log_headers"),
        ("log.no_access_log", "$.routes[0].action.log_bodies"),
    }
