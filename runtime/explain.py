"""`interlock explain`: where one request would go, worked out without a server by the code that
serves it, and never needing a secret.

The table's secrets are replaced by placeholders (``<secret env:OPENAI_API_KEY>``) before it is
prepared, so CI explains with no environment; then the request runs through the gateway's own
steps: `RequestContext.parse`, `route_request` (auth, match, reject, model, params, transforms),
`plan_limits`, `plan_cache`, and for every target of the model and its fallbacks the pipeline's
payload, header and path builders. Nothing is sent::

    table = compile_config("examples/cfx-stage-routing.yaml").table
    found = asyncio.run(explain_request(table, ExplainInput(body=b'{"model": "m", ...}',
                                                            headers={"x-cfx-stage": "plan"},
                                                            key_id="agent-prod")))
    found.route, found.model, found.targets[0].upstream_model -> "stage-plan", "cfx-plan", ...
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from compiler.headers import is_secret_header
from compiler.matcher import match_route
from compiler.table import CompiledModel, CompiledRoute, CompiledTarget, RouteTable
from runtime.app import API_PATHS
from runtime.balance import LatencyBook, RoundRobinBook, order_targets
from runtime.bridge import bridge_for
from runtime.caching import CACHE_APIS, plan_cache
from runtime.caching import scope_value as cache_scope
from runtime.errors import GatewayError
from runtime.explain_routes import RouteCheck, check_routes
from runtime.limiting import applicable_policies, scope_value
from runtime.metering import Trace
from runtime.pipeline import GatewayState, _Call, _upstream_path, route_request
from runtime.request import RequestContext
from runtime.snapshot import Snapshot, prepare_snapshot
from runtime.standins import ExplainError, StandInToken, mask_secrets, with_key

_decode = msgspec.json.Decoder().decode
DEFAULT_PATH = "/v1/chat/completions"
REQUEST_ID = "<request-id>"
CLIENT_IP = "<client address>"
_LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "concurrent_streams",
    "tokens_per_day",
    "tokens_per_month",
    "cost_per_day",
    "cost_per_month",
)


@dataclass(frozen=True)
class ExplainInput:
    body: bytes
    path: str = DEFAULT_PATH
    headers: Mapping[str, str] = field(default_factory=dict)
    key_id: str | None = None  # act as the caller holding this key of `auth.keys`


@dataclass(frozen=True)
class Failure:
    status: int
    code: str | None
    message: str


@dataclass(frozen=True)
class TargetPlan:
    """One attempt the gateway would make, in order: the model of the fallback chain it
    serves, the upstream, and exactly what would be sent there."""

    model: str
    upstream: str
    kind: str
    upstream_model: str
    url: str | None  # None: answered in-process (mock) or locally (token estimate)
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    dropped: tuple[str, ...] = ()  # what drop_unsupported removed for this upstream
    note: str | None = None
    failure: Failure | None = None  # this attempt would fail before sending (e.g. a 400)


@dataclass(frozen=True)
class LimitPlanView:
    policy: str
    scope: str
    counter: str  # whose counter: key:ID, project:P, ip:..., anonymous
    limits: Mapping[str, float]


@dataclass(frozen=True)
class CacheView:
    policy: str
    scope: str
    ttl_s: float
    used: bool  # False: the policy applies but this request is not cached
    lookup: bool = False
    store: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class Explanation:
    path: str
    api: str
    status: int  # 200: sent upstream (the answer then is the upstream's)
    failure: Failure | None
    key: str | None
    client_headers: tuple[tuple[str, str], ...]
    routes: tuple[RouteCheck, ...]  # in order, up to and including the matching one
    route: str | None
    requested: str | None
    model: str | None
    strategy: str | None
    fallback_on: tuple[str, ...] = ()
    targets: tuple[TargetPlan, ...] = ()
    limits: tuple[LimitPlanView, ...] = ()
    cache: CacheView | None = None

    @property
    def first(self) -> TargetPlan | None:
        return self.targets[0] if self.targets else None

    def as_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(self)
        return plain


async def explain_request(table: RouteTable, request: ExplainInput) -> Explanation:
    """Everything serving `request` on `table` would decide, up to the upstream call."""
    api = API_PATHS.get(request.path)
    if api is None:
        raise ExplainError(
            f"unknown path {request.path!r}; Interlock serves " + ", ".join(sorted(API_PATHS))
        )
    headers = {k.lower(): v for k, v in request.headers.items()}
    served = mask_secrets(table)
    if request.key_id is not None:
        served, presented = with_key(served, request.key_id)
        headers = {k: v for k, v in headers.items() if k not in ("authorization", "x-api-key")}
        headers.update(presented)
    snap = prepare_snapshot(served)
    base = Explanation(
        path=request.path,
        api=api,
        status=200,
        failure=None,
        key=None,
        client_headers=_masked_client(headers),
        routes=(),
        route=None,
        requested=None,
        model=None,
        strategy=None,
    )
    try:
        ctx, probe = _parse(snap, api, request.body, headers)
    except GatewayError as exc:
        return replace(base, status=exc.status, failure=_failure(exc))
    base = replace(base, key=ctx.api_key.id if ctx.api_key is not None else None)
    routes = check_routes(snap.table, probe)
    route = match_route(snap.table, probe)
    base = replace(base, routes=routes, route=route.name if route is not None else None)
    try:
        routed = route_request(snap, ctx)
    except GatewayError as exc:
        return replace(base, status=exc.status, failure=_failure(exc), requested=_asked(route, ctx))
    call = _Call(_state(snap), snap, ctx, routed.route, routed.action, routed.requested)
    targets = await _plan_targets(call, routed.model)
    first = targets[0] if targets else None
    status, failure = 200, None
    if first is not None and first.failure is not None:
        status, failure = first.failure.status, first.failure
    return replace(
        base,
        status=status,
        failure=failure,
        requested=routed.requested,
        model=routed.model.name,
        strategy=routed.model.strategy,
        fallback_on=tuple(sorted(routed.model.fallback_on)),
        targets=targets,
        limits=_limits(snap.table, routed.route, ctx),
        cache=_cache(snap.table, routed.route, ctx, routed.model, routed.requested),
    )


def _parse(
    snap: Snapshot, api: str, body: bytes, headers: dict[str, str]
) -> tuple[RequestContext, RequestContext]:
    """As the app does: authenticate before the body, then the size limit, then parse. Returns
    the request and an untouched copy to explain matching on (serving edits the body)."""
    key = snap.keyring.authenticate(headers) if snap.keyring is not None else None
    limit = snap.table.server.max_body_bytes
    if len(body) > limit:
        raise GatewayError(413, f"request body is larger than {limit} bytes")
    request_id = headers.get(snap.table.observability.request_id_header) or REQUEST_ID
    ctx = RequestContext.parse(api, body, headers, request_id)
    probe = RequestContext.parse(api, body, headers, request_id)
    ctx.api_key = probe.api_key = key
    ctx.client_ip = probe.client_ip = CLIENT_IP
    table = snap.table
    # NOTE: as Gateway.needs_trace: a ledger, limits or a cache meter requests, and a metered
    # stream asks the upstream for usage
    if table.usage is not None or table.limits.policies or table.cache.policies:
        ctx.trace = Trace()
    return ctx, probe


def _state(snap: Snapshot) -> GatewayState:
    state = GatewayState(rng=random.Random(0))
    for upstream in snap.table.upstreams.values():
        if upstream.oauth is not None:
            state.tokens[upstream.state_id] = StandInToken(upstream.oauth.token_url)
    return state


async def _plan_targets(call: _Call, model: CompiledModel) -> tuple[TargetPlan, ...]:
    """Every attempt in order: the model's targets, then each fallback model's (as `_Call.run`
    walks them; which fallbacks are reached depends on the failure, see `fallback_on`)."""
    out: list[TargetPlan] = []
    seen: set[str] = set()
    current: CompiledModel | None = model
    while current is not None and current.name not in seen:
        seen.add(current.name)
        name = call.requested if current is model else current.name
        out += [
            await _plan_target(call, current, target, target.model or name)
            for target in _ordered(current)
        ]
        current = call._next_fallback(current, seen)
    return tuple(out)


def _ordered(model: CompiledModel) -> Sequence[CompiledTarget]:
    """The order on a fresh gateway; `weighted` draws it per request, so the declared order."""
    if model.strategy == "weighted":
        return list(model.targets)
    return order_targets(model, LatencyBook(), random.Random(0), RoundRobinBook())


async def _plan_target(
    call: _Call, model: CompiledModel, target: CompiledTarget, model_name: str
) -> TargetPlan:
    upstream = call.snap.upstreams[target.upstream.name]
    ctx = call.ctx
    plan = TargetPlan(model.name, upstream.upstream.name, upstream.upstream.kind, model_name, None)
    try:
        if ctx.api == "openai.responses" and upstream.upstream.kind != "openai":
            call._check_hosted_tools()
        if upstream.mock is not None:
            body = dict(ctx.body())
            body.update(target.params)
            return replace(plan, body=body, note="answered in-process by the mock provider")
        bridge = bridge_for(ctx.api, upstream.family, upstream.upstream.kind)
        if bridge is None:
            return replace(plan, note="token count estimated locally; nothing is sent")
        payload = call._payload(bridge, target, model_name)
        headers = await call._headers(upstream, bridge)
        path = _upstream_path(bridge, upstream.family, ctx.query)
    except GatewayError as exc:
        return replace(plan, failure=_failure(exc))
    return replace(
        plan,
        url=upstream.upstream.base_url.rstrip("/") + path,
        headers=tuple((n, _mask_header(n, v)) for n, v in headers),
        body=_decode(payload),
        dropped=call.dropped,
    )


def _limits(
    table: RouteTable, route: CompiledRoute | None, ctx: RequestContext
) -> tuple[LimitPlanView, ...]:
    out = []
    for policy in applicable_policies(table, route, ctx):
        limits = {f: getattr(policy, f) for f in _LIMIT_FIELDS if getattr(policy, f) is not None}
        if not ctx.stream:
            limits.pop("concurrent_streams", None)
        out.append(LimitPlanView(policy.name, policy.scope, scope_value(policy, ctx), limits))
    return tuple(out)


def _cache(
    table: RouteTable,
    route: CompiledRoute | None,
    ctx: RequestContext,
    model: CompiledModel,
    requested: str,
) -> CacheView | None:
    name = route.action.cache if route is not None else None
    policy = table.cache.policies.get(name) if name is not None else None
    if policy is None:
        return None
    view = CacheView(
        policy.name,
        f"{policy.scope} ({cache_scope(policy.scope, ctx.api_key)})",
        policy.ttl_s,
        used=False,
    )
    if ctx.api not in CACHE_APIS:
        return replace(view, reason=f"{ctx.api} is never cached")
    plan = plan_cache(table, route, ctx, model, requested)
    if plan is None:
        return replace(view, reason="the request is not deterministic (only_deterministic)")
    return replace(view, used=True, lookup=plan.lookup, store=plan.store)


def _asked(route: CompiledRoute | None, ctx: RequestContext) -> str | None:
    """The model name the request asks for, as `route_request` picks it (for display)."""
    if route is None:
        return ctx.model
    return route.action.model or ctx.model or route.action.default_model


def _failure(exc: GatewayError) -> Failure:
    return Failure(exc.status, exc.code, exc.message)


def _mask_header(name: str, value: str) -> str:
    """A credential header shows as its placeholder, or as ``***`` when it holds anything else
    (a client's header passed through)."""
    placeholder = "<secret " in value or "<oauth token from " in value
    return value if placeholder or not is_secret_header(name) else "***"


def _masked_client(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((n, "***" if is_secret_header(n) else v) for n, v in headers.items()))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
