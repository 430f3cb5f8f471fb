"""One client connection on Hypercorn, with the behaviour the gateway needs below the app.

Hypercorn 0.18's `TCPServer`, `H11Protocol` and `HTTPStream` (and h11's `Connection`) are kept
and changed in seven places, each a small override (read `hypercorn/asyncio/tcp_server.py`,
`hypercorn/protocol/h11.py`, `hypercorn/protocol/http_stream.py` and `h11/_connection.py`
beside this):

- a peer that closes an idle keep-alive connection frees its fd at once (Hypercorn waited for
  its keep-alive timer, leaving the socket in CLOSE_WAIT for `keep_alive_timeout`);
- the keep-alive timeout is read from the live table (`server.keep_alive_timeout_s`);
- once shutdown starts, responses say ``Connection: close`` and a connection accepted before
  the listener closed still gets its first request answered (Hypercorn closed it unread);
- requests rejected by the HTTP parser (bad Content-Length or Host, oversized headers, a
  transfer coding other than chunked) get a JSON body in the OpenAI error shape, with a fixed
  message per kind that never echoes the request;
- a response's headers are stripped and validated once, in one pass and two byte scans over
  all of them (`checked_headers`), not by Hypercorn, then twice per header by h11, then again
  when h11 frames a stream; Hypercorn's ``date`` and ``server`` headers are built once a second;
- a request's headers reach the app as h11 parsed them (Hypercorn decoded and re-lowered each).
- the app learns that a request's stream closed (the client left, or the exchange ended)
  through `CloseHooks` in its scope, without a task of its own waiting on `receive`.

`refuse(reader, writer, limit)` answers a connection over `server.max_connections` with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from itertools import chain
from typing import Any

import h11
from h11._headers import Headers, normalize_and_validate
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Event, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Request, Response, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.typing import ASGISendEvent, ConnectionState
from hypercorn.utils import parse_socket_addr

from runtime.errors import GatewayError, error_body

FIRST_REQUEST_GRACE_S = 1.0  # a connection accepted before the listener closed sends within this
REFUSAL_LINGER_S = 1.0  # how long a refused connection may take to read its 503 and close


class GatewayConnection(TCPServer):
    """`TCPServer` that frees its fd on the peer's FIN and keeps fresh connections at shutdown.
    `keep_alive_s` is read each time a connection goes idle, so a reload applies to it."""

    def __init__(self, *args: Any, keep_alive_s: Callable[[], float]) -> None:
        super().__init__(*args)
        self.keep_alive_s = keep_alive_s
        self.fresh = True  # no request seen yet

    async def run(self) -> None:
        # NOTE: Hypercorn's `TCPServer.run`, with `GatewayProtocols` in place of `ProtocolWrapper`
        socket = self.writer.get_extra_info("socket")
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            ssl = self.writer.get_extra_info("ssl_object") is not None
            async with TaskGroup(self.loop) as task_group:
                self._task_group = task_group
                self.protocol = GatewayProtocols(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                await self.protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and not event.idle:
            self.fresh = False
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        await super()._read_data()
        # NOTE: the peer closed (or the read failed). The keep-alive timer is the only thing
        # left in the connection's task group when it was idle; stopping it ends the group and
        # closes the socket now instead of after `keep_alive_timeout` in CLOSE_WAIT.
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.context.terminated.wait(), self.keep_alive_s())
            if self.fresh:
                # NOTE: accepted before the listener closed, so the client's request is on its
                # way: answer it (with Connection: close) rather than drop it unread
                await asyncio.sleep(FIRST_REQUEST_GRACE_S)
        await asyncio.shield(self._initiate_server_close())


class GatewayProtocols(ProtocolWrapper):
    """`ProtocolWrapper` whose HTTP/1.1 protocol is `GatewayH11`."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if isinstance(self.protocol, H11Protocol):
            self.protocol = GatewayH11(
                self.app,
                self.config,
                self.context,
                self.task_group,
                self.state,
                self.ssl,
                self.client,
                self.server,
                self.send,
            )


class _Connection(h11.Connection):
    """h11's connection, remembering the parse error the protocol answers for, and framing a
    streamed response to an HTTP/1.1 keep-alive peer without validating its headers again."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.last_error = error
            raise

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        # PERF: h11 rebuilds a body of unknown length's headers twice (drop Content-Length, set
        # Transfer-Encoding), validating every header each time: ~1 µs a header. The common
        # case (no framing header, HTTP/1.1 peer, keep-alive, a body) only appends the one.
        headers = response.headers
        if (
            isinstance(headers, Headers)
            and self.their_http_version == b"1.1"
            and self._request_method in (b"GET", b"POST")
            and self._cstate.keep_alive
            and response.status_code not in (204, 304)
            and _FRAMING.isdisjoint([lower for _, lower, _ in headers._full_items])
        ):
            chunked = Headers([*headers._full_items, (b"Transfer-Encoding", *_CHUNKED)])
            return h11.Response(headers=chunked, status_code=response.status_code, _parsed=True)
        return super()._clean_up_response_headers_for_sending(response)


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_CHUNKED = (b"transfer-encoding", b"chunked")
_TOKEN_BYTES = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FORBIDDEN_BYTES = b"\x00\n\r\x0b\x0c"


_SERVER_HEADERS: list[Any] = [None, -1, []]  # config, the second, its headers


def _server_headers(config: Any) -> list[tuple[bytes, bytes]]:
    """Hypercorn's own response headers (``date``, ``server``), built once a second. PERF:
    building them formats the date (wsgiref's `format_date_time`): ~18,000 instructions."""
    second = int(time.time())
    cached = _SERVER_HEADERS
    if cached[0] is not config or cached[1] != second:
        cached[:] = [config, second, config.response_headers("h11")]
    headers: list[tuple[bytes, bytes]] = cached[2]
    return headers


def checked_headers(headers: list[tuple[bytes, bytes]]) -> Headers:
    """h11's `Headers` for a response (the app's headers as sent, plus Hypercorn's own), made
    and validated as Hypercorn and h11 would: names and values stripped of surrounding
    whitespace, then checked in two passes over all names and all values instead of several per
    header (PERF: ~3 µs a header, and the gateway sends a dozen). Anything the fast check is
    unsure of (a framing header other than one plain Content-Length, a pseudo-header, a byte h11
    refuses) goes through h11's own `normalize_and_validate`, which raises as it always did."""
    headers = [(name.strip(), value.strip()) for name, value in headers]  # NOTE: as Hypercorn
    full = []
    seen_length = False
    for name, value in headers:
        lower = name.lower()
        if lower in _FRAMING or not name:  # NOTE: joined below, an empty name would vanish
            if not name or lower == b"transfer-encoding" or seen_length or not value.isdigit():
                return normalize_and_validate(headers)
            seen_length = True
        full.append((name, lower, value))
    # PERF: bytes.translate deletes the allowed bytes in one C pass (a regex: ~50 per byte)
    names = b"".join([name for name, _ in headers])
    values = b"".join([value for _, value in headers])
    clean = len(values.translate(None, _FORBIDDEN_BYTES)) == len(values)
    if names.translate(None, _TOKEN_BYTES) or not clean:
        return normalize_and_validate(headers)
    return Headers(full)


class GatewayH11(H11Protocol):
    """`H11Protocol` with shaped parse errors and ``Connection: close`` while shutting down."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connection = _Connection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )

    async def stream_send(self, event: StreamEvent) -> None:
        if not isinstance(event, Response) or event.status_code < 200:
            await super().stream_send(event)
            return
        # NOTE: Hypercorn's own Response branch, with the headers checked once (`checked_headers`)
        headers = [*event.headers, *_server_headers(self.config)]
        if (
            self.keep_alive_requests >= self.config.keep_alive_max_requests
            or self.context.terminated.is_set()  # tells a keep-alive client to go elsewhere
        ):
            headers.append((b"connection", b"close"))
        response = h11.Response(headers=checked_headers(headers), status_code=event.status_code)
        await self._send_h11_event(response)

    async def _create_stream(self, request: h11.Request) -> None:
        # NOTE: Hypercorn's, with `_Stream` for HTTP and h11's own lowercased names read as they
        # are (PERF: it decoded, stripped and lowered every request header, then listed them
        # through Sequence.__iter__: ~3,000 instructions a header). A WebSocket upgrade takes
        # Hypercorn's own path.
        items = request.headers._full_items
        upgrade = connection = b""
        for _, name, value in items:
            if name == b"upgrade":
                upgrade = value
            elif name == b"connection":
                connection = value
        if upgrade and connection:
            tokens = [token.strip() for token in connection.lower().split(b",")]
            if b"upgrade" in tokens and upgrade.lower() == b"websocket":
                await super()._create_stream(request)
                return
        self.stream = _Stream(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        if self.config.h11_pass_raw_headers:
            headers = [(raw, value) for raw, _, value in items]
        else:
            headers = [(name, value) for _, name, value in items]
        await self.stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1

    async def _send_error_response(self, status_code: int) -> None:
        connection = self.connection
        error = connection.last_error if isinstance(connection, _Connection) else None
        status, message, code = parse_rejection(status_code, error, self.config)
        body = error_body("openai.chat", GatewayError(status, message, code=code))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await self._send_h11_event(
            h11.Response(
                status_code=status,
                headers=list(chain(headers, self.config.response_headers("h11"))),
            )
        )
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


DISCONNECT = "interlock.disconnect"  # the scope extension holding a request's `CloseHooks`


class CloseHooks:
    """Callbacks run once the client's side of a request's stream closes: the client left, or
    the exchange ended. They run on the loop soon after (`call_soon`), never inside the `send`
    that ended the exchange, as a task reading ``http.disconnect`` from `receive` would.
    PERF: the app learns of a disconnect without a watcher task per request, whose creation and
    cancellation cost ~58k instructions a request at 32 at a time (3 %; the cancelled task's
    traceback also left a reference cycle for the GC)."""

    __slots__ = ("callbacks", "closed")

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.closed = False

    def add(self, callback: Callable[[], None]) -> None:
        if self.closed:  # NOTE: the client left before the app asked
            asyncio.get_running_loop().call_soon(callback)
        else:
            self.callbacks.append(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self.callbacks.remove(callback)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            loop = asyncio.get_running_loop()
            for callback in self.callbacks:
                loop.call_soon(callback)


class _Stream(HTTPStream):
    """Hypercorn's `HTTPStream` without its pass over the response headers (a strip of each and
    a pseudo-header check): `GatewayH11.stream_send` checks them once, in `checked_headers`.
    Its requests carry `CloseHooks` in ``scope["extensions"]`` under `DISCONNECT`."""

    hooks: CloseHooks | None = None

    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, StreamClosed) and self.hooks is not None:
            self.hooks.close()
        await super().handle(event)
        if isinstance(event, Request) and not self.closed:
            # NOTE: the app's task was created just now and has not run (nothing awaited since)
            self.hooks = CloseHooks()
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[DISCONNECT] = self.hooks

    async def app_send(self, message: ASGISendEvent | None) -> None:
        if (
            message is None
            or message["type"] != "http.response.start"
            or self.state != ASGIHTTPState.REQUEST
        ):
            await super().app_send(message)
            return
        self.response = message
        await self.send(
            Response(
                stream_id=self.stream_id,
                headers=list(message.get("headers", [])),
                status_code=int(message["status"]),
            )
        )
        self.state = ASGIHTTPState.RESPONSE


def parse_rejection(
    status: int, error: h11.RemoteProtocolError | None, config: Any
) -> tuple[int, str, str]:
    """(status, message, code) for a request the HTTP parser refused. SECURITY: the message is
    fixed per kind; h11's own text can quote the offending header line, values included.
    For example h11's 501 for ``Transfer-Encoding: gzip`` becomes ``(400, "unsupported
    Transfer-Encoding: only chunked is accepted", "unsupported_transfer_encoding")``.
    """
    text = str(error or "")
    if status == 431:
        limit = config.h11_max_incomplete_size
        return 431, f"request headers are larger than {limit} bytes", "headers_too_large"
    if "Transfer-Encoding" in text or status == 501:
        # NOTE: RFC 9112 suggests 501 for an unknown transfer coding; it is the client's
        # request that cannot be served, so it is a 4xx here like every other bad input
        message = "unsupported Transfer-Encoding: only chunked is accepted"
        return 400, message, "unsupported_transfer_encoding"
    if "Content-Length" in text:
        return 400, "invalid Content-Length header", "invalid_content_length"
    if "Host" in text:
        return 400, "missing or repeated Host header", "invalid_host"
    return 400, "malformed HTTP request", "bad_http_request"


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
    """Answer a connection over the cap with a 503 and close it. The request is not read first;
    reading until the client closes (bounded) keeps its unread bytes from turning our close into
    a reset that could reach the client before the answer."""
    message = f"the server is at its connection limit ({limit}); retry shortly"
    body = error_body("openai.chat", GatewayError(503, message, code="too_many_connections"))
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    try:
        writer.write(head + body)
        writer.write_eof()
        async with asyncio.timeout(REFUSAL_LINGER_S):
            while await reader.read(65536):
                pass
    except (OSError, TimeoutError):
        writer.transport.abort()
    else:
        writer.close()
