"""What an access line shows of one request's headers and bodies, when the table logs them.

An `Exchange` exists only for a request whose table logs headers (``observability.log_headers``)
or bodies (``observability.log_bodies`` or some route's ``action.log_bodies``); every other
request pays one ``is None`` check per hook. The pipeline hands it what went upstream; the app's
`send` goes through `Exchange.wrap`, so it sees exactly what went to the client. A stream is not
kept: a `StreamTranscript` assembles its text, tool calls and usage as the events go by::

    exchange = Exchange("openai.chat", {"authorization": "Bearer sk-client"}, bodies=True,
                        headers=True, max_bytes=4096)
    exchange.sent_upstream([("authorization", "Bearer sk-up")], b'{"model":"m"}')  # pipeline
    send = exchange.wrap(send)                                                       # app
    exchange.fields(redactor, client_raw) -> {"request_headers": {"authorization": "***"},
        "upstream_headers": {...}, "response_headers": {...},
        "request_body": '{"model":"m"}', "response_body": '{"id": ...}'}

Masking: header values of credential headers are ``***`` whole; every other value and every body
goes through the snapshot's `Redactor` (resolved secrets, ``redact`` patterns, credential
shapes) after the client's own credential values have been masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from starlette.types import Message, Send

from compiler.headers import is_secret_header
from runtime.metering import Meter
from runtime.redaction import MASK, MIN_SECRET_LENGTH, Redactor
from runtime.sse import SSEDecoder

# SECURITY: values of these headers (and of any `is_secret_header` name: x-goog-api-key,
# *-api-key, *-token, ...) are never logged, whoever sent them.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    }
)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class Exchange:
    """One request's logged headers and bodies, gathered as the request goes."""

    __slots__ = (
        "api",
        "bodies",
        "client_headers",
        "headers",
        "max_bytes",
        "response_body",
        "response_headers",
        "transcript",
        "upstream_body",
        "upstream_headers",
    )

    def __init__(
        self,
        api: str,
        client_headers: Mapping[str, str],
        *,
        bodies: bool,
        headers: bool,
        max_bytes: int,
    ) -> None:
        self.api = api
        self.client_headers = client_headers
        self.bodies = bodies  # NOTE: the matched route may change it (action.log_bodies)
        self.headers = headers
        self.max_bytes = max_bytes
        self.upstream_headers: Iterable[tuple[str, str]] | None = None
        self.upstream_body: bytes | dict[str, Any] | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_body: bytes | None = None
        self.transcript: StreamTranscript | None = None

    def sent_upstream(
        self, headers: Iterable[tuple[str, str]], body: bytes | dict[str, Any]
    ) -> None:
        """What the last upstream attempt was sent (a mock upstream gets the body as a dict)."""
        self.upstream_headers = headers
        self.upstream_body = body

    def wrap(self, send: Send) -> Send:
        """`send`, noting the response's headers and body (a stream's events, assembled)."""

        async def logged(message: Message) -> None:
            self._see(message)
            await send(message)

        return logged

    def _see(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.response_headers = list(message.get("headers", ()))
        elif kind == "http.response.body" and self.bodies:
            body: bytes = message.get("body", b"")
            if self.transcript is None and not message.get("more_body", False):
                self.response_body = body
                return
            if self.transcript is None:
                self.transcript = StreamTranscript(self.api, _keep_chars(self.max_bytes))
            if body:
                self.transcript.feed(body)

    def fields(
        self, redactor: Redactor, client_body: bytes | None, meter: Meter | None = None
    ) -> dict[str, Any]:
        """The access line's fields: headers (when logged) and bodies (when this request's route
        logs them), masked and cut to `max_bytes`. `client_body` stands for the request body
        when nothing was sent upstream (a request refused before that); `meter` (a metered
        request's) gives a stream's usage when the client did not ask for it in the stream."""
        mask = Masker(redactor, client_secrets(self.client_headers))
        out: dict[str, Any] = {}
        if self.headers:
            out["request_headers"] = mask.headers(self.client_headers.items())
            out["upstream_headers"] = (
                mask.headers(self.upstream_headers) if self.upstream_headers is not None else None
            )
            out["response_headers"] = mask.headers(
                (n.decode("latin-1"), v.decode("latin-1")) for n, v in self.response_headers
            )
        if self.bodies:
            sent = self.upstream_body
            if isinstance(sent, dict):
                sent = _encode(sent)
            request = sent if sent is not None else client_body
            out["request_body"] = mask.body(request, self.max_bytes) if request else None
            if self.transcript is not None:
                if self.transcript.usage is None and meter is not None and meter.reported:
                    self.transcript.usage = {
                        "input_tokens": meter.input_tokens,
                        "output_tokens": meter.output_tokens,
                        "cached_tokens": meter.cached_tokens,
                    }
                response: bytes | None = _encode(self.transcript.result())
            else:
                response = self.response_body
            out["response_body"] = mask.body(response, self.max_bytes) if response else None
        return out


def is_credential_header(name: str) -> bool:
    """Whether a header's value is never logged: ``x-goog-api-key`` -> True, ``accept`` -> False."""
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or is_secret_header(lowered)


def client_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The client's credential values (and the token of ``Bearer <token>``), longest first."""
    found: set[str] = set()
    for name, value in headers.items():
        if not value or not is_credential_header(name):
            continue
        found.add(value.strip())
        scheme, _, token = value.strip().partition(" ")
        if token and scheme.lower() in ("bearer", "basic"):
            found.add(token.strip())
    return tuple(sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


class Masker:
    """Masks logged text: the client's credentials first (so that no partial match of a
    generic pattern leaves part of one), then everything the snapshot's redactor knows."""

    __slots__ = ("_redactor", "_secrets")

    def __init__(self, redactor: Redactor, secrets: tuple[str, ...] = ()) -> None:
        self._redactor = redactor
        self._secrets = secrets

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return self._redactor.text(text)

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            shown = MASK if is_credential_header(key) else self.text(value)
            out[key] = f"{out[key]}, {shown}" if key in out else shown
        return out

    def body(self, data: bytes, limit: int) -> str:
        """`data` masked, then cut to `limit` bytes with a note of its full size. PERF: only a
        prefix a little longer than `limit` is masked; the rest would be cut anyway."""
        keep = _keep_chars(limit)
        head = data[:keep].decode("utf-8", "replace")
        masked = self.text(head).encode()
        if len(masked) <= limit and len(data) <= keep:
            return masked.decode()
        return masked[:limit].decode("utf-8", "ignore") + f"…[truncated, {len(data)} bytes]"


def _keep_chars(limit: int) -> int:
    """How much of a body to mask before cutting it to `limit` bytes: enough that a secret
    straddling the cut is masked whole."""
    return 2 * limit + 1024


class StreamTranscript:
    """A stream in the client's protocol, assembled: its text, tool calls, finish reason, usage
    and error. Text and tool arguments stop growing at `keep` characters."""

    __slots__ = ("_chars", "_decoder", "_keep", "api", "error", "finish", "text", "tools", "usage")

    def __init__(self, api: str, keep: int) -> None:
        self.api = api
        self._keep = keep
        self._chars = 0
        self._decoder = SSEDecoder()
        self.text: list[str] = []
        self.tools: dict[int, dict[str, str]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.error: Any = None

    def feed(self, chunk: bytes) -> None:
        for event in self._decoder.feed(chunk):
            if event.data == "[DONE]":
                continue
            try:
                data = _decode(event.data)
            except msgspec.DecodeError:
                continue
            if isinstance(data, dict):
                self.observe(event.event, data)

    def observe(self, name: str | None, data: dict[str, Any]) -> None:
        if name == "error" or data.get("type") == "error" or data.get("error"):
            self.error = data.get("error", data)
        elif self.api == "openai.responses":
            self._responses(data)
        elif self.api.startswith("anthropic."):
            self._anthropic(data)
        else:
            self._chunk(data)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stream": True, "text": "".join(self.text)}
        if self.tools:
            out["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        out["finish"] = self.finish
        out["usage"] = self.usage
        if self.error is not None:
            out["error"] = self.error
        return out

    def _add_text(self, text: Any) -> None:
        if isinstance(text, str) and self._chars < self._keep:
            self.text.append(text)
            self._chars += len(text)

    def _tool(self, index: Any, **fields: Any) -> None:
        if not isinstance(index, int):
            return
        call = self.tools.setdefault(index, {"id": "", "name": "", "arguments": ""})
        for key, value in fields.items():
            if isinstance(value, str) and len(call[key]) < self._keep:
                call[key] = call[key] + value if key == "arguments" else value

    def _chunk(self, data: dict[str, Any]) -> None:
        """OpenAI chat and completions chunks."""
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            self._add_text(choice.get("text"))
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._add_text(delta.get("content"))
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        function = call.get("function")
                        function = function if isinstance(function, dict) else {}
                        self._tool(
                            call.get("index"),
                            id=call.get("id"),
                            name=function.get("name"),
                            arguments=function.get("arguments"),
                        )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]

    def _anthropic(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self.usage = dict(message["usage"])
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self._tool(data.get("index"), id=block.get("id"), name=block.get("name"))
            elif isinstance(block, dict):
                self._add_text(block.get("text"))
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self._add_text(delta.get("text"))
                if "partial_json" in delta:
                    self._tool(data.get("index"), arguments=delta.get("partial_json"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.finish = delta["stop_reason"]
            if isinstance(data.get("usage"), dict):
                self.usage = {**(self.usage or {}), **data["usage"]}

    def _responses(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            self._add_text(data.get("delta"))
        elif kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self._tool(data.get("output_index"), id=item.get("call_id"), name=item.get("name"))
        elif kind == "response.function_call_arguments.delta":
            self._tool(data.get("output_index"), arguments=data.get("delta"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response")
            if isinstance(response, dict):
                self.finish = response.get("status")
                if isinstance(response.get("usage"), dict):
                    self.usage = response["usage"]
