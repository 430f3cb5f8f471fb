"""The exact-match response cache for one request: whether a policy applies, the key, serving a
hit (as a stream when the client streams), and what is stored once the answer is complete.

    plan = plan_cache(table, route, ctx, model, requested)    # None: the cache stays out of it
    hit = await serve_hit(cache, plan, stats, snap, route, ctx)   # None: a miss
    ... the upstream answers ...
    stream = prepare_fill(plan, ctx, status, body, stream)    # the answer, or its stream, kept
    await fill_cache(cache, ctx.trace.cache_fill, record, stats)  # at settle, off the response

**The key** is the SHA-256 of the canonical JSON (keys sorted, no spaces) of ``[1, api, model,
sent_as, scope, transforms, headers, body]``: the client API; the name of the model the request
resolved to; the name sent upstream when a target forwards the requested name (else null); the
scope value (`scope_value`); a digest of the route's response transforms (an entry is stored
after them); the ``anthropic-version`` and ``anthropic-beta`` request headers; and the request
body after the route's parameters and transforms, without ``model``, ``stream``,
``stream_options``, ``user``, ``metadata``, ``safety_identifier`` and ``prompt_cache_key``, its
top-level integral numbers written as integers (``0.0`` and ``0`` are one key).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

from compiler.headers import apply_header_policies
from compiler.table import ApiKey, CachePolicy, CompiledModel, CompiledRoute, RouteTable
from runtime.errors import is_anthropic
from runtime.replay import REPLAY_APIS, assemble_stream, replay_frames
from runtime.state.cache import CacheSpace, CacheUnavailable, ResponseCache

if TYPE_CHECKING:
    from runtime.request import RequestContext
    from runtime.snapshot import Snapshot
    from runtime.state.ledger import UsageRecord

_LOG = logging.getLogger("interlock")
CACHE_APIS = frozenset({"openai.chat", "openai.completions", "openai.embeddings"}) | REPLAY_APIS
_EXCLUDED = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
    }
)
_KEY_HEADERS = ("anthropic-version", "anthropic-beta")
_KEY_FORMAT = 1
_canonical = msgspec.json.Encoder(order="sorted").encode
_encode = msgspec.json.Encoder().encode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_JSON = ("content-type", "application/json")
_SSE = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_FILL_SLACK = 64 * 1024


@dataclass(slots=True)
class CacheStats:
    """Counters for /metrics; a backend failure is logged at most every 10 s."""

    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    skipped: int = 0  # answers not stored: too large, or a stream that did not assemble
    errors: int = 0  # backend calls that failed (each served as a miss or not stored)
    _logged_at: float = field(default=0.0, repr=False)

    def unavailable(self, what: str, exc: CacheUnavailable) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._logged_at > 10:
            self._logged_at = now
            _LOG.warning("response cache: %s failed (served as a miss): %s", what, exc)


@dataclass(slots=True)  # PERF: one per request; a frozen __init__ costs ~6x
class CachePlan:
    """The cache's part in one request. `lookup` False: the client said ``no-cache``;
    `store` False: it said ``no-store``. `store_streams`: every response transform of the
    route also runs on streams, so a streamed answer equals the non-streamed one."""

    policy: CachePolicy
    space: CacheSpace
    key: str
    lookup: bool = True
    store: bool = True
    store_streams: bool = True


class CachedAnswer(msgspec.Struct, frozen=True, array_like=True):
    """A stored entry: the complete answer in the client's protocol (JSON, as sent) and what
    the ledger needs to record a hit."""

    body: bytes
    model: str | None
    upstream: str | None
    upstream_model: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated: bool
    stored_at: float


_encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(CachedAnswer).decode


# --- the plan ---------------------------------------------------------------------------------


def plan_cache(
    table: RouteTable,
    route: CompiledRoute | None,
    ctx: RequestContext,
    model: CompiledModel,
    requested: str,
) -> CachePlan | None:
    """The cache plan of a request whose route names a cache policy, or None: no policy, an
    API that is not cached (``anthropic.count_tokens``), a body that is not an object, or a
    request that is not deterministic under ``only_deterministic``."""
    if route is None or route.action.cache is None or ctx.api not in CACHE_APIS:
        return None
    policy = table.cache.policies.get(route.action.cache)
    if policy is None:
        return None
    body = ctx.body() if ctx.body_decoded else _peek_body(ctx)
    if policy.only_deterministic and not _deterministic_everywhere(table, model, ctx.api, body):
        return None
    lookup, store = _client_wishes(ctx.headers.get("cache-control"))
    steps = tuple(step for pipeline in route.action.transforms for step in pipeline.response)
    try:
        transforms = hashlib.sha256(_describe_steps(steps)).hexdigest() if steps else None
    except TypeError:  # NOTE: a step this version cannot describe stably: do not cache
        return None
    forwards = any(target.model is None for target in model.targets)
    key = cache_key(
        ctx.api,
        body,
        model=model.name,
        sent_as=requested if forwards else None,
        scope=scope_value(policy.scope, ctx.api_key),
        transforms=transforms,
        headers=[ctx.headers.get(name) for name in _KEY_HEADERS],
    )
    return CachePlan(
        policy,
        CacheSpace(policy.state_id, policy.ttl_s, policy.max_entries),
        key,
        lookup=lookup,
        store=store,
        store_streams=all(step.stream_safe for step in steps),
    )


def _step_part(value: Any) -> Any:
    if isinstance(value, re.Pattern):
        return [value.pattern, value.flags]
    if isinstance(value, MappingProxyType):
        return dict(value)
    if isinstance(value, frozenset):
        return sorted(value, key=repr)
    text = str(value)  # a compiled JSONPath says its canonical path
    if " at 0x" in text:
        raise TypeError(f"no stable description of {type(value).__name__}")
    return text


# NOTE: the same steps describe the same in every process (repr would show object addresses)
_describe_steps = msgspec.json.Encoder(enc_hook=_step_part, order="sorted").encode


def _peek_body(ctx: RequestContext) -> dict[str, Any]:
    """The decoded body without keeping it on `ctx`, so an unedited body still goes upstream as
    the client's bytes."""
    try:
        return _decode_object(ctx.raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return ctx.body()  # NOTE: raises the request's 400


def cache_key(
    api: str,
    body: Mapping[str, Any],
    *,
    model: str,
    sent_as: str | None,
    scope: str,
    transforms: str | None,
    headers: list[str | None],
) -> str:
    """The entry key (hex SHA-256; see the module docstring).

    ``cache_key("openai.chat", {"messages": [], "temperature": 0.0, "stream": True},
    model="gpt", sent_as=None, scope="global", transforms=None, headers=[None, None])`` ==
    the same call with ``{"temperature": 0, "messages": []}``."""
    normalized = {
        name: _canonical_number(value) for name, value in body.items() if name not in _EXCLUDED
    }
    document = [_KEY_FORMAT, api, model, sent_as, scope, transforms, headers, normalized]
    return hashlib.sha256(_canonical(document)).hexdigest()


def _canonical_number(value: Any) -> Any:
    if value.__class__ is float and value.is_integer():
        return int(value)
    return value


def scope_value(scope: str, key: ApiKey | None) -> str:
    """Whose entries a request shares: ``global``; without a key, ``anonymous``; else the key's
    project or org when the scope asks for it and the key has one, otherwise the key itself.

    ``scope_value("project", ApiKey(id="ci", hash="…", project="web"))`` -> ``"project:web"``"""
    if scope == "global":
        return "global"
    if key is None:
        return "anonymous"
    if scope == "project" and key.project:
        return f"project:{key.project}"
    if scope == "org" and key.org:
        return f"org:{key.org}"
    return f"key:{key.id}"


def is_deterministic(api: str, body: Mapping[str, Any]) -> bool:
    """Whether `body` asks for the one most likely answer: embeddings always; otherwise
    ``temperature`` ≤ 0, or without a temperature ``top_p`` ≤ 0, and ``n`` and ``best_of``
    absent or 1.

    ``is_deterministic("openai.chat", {"temperature": 0})`` -> True;
    ``is_deterministic("openai.chat", {})`` -> False (the provider's default samples)."""
    if api == "openai.embeddings":
        return True
    for name in ("n", "best_of"):
        if body.get(name, 1) != 1:
            return False
    temperature = body.get("temperature")
    if temperature is not None:
        return _at_most_zero(temperature)
    return _at_most_zero(body.get("top_p"))


def _at_most_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value <= 0


def _deterministic_everywhere(
    table: RouteTable, model: CompiledModel, api: str, body: Mapping[str, Any]
) -> bool:
    """Deterministic as sent to every target that may answer (targets' `params` included),
    along the model's fallback chain."""
    if not is_deterministic(api, body):
        return False
    seen: set[str] = set()
    pending = [model]
    while pending:
        current = pending.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        for target in current.targets:
            if target.params and not is_deterministic(api, {**body, **target.params}):
                return False
        pending.extend(table.models[n] for n in current.fallback_models if n in table.models)
    return True


def _client_wishes(cache_control: str | None) -> tuple[bool, bool]:
    """(lookup, store) from the request's Cache-Control: ``no-cache`` skips the lookup (the
    fresh answer is still stored); ``no-store`` skips both."""
    if not cache_control:
        return True, True
    directives = {part.strip().lower() for part in cache_control.split(",")}
    no_store = "no-store" in directives
    return not (no_store or "no-cache" in directives), not no_store


# --- a hit ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Hit:
    headers: list[tuple[str, str]]
    body: bytes
    stream: AsyncIterator[bytes] | None
    upstream: str | None
    model: str | None  # the upstream model name the answer came from


async def serve_hit(
    cache: ResponseCache,
    plan: CachePlan,
    stats: CacheStats,
    snap: Snapshot,
    route: CompiledRoute | None,
    ctx: RequestContext,
) -> Hit | None:
    """The cached answer for `plan`, shaped for this client (replayed as a stream when it
    streams), with the trace filled for the ledger; None on a miss or when the backend is away.
    """
    try:
        stored = await cache.get(plan.space, plan.key)
    except CacheUnavailable as exc:
        stats.unavailable("lookup", exc)
        stored = None
    entry = _entry(stored) if stored is not None else None
    if entry is None:
        stats.misses += 1
        return None
    stats.hits += 1
    body: dict[str, Any] | None = None
    trace = ctx.trace
    if trace is not None:
        trace.cache_hit = True
        ctx.upstream, ctx.upstream_model = entry.upstream, entry.upstream_model
        trace.model = snap.table.models.get(entry.model or "", trace.model)
        meter = trace.meter
        if meter.text is not None:  # NOTE: log_prompts keeps the answer's text
            body = _decode_object(entry.body)
            meter.observe_body(ctx.api, body)
        meter.input_tokens, meter.output_tokens = entry.input_tokens, entry.output_tokens
        meter.cached_tokens = entry.cached_tokens
        meter.input_reported = meter.output_reported = not entry.estimated
    headers = _hit_headers(snap, route, entry)
    headers.append(("age", str(max(int(time.time() - entry.stored_at), 0))))
    if not ctx.stream:
        headers.append(_JSON)
        return Hit(headers, entry.body, None, entry.upstream, entry.upstream_model)
    body = body if body is not None else _decode_object(entry.body)
    frames = b"".join(replay_frames(ctx.api, body, include_usage=ctx.include_usage))
    headers.extend(_SSE)
    return Hit(headers, b"", _once(frames), entry.upstream, entry.upstream_model)


def _entry(stored: bytes) -> CachedAnswer | None:
    try:
        return _decode_entry(stored)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # NOTE: an entry of another format is a miss; the next store replaces it


def _hit_headers(
    snap: Snapshot, route: CompiledRoute | None, entry: CachedAnswer
) -> list[tuple[str, str]]:
    """What the route's and the upstream's response header policies add to an answer."""
    route_policies = snap.route_policies[route.index] if route is not None else ()
    prepared = snap.upstreams.get(entry.upstream or "")
    upstream_policies = prepared.policies if prepared is not None else ()
    if not (route_policies or upstream_policies):
        return []
    headers = apply_header_policies(upstream_policies, [], "response")
    headers = apply_header_policies(route_policies, headers, "response")
    return [(n, v) for n, v in headers if n not in snap.owned_response_headers]


async def _once(frames: bytes) -> AsyncIterator[bytes]:
    yield frames


# --- a miss: keep the answer, store it at settle ----------------------------------------------


class CacheFill:
    """What a miss keeps of its answer until settle: the body, or the stream's bytes (up to a
    bound; a longer stream is not stored) and whether the stream ran to its end."""

    __slots__ = ("api", "body", "chunks", "complete", "include_usage", "limit", "plan", "size")

    def __init__(self, plan: CachePlan, api: str, body: bytes | None, include_usage: bool) -> None:
        self.plan = plan
        self.api = api
        self.body = body
        self.include_usage = include_usage
        self.chunks: list[bytes] | None = [] if body is None else None
        self.size = 0
        self.limit = 4 * plan.policy.max_entry_bytes + _FILL_SLACK
        self.complete = body is not None

    def add(self, chunk: bytes) -> None:
        if self.chunks is None:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.chunks = None  # NOTE: far larger than an entry may be: stop keeping it
            return
        self.chunks.append(chunk)


def prepare_fill(
    plan: CachePlan,
    ctx: RequestContext,
    status: int,
    body: bytes,
    stream: AsyncIterator[bytes] | None,
) -> AsyncIterator[bytes] | None:
    """Keep a 2xx answer for `fill_cache` (on the trace); returns the stream to send, which
    passes every chunk through untouched."""
    trace = ctx.trace
    if not plan.store or trace is None or status >= 300:
        return stream
    if stream is None:
        trace.cache_fill = CacheFill(plan, ctx.api, body, ctx.include_usage)
        return None
    if ctx.api not in REPLAY_APIS or not plan.store_streams:
        return stream
    fill = trace.cache_fill = CacheFill(plan, ctx.api, None, ctx.include_usage)
    return _kept(stream, fill)


async def _kept(stream: AsyncIterator[bytes], fill: CacheFill) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            fill.add(chunk)
            yield chunk
        fill.complete = True
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def fill_cache(
    cache: ResponseCache, fill: CacheFill, record: UsageRecord, stats: CacheStats
) -> None:
    """Store a complete answer (after the response; never raises for a backend failure)."""
    body = _answer_bytes(fill, record)
    if body is None or len(body) > fill.plan.policy.max_entry_bytes:
        stats.skipped += 1
        return
    entry = CachedAnswer(
        body=body,
        model=record.model,
        upstream=record.upstream,
        upstream_model=record.upstream_model,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_tokens=record.cached_tokens,
        estimated=record.estimated,
        stored_at=time.time(),
    )
    try:
        await cache.put(fill.plan.space, fill.plan.key, _encode_entry(entry))
    except CacheUnavailable as exc:
        stats.unavailable("store", exc)
        return
    stats.stores += 1


def _answer_bytes(fill: CacheFill, record: UsageRecord) -> bytes | None:
    if fill.body is not None:
        return fill.body
    if not fill.complete or fill.chunks is None:
        return None
    body = assemble_stream(fill.api, b"".join(fill.chunks))
    if body is None:
        return None
    if "usage" not in body and not is_anthropic(fill.api):
        # NOTE: the client did not ask for the usage chunk; the ledger's counts are the same
        body["usage"] = _openai_usage(record)
    return _encode(body)


def _openai_usage(record: UsageRecord) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": record.input_tokens,
        "completion_tokens": record.output_tokens,
        "total_tokens": record.input_tokens + record.output_tokens,
    }
    if record.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": record.cached_tokens}
    return usage
