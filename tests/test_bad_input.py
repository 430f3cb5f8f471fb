"""The bad-input corpus: every client endpoint of both APIs, over a real socket.

Whatever a client sends - broken JSON, wrong types, missing fields, unknown models, oversized
bodies or headers, the wrong content type or method, bad API keys - the answer is a 4xx in the
shape of the API called (OpenAI ``{"error": {"message", "type", "param", "code"}}``, Anthropic
``{"type": "error", "error": {"type", "message"}}``), never a 5xx, never a traceback, and the
official SDKs raise the matching exception class. Raw httpx sends what the SDKs cannot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from hypercorn.config import Config as HypercornConfig
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from runtime.server import hypercorn_config
from tests.served import ServedGateway
from tests.upstreams import MockUpstream

MAX_BODY = 16_384
HEADER_LIMIT = 64 * 1024  # runtime/app.py's own 431 check
CHAT = [{"role": "user", "content": "hi"}]
OPENAI_CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ANTHROPIC_CHAT: list[MessageParam] = [{"role": "user", "content": "hi"}]
# path -> (API family, a valid body)
ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("openai", {"model": "m", "messages": CHAT}),
    "/v1/completions": ("openai", {"model": "m", "prompt": "hi"}),
    "/v1/embeddings": ("openai", {"model": "m", "input": "hi"}),
    "/v1/messages": ("anthropic", {"model": "a", "max_tokens": 16, "messages": CHAT}),
    "/v1/messages/count_tokens": ("anthropic", {"model": "a", "messages": CHAT}),
}
REQUIRED = {
    "/v1/chat/completions": ["messages"],
    "/v1/completions": ["prompt"],
    "/v1/embeddings": ["input"],
    "/v1/messages": ["messages", "max_tokens"],
    "/v1/messages/count_tokens": ["messages"],
}
JSON = {"content-type": "application/json"}
OPENAI_APIS = ["openai.chat", "openai.completions", "openai.embeddings"]
ANTHROPIC_APIS = ["anthropic.messages", "anthropic.count_tokens"]


def _hash(key: str, salt: str = "0123456789abcdef") -> str:
    return f"sha256:{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


def _config(upstream: MockUpstream, extra: dict[str, Any] | None = None) -> str:
    config: dict[str, Any] = {
        "version": 1,
        "server": {"max_body_bytes": MAX_BODY},
        "upstreams": {
            "oai": {"kind": "openai", "base_url": upstream.base_url("openai"), "api_key": "sk-x"},
            "ant": {"kind": "anthropic", "base_url": upstream.url, "api_key": "sk-ant-x"},
            "local": {"kind": "mock"},
        },
        "models": {
            "m": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
            "a": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
            "demo": {"targets": [{"upstream": "local"}]},
        },
        "routes": [
            {
                "name": "policy-reject",
                "match": {"headers": {"x-test-reject": {"present": True}}},
                "action": {"reject": {"status": 422, "message": "rejected by policy"}},
            }
        ],
        **(extra or {}),
    }
    return json.dumps(config)


AUTH = {
    "auth": {
        "required": True,
        "accept": ["bearer", "x-api-key"],
        "keys": [
            {"id": "good", "hash": _hash("il-good")},
            {"id": "narrow", "hash": _hash("il-narrow"), "models": ["demo"]},
            {"id": "old", "hash": _hash("il-old"), "expires": "2020-01-01T00:00:00Z"},
        ],
    }
}


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    # NOTE: serve with production's h11 header limit (runtime/server.py) so that Interlock's own
    # 431 is reachable; the test helper's Hypercorn would otherwise keep its 16 KiB default.
    limit = hypercorn_config().h11_max_incomplete_size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HypercornConfig, "h11_max_incomplete_size", limit)
        with ServedGateway(_config(upstream)) as gateway:
            yield gateway


@pytest.fixture(scope="module")
def auth_gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with ServedGateway(_config(upstream, AUTH)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: ServedGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        yield client


def assert_error_shape(response: httpx.Response, family: str, status: int | None = None) -> Any:
    """The response is a well-shaped error of `family` (and `status`); returns the error object."""
    text = response.text
    assert "Traceback" not in text and 'File "' not in text
    if status is not None:
        assert response.status_code == status, text
    assert 400 <= response.status_code < 500, (response.status_code, text)
    assert response.headers["content-type"].startswith("application/json"), text
    body = response.json()
    if family == "openai":
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
    else:
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        error = body["error"]
        assert set(error) == {"type", "message"}, body
        assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- the corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int = 400
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    param: str | None = None  # OpenAI's `param`, where the gateway can name it


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def corpus(path: str) -> list[Case]:
    _, valid = ENDPOINTS[path]
    cases = [
        Case("malformed-json", b'{"model": "m", '),
        Case("unquoted-key", b'{model: "m"}'),
        Case("trailing-garbage", _dump(valid) + b" }{"),
        Case("json-array", b"[1, 2]"),
        Case("json-string", b'"hello"'),
        Case("json-number", b"42"),
        Case("json-null", b"null"),
        Case("json-true", b"true"),
        Case("empty-body", b""),
        Case("whitespace-body", b"  \n "),
        Case("byte-order-mark", b"\xef\xbb\xbf" + _dump(valid)),
        Case("nan", _dump(valid)[:-1] + b', "temperature": NaN}'),
        Case("invalid-utf8-model", _dump({**valid, "model": "X"}).replace(b'"X"', b'"m\xff\xfe"')),
        Case("invalid-utf8-anywhere", _dump({**valid, "user": "X"}).replace(b'"X"', b'"\xc3\x28"')),
        Case("latin1-body", _dump({**valid, "user": "X"}).replace(b'"X"', b'"caf\xe9"')),
        Case("lone-surrogate", _dump({**valid, "model": "X"}).replace(b'"X"', b'"\\ud800"')),
        Case("deep-nesting-unrouted", _dump(valid)[:-1] + b', "metadata": ' + _deep(5000) + b"}"),
        Case("deep-nesting-routed", _dump({**valid, "model": "X"}).replace(b'"X"', _deep(5000))),
        Case("model-is-number", _dump({**valid, "model": 3}), param="model"),
        Case("model-is-list", _dump({**valid, "model": ["m"]}), param="model"),
        Case(
            "missing-model", _dump({k: v for k, v in valid.items() if k != "model"}), param="model"
        ),
        Case("unknown-model", _dump({**valid, "model": "no-such-model"}), 404, param="model"),
        Case("empty-model", _dump({**valid, "model": ""}), param="model"),
        Case("too-large", _dump({**valid, "user": "x" * MAX_BODY}), 413),
        Case("text-plain", _dump(valid), 415, headers={"content-type": "text/plain"}),
        Case(
            "form", b"model=m", 415, headers={"content-type": "application/x-www-form-urlencoded"}
        ),
        Case("multipart", _dump(valid), 415, headers={"content-type": "multipart/form-data"}),
    ]
    for name in REQUIRED[path]:
        rest = {k: v for k, v in valid.items() if k != name}
        cases.append(Case(f"missing-{name}", _dump(rest)))
    if "messages" in valid:
        cases.append(
            Case("messages-is-string", _dump({**valid, "messages": "x"}), param="messages")
        )
        cases.append(
            Case("messages-is-object", _dump({**valid, "messages": {"a": 1}}), param="messages")
        )
    if path in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
        cases.append(Case("stream-is-string", _dump({**valid, "stream": "yes"}), param="stream"))
        cases.append(Case("stream-is-number", _dump({**valid, "stream": 1}), param="stream"))
    if path in ("/v1/chat/completions", "/v1/completions"):
        cases.append(
            Case(
                "stream-options-wrong",
                _dump({**valid, "stream": True, "stream_options": {"include_usage": "yes"}}),
            )
        )
    if path == "/v1/messages":
        cases.append(Case("max-tokens-is-string", _dump({**valid, "max_tokens": "10"})))
        cases.append(Case("max-tokens-is-float", _dump({**valid, "max_tokens": 1.5})))
    return cases


CORPUS = [(path, case) for path in ENDPOINTS for case in corpus(path)]


@pytest.mark.parametrize(
    ("path", "case"), CORPUS, ids=[f"{p.rsplit('/v1/', 1)[1]}-{c.name}" for p, c in CORPUS]
)
def test_corpus(http: httpx.Client, upstream: MockUpstream, path: str, case: Case) -> None:
    family, _ = ENDPOINTS[path]
    before = len(upstream.requests)
    response = http.post(path, content=case.body, headers=case.headers)
    error = assert_error_shape(response, family, case.status)
    if family == "openai" and case.param is not None:
        assert error["param"] == case.param
    if case.status == 404:
        if family == "openai":
            assert error["code"] == "model_not_found"
        else:
            assert error["type"] == "not_found_error"
    if case.status == 413 and family == "anthropic":
        assert error["type"] == "request_too_large"
    assert len(upstream.requests) == before, "bad input must not reach the upstream"


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_body_over_limit_chunked(http: httpx.Client, path: str) -> None:
    family, valid = ENDPOINTS[path]
    payload = _dump({**valid, "user": "x" * (MAX_BODY * 2)})

    def chunks() -> Iterator[bytes]:  # no content-length: Transfer-Encoding: chunked
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    response = http.post(path, content=chunks(), headers=JSON)
    assert_error_shape(response, family, 413)


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_body_at_limit_is_accepted(
    http: httpx.Client, upstream_reset: MockUpstream, path: str
) -> None:
    _, valid = ENDPOINTS[path]
    payload = _dump({**valid, "user": ""})
    payload = payload.replace(b'"user": ""', b'"user": "' + b"x" * (MAX_BODY - len(payload)) + b'"')
    assert len(payload) == MAX_BODY
    response = http.post(path, content=payload, headers=JSON)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_wrong_method(http: httpx.Client, path: str, method: str) -> None:
    family, _ = ENDPOINTS[path]
    response = http.request(method, path)
    assert_error_shape(response, family, 405)
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_head_is_a_4xx_without_body(http: httpx.Client, path: str) -> None:
    response = http.head(path)
    assert response.status_code == 405
    assert response.content == b""


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_huge_headers_get_interlocks_431(http: httpx.Client, path: str) -> None:
    family, valid = ENDPOINTS[path]
    headers = {**JSON, **{f"x-filler-{i}": "v" * 1000 for i in range(HEADER_LIMIT // 1000 + 2)}}
    response = http.post(path, content=_dump(valid), headers=headers)
    assert_error_shape(response, family, 431)


@pytest.mark.parametrize("size", [300 * 1024, 2 * 1024 * 1024])
def test_headers_beyond_hypercorns_limit_are_still_4xx(gw: ServedGateway, size: int) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + b"x-filler: "
            + b"a" * size
            + b"\r\ncontent-length: 2\r\n\r\n{}"
        )
        with contextlib.suppress(OSError):  # it may answer and close before reading it all
            sock.sendall(head)
        status = _read_status(sock)
    assert 400 <= status < 500


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"transfer-encoding: chunked\r\n\r\n{}\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
    ids=["bad-content-length", "bad-header-line", "length-and-chunked", "bad-chunk", "garbage"],
)
def test_malformed_http_is_4xx(gw: ServedGateway, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(raw)
        status = _read_status(sock)
    assert 400 <= status < 500


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


def test_unknown_route_is_not_a_5xx(http: httpx.Client) -> None:
    assert http.post("/v1/chat/completion", content=b"{}", headers=JSON).status_code == 404


# --- API keys -----------------------------------------------------------------------------------

KEY_CASES = [
    ("missing", {}, 401),
    ("wrong-bearer", {"authorization": "Bearer il-wrong"}, 401),
    ("bearer-without-token", {"authorization": "Bearer"}, 401),
    ("basic-scheme", {"authorization": "Basic aWwtZ29vZA=="}, 401),
    ("wrong-x-api-key", {"x-api-key": "il-wrong"}, 401),
    ("expired", {"authorization": "Bearer il-old"}, 401),
    ("expired-x-api-key", {"x-api-key": "il-old"}, 401),
    ("model-not-allowed", {"authorization": "Bearer il-narrow"}, 403),
]


@pytest.mark.parametrize(("name", "headers", "status"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_bad_api_keys(
    auth_gw: ServedGateway, path: str, name: str, headers: dict[str, str], status: int
) -> None:
    family, valid = ENDPOINTS[path]
    response = httpx.post(auth_gw.url + path, json=valid, headers=headers, timeout=10)
    error = assert_error_shape(response, family, status)
    if family == "openai":
        assert error["code"] == ("invalid_api_key" if status == 401 else "model_not_allowed")
    else:
        assert error["type"] == ("authentication_error" if status == 401 else "permission_error")
    assert "il-" not in response.text  # the presented key is never echoed


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_auth_is_checked_before_the_body(auth_gw: ServedGateway, path: str) -> None:
    family, _ = ENDPOINTS[path]
    response = httpx.post(auth_gw.url + path, content=b"{not json", headers=JSON, timeout=10)
    assert_error_shape(response, family, 401)


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_good_keys_pass(auth_gw: ServedGateway, path: str) -> None:
    _, valid = ENDPOINTS[path]
    for headers in ({"authorization": "Bearer il-good"}, {"x-api-key": "il-good"}):
        response = httpx.post(
            auth_gw.url + path, json={**valid, "model": "demo"}, headers=headers, timeout=10
        )
        assert response.status_code == 200, response.text


# --- the SDKs raise the right class -------------------------------------------------------------


def wrong(value: object) -> Any:
    """`value`, deliberately of a type the SDK's signature does not allow."""
    return value


def _openai(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def _anthropic(url: str, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=10)


def test_openai_sdk_exception_classes(gw: ServedGateway, auth_gw: ServedGateway) -> None:
    client = _openai(gw.url)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=wrong(3), messages=OPENAI_CHAT)
    assert bad.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=wrong("x"))
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=OPENAI_CHAT)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt="hi", stream=wrong("yes"))
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="m", messages=OPENAI_CHAT, extra_headers={"x-test-reject": "1"}
        )
    with pytest.raises(openai.APIStatusError) as large:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * MAX_BODY}]
        )
    assert large.value.status_code == 413
    client.close()
    with _openai(auth_gw.url, "il-wrong") as bad_key, pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="demo", messages=OPENAI_CHAT)
    with _openai(auth_gw.url, "il-old") as old, pytest.raises(openai.AuthenticationError):
        old.chat.completions.create(model="demo", messages=OPENAI_CHAT)
    with _openai(auth_gw.url, "il-narrow") as narrow:
        with pytest.raises(openai.PermissionDeniedError):
            narrow.chat.completions.create(model="m", messages=OPENAI_CHAT)
        assert narrow.chat.completions.create(model="demo", messages=OPENAI_CHAT).choices


def test_anthropic_sdk_exception_classes(gw: ServedGateway, auth_gw: ServedGateway) -> None:
    client = _anthropic(gw.url)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="a", max_tokens=wrong("10"), messages=ANTHROPIC_CHAT)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="a", max_tokens=10, messages=wrong("x"))
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=10, messages=ANTHROPIC_CHAT)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=ANTHROPIC_CHAT)
    with pytest.raises(anthropic.UnprocessableEntityError):
        client.messages.create(
            model="a", max_tokens=10, messages=ANTHROPIC_CHAT, extra_headers={"x-test-reject": "1"}
        )
    with pytest.raises(anthropic.ContentTooLargeError):
        client.messages.create(
            model="a", max_tokens=10, messages=[{"role": "user", "content": "x" * MAX_BODY}]
        )
    client.close()
    with (
        _anthropic(auth_gw.url, "il-wrong") as bad_key,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad_key.messages.create(model="demo", max_tokens=10, messages=ANTHROPIC_CHAT)
    with _anthropic(auth_gw.url, "il-old") as old, pytest.raises(anthropic.AuthenticationError):
        old.messages.create(model="demo", max_tokens=10, messages=ANTHROPIC_CHAT)
    with _anthropic(auth_gw.url, "il-narrow") as narrow:
        with pytest.raises(anthropic.PermissionDeniedError):
            narrow.messages.create(model="a", max_tokens=10, messages=ANTHROPIC_CHAT)
        assert narrow.messages.create(model="demo", max_tokens=10, messages=ANTHROPIC_CHAT).content


# --- fuzzing ------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | _json},
    optional={"content": st.text(max_size=20) | _json},
)
_model = st.sampled_from(["m", "a", "o2a", "a2o", "nope"])


_FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "stream",
    "stream_options",
    "prompt",
    "input",
    "system",
    "tools",
    "temperature",
)
_good_request = st.fixed_dictionaries(
    {"model": _model},
    optional={
        "messages": st.lists(_message, min_size=1, max_size=3),
        "max_tokens": st.integers(min_value=-5, max_value=64),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        "prompt": st.text(max_size=20),
        "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3),
        "system": st.text(max_size=20),
    },
)


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with the fields the gateway reads, well typed but for at most one field holding
    any JSON: they get past the first checks into routing, translation and the upstream call."""
    body: dict[str, Any] = draw(_good_request)
    if draw(st.booleans()):
        body[draw(st.sampled_from(_FIELDS))] = draw(_json)
    return body


@pytest.fixture(scope="module")
def fuzz_http(upstream: MockUpstream) -> Iterator[httpx.Client]:
    """A gateway whose models answer in-process (`kind: mock`) or through a protocol
    translation to the loopback mock, so whatever passes validation gets a sane answer."""
    config = json.loads(_config(upstream))
    config["models"] = {
        "m": {"targets": [{"upstream": "local"}]},
        "a": {"targets": [{"upstream": "local"}]},
        "o2a": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
        "a2o": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
    }
    config[
        "routes"
    ] = [  # NOTE: only translated bodies reach the loopback mock, which is no fuzz target
        {
            "name": "same-openai",
            "match": {"api": OPENAI_APIS, "model": "a2o"},
            "action": {"model": "m"},
        },
        {
            "name": "same-anthropic",
            "match": {"api": ANTHROPIC_APIS, "model": "o2a"},
            "action": {"model": "a"},
        },
    ]
    with (
        ServedGateway(json.dumps(config)) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as client,
    ):
        yield client


def _check_fuzz(response: httpx.Response, family: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert_error_shape(response, family)


@pytest.mark.parametrize("path", list(ENDPOINTS))
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(fuzz_http: httpx.Client, path: str, data: bytes) -> None:
    _check_fuzz(fuzz_http.post(path, content=data, headers=JSON), ENDPOINTS[path][0])


@pytest.mark.parametrize("path", list(ENDPOINTS))
@settings(max_examples=40, deadline=None)
@given(value=_json)
def test_fuzz_random_json(fuzz_http: httpx.Client, path: str, value: Any) -> None:
    _check_fuzz(fuzz_http.post(path, content=_dump(value), headers=JSON), ENDPOINTS[path][0])


@pytest.mark.parametrize("path", list(ENDPOINTS))
@settings(max_examples=80, deadline=None)
@given(value=_requests())
def test_fuzz_request_shaped_json(
    fuzz_http: httpx.Client, path: str, value: dict[str, Any]
) -> None:
    _check_fuzz(fuzz_http.post(path, content=_dump(value), headers=JSON), ENDPOINTS[path][0])
