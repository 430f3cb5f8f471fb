"""The request pipeline: one client request through the route table to an `Outcome`.

    auth -> route match -> action (reject, model, params) -> request transforms
         -> for each model of the fallback chain, each target in strategy order:
              breaker -> headers -> translate -> upstream call (retries with backoff)
         -> response transforms / stream relay -> response headers

Every step reads the `Snapshot` the request started with; state that outlives reloads (breakers,
latencies, round-robin counters, OAuth tokens, connection pools) lives in `GatewayState`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from compiler.headers import apply_header_policies, apply_header_rules, protect_client_headers
from compiler.matcher import match_route
from compiler.table import (
    CompiledAction,
    CompiledModel,
    CompiledRoute,
    CompiledTarget,
    ParamPlan,
    RouteTable,
)
from compiler.transforms import apply_request_steps, apply_response_steps
from runtime.auth import check_model_allowed
from runtime.balance import LatencyBook, RoundRobinBook, order_targets
from runtime.bridge import Bridge, EventRelay, Relay, bridge_for
from runtime.caching import CacheStats, plan_cache, prepare_fill, serve_hit
from runtime.errors import GatewayError, is_anthropic, stream_error_event
from runtime.limiting import Admission, LimitRefusal, admit, admit_now, plan_limits
from runtime.oauth import OAuthError, TokenSource
from runtime.redaction import Redactor
from runtime.request import RequestContext
from runtime.resilience import (
    BREAKER_FAILURES,
    BreakerBook,
    UpstreamStatsBook,
    classify_status,
    next_delay,
    should_retry,
)
from runtime.snapshot import ANTHROPIC_VERSION, PreparedUpstream, Snapshot
from runtime.state.cache import ResponseCache
from runtime.state.limits import Limiter, MemoryLimiter
from runtime.translate import TranslationError
from runtime.translate.anthropic import estimate_input_tokens
from runtime.translate.common import embeddings_as_base64
from runtime.translate.responses import hosted_tools
from runtime.translate.unsupported import translate_dropping
from runtime.upstream import Reply, UpstreamFailure, UpstreamPool

_LOG = logging.getLogger("interlock")
_encode = msgspec.json.Encoder().encode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode  # a reply that is no object: malformed
NO_ACTION = CompiledAction()
_RESPONSE_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "set-cookie",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
    }
)
_DEFAULT_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
DROPPED_PARAMS_HEADER = "x-interlock-dropped-params"
_BREAKER_NEUTRAL = frozenset({"client_error"})


class _Valid(msgspec.Struct):
    """Decoding into this validates JSON without building objects."""


_validate_json = msgspec.json.Decoder(_Valid).decode


@dataclass
class GatewayState:
    """What outlives a table swap, keyed by stable ids from the table."""

    pool: UpstreamPool = field(default_factory=UpstreamPool)
    breakers: BreakerBook = field(default_factory=BreakerBook)
    upstream_stats: UpstreamStatsBook = field(default_factory=UpstreamStatsBook)  # /health
    latency: LatencyBook = field(default_factory=LatencyBook)
    round_robin: RoundRobinBook = field(default_factory=RoundRobinBook)
    tokens: dict[str, TokenSource] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    limiter: Limiter | None = None  # limit counters (by policy state id), None: no policies
    clock: Callable[[], float] = time.time  # NOTE: wall clock for limit windows; tests inject
    limit_refusals: int = 0
    limit_refusals_by_policy: dict[str, int] = field(default_factory=dict)
    limit_backend_errors: int = 0
    cache: ResponseCache | None = None  # response cache entries (by policy state id)
    cache_stats: CacheStats = field(default_factory=CacheStats)


@dataclass(slots=True)
class Outcome:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    route: str | None = None
    upstream: str | None = None
    model: str | None = None
    cache: str | None = None  # hit | miss | bypass; None: no cache policy applied


@dataclass(slots=True)  # PERF: one per request; a frozen __init__ costs ~6x
class Routed:
    """Where a request goes, decided before limits and upstreams: the route (None when none
    matched), its action, the model name asked for and the model that name resolves to."""

    route: CompiledRoute | None
    action: CompiledAction
    requested: str
    model: CompiledModel


def route_request(snap: Snapshot, ctx: RequestContext) -> Routed:
    """Authenticate (unless the app did), match a route, apply its rejection, resolve the model,
    check the key may use it, then edit the body (params, request transforms); raises the
    `GatewayError` the client gets. `interlock explain` and `interlock test` run this too."""
    table = snap.table
    if snap.keyring is not None and ctx.api_key is None:
        ctx.api_key = snap.keyring.authenticate(ctx.headers)
    route = match_route(table, ctx)
    ctx.route_name = route.name if route is not None else None
    action = route.action if route is not None else NO_ACTION
    if ctx.exchange is not None and action.log_bodies is not None:
        ctx.exchange.bodies = action.log_bodies  # NOTE: the route's override of the default
    if action.reject is not None:
        raise GatewayError(action.reject.status, action.reject.message, code="rejected")
    requested = action.model or ctx.model or action.default_model
    if requested is None:
        raise GatewayError(400, "you must provide a model parameter", param="model")
    ctx.requested = requested
    model = table.resolve_model(requested)
    if model is None:
        raise GatewayError(
            404, f"the model '{requested}' does not exist", code="model_not_found", param="model"
        )
    check_model_allowed(ctx.api_key, model.name)
    if ctx.trace is not None:
        ctx.trace.model = model
    _edit_request(ctx, action)
    return Routed(route, action, requested, model)


async def run_pipeline(state: GatewayState, snap: Snapshot, ctx: RequestContext) -> Outcome:
    routed = route_request(snap, ctx)
    route, model = routed.route, routed.model
    admission = await _admit(state, snap.table, route, ctx, model)
    outcome = await _serve(state, snap, ctx, route, routed.action, routed.requested, model)
    if admission is not None:
        outcome.headers = [
            (n, v) for n, v in outcome.headers if not n.startswith(_DEFAULT_RESPONSE_PREFIXES)
        ]
        outcome.headers += admission.headers(ctx.api)
    return outcome


async def _admit(
    state: GatewayState,
    table: RouteTable,
    route: CompiledRoute | None,
    ctx: RequestContext,
    model: CompiledModel,
) -> Admission | None:
    """Admission against every limit policy that applies (raises the 429); the plan is kept on
    the trace so the request settles its reservations when it ends."""
    limiter = state.limiter
    if limiter is None or ctx.trace is None:
        return None
    now = state.clock()
    plan = plan_limits(table, route, ctx, model, now)
    if plan is None:
        return None
    on_error, style = table.limits.on_backend_error, table.limits.headers
    try:
        if type(limiter) is MemoryLimiter:  # PERF: nothing to wait for, so no coroutine
            admission = admit_now(limiter, plan, ctx, now, on_error, style)
        else:
            admission = await admit(limiter, plan, ctx, now, on_error, style)
    except GatewayError as exc:
        if exc.status == 429:
            state.limit_refusals += 1
            if isinstance(exc, LimitRefusal):
                by_policy = state.limit_refusals_by_policy
                by_policy[exc.policy] = by_policy.get(exc.policy, 0) + 1
        else:
            state.limit_backend_errors += 1
        raise
    if admission.verdict is None:
        state.limit_backend_errors += 1
    else:
        ctx.trace.admission = admission
    return admission


async def _serve(
    state: GatewayState,
    snap: Snapshot,
    ctx: RequestContext,
    route: CompiledRoute | None,
    action: CompiledAction,
    requested: str,
    model: CompiledModel,
) -> Outcome:
    """The response cache's entry when one answers, else the upstream's (kept for the cache)."""
    cache = state.cache
    plan = None
    if cache is not None and ctx.trace is not None:
        plan = plan_cache(snap.table, route, ctx, model, requested)
    if plan is not None and cache is not None and plan.lookup:
        hit = await serve_hit(cache, plan, state.cache_stats, snap, route, ctx)
        if hit is not None:
            return Outcome(
                200,
                hit.headers,
                hit.body,
                stream=hit.stream,
                route=route.name if route is not None else None,
                upstream=hit.upstream,
                model=hit.model,
                cache="hit",
            )
    elif plan is not None:
        state.cache_stats.bypasses += 1
    outcome = await _Call(state, snap, ctx, route, action, requested).run(model)
    if plan is not None:
        outcome.cache = "miss" if plan.lookup else "bypass"
        outcome.stream = prepare_fill(plan, ctx, outcome.status, outcome.body, outcome.stream)
    return outcome


def _edit_request(ctx: RequestContext, action: CompiledAction) -> None:
    if not action.params.empty:
        apply_params(ctx.body(), action.params)
    for pipeline in action.transforms:
        if pipeline.request:
            apply_request_steps(pipeline.request, ctx.body(), ctx.api)


def apply_params(body: dict[str, Any], plan: ParamPlan) -> None:
    """Apply a route's parameter plan in place: drop, default, set, then clamp numbers.

    ``apply_params({"max_tokens": 9000}, ParamPlan(clamp={"max_tokens": (None, 4096)}))``
    leaves ``{"max_tokens": 4096}``.
    """
    for name in plan.drop:
        body.pop(name, None)
    for name, value in plan.default.items():
        body.setdefault(name, value)
    body.update(plan.set)
    for name, (low, high) in plan.clamp.items():
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if low is not None and value < low:
                body[name] = type(value)(low) if isinstance(value, int) else low
            if high is not None and value > high:
                body[name] = type(value)(high) if isinstance(value, int) else high


class _Call:
    """The upstream half of one request: targets, retries, fallback."""

    def __init__(
        self,
        state: GatewayState,
        snap: Snapshot,
        ctx: RequestContext,
        route: CompiledRoute | None,
        action: CompiledAction,
        requested: str,
    ) -> None:
        self.state = state
        self.snap = snap
        self.ctx = ctx
        self.route = route
        self.action = action
        self.requested = requested
        self.response_steps = tuple(s for t in action.transforms for s in t.response)
        self.dropped: tuple[str, ...] = ()  # what drop_unsupported removed for the current target
        self.base64_embeddings = False  # a translated embeddings answer is owed base64 vectors

    async def run(self, model: CompiledModel) -> Outcome:
        failure: UpstreamFailure | None = None
        seen: set[str] = set()
        current: CompiledModel | None = model
        while current is not None and current.name not in seen:
            seen.add(current.name)
            name = self.requested if current is model else current.name
            if self.ctx.trace is not None:
                self.ctx.trace.model = current
            for target in order_targets(
                current, self.state.latency, self.state.rng, self.state.round_robin
            ):
                try:
                    return await self._attempt_target(target, name)
                except UpstreamFailure as exc:
                    failure = exc
            if failure is None or failure.failure not in current.fallback_on:
                break
            current = self._next_fallback(current, seen)
        raise _final_error(failure, self.ctx.api)

    def _next_fallback(self, model: CompiledModel, seen: set[str]) -> CompiledModel | None:
        for name in model.fallback_models:
            if name not in seen:
                return self.snap.table.models.get(name)
        return None

    async def _attempt_target(self, target: CompiledTarget, requested: str) -> Outcome:
        upstream = self.snap.upstreams[target.upstream.name]
        policy = target.upstream.retry
        breaker = (
            self.state.breakers.get(target.state_id, target.upstream.breaker)
            if target.upstream.breaker is not None
            else None
        )
        model_name = target.model or requested
        attempt = 0
        last: UpstreamFailure | None = None
        while True:
            attempt += 1
            if breaker is not None and not breaker.allow():
                if last is not None:  # NOTE: this request's own failures opened it: report those
                    raise last
                raise UpstreamFailure(
                    "circuit_open",
                    f"upstream '{upstream.upstream.name}' is failing; its circuit breaker is open",
                )
            started = time.monotonic()
            self.ctx.attempts += 1
            self.ctx.upstream, self.ctx.upstream_model = upstream.upstream.name, model_name
            try:
                outcome = await self._send(upstream, target, model_name)
            except UpstreamFailure as exc:
                last = exc
                if breaker is not None:
                    breaker.record(None if exc.failure in _BREAKER_NEUTRAL else exc.failure)
                if exc.failure in BREAKER_FAILURES:
                    stats = self.state.upstream_stats.get(target.upstream.state_id)
                    stats.failure(exc.failure, exc.message, time.time())
                if attempt >= policy.attempts or not should_retry(policy, exc.failure, exc.status):
                    raise
                delay = next_delay(
                    policy, attempt, dict(exc.headers) if exc.status else None, self.state.rng
                )
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            except BaseException as exc:
                if breaker is not None:
                    breaker.release()
                if isinstance(exc, GatewayError) and exc.code == "upstream_auth_failed":
                    stats = self.state.upstream_stats.get(target.upstream.state_id)
                    stats.failure("auth_failed", exc.message, time.time())
                raise
            if breaker is not None:
                breaker.record_success()
            elapsed = time.monotonic() - started
            self.state.latency.observe(target.state_id, elapsed)
            self.state.upstream_stats.get(target.upstream.state_id).success(elapsed, time.time())
            return outcome

    async def _send(
        self, upstream: PreparedUpstream, target: CompiledTarget, model_name: str
    ) -> Outcome:
        ctx = self.ctx
        self.dropped = ()
        if ctx.api == "openai.responses" and upstream.upstream.kind != "openai":
            self._check_hosted_tools()
        if upstream.mock is not None:
            body = dict(ctx.body())
            body.update(target.params)
            if ctx.exchange is not None:
                ctx.exchange.sent_upstream((), body)
            reply = await upstream.mock.call(
                ctx.api,
                body,
                model_name,
                stream=ctx.stream,
                include_usage=ctx.include_usage or ctx.trace is not None,
            )
            return await self._finish(upstream, None, reply, model_name)
        bridge = bridge_for(ctx.api, upstream.family, upstream.upstream.kind)
        if bridge is None:  # count_tokens on an upstream that cannot count: estimate
            try:
                tokens = estimate_input_tokens(ctx.body())
            except TranslationError as exc:
                raise GatewayError(400, exc.message, param=exc.param) from None
            estimate = _encode({"input_tokens": tokens})
            return self._outcome(
                200, [("content-type", "application/json")], estimate, upstream, model_name
            )
        payload = self._payload(bridge, target, model_name)
        headers = await self._headers(upstream, bridge)
        path = _upstream_path(bridge, upstream.family, ctx.query)
        if ctx.exchange is not None:
            ctx.exchange.sent_upstream(headers, payload)
        reply = await self.state.pool.send(
            target.upstream, path, headers, payload, stream=ctx.stream
        )
        if reply.status == 401 and upstream.upstream.oauth is not None:
            self._token(upstream).invalidate()
            headers = await self._headers(upstream, bridge)
            reply = await self.state.pool.send(
                target.upstream, path, headers, payload, stream=ctx.stream
            )
        return await self._finish(upstream, bridge, reply, model_name)

    def _check_hosted_tools(self) -> None:
        """A route with ``hosted_tools: refuse`` answers 400 where hosted Responses tools (web
        search, ...) would be dropped because the upstream cannot run them."""
        if self.action.hosted_tools != "refuse":
            return
        hosted = hosted_tools(self.ctx.body())
        if hosted:
            raise GatewayError(
                400,
                f"{', '.join(hosted)}: hosted tools need an upstream that runs them (kind: "
                "openai); this route refuses them (hosted_tools: refuse)",
                code="unsupported_parameter",
                param=hosted[0],
            )

    def _payload(self, bridge: Bridge, target: CompiledTarget, model_name: str) -> bytes:
        ctx = self.ctx
        # NOTE: the ledger needs a stream's usage even when the client did not ask for it
        ask_usage = (
            ctx.stream
            and ctx.trace is not None
            and not ctx.include_usage
            and bridge.same_protocol
            and ctx.api in _STREAM_USAGE_APIS
        )
        untouched = (
            not ctx.body_decoded
            and not target.params
            and model_name == ctx.model
            and bridge.same_protocol
            and not ask_usage
        )
        if untouched:
            return ctx.raw
        body = dict(ctx.body())
        body["model"] = model_name
        body.update(target.params)
        if ask_usage:
            options = body.get("stream_options")
            body["stream_options"] = (
                {**options, "include_usage": True}
                if isinstance(options, dict)
                else {"include_usage": True}
            )
        if bridge.request is not None:
            # NOTE: Ollama and GigaChat answer floats; a client's base64 is encoded on the way back
            self.base64_embeddings = body.get("encoding_format") == "base64"
            try:
                if self.action.drop_unsupported:
                    body, self.dropped = translate_dropping(bridge.request, body)
                else:
                    body = bridge.request(body)
            except TranslationError as exc:
                raise GatewayError(400, exc.message, param=exc.param) from None
            if ctx.api == "openai.responses":  # NOTE: translation dropped the hosted tools
                self.dropped += hosted_tools(ctx.body())
            if ctx.stream and bridge.stream_usage:  # the translator needs the upstream's usage
                body["stream_options"] = {"include_usage": True}
        return _encode(body)

    async def _headers(self, upstream: PreparedUpstream, bridge: Bridge) -> list[tuple[str, str]]:
        ctx = self.ctx
        headers = protect_client_headers(ctx.headers.items())
        route_policies = (
            self.snap.route_policies[self.route.index] if self.route is not None else ()
        )
        if route_policies or upstream.policies:
            headers = apply_header_policies(route_policies, headers, "request")
            headers = apply_header_policies(upstream.policies, headers, "request")
        else:
            headers = apply_header_rules(self.snap.default_rules, headers)
        if upstream.family == "anthropic":
            if not any(name == "anthropic-version" for name, _ in headers):
                headers.append(("anthropic-version", ANTHROPIC_VERSION))
        else:
            headers = [(n, v) for n, v in headers if not n.startswith("anthropic-")]
        request_id_header = self.snap.table.observability.request_id_header
        # NOTE: the gateway sets these itself, once (a client's request id is forwarded as ours)
        headers = [
            (n, v) for n, v in headers if n not in _SET_BY_GATEWAY and n != request_id_header
        ]
        headers.append(("content-type", "application/json"))
        headers.append(("accept-encoding", "identity"))
        headers.append((request_id_header, ctx.request_id))
        if upstream.upstream.oauth is not None:
            try:
                token = await self._token(upstream).token()
            except OAuthError as exc:
                message = self.snap.redactor.text(str(exc))  # NOTE: may quote the token endpoint
                raise UpstreamFailure(
                    "connect", f"upstream '{upstream.upstream.name}': {message}"
                ) from None
            headers = [(n, v) for n, v in headers if n != "authorization"]
            headers.append(("authorization", f"Bearer {token}"))
        elif upstream.auth_headers:
            names = {name for name, _ in upstream.auth_headers}
            headers = [(n, v) for n, v in headers if n not in names]
            headers.extend(upstream.auth_headers)
        return headers

    def _token(self, upstream: PreparedUpstream) -> TokenSource:
        key = upstream.upstream.state_id
        source = self.state.tokens.get(key)
        if source is None:
            oauth = upstream.upstream.oauth
            assert oauth is not None and upstream.oauth_credentials is not None
            client = self.state.pool.oauth_client(upstream.upstream)
            source = self.state.tokens[key] = TokenSource(
                oauth.token_url,
                upstream.oauth_credentials,
                oauth.scope,
                client,
                refresh_margin_s=oauth.refresh_margin_s,
            )
        # SECURITY: the tokens it fetches are secrets the snapshot's redactor must know
        source.follow(self.snap.redactor.learn)
        return source

    async def _finish(
        self, upstream: PreparedUpstream, bridge: Bridge | None, reply: Reply, model_name: str
    ) -> Outcome:
        ctx = self.ctx
        if reply.status >= 300:
            await reply.aclose()
            return self._upstream_error(upstream, bridge, reply)
        if reply.chunks is not None:
            return await self._stream(upstream, bridge, reply, model_name)
        body = reply.body
        meter = ctx.trace.meter if ctx.trace is not None else None
        try:
            if (bridge is None or bridge.response is None) and not self.response_steps:
                if meter is None:
                    _validate_json(body)
                else:
                    meter.observe_json(ctx.api, body)
            else:
                data = _decode_object(body)
                if bridge is not None and bridge.response is not None:
                    data = bridge.response(data)
                    if self.base64_embeddings and ctx.api == "openai.embeddings":
                        data = embeddings_as_base64(data)
                if self.response_steps:
                    apply_response_steps(self.response_steps, data, ctx.api)
                if meter is not None:
                    meter.observe_body(ctx.api, data)
                body = _encode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError):
            raise UpstreamFailure(
                "bad_response", f"upstream '{upstream.upstream.name}' sent malformed JSON"
            ) from None
        headers = self._response_headers(upstream, reply.headers)
        headers.append(("content-type", "application/json"))
        return self._outcome(200, headers, body, upstream, model_name)

    def _upstream_error(
        self, upstream: PreparedUpstream, bridge: Bridge | None, reply: Reply
    ) -> Outcome:
        failure = classify_status(reply.status) or "bad_response"
        name = upstream.upstream.name
        if reply.status in (401, 403):
            raise GatewayError(
                502,
                f"upstream '{name}' rejected Interlock's credentials (HTTP {reply.status})",
                code="upstream_auth_failed",
                headers=(("x-should-retry", "false"),),
            )
        if failure != "client_error":
            raise UpstreamFailure(
                failure,
                f"upstream '{name}' answered HTTP {reply.status}",
                status=reply.status,
                headers=reply.headers,
                body=self.snap.redactor.bytes(reply.body) if reply.body else b"",
            )
        bridge = bridge or bridge_for(self.ctx.api, "openai") or None
        assert bridge is not None
        body = bridge.error_body(self.ctx.api, reply.status, reply.body, self.snap.redactor)
        headers = [("content-type", "application/json")]
        return self._outcome(reply.status, headers, body, upstream, None)

    async def _stream(
        self, upstream: PreparedUpstream, bridge: Bridge | None, reply: Reply, model_name: str
    ) -> Outcome:
        assert reply.chunks is not None
        chunks = reply.chunks
        try:
            first = await chunks.__anext__()  # NOTE: fail over while nothing went to the client
        except StopAsyncIteration:
            first = b""
        except BaseException:
            await reply.aclose()
            raise
        ctx = self.ctx
        relay: Relay | None
        # NOTE: an Anthropic stream always carries usage; an OpenAI one only when asked
        include_usage = ctx.include_usage or is_anthropic(ctx.api)
        max_event = self.snap.table.server.max_upstream_body_bytes
        if bridge is not None:
            relay = bridge.relay(
                model=model_name,
                include_usage=include_usage,
                steps=self.response_steps,
                api=ctx.api,
                trace=ctx.trace,
                request=ctx.body() if ctx.body_decoded else None,
                redactor=self.snap.redactor,
                max_event=max_event,
            )
        else:  # the mock answers in the client's protocol already
            terminator = b"message_stop" if is_anthropic(ctx.api) else b"[DONE]"
            relay = EventRelay(
                ctx.api,
                "sse",
                None,
                self.response_steps,
                terminator,
                ctx.trace,
                include_usage,
                max_event=max_event,
            )
        headers = self._response_headers(upstream, reply.headers)
        headers += [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
        ]
        outcome = self._outcome(200, headers, b"", upstream, model_name)
        outcome.stream = _relay_stream(first, chunks, relay, reply.aclose, ctx, self.snap.redactor)
        return outcome

    def _response_headers(
        self, upstream: PreparedUpstream, upstream_headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        route_policies = (
            self.snap.route_policies[self.route.index] if self.route is not None else ()
        )
        base = [(n.lower(), v) for n, v in upstream_headers if n.lower() not in _RESPONSE_DROP]
        if route_policies or upstream.policies:
            base = apply_header_policies(upstream.policies, base, "response")
            base = apply_header_policies(route_policies, base, "response")
            owned = self.snap.owned_response_headers
            return [(n, v) for n, v in base if n not in owned]
        return [
            (n, v)
            for n, v in base
            if n == "retry-after" or n.startswith(_DEFAULT_RESPONSE_PREFIXES)
        ]

    def _outcome(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        upstream: PreparedUpstream,
        model_name: str | None,
    ) -> Outcome:
        if self.dropped:
            headers.append((DROPPED_PARAMS_HEADER, ",".join(self.dropped)))
        return Outcome(
            status,
            headers,
            body,
            route=self.route.name if self.route is not None else None,
            upstream=upstream.upstream.name,
            model=model_name,
        )


def _upstream_path(bridge: Bridge, family: str, query: bytes) -> str:
    """The bridge's path; an Anthropic upstream spoken to in the client's own protocol keeps the
    Anthropic SDK's ``?beta=true`` (its beta client's requests, with ``anthropic-beta``)."""
    if (
        query
        and family == "anthropic"
        and bridge.same_protocol
        and b"beta=true" in query.split(b"&")
    ):
        return bridge.path + "?beta=true"
    return bridge.path


_SET_BY_GATEWAY = frozenset({"content-type", "accept-encoding", "content-length"})
_STREAM_USAGE_APIS = frozenset({"openai.chat", "openai.completions"})


async def _relay_stream(
    first: bytes,
    chunks: AsyncIterator[bytes],
    relay: Relay | None,
    aclose: Callable[[], Awaitable[None]],
    ctx: RequestContext,
    redactor: Redactor,
) -> AsyncIterator[bytes]:
    """Client stream bytes; a failure after the first byte becomes an in-stream error event."""
    api = ctx.api
    try:
        out = relay.feed(first) if relay is not None else first
        if out:
            yield out
        async for chunk in chunks:
            out = relay.feed(chunk) if relay is not None else chunk
            if out:
                yield out
        if relay is not None:
            tail = relay.finish()
            if getattr(relay, "failed", False):  # NOTE: its error event went to the client
                ctx.stream_error = "upstream_stream_error"
            if tail:
                yield tail
    except Exception as exc:  # NOTE: anything after the first byte must reach the client
        if isinstance(exc, UpstreamFailure):
            error = _final_error(exc, api)
        elif isinstance(exc, GatewayError):
            error = exc
        else:
            _LOG.error("stream relay failed: %s", redactor.exception(exc))
            error = GatewayError(
                502,
                "the upstream stream could not be relayed",
                code="upstream_error",
                failure="bad_response",
            )
        ctx.stream_error = error.failure or error.code or "stream_error"
        prefix = b"" if getattr(relay, "at_boundary", True) else b"\n\n"
        yield prefix + stream_error_event(api, error, getattr(relay, "sequence", 0))
    finally:
        await aclose()


def _final_error(failure: UpstreamFailure | None, api: str = "openai.chat") -> GatewayError:
    no_retry = (("x-should-retry", "false"),)
    if failure is None:
        return GatewayError(
            503,
            "no upstream target is configured for this model",
            code="no_target",
            headers=no_retry,
        )
    kind = failure.failure
    if kind == "circuit_open":
        return GatewayError(
            503,
            f"no healthy upstream: {failure.message}",
            code="no_healthy_upstream",
            headers=no_retry,
            failure=kind,
        )
    if kind == "timeout" or failure.timed_out:
        return GatewayError(
            504, failure.message, code="upstream_timeout", headers=no_retry, failure=kind
        )
    if kind == "client_error":
        return GatewayError(failure.status or 400, failure.message, failure=kind)
    if failure.status == 529:  # NOTE: Anthropic's overloaded_error; OpenAI's SDKs know it as 503
        status = 529 if is_anthropic(api) else 503
        return GatewayError(
            status, failure.message, code="upstream_overloaded", headers=no_retry, failure=kind
        )
    if kind == "rate_limited":
        retry_after = [(n, v) for n, v in failure.headers if n.lower() == "retry-after"]
        return GatewayError(
            429, failure.message, code="upstream_rate_limited", headers=retry_after, failure=kind
        )
    code = failure.code or "upstream_error"
    return GatewayError(502, failure.message, code=code, headers=no_retry, failure=kind)
