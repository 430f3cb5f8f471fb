"""The ASGI application: OpenAI and Anthropic endpoints on one root, health, models, admin.

`Gateway` holds the live `Snapshot` in one attribute; every request reads it once and finishes
on it, and `swap` publishes a new one with a single assignment::

    gateway = Gateway(prepare_snapshot(table))
    app = create_app(gateway)          # serve with Hypercorn
    gateway.swap(prepare_snapshot(new_table))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from runtime.accesslog import AccessLog
from runtime.caching import fill_cache
from runtime.connections import DISCONNECT, CloseHooks
from runtime.errors import GatewayError, error_body, is_anthropic, stream_error_event
from runtime.exchange import Exchange
from runtime.health import HealthChecker, upstream_health
from runtime.ids import unique_suffix
from runtime.keys import ManagedKeys
from runtime.metering import Meter, Trace, build_record, measure_spend
from runtime.metrics import Metrics
from runtime.models_api import retrieve_model_endpoint
from runtime.pipeline import GatewayState, Outcome, run_pipeline
from runtime.request import RequestContext
from runtime.snapshot import Snapshot
from runtime.state.cache import open_cache
from runtime.state.ledger import Ledger
from runtime.state.limits import MemoryLimiter

_LOG = logging.getLogger("interlock")
_MAX_HEADER_BYTES = 64 * 1024
_DRAIN_BYTES = 1024 * 1024
_DRAIN_S = 1.0
API_PATHS = {
    "/v1/chat/completions": "openai.chat",
    "/v1/completions": "openai.completions",
    "/v1/embeddings": "openai.embeddings",
    "/v1/responses": "openai.responses",
    "/v1/messages": "anthropic.messages",
    "/v1/messages/count_tokens": "anthropic.count_tokens",
}


class ClientGone(Exception):
    """The client disconnected before the response was complete."""


class Gateway:
    """The live snapshot plus everything that outlives a swap."""

    def __init__(self, snapshot: Snapshot, state: GatewayState | None = None) -> None:
        self.state = state or GatewayState()
        self.state.pool.prepare(
            list(snapshot.table.upstreams.values()), snapshot.table.server.max_upstream_body_bytes
        )
        self.snapshot = snapshot
        self.access_log = AccessLog()
        self.metrics = Metrics()
        self.metrics.set_version(snapshot.table.version)
        self.started = time.time()
        self.in_flight = 0
        self.requests: set[asyncio.Task[Any]] = set()  # API requests running, for end_requests
        self.ending = False
        self.ledger: Ledger | None = None
        self._ledger_target: tuple[str, str] | None = None
        self._running = False
        self._closing: set[asyncio.Task[None]] = set()
        self._limits_target: tuple[str, str] | None = None
        self._cache_target: tuple[str, str] | None = None
        self.keys = ManagedKeys()  # the managed keys of auth.store, kept across swaps
        self.metrics.limit_counts = lambda: (
            self.state.limit_refusals,
            self.state.limit_backend_errors,
        )
        self.metrics.cache_stats = lambda: (
            self.state.cache_stats if self.state.cache is not None else None
        )
        self.metrics.refusals_by_policy = lambda: self.state.limit_refusals_by_policy
        self.metrics.in_flight_count = lambda: self.in_flight
        self.metrics.upstreams = lambda: upstream_health(self, self.snapshot)
        self.health = HealthChecker(self)
        self._sync_ledger(snapshot)
        self._sync_limiter(snapshot)
        self._sync_cache(snapshot)

    async def start(self) -> None:
        """Start the background work (the ledger writer); at ASGI lifespan startup."""
        self._running = True
        await self.keys.start(self.snapshot)
        if self.ledger is not None:
            self.ledger.start()

    async def close(self) -> None:
        """Flush the ledger; at lifespan shutdown, after in-flight requests have finished."""
        self._running = False
        await self.health.close()
        await self.keys.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self.state.limiter is not None:
            self._background(self.state.limiter.close())
        if self.state.cache is not None:
            self._background(self.state.cache.close())
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _sync_ledger(self, snapshot: Snapshot) -> None:
        """Keep the ledger while its store is unchanged; otherwise open the new one and let the
        old one drain in the background."""
        usage = snapshot.table.usage
        if snapshot.ledger_target == self._ledger_target:
            if self.ledger is not None and usage is not None:
                self.ledger.retention_days = usage.retention_days
                self.ledger.flush_s = usage.flush_interval_s
            return
        old = self.ledger
        self._ledger_target = snapshot.ledger_target
        self.ledger = None
        if snapshot.ledger_target is not None and usage is not None:
            from runtime.state.ledger_stores import open_ledger_store  # NOTE: drivers on demand

            kind, where = snapshot.ledger_target
            store = open_ledger_store(
                kind,
                path=where if kind == "sqlite" else None,
                url=where if kind != "sqlite" else None,
            )
            self.ledger = Ledger(
                store,
                retention_days=usage.retention_days,
                flush_s=usage.flush_interval_s,
                on_write=self.metrics.observe_ledger_write,
            )
            if self._running:
                self.ledger.start()
        self.metrics.ledger = self.ledger
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def settle(
        self,
        snap: Snapshot,
        ctx: RequestContext,
        status: int,
        error: str | None,
        outcome: Outcome | None,
        started: float,
    ) -> None:
        """Record a finished request in the ledger and the usage metrics (never raises)."""
        trace, usage = ctx.trace, snap.table.usage
        if trace is None:
            return
        fill, cache, ledger = trace.cache_fill, self.state.cache, self.ledger
        answered = outcome is not None and outcome.status < 300
        try:
            spend = measure_spend(ctx, trace, answered=answered)
            record = None
            if ledger is not None or fill is not None:  # PERF: limits need only the spend
                record = build_record(
                    ctx,
                    trace,
                    spend,
                    status=status,
                    error=error,
                    started=started,
                    version=snap.version,
                    log_prompts=usage is not None and usage.log_prompts,
                )
        except Exception:  # NOTE: accounting must never fail a request
            _LOG.exception("usage record for request %s failed", ctx.request_id)
            return
        if ledger is not None and record is not None:
            ledger.record(record)
        model, key = trace.model, ctx.api_key
        self.metrics.observe_usage(
            model.name if model is not None else None,
            ctx.upstream,
            key.id if key is not None else None,
            spend,
        )
        if trace.admission is not None and self.state.limiter is not None:
            # NOTE: a cache hit counts as a request, not as tokens (its cost is 0 already)
            tokens = 0 if trace.cache_hit else spend.input_tokens + spend.output_tokens
            settlements = trace.admission.plan.settlements(tokens=tokens, cost=spend.cost)
            limiter, hold, now = self.state.limiter, trace.admission.hold, self.state.clock()
            # PERF: memory settles in place and Redis queues it (`settle_now`): no task
            settle_now = getattr(limiter, "settle_now", None)
            if settle_now is not None:
                settle_now(hold, settlements, now)
            else:
                self._background(limiter.settle(hold, settlements, now))
        if fill is None or cache is None or record is None:
            return
        if status < 300 and record.error is None:
            self._background(fill_cache(cache, fill, record, self.state.cache_stats))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the response (limit settlements); failures are logged."""
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _sync_limiter(self, snapshot: Snapshot) -> None:
        """One limiter per backend; counters live as long as their policies' state ids."""
        target = snapshot.limits_target
        if target == self._limits_target:
            return
        old = self.state.limiter
        self._limits_target = target
        self.state.limiter = None
        if target == ("memory", ""):
            self.state.limiter = MemoryLimiter()
        elif target is not None:
            from runtime.state.limits_backends import open_limiter  # NOTE: drivers on demand

            kind, where = target
            self.state.limiter = open_limiter(
                kind,
                path=where if kind == "sqlite" else None,
                url=where if kind == "redis" else None,
            )
        if old is not None:
            self._background(old.close())

    def _sync_cache(self, snapshot: Snapshot) -> None:
        """One response cache per backend; entries live as long as their policies' state ids."""
        target = snapshot.cache_target
        if target != self._cache_target:
            old = self.state.cache
            self._cache_target = target
            self.state.cache = None
            if target is not None:
                kind, where = target
                self.state.cache = open_cache(
                    kind, url=where or None, clock=lambda: self.state.clock()
                )
            if old is not None:
                self._background(old.close())
        if self.state.cache is not None:
            self.state.cache.retain([p.state_id for p in snapshot.table.cache.policies.values()])

    def needs_trace(self, snap: Snapshot) -> bool:
        """Whether requests are metered: a ledger keeps them, limits settle on their usage, or
        the response cache keeps answers with their usage."""
        return (
            self.ledger is not None
            or (self.state.limiter is not None and snap.limits_target is not None)
            or (self.state.cache is not None and snap.cache_target is not None)
        )

    def end_requests(self) -> None:
        """At the drain deadline: end every API request still running with a 503 "server
        shutting down" in its API's shape (an error event, when its stream has started)."""
        self.ending = True
        for task in list(self.requests):
            task.cancel()

    def swap(self, snapshot: Snapshot) -> None:
        """Publish `snapshot`: prepare pools first, then one reference assignment."""
        self.state.pool.prepare(
            list(snapshot.table.upstreams.values()), snapshot.table.server.max_upstream_body_bytes
        )
        self.keys.swap(snapshot)
        self.snapshot = snapshot
        self.metrics.set_version(snapshot.table.version)
        self._sync_ledger(snapshot)
        self._sync_limiter(snapshot)
        self._sync_cache(snapshot)
        live_targets = {t.state_id for m in snapshot.table.models.values() for t in m.targets}
        self.state.breakers.prune(live_targets)
        self.state.latency.prune(live_targets)
        live_upstreams = {u.state_id for u in snapshot.table.upstreams.values()}
        self.state.upstream_stats.prune(live_upstreams)
        for stale in set(self.state.tokens) - live_upstreams:
            del self.state.tokens[stale]


class ApiEndpoint:
    """One client API (``openai.chat``, ...) as a raw ASGI app, for control over streaming and
    client disconnects."""

    def __init__(self, gateway: Gateway, api: str) -> None:
        self.gateway = gateway
        self.api = api

    async def __call__(self, scope: Scope, asgi_receive: Receive, send: Send) -> None:
        receive = _Receiver(asgi_receive)
        gateway = self.gateway
        snap = gateway.snapshot  # NOTE: read once; this request finishes on this table
        started = time.perf_counter()
        request_id = ""
        gateway.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            gateway.requests.add(task)
        sent = _Sent()
        outcome: Outcome | None = None
        status = 500
        error: str | None = None
        cors: list[tuple[str, str]] = []
        guard: _DisconnectGuard | None = None
        ctx: RequestContext | None = None
        exchange: Exchange | None = None
        try:
            try:
                headers = _headers(scope)
                request_id = _request_id(headers, snap)
                cors = _cors_headers(snap, headers)
                exchange = gateway.access_log.open_exchange(snap, self.api, headers)
                if exchange is not None:  # NOTE: headers or bodies are logged: see what is sent
                    send = exchange.wrap(send)
                if scope["method"] != "POST":
                    raise GatewayError(
                        405,
                        f"{scope['method']} is not allowed here; use POST",
                        headers=(("allow", "POST, OPTIONS"),),
                    )
                # SECURITY: authenticate before reading (and answering about) the body
                api_key = snap.keyring.authenticate(headers) if snap.keyring is not None else None
                raw = await _read_body(receive, headers, snap.table.server.max_body_bytes)
                ctx = RequestContext.parse(self.api, raw, headers, request_id)
                ctx.api_key = api_key
                ctx.client_ip = _client_ip(scope)
                ctx.query = scope.get("query_string", b"")
                ctx.exchange = exchange
                if gateway.needs_trace(snap):
                    usage = snap.table.usage
                    keep_text = usage is not None and usage.log_prompts
                    ctx.trace = Trace(Meter(text=[]) if keep_text else Meter())
                guard = _DisconnectGuard(receive, scope.get("extensions"))
                outcome = await run_pipeline(gateway.state, snap, ctx)
            except GatewayError as exc:
                status = exc.status
                error = exc.failure or exc.code or _error_class(exc.status)
                await _drain_body(receive)
                await _send_error(send, self.api, exc, snap, request_id, cors)
                return
            except (ClientGone, asyncio.CancelledError):
                raise
            except Exception:  # NOTE: a bug of ours still answers in the caller's API shape
                _LOG.exception("request %s failed", request_id)
                status = 500
                error = "internal_error"
                internal = GatewayError(500, "internal error in Interlock", code="internal_error")
                await _drain_body(receive)
                await _send_error(send, self.api, internal, snap, request_id, cors)
                return
            status = outcome.status
            if status >= 400:
                error = _error_class(status)
            response_headers = outcome.headers + _identity(snap, outcome, request_id, self.api)
            if outcome.stream is None:
                if ctx.trace is not None:
                    ctx.trace.first_byte = time.perf_counter()
                response_headers.append(("content-length", str(len(outcome.body))))
                await _start(send, status, response_headers + cors)
                sent.started = True
                await send({"type": "http.response.body", "body": outcome.body})
            else:
                await _start(send, status, response_headers + cors)
                sent.started = sent.stream = True
                await _pump(send, outcome, ctx.trace if ctx is not None else None, sent)
        except ClientGone:
            status, error = 499, "client_gone"
        except asyncio.CancelledError:
            if guard is not None and guard.gone:
                status, error = 499, "client_gone"  # NOTE: our guard cancelled: the client left
            elif gateway.ending and task is not None and task.uncancel() == 0:
                status, error = 503, "shutting_down"  # NOTE: end_requests cancelled us
                await _end_for_shutdown(send, self.api, snap, request_id, cors, sent)
            else:
                raise
        finally:
            if guard is not None:
                guard.finish()
            gateway.in_flight -= 1
            gateway.requests.discard(task)
            gateway.access_log.record(
                snap,
                self.api,
                request_id,
                status,
                started,
                ctx=ctx,
                outcome=outcome,
                error=error,
                exchange=exchange,
            )
            if ctx is not None and ctx.trace is not None:
                gateway.settle(snap, ctx, status, error, outcome, started)
            gateway.metrics.observe(self.api, status, time.perf_counter() - started)


class _DisconnectGuard:
    """Cancels the request's own task when the client disconnects, so the pipeline, its upstream
    request and any stream stop at once. On Interlock's own connections it hangs on the
    stream's `CloseHooks`; on another ASGI server it runs one watcher task that waits for
    ``http.disconnect``. The pipeline and the stream pump run in the request's task.

    `finish()` runs right after the last `send` (no await in between), which closes the race
    with a disconnect that arrives once the response is complete: a finished guard never
    cancels (the hooks run on the loop after that `send`, as the watcher would).
    """

    __slots__ = ("_done", "_hooks", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive, extensions: dict[str, Any] | None) -> None:
        self.gone = False
        self._done = False
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self._hooks: CloseHooks | None = extensions.get(DISCONNECT) if extensions else None
        if self._hooks is not None:
            self._hooks.add(self._gone)
        else:
            self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        await _wait_disconnect(receive)
        self._gone()

    def _gone(self) -> None:
        if not self._done and self._task is not None:
            self.gone = True
            self._task.cancel()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            if self._hooks is not None:
                self._hooks.remove(self._gone)
            if self._watcher is not None:
                self._watcher.cancel()


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except Exception as exc:
        _LOG.warning("background work failed: %s: %s", type(exc).__name__, exc)


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _error_class(status: int) -> str:
    return "client_error" if status < 500 else "server_error"


def _request_id(headers: dict[str, str], snap: Snapshot) -> str:
    """The caller's request id when it is a sane token, else a fresh one."""
    given = headers.get(snap.table.observability.request_id_header)
    if given and len(given) <= 128 and given.isprintable():
        return given
    return f"{time.time_ns() >> 20 & 0xFFFFFF:06x}{unique_suffix()}"  # PERF: no syscall


async def _send_error(
    send: Send,
    api: str,
    error: GatewayError,
    snap: Snapshot,
    request_id: str,
    cors: list[tuple[str, str]],
) -> None:
    body = error_body(api, error)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers += [*error.headers, *cors]
    headers += _request_id_headers(snap, request_id, api)
    if snap.table.server.response_headers.version:
        headers.append((snap.table.server.response_headers.version, snap.version))
    await _start(send, error.status, headers)
    await send({"type": "http.response.body", "body": body})


def _request_id_headers(snap: Snapshot, request_id: str, api: str) -> list[tuple[str, str]]:
    out = [(snap.table.observability.request_id_header, request_id)]
    if is_anthropic(api):
        out.append(("request-id", request_id))
    return out


def _identity(snap: Snapshot, outcome: Outcome, request_id: str, api: str) -> list[tuple[str, str]]:
    names = snap.table.server.response_headers
    out = _request_id_headers(snap, request_id, api)
    for name, value in (
        (names.route, outcome.route),
        (names.upstream, outcome.upstream),
        (names.model, outcome.model),
        (names.version, snap.version),
        (names.cache, outcome.cache),
    ):
        if name and value:
            out.append((name, value))
    return out


async def _start(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in headers],
        }
    )


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    size = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    if size > _MAX_HEADER_BYTES:
        raise GatewayError(431, "request headers are too large")
    return out


class _Receiver:
    """`receive` that remembers whether the request body has been read to its end."""

    __slots__ = ("_receive", "body_done")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.body_done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message


async def _drain_body(receive: _Receiver) -> None:
    """Read and drop what is left of a body we answer without (up to `_DRAIN_BYTES`, for up to
    `_DRAIN_S`). NOTE: closing a socket with unread data in it makes the kernel send a reset,
    which discards our error response on its way to the client."""
    left = _DRAIN_BYTES
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN_S):
            while not receive.body_done and left > 0:
                left -= len((await receive()).get("body", b""))


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    content_type = headers.get("content-type")
    if content_type is not None and "json" not in content_type.lower():
        raise GatewayError(415, f"content-type must be application/json, not {content_type!r}")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Sent:
    """How far a response got, for ending it at the drain deadline."""

    __slots__ = ("last", "started", "stream")

    def __init__(self) -> None:
        self.started = False
        self.stream = False
        self.last = b""  # the last stream chunk sent


_SHUTTING_DOWN = GatewayError(
    503, "server shutting down", code="shutting_down", headers=(("retry-after", "1"),)
)
_SEQUENCE = re.compile(rb'"sequence_number": ?(\d+)')


async def _end_for_shutdown(
    send: Send,
    api: str,
    snap: Snapshot,
    request_id: str,
    cors: list[tuple[str, str]],
    sent: _Sent,
) -> None:
    """A 503 when nothing was sent yet; else the stream's error event and its end."""
    try:
        if not sent.started:
            await _send_error(send, api, _SHUTTING_DOWN, snap, request_id, cors)
            return
        if sent.stream:
            numbers = _SEQUENCE.findall(sent.last) if api == "openai.responses" else []
            sequence = int(numbers[-1]) + 1 if numbers else 0
            event = stream_error_event(api, _SHUTTING_DOWN, sequence)
            prefix = b"" if not sent.last or sent.last.endswith(b"\n\n") else b"\n\n"
            await send({"type": "http.response.body", "body": prefix + event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except Exception as exc:  # NOTE: an error answer was already under way; the server says so
        _LOG.warning("request %s not ended cleanly at shutdown: %r", request_id, exc)


async def _pump(send: Send, outcome: Outcome, trace: Trace | None, sent: _Sent) -> None:
    """Stream the body; the upstream stream is closed however this ends."""
    stream = outcome.stream
    assert stream is not None
    try:
        async for chunk in stream:
            if trace is not None and trace.first_byte is None:
                trace.first_byte = time.perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.last = chunk
        await send({"type": "http.response.body", "body": b""})
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _cors_headers(snap: Snapshot, headers: dict[str, str]) -> list[tuple[str, str]]:
    cors = snap.table.server.cors
    origin = headers.get("origin")
    if cors is None or origin is None:
        return []
    if "*" not in cors.allow_origins and origin not in cors.allow_origins:
        return []
    out = [
        (
            "access-control-allow-origin",
            origin if cors.allow_credentials else ("*" if "*" in cors.allow_origins else origin),
        ),
        ("vary", "origin"),
    ]
    if cors.allow_credentials:
        out.append(("access-control-allow-credentials", "true"))
    return out


def _models_endpoint(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    async def models(request: Request) -> Response:
        snap = gateway.snapshot
        api = "anthropic.messages" if "anthropic-version" in request.headers else "openai.chat"
        try:
            key = (
                snap.keyring.authenticate({k.lower(): v for k, v in request.headers.items()})
                if snap.keyring is not None
                else None
            )
        except GatewayError as exc:
            return Response(error_body(api, exc), exc.status, media_type="application/json")
        names = [
            name
            for name in sorted({*snap.table.models, *snap.table.model_names})
            if key is None
            or key.models_pattern is None
            or key.models_pattern.fullmatch(snap.table.model_names.get(name, name))
        ]
        if is_anthropic(api):
            data: list[dict[str, Any]] = [
                {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
                for n in names
            ]
            return JSONResponse(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": names[0] if names else None,
                    "last_id": names[-1] if names else None,
                }
            )
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "interlock"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    return models


def _preflight(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    async def options(request: Request) -> Response:
        snap = gateway.snapshot
        cors = snap.table.server.cors
        headers = dict(_cors_headers(snap, {k.lower(): v for k, v in request.headers.items()}))
        if cors is None or not headers:
            return Response(status_code=204)
        headers["access-control-allow-methods"] = ", ".join(cors.allow_methods)
        headers["access-control-allow-headers"] = ", ".join(cors.allow_headers) or "*"
        headers["access-control-max-age"] = str(cors.max_age_s)
        return Response(status_code=204, headers=headers)

    return options


class GatewayApp:
    """The ASGI app: POSTs to the API paths go straight to their endpoint; everything else
    (health, models, admin, metrics, preflights, lifespan, 404/405) goes through Starlette.
    PERF: skipping Starlette's router and middleware saves ~50 µs per API request."""

    def __init__(self, endpoints: dict[str, ApiEndpoint], fallback: Starlette) -> None:
        self.endpoints = endpoints
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


def create_app(gateway: Gateway, extra_routes: list[Route] | None = None) -> GatewayApp:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, body = await gateway.health.ready()
        return JSONResponse(body, status)

    async def health(request: Request) -> Response:
        status, body = await gateway.health.report()
        return JSONResponse(body, status)

    # NOTE: preflights first; every other method reaches the endpoint, which answers a shaped 405
    routes = [Route(path, _preflight(gateway), methods=["OPTIONS"]) for path in API_PATHS]
    endpoints = {path: ApiEndpoint(gateway, api) for path, api in API_PATHS.items()}
    routes += [Route(path, endpoint) for path, endpoint in endpoints.items()]
    routes += [
        Route("/v1/models", _models_endpoint(gateway), methods=["GET"]),
        Route("/v1/models/{model_id:path}", retrieve_model_endpoint(gateway), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *(extra_routes or []),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    starlette = Starlette(routes=routes, exception_handlers={404: _not_found}, lifespan=lifespan)
    return GatewayApp(endpoints, starlette)


async def _not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths answer in the API shape the caller seems to speak."""
    api = "anthropic.messages" if "anthropic-version" in request.headers else "openai.chat"
    error = GatewayError(
        404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"
    )
    return Response(error_body(api, error), 404, media_type="application/json")
