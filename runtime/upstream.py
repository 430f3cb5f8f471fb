"""Calls to upstream servers over HTTP, with per-upstream pools, TLS and timeouts.

`UpstreamPool` owns one aiohttp session per distinct set of connection settings; tables that keep
an upstream's settings across a reload keep its pool (and its warm connections). `send` returns a
`Reply` or raises `UpstreamFailure` carrying a failure class (``connect``, ``timeout``,
``bad_response``, ...)::

    reply = await pool.send(upstream, "/chat/completions", headers, body, stream=False)
    reply.status, reply.body

PERF: proxied requests use aiohttp directly: httpx's request/response models over the same
aiohttp transport cost 316 µs of client CPU per request at c=32 against bare aiohttp's 74
(bench/README.md, "Upstream HTTP client"); httpx remains for what is not per request (OAuth
token fetches, see `oauth_client`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from compiler.table import CompiledUpstream, TlsSettings

DEFAULT_MAX_BODY = 32 * 1024 * 1024


class UpstreamFailure(Exception):
    """An attempt that failed: `failure` is one of `compiler.table.FAILURE_CLASSES`; `timed_out`
    says a clock ran out (a connect timeout is class ``connect`` yet answers 504); `code` is the
    error code the client sees instead of the default for the class."""

    def __init__(
        self,
        failure: str,
        message: str,
        *,
        status: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timed_out: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.status = status
        self.headers = tuple(headers)
        self.body = body
        self.timed_out = timed_out or failure == "timeout"
        self.code = code


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class Reply:
    """An upstream answer: the full `body`, or `chunks` to stream (then await `aclose`)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    aclose: Callable[[], Awaitable[None]] = field(default=_nothing)


def connection_key(upstream: CompiledUpstream) -> tuple[object, ...]:
    """What makes two upstream definitions share a connection pool."""
    return (upstream.base_url, upstream.tls, upstream.pool, upstream.timeouts)


def _ssl_context(tls: TlsSettings) -> ssl.SSLContext | bool:
    if not tls.verify:
        return False
    context = ssl.create_default_context(cafile=tls.ca_bundle)
    if tls.client_cert:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


def make_session(upstream: CompiledUpstream) -> aiohttp.ClientSession:
    """The aiohttp session (connection pool) of one upstream's connection settings.

    Nothing is added to what the pipeline sends: no default ``User-Agent`` (a header policy
    decides it), no decompression (bodies pass through as the upstream sent them).
    """
    timeouts, pool = upstream.timeouts, upstream.pool
    connector = aiohttp.TCPConnector(
        limit=pool.max_connections,
        limit_per_host=0,
        keepalive_timeout=pool.keepalive_expiry_s,
        ssl=_ssl_context(upstream.tls),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        trust_env=False,
        raise_for_status=False,
    )


def make_client(upstream: CompiledUpstream) -> httpx.AsyncClient:
    """An httpx client with the upstream's TLS settings, for requests off the hot path (OAuth).
    It sends no ``User-Agent`` (httpx's own ``python-httpx/...`` would name the library)."""
    timeouts = upstream.timeouts
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=timeouts.connect_s, read=timeouts.read_s, write=None, pool=None
        ),
        verify=_ssl_context(upstream.tls),
        follow_redirects=False,
        trust_env=False,
    )
    client.headers.pop("user-agent", None)
    return client


def classify_failure(exc: BaseException, phase: str, upstream: CompiledUpstream) -> UpstreamFailure:
    """The one classification of a transport failure. ``connect``: nothing reached the upstream
    (safe to retry); ``timeout``: a clock ran out after that; ``bad_response``: the reply was not
    HTTP, was cut off or was malformed. Example: a `BadStatusLine` -> ``bad_response``."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # NOTE: class `connect` (`fallback.on: [connect]`, retried) yet answered 504.
        message = (
            f"cannot connect to upstream: no connection within {upstream.timeouts.connect_s:g} s"
        )
        return UpstreamFailure("connect", message, timed_out=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure("connect", f"cannot connect to upstream: {name}")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"upstream timed out ({phase}): {name}")
    return UpstreamFailure("bad_response", f"upstream {phase} broke: {name}")


# NOTE: everything a broken network or a broken upstream can raise out of aiohttp.
TRANSPORT_ERRORS = (aiohttp.ClientError, HttpProcessingError, OSError, TimeoutError, ValueError)


class UpstreamPool:
    """aiohttp sessions by connection settings, shared across table swaps; sessions no table
    uses any more are closed after their last in-flight request."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._sessions: dict[tuple[object, ...], aiohttp.ClientSession] = {}
        self._clients: dict[tuple[object, ...], httpx.AsyncClient] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        self._in_flight: dict[tuple[object, ...], int] = {}
        self._retired: set[tuple[object, ...]] = set()
        self._wanted: set[tuple[object, ...]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def prepare(self, upstreams: Sequence[CompiledUpstream], max_body: int | None = None) -> None:
        """Keep the sessions these upstreams use (each made on first use, inside the event loop);
        retire those none of them needs."""
        if max_body is not None:
            self.max_body = max_body
        wanted = {connection_key(u): u for u in upstreams if u.kind != "mock"}
        self._wanted = set(wanted)
        self._urls.clear()
        for key in wanted:
            self._retired.discard(key)
        for key in list(self._sessions):
            if key not in wanted:
                self._retired.add(key)
        self._close_idle_retired()

    def session_for(
        self, upstream: CompiledUpstream
    ) -> tuple[tuple[object, ...], aiohttp.ClientSession]:
        key = connection_key(upstream)
        session = self._sessions.get(key)
        if session is None:
            # NOTE: first use; or a request still running on an older table whose session was
            # already closed: give it one, retired at once so it closes after that request.
            session = self._sessions[key] = make_session(upstream)
            if key not in self._wanted:
                self._retired.add(key)
        return key, session

    def oauth_client(self, upstream: CompiledUpstream) -> httpx.AsyncClient:
        """An httpx client with `upstream`'s TLS settings, for token fetches."""
        key = connection_key(upstream)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = make_client(upstream)
        return client

    def _url(self, upstream: CompiledUpstream, path: str) -> URL:
        url = self._urls.get((upstream.base_url, path))
        if url is None:
            url = self._urls[upstream.base_url, path] = URL(upstream.base_url.rstrip("/") + path)
        return url

    async def send(
        self,
        upstream: CompiledUpstream,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        stream: bool,
    ) -> Reply:
        key, session = self.session_for(upstream)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_flight[key] -= 1
                self._close_idle_retired()

        try:
            reply = await self._send(
                session, upstream, self._url(upstream, path), headers, body, stream
            )
        except BaseException:
            release()
            raise
        if reply.chunks is None:
            release()
            return reply
        inner = reply.aclose

        async def aclose() -> None:
            try:
                await inner()
            finally:
                release()

        reply.aclose = aclose
        return reply

    async def _send(
        self,
        session: aiohttp.ClientSession,
        upstream: CompiledUpstream,
        url: URL,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        stream: bool,
    ) -> Reply:
        timeouts = upstream.timeouts
        try:
            async with asyncio.timeout(min(timeouts.first_byte_s, timeouts.total_s)):
                response = await session.post(url, data=body, headers=CIMultiDict(headers))
        except aiohttp.ConnectionTimeoutError as exc:
            raise classify_failure(exc, "request", upstream) from None
        except TimeoutError:
            raise UpstreamFailure(
                "timeout", "upstream did not answer in time (first byte)"
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise classify_failure(exc, "request", upstream) from None
        response_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers
        ]
        if stream and response.status < 300:
            return Reply(
                response.status,
                response_headers,
                chunks=_chunks(response, upstream),
                aclose=_closer(response),
            )
        try:
            data = await _read_bounded(response, self.max_body)
        except UpstreamFailure:
            response.close()
            raise
        except TRANSPORT_ERRORS as exc:
            response.close()
            raise classify_failure(exc, "body", upstream) from None
        response.release()
        return Reply(response.status, response_headers, body=data)

    def _close_idle_retired(self) -> None:
        for key in list(self._retired):
            if self._in_flight.get(key, 0) == 0:
                session = self._sessions.pop(key)
                self._retired.discard(key)
                self._in_flight.pop(key, None)
                client = self._clients.pop(key, None)
                task = asyncio.get_running_loop().create_task(_close(session, client))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        sessions, clients = list(self._sessions.values()), list(self._clients.values())
        self._sessions.clear()
        self._clients.clear()
        self._retired.clear()
        for session in sessions:
            await session.close()
        for client in clients:
            await client.aclose()


async def _close(session: aiohttp.ClientSession, client: httpx.AsyncClient | None) -> None:
    await session.close()
    if client is not None:
        await client.aclose()


def _too_large(limit: int) -> UpstreamFailure:
    return UpstreamFailure(
        "bad_response",
        f"upstream reply is larger than {limit} bytes (server.max_upstream_body_bytes)",
        code="response_too_large",
    )


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or `_too_large` once more than `limit` bytes have come."""
    length = response.content_length
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        return await response.read()
    parts, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _closer(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def aclose() -> None:
        # NOTE: a fully read body returns the connection to the pool; a cut one closes it.
        if response.content.at_eof():
            response.release()
        else:
            response.close()

    return aclose


async def _chunks(
    response: aiohttp.ClientResponse, upstream: CompiledUpstream
) -> AsyncIterator[bytes]:
    """The raw body of a streamed response, chunk by chunk as it arrives; raises
    `UpstreamFailure` when it breaks off, stalls past ``read_s`` or outlives ``total_s`` (the
    session's timeouts, enforced by aiohttp on each read)."""
    content = response.content
    while True:
        try:
            chunk = await content.readany()
        except TRANSPORT_ERRORS as exc:
            raise classify_failure(exc, "stream", upstream) from None
        if not chunk:
            return
        yield chunk
