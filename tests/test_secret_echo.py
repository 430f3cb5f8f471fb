"""Secrets an upstream echoes back never reach the client or a log line.

A loopback upstream answers every call with an error that quotes the credentials it received
(the bare key of ``Authorization: Bearer``, the whole header, ``x-api-key`` and a forced header),
as an error status or as an error event inside a 200 stream, in OpenAI, Anthropic, Responses and
GigaChat shapes. Keys come in several shapes: ``sk-...`` written inline, 40 hex digits from the
environment, a token without any key shape from a file, a forced header secret from a header
policy, and a GigaChat OAuth token fetched at run time from a loopback token endpoint.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.bridge import RawRelay
from runtime.redaction import Redactor
from runtime.snapshot import prepare_snapshot
from tests.served import ServedGateway

HEX_KEY = secrets.token_hex(20)  # 40 hex digits: no credential shape at all
SK_KEY = "sk-upstream-" + secrets.token_urlsafe(18)
FILE_KEY = "fk." + secrets.token_urlsafe(24)  # read from a {file: ...} reference
TENANT_SECRET = "tenant-" + secrets.token_urlsafe(16)  # forced by a header policy
OAUTH_TOKEN = "gt." + secrets.token_urlsafe(32)  # issued by the loopback token endpoint
GIGACHAT_CREDENTIALS = "Y2xpZW50OnNlY3JldC12YWx1ZS05YjJj"  # base64 client:secret-value-9b2c
SECRETS = (HEX_KEY, SK_KEY, FILE_KEY, TENANT_SECRET, OAUTH_TOKEN, "secret-value-9b2c")

UPSTREAMS = ("oai-sk", "oai-hex", "oai-file", "ant-sk", "ant-hex", "ant-file", "giga")
MODES = ("status-400", "status-500", "event")  # the upstream model name picks the answer


# --- the echoing upstream -----------------------------------------------------------------


@dataclass
class EchoUpstream:
    """Records every secret it echoed, so a test knows the upstream really sent them back."""

    echoed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def quoted(self, headers: Any) -> tuple[str, list[str]]:
        auth = headers.get("authorization", "")
        values = [auth.partition(" ")[2], headers.get("x-api-key"), headers.get("x-tenant-secret")]
        found = [v for v in values if v]
        with self.lock:
            self.echoed.update(found)
        text = "; ".join(f"key {v} revoked" for v in found)
        return f"invalid credentials ({auth}): {text}", found


def _openai_error(message: str, found: list[str]) -> dict[str, Any]:
    error = {"message": message, "type": "invalid_request_error", "param": found[0]}
    return {"error": error, "note": f"sent {found[-1]}"}


def _anthropic_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "authentication_error", "message": message}}


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def _stream_events(path: str, message: str, found: list[str]) -> list[bytes]:
    """A healthy start, then an error event quoting the secrets."""
    if path == "/v1/messages":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 1, "output_tokens": 0},
            },
        }
        text_block = {"type": "text", "text": ""}
        block = {"type": "content_block_start", "index": 0, "content_block": text_block}
        delta = {"type": "content_block_delta", "index": 0}
        delta["delta"] = {"type": "text_delta", "text": "hello"}
        return [
            _sse(start, "message_start"),
            _sse(block, "content_block_start"),
            _sse(delta, "content_block_delta"),
            _sse(_anthropic_error(message), "error"),
        ]
    if path == "/v1/responses":
        created = {"type": "response.created", "sequence_number": 0}
        created["response"] = {"id": "resp_1", "object": "response", "status": "in_progress"}
        failed = {"type": "response.failed", "sequence_number": 1}
        failed["response"] = {
            "id": "resp_1",
            "object": "response",
            "status": "failed",
            "output": [],
            "error": {"code": "server_error", "message": message},
        }
        return [_sse(created, "response.created"), _sse(failed, "response.failed")]
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]
    return [_sse(chunk), _sse(_openai_error(message, found))]


def _handler(echo: EchoUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path == "/api/v2/oauth":
                expires = int((time.time() + 3600) * 1000)
                self._reply(200, {"access_token": OAUTH_TOKEN, "expires_at": expires})
                return
            body = json.loads(raw)
            message, found = echo.quoted(self.headers)
            mode = str(body.get("model", ""))
            if mode.startswith("status-"):
                shaped = (
                    _anthropic_error(message)
                    if self.path == "/v1/messages"
                    else _openai_error(message, found)
                )
                self._reply(int(mode[7:]), shaped, echo_header=found[0])
                return
            self._stream(_stream_events(self.path, message, found))

        def _reply(self, status: int, data: Any, echo_header: str | None = None) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            if echo_header:
                self.send_header("x-echo-key", echo_header)
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, events: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            *head, last = events
            for event in head:
                self.wfile.write(event)
            self.wfile.flush()
            cut = len(last) // 2  # NOTE: inside the quoted secrets: two writes, maybe two reads
            self.wfile.write(last[:cut])
            self.wfile.flush()
            time.sleep(0.01)
            self.wfile.write(last[cut:])
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[EchoUpstream, str]]:
    state = EchoUpstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- the gateway --------------------------------------------------------------------------


def _config(url: str, key_file: Path, access_log: Path) -> str:
    def upstream(kind: str, key: Any) -> dict[str, Any]:
        base = url + "/v1" if kind == "openai" else url
        return {"kind": kind, "base_url": base, "api_key": key, "headers": ["tenant"]}

    upstreams = {
        "oai-sk": upstream("openai", SK_KEY),
        "oai-hex": upstream("openai", {"env": "IL_ECHO_HEX_KEY"}),
        "oai-file": upstream("openai", {"file": str(key_file)}),
        "ant-sk": upstream("anthropic", SK_KEY),
        "ant-hex": upstream("anthropic", {"env": "IL_ECHO_HEX_KEY"}),
        "ant-file": upstream("anthropic", {"file": str(key_file)}),
        "giga": {
            "kind": "gigachat",
            "base_url": url + "/api/v1",
            "oauth": {
                "token_url": url + "/api/v2/oauth",
                "credentials": {"env": "IL_ECHO_GIGACHAT_CREDENTIALS"},
                "scope": "GIGACHAT_API_PERS",
            },
        },
    }
    models = {
        f"{name}/{mode}": {"targets": [{"upstream": name, "model": mode}]}
        for name in UPSTREAMS
        for mode in MODES
    }
    return json.dumps(
        {
            "version": 1,
            "upstreams": upstreams,
            "models": models,
            "policies": {
                "headers": {"tenant": {"request": {"force": {"x-tenant-secret": TENANT_SECRET}}}}
            },
            "observability": {"access_log": {"destination": str(access_log)}},
        }
    )


@pytest.fixture(scope="module")
def gateway(
    echo: tuple[EchoUpstream, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServedGateway, Path]]:
    folder = tmp_path_factory.mktemp("echo")
    key_file = folder / "key.txt"
    key_file.write_text(FILE_KEY + "\n", encoding="utf-8")
    access_log = folder / "access.log"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IL_ECHO_HEX_KEY", HEX_KEY)
        env.setenv("IL_ECHO_GIGACHAT_CREDENTIALS", GIGACHAT_CREDENTIALS)
        with ServedGateway(_config(echo[1], key_file, access_log)) as served:
            yield served, access_log


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in {text[:400]!r}"


def assert_clean_logs(
    gateway: tuple[ServedGateway, Path], caplog: pytest.LogCaptureFixture
) -> None:
    served, access_log = gateway
    served.call(served.gateway.access_log.flush)
    lines = access_log.read_text(encoding="utf-8")
    assert '"status":' in lines  # NOTE: the log is written, so checking it means something
    assert_no_secret(lines, caplog.text, *(str(r.args) for r in caplog.records))


def _response_text(response: Any) -> str:
    """Headers and body of an httpx response (the SDKs' own httpx types too)."""
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{headers}\n\n{response.text}"


# --- every upstream, every mode, both client APIs, over raw HTTP ----------------------------

CLIENT_APIS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": (
        "/v1/messages",
        {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    ),
}


# (mode, stream): an error status answered to a plain and to a streamed request (nothing was
# streamed yet), a 5xx (retried, then the gateway's own 502), an error event inside a stream
CASES = (("status-400", False), ("status-400", True), ("status-500", False), ("event", True))


@pytest.mark.parametrize(("mode", "stream"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("api", sorted(CLIENT_APIS))
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_echoed_secrets_never_reach_the_client_or_the_logs(
    gateway: tuple[ServedGateway, Path],
    echo: tuple[EchoUpstream, str],
    logs: pytest.LogCaptureFixture,
    upstream: str,
    api: str,
    mode: str,
    stream: bool,
) -> None:
    served, _ = gateway
    path, body = CLIENT_APIS[api]
    request = {**body, "model": f"{upstream}/{mode}", "stream": stream}
    echo[0].echoed.clear()
    response = httpx.post(served.url + path, json=request, timeout=10)
    assert echo[0].echoed, "the upstream echoed nothing: the test would prove nothing"
    assert_no_secret(_response_text(response))
    if mode == "event":
        assert response.status_code == 200
        assert "***" in response.text or "[REDACTED]" in response.text  # the message is kept
    else:
        assert response.status_code >= 400
    assert_clean_logs(gateway, logs)


def test_a_responses_stream_that_fails_is_redacted(
    gateway: tuple[ServedGateway, Path],
    echo: tuple[EchoUpstream, str],
    logs: pytest.LogCaptureFixture,
) -> None:
    served, _ = gateway
    request = {"model": "oai-hex/event", "input": "hi", "stream": True}
    echo[0].echoed.clear()
    response = httpx.post(served.url + "/v1/responses", json=request, timeout=10)
    assert HEX_KEY in echo[0].echoed
    assert response.status_code == 200
    assert "response.failed" in response.text and "key *** revoked" in response.text
    assert_no_secret(_response_text(response))
    assert_clean_logs(gateway, logs)


# --- through the official SDKs ------------------------------------------------------------


def test_openai_sdk_sees_redacted_errors(
    gateway: tuple[ServedGateway, Path], logs: pytest.LogCaptureFixture
) -> None:
    served, _ = gateway
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="client-key", max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as plain:
        client.chat.completions.create(model="oai-file/status-400", messages=messages)
    assert "key *** revoked" in plain.value.message
    assert_no_secret(str(plain.value.body), _response_text(plain.value.response))
    for model in ("oai-hex/event", "ant-file/event", "giga/event"):
        with pytest.raises(openai.APIError) as streamed:
            for _ in client.chat.completions.create(model=model, messages=messages, stream=True):
                pass
        assert_no_secret(streamed.value.message, str(streamed.value.body))
    assert_clean_logs(gateway, logs)


def test_anthropic_sdk_sees_redacted_errors(
    gateway: tuple[ServedGateway, Path], logs: pytest.LogCaptureFixture
) -> None:
    served, _ = gateway
    client = anthropic.Anthropic(base_url=served.url, api_key="client-key", max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.BadRequestError) as plain:
        client.messages.create(model="ant-hex/status-400", max_tokens=8, messages=messages)
    assert "key *** revoked" in plain.value.message
    assert_no_secret(str(plain.value.body), _response_text(plain.value.response))
    for model in ("ant-sk/event", "oai-file/event", "giga/event"):
        with pytest.raises(anthropic.APIError) as streamed:
            stream = client.messages.create(
                model=model, max_tokens=8, messages=messages, stream=True
            )
            for _ in stream:
                pass
        assert_no_secret(streamed.value.message, str(streamed.value.body))
    assert_clean_logs(gateway, logs)


# --- a token learned after the table was swapped in -----------------------------------------


def test_an_oauth_token_fetched_under_an_older_table_is_still_masked(
    gateway: tuple[ServedGateway, Path], echo: tuple[EchoUpstream, str]
) -> None:
    served, _ = gateway
    request = {"model": "giga/status-400", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(served.url + "/v1/chat/completions", json=request, timeout=10)  # token cached
    fresh = prepare_snapshot(served.gateway.snapshot.table)  # a redactor that never saw it
    served.call(lambda: served.gateway.swap(fresh))
    echo[0].echoed.clear()
    response = httpx.post(served.url + "/v1/chat/completions", json=request, timeout=10)
    assert OAUTH_TOKEN in echo[0].echoed
    assert response.status_code == 400
    assert_no_secret(_response_text(response))


# --- the relay, unit level: any split of the upstream's bytes -------------------------------

_OK_STREAM = b"".join(
    [
        _sse({"choices": [{"index": 0, "delta": {"content": f"the key is {HEX_KEY}"}}]}),
        _sse({"choices": [{"index": 0, "delta": {"content": "an error\\n, data: x"}}]}),
        b"data: [DONE]\n\n",
    ]
)
# NOTE: the key's first character written as a JSON escape: redaction must see the decoded text
_ESCAPED_KEY = f"\\u{ord(HEX_KEY[0]):04x}{HEX_KEY[1:]}"
_FAILING_STREAM = (
    _OK_STREAM[: -len(b"data: [DONE]\n\n")]
    + b'data: {"error": {"message": "key %s revoked", ' % HEX_KEY.encode()
    + b'"code": "%s"}}\n\n' % _ESCAPED_KEY.encode()
)


def _relay_all(data: bytes, cuts: list[int]) -> bytes:
    relay = RawRelay("openai.chat", b"[DONE]", None, Redactor([HEX_KEY]))
    bounds = [0, *sorted(set(cuts)), len(data)]
    out = b"".join(relay.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    return out + relay.finish()


@given(st.lists(st.integers(min_value=1, max_value=len(_OK_STREAM) - 1), max_size=8))
def test_a_healthy_stream_passes_byte_for_byte_however_it_is_cut(cuts: list[int]) -> None:
    assert _relay_all(_OK_STREAM, cuts) == _OK_STREAM  # NOTE: the answer's own text is kept


@given(st.lists(st.integers(min_value=1, max_value=len(_FAILING_STREAM) - 1), max_size=8))
def test_an_error_event_is_redacted_however_it_is_cut(cuts: list[int]) -> None:
    out = _relay_all(_FAILING_STREAM, cuts)
    head, _, error = out.rpartition(b"data: {")
    assert HEX_KEY.encode() in head  # the healthy event before it is the model's answer
    assert HEX_KEY.encode() not in error and HEX_KEY[1:].encode() not in error
    assert b"key *** revoked" in error


def test_crlf_framing_and_text_data_are_redacted() -> None:
    data = f"data: upstream says: key {HEX_KEY} revoked\r\n\r\ndata: [DONE]\r\n\r\n".encode()
    cut = data.index(b"\r\n") + 1  # NOTE: between CR and LF
    out = _relay_all(data, [cut])
    assert out == b"data: upstream says: key *** revoked\n\ndata: [DONE]\n\n"


@given(st.lists(st.integers(min_value=1, max_value=2 * len(_OK_STREAM)), max_size=8))
def test_crlf_framing_comes_out_as_lf_however_it_is_cut(cuts: list[int]) -> None:
    crlf = _OK_STREAM.replace(b"\n", b"\r\n")
    assert _relay_all(crlf, [cut for cut in cuts if cut < len(crlf)]) == _OK_STREAM
