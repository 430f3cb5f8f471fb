"""Limit policies applied to one request: which policies, which counters, the admission verdict
as headers or a 429, and the settlement once the real usage is known.

    plan = plan_limits(table, route, ctx, model, now)       # None: no policy applies
    admission = await admit(limiter, plan, ctx, now, "allow", "api")   # or raises the 429
    admission.headers("openai.chat") -> [("x-ratelimit-limit-requests", "20"), ...]
    ... serve ...
    await limiter.settle(admission.hold, plan.settlements(tokens=812, cost=0.004), now)

Counter keys are ``<policy state id>:<field>:<scope value>[:<calendar window>]``, so counters
survive a reload that leaves the policy unchanged and start afresh when it changes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from compiler.table import CompiledModel, CompiledRoute, LimitPolicy, RouteTable
from runtime.errors import GatewayError
from runtime.ids import unique_suffix
from runtime.request import RequestContext
from runtime.state.limits import (
    Check,
    CheckState,
    Limiter,
    MemoryLimiter,
    Settlement,
    Verdict,
)
from runtime.translate.anthropic import estimate_tokens

_LOG = logging.getLogger("interlock")
_MINUTE = 60.0
_DAY_TTL = 2 * 86400.0
_MONTH_TTL = 62 * 86400.0
SLOT_TTL_S = 3600.0  # NOTE: a crashed process's stream slots free themselves after this
_MEMORY_HOLDS = map(str, itertools.count())  # the memory backend's holds: unique in this process


class LimitPlan(msgspec.Struct, gc=False):  # PERF: one per request, built in C
    checks: tuple[Check, ...]
    template: _Template  # per check its policy and field; which checks settle, which set headers
    reserved_tokens: int
    reserved_cost: float

    def settlements(self, *, tokens: int, cost: float) -> list[Settlement]:
        """What this request really used, per check (rpm counts 1 whatever happened; stream
        slots are simply freed)."""
        checks = self.checks
        return [
            Settlement(checks[i], cost if by_cost else float(tokens))
            for i, by_cost in self.template.settled
        ]


def applicable_policies(
    table: RouteTable, route: CompiledRoute | None, ctx: RequestContext
) -> list[LimitPolicy]:
    """The route's policies (or `limits.default` when the route names none), then the key's."""
    route_limits = route.action.limits if route is not None else None
    names = list(route_limits if route_limits is not None else table.limits.default)
    if ctx.api_key is not None and ctx.api_key.limits:
        names += ctx.api_key.limits
    policies = table.limits.policies
    return [policies[name] for name in dict.fromkeys(names) if name in policies]


def scope_value(policy: LimitPolicy, ctx: RequestContext) -> str:
    """Whose counter: the key id, the key's project or org (a key without one is counted on its
    own), the client address, or ``anonymous`` for requests without a key."""
    if policy.scope == "ip":
        return f"ip:{ctx.client_ip or 'unknown'}"
    key = ctx.api_key
    if key is None:
        return "anonymous"
    if policy.scope == "project" and key.project:
        return f"project:{key.project}"
    if policy.scope == "org" and key.org:
        return f"org:{key.org}"
    return f"key:{key.id}"


def plan_limits(
    table: RouteTable,
    route: CompiledRoute | None,
    ctx: RequestContext,
    model: CompiledModel,
    now: float,
) -> LimitPlan | None:
    template = _template(table, route, ctx)
    if template is None:
        return None
    tokens, cost = _reservation(ctx, model) if template.counts_tokens else (0, 0.0)
    checks = template.checks
    if template.sized:  # NOTE: the checks whose amount or counter key changes per request
        built = list(checks)
        day = _day(now) if template.has_budget else ""
        amounts = (1.0, float(tokens), cost)
        for index, kind, key, limit, amount, window, calendar in template.sized:
            if calendar:
                key += f":{day if calendar == 'day' else day[:7]}"
            built[index] = Check(kind, key, limit, amounts[amount], window)
        checks = tuple(built)
    return LimitPlan(checks, template, tokens, cost)


class _Template(msgspec.Struct, gc=False):
    """The checks of a route, key and stream-or-not. Per check: where it comes from (policy,
    field) and the check itself; `sized` lists those a request rebuilds (tpm and budgets: their
    amount, budgets their calendar window) as (index, kind, counter key, limit, amount (0: one,
    1: tokens, 2: cost), window, calendar ("", day or month)). `settled`: (check index, settled
    by cost) of the checks a finished request settles; `rpm` and `tpm`: the indexes of the
    checks behind the rate-limit headers; `limits`: each check's limit as header text."""

    sources: tuple[tuple[str, str], ...]
    checks: tuple[Check, ...]
    sized: tuple[tuple[int, str, str, float, int, float, str], ...]
    settled: tuple[tuple[int, bool], ...]
    rpm: tuple[int, ...]
    tpm: tuple[int, ...]
    limits: tuple[str, ...]
    counts_tokens: bool
    has_budget: bool


_AMOUNTS = {"one": 0, "tokens": 1, "cost": 2}
_TEMPLATES: dict[tuple[Any, ...], tuple[RouteTable, CompiledRoute | None, _Template | None]] = {}


def _template(
    table: RouteTable, route: CompiledRoute | None, ctx: RequestContext
) -> _Template | None:
    """PERF: built once per table, route, key and stream-or-not (not for ip-scoped policies,
    whose counter keys name the client); the entry holds the table and route, so an id reused
    after a reload never matches a stale entry."""
    key = ctx.api_key
    memo = (
        (id(table), id(route), ctx.stream)
        if key is None
        else (id(table), id(route), ctx.stream, key.id, key.project, key.org, key.limits)
    )
    found = _TEMPLATES.get(memo)
    if found is not None and found[0] is table and found[1] is route:
        return found[2]
    policies = applicable_policies(table, route, ctx)
    sources: list[tuple[str, str]] = []
    checks: list[Check] = []
    sized: list[tuple[int, str, str, float, int, float, str]] = []
    counts_tokens = has_budget = False
    for policy in policies:
        shape = _shape(policy)
        counts_tokens = counts_tokens or shape.counts_tokens
        has_budget = has_budget or shape.has_budget
        scope = scope_value(policy, ctx)
        for field, limit, kind, amount, window, calendar in shape.fields:
            if kind == "slots" and not ctx.stream:
                continue
            counter = f"{policy.state_id}:{field}:{scope}"
            if amount != "one" or calendar:
                sized.append(
                    (len(checks), kind, counter, limit, _AMOUNTS[amount], window, calendar)
                )
            sources.append((policy.name, field))
            checks.append(Check(kind, counter, limit, 1.0, window))
    template = None
    if checks:
        template = _Template(
            tuple(sources),
            tuple(checks),
            tuple(sized),
            tuple((i, f.startswith("cost")) for i, (_, f) in enumerate(sources) if f != "rpm"),
            tuple(i for i, (_, f) in enumerate(sources) if f == "rpm"),
            tuple(i for i, (_, f) in enumerate(sources) if f == "tpm"),
            tuple(_number(check.limit) for check in checks),
            counts_tokens,
            has_budget,
        )
    if not any(policy.scope == "ip" for policy in policies):
        if len(_TEMPLATES) > 4096:  # NOTE: keys and routes of long-gone tables
            _TEMPLATES.clear()
        _TEMPLATES[memo] = (table, route, template)
    return template


@dataclass(frozen=True, slots=True)
class _Shape:
    """A policy's configured limits in check order: (field, limit, kind, amount, window,
    calendar), where amount is one | tokens | cost and calendar is "", day or month."""

    fields: tuple[tuple[str, float, str, str, float, str], ...]
    has_budget: bool
    counts_tokens: bool


_SHAPES: dict[str, _Shape] = {}  # by policy state id (which changes with the policy)


def _shape(policy: LimitPolicy) -> _Shape:
    """PERF: built once per policy, not per request (an lru_cache would hash the policy)."""
    found = _SHAPES.get(policy.state_id)
    if found is not None:
        return found
    if len(_SHAPES) > 4096:  # NOTE: policies of long-gone tables
        _SHAPES.clear()
    candidates = (
        ("rpm", policy.rpm, "rate", "one", _MINUTE, ""),
        ("tpm", policy.tpm, "rate", "tokens", _MINUTE, ""),
        ("concurrent_streams", policy.concurrent_streams, "slots", "one", SLOT_TTL_S, ""),
        ("tokens_per_day", policy.tokens_per_day, "budget", "tokens", _DAY_TTL, "day"),
        ("tokens_per_month", policy.tokens_per_month, "budget", "tokens", _MONTH_TTL, "month"),
        ("cost_per_day", policy.cost_per_day, "budget", "cost", _DAY_TTL, "day"),
        ("cost_per_month", policy.cost_per_month, "budget", "cost", _MONTH_TTL, "month"),
    )
    fields = tuple(
        (field, float(limit), kind, amount, window, calendar)
        for field, limit, kind, amount, window, calendar in candidates
        if limit is not None
    )
    shape = _SHAPES[policy.state_id] = _Shape(fields, policy.has_budget, policy.counts_tokens)
    return shape


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


def _reservation(ctx: RequestContext, model: CompiledModel) -> tuple[int, float]:
    """Tokens and cost reserved at admission: the prompt's estimate (the body's size / 4, an
    over-estimate) plus the client's `max_tokens` (or `max_completion_tokens`,
    `max_output_tokens`) when it set one."""
    # PERF: the body's size / 4 over-estimates the prompt without walking the messages; a
    # route's edits change the size by a few bytes
    prompt = estimate_tokens(len(ctx.raw))
    most: Any
    if ctx.body_decoded:  # NOTE: a route edited the body (max_tokens may be clamped): read it
        body = ctx.body()
        most = body.get("max_tokens") or body.get("max_completion_tokens")
        most = most or body.get("max_output_tokens")
    else:  # PERF: no decode (it would also cost the zero-copy forward), no generator
        head = ctx.head
        most = getattr(head, "max_tokens", None) or getattr(head, "max_completion_tokens", None)
        most = most or getattr(head, "max_output_tokens", None)
    output = most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else 0
    pricing = model.pricing
    cost = 0.0
    if pricing is not None:
        cost = (prompt * pricing.input_per_mtok + output * pricing.output_per_mtok) / 1_000_000
    return prompt + output, cost


class Admission(msgspec.Struct, gc=False):  # PERF: one per request, built in C
    plan: LimitPlan
    verdict: Verdict | None  # None: the backend failed and `on_backend_error: allow` let it in
    style: str = "api"  # limits.headers: api | x-ratelimit | both | none
    hold: str = ""  # what the limiter knows this request's reservations by (unique per request)

    def headers(self, api: str) -> list[tuple[str, str]]:
        """Rate-limit headers from the tightest rpm and tpm checks: the ones each SDK knows
        (`style` api), CF-X's ``X-RateLimit-*`` for requests (x-ratelimit), both, or none."""
        verdict, style = self.verdict, self.style
        if verdict is None or style == "none":
            return []
        template, states = self.plan.template, verdict.states
        anthropic = api.startswith("anthropic.")
        out: list[tuple[str, str]] = []
        if template.rpm:
            index = _tightest(states, template.rpm)
            state, limit = states[index], template.limits[index]
            if style != "x-ratelimit":
                out += _rate_headers(anthropic, "requests", state, limit)
            if style != "api":
                out += [
                    ("x-ratelimit-limit", limit),
                    ("x-ratelimit-remaining", _number(state.remaining)),
                    ("x-ratelimit-reset", str(math.ceil(state.reset_s))),
                ]
        if template.tpm and style != "x-ratelimit":
            index = _tightest(states, template.tpm)
            out += _rate_headers(anthropic, "tokens", states[index], template.limits[index])
        return out


def _tightest(states: tuple[CheckState, ...], indexes: tuple[int, ...]) -> int:
    """Of the checks at `indexes`, the index of the state with the least left: the most used
    beyond its limit (the first of equals)."""
    tightest = indexes[0]
    for i in indexes[1:]:  # PERF: none when one policy sets them, the common case
        state, best = states[i], states[tightest]
        if state.used - state.limit > best.used - best.limit:
            tightest = i
    return tightest


def _names(pattern: str) -> dict[str, tuple[str, str, str]]:
    """Header names per family, built once: ``_names("x-ratelimit-{n}-{f}")["tokens"]`` ->
    ``("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")``"""
    name = pattern.format
    return {
        f: (name(n="limit", f=f), name(n="remaining", f=f), name(n="reset", f=f))
        for f in ("requests", "tokens")
    }


_OPENAI_NAMES = _names("x-ratelimit-{n}-{f}")
_ANTHROPIC_NAMES = _names("anthropic-ratelimit-{f}-{n}")


def _rate_headers(
    anthropic: bool, family: str, state: CheckState, limit_text: str
) -> list[tuple[str, str]]:
    limit, used, reset_s = state.limit, state.used, state.reset_s
    if anthropic:
        names = _ANTHROPIC_NAMES[family]
        reset = dt.datetime.fromtimestamp(time.time() + reset_s, dt.UTC)
        when = reset.isoformat(timespec="seconds").replace("+00:00", "Z")
    else:
        names = _OPENAI_NAMES[family]
        # PERF: 0 (room left now) is the common case
        when = "0s" if reset_s == 0.0 else f"{reset_s:.3f}s".replace(".000s", "s")
    left = limit - used if used < limit else 0.0
    return [(names[0], limit_text), (names[1], _number(left)), (names[2], when)]


def _number(value: float) -> str:
    if value.is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0")


async def admit(
    limiter: Limiter, plan: LimitPlan, ctx: RequestContext, now: float, on_error: str, style: str
) -> Admission:
    """Admit or raise the 429 (or, when the backend fails and `on_error` is ``deny``, a 503)."""
    # NOTE: not the request id alone: a client may send the same x-request-id twice
    hold = f"{ctx.request_id}:{unique_suffix()}"
    try:
        verdict = await limiter.admit(hold, plan.checks, now)
    except Exception as exc:
        return _failed(plan, exc, on_error, style)
    return _admission(plan, verdict, style, hold, ctx.api)


def admit_now(
    limiter: MemoryLimiter,
    plan: LimitPlan,
    ctx: RequestContext,
    now: float,
    on_error: str,
    style: str,
) -> Admission:
    """`admit` on the memory backend. PERF: it has nothing to wait for, so no coroutine; and
    as its counters live in this process, a hold needs to be unique only here."""
    hold = next(_MEMORY_HOLDS)
    try:
        verdict = limiter.admit_now(hold, plan.checks, now)
    except Exception as exc:
        return _failed(plan, exc, on_error, style)
    return _admission(plan, verdict, style, hold, ctx.api)


def _failed(plan: LimitPlan, exc: Exception, on_error: str, style: str) -> Admission:
    if on_error == "deny":
        raise GatewayError(
            503,
            "the limits backend is unavailable, so requests are refused "
            "(limits.on_backend_error: deny)",
            code="limits_unavailable",
            headers=(("retry-after", "1"),),
        ) from None
    _LOG.warning("limits backend failed; admitting (on_backend_error: allow): %s", exc)
    return Admission(plan, None, style)


def _admission(plan: LimitPlan, verdict: Verdict, style: str, hold: str, api: str) -> Admission:
    admission = Admission(plan, verdict, style, hold)
    if verdict.admitted or verdict.refused is None:
        return admission
    index = verdict.refused
    policy, field = plan.template.sources[index]
    check, state = plan.checks[index], verdict.states[index]
    raise refusal(policy, field, check, state, admission.headers(api))


class LimitRefusal(GatewayError):
    """The 429 of a limit policy; `policy` names it (for the refusal metrics)."""

    def __init__(self, policy: str, message: str, **kwargs: Any) -> None:
        super().__init__(429, message, **kwargs)
        self.policy = policy


def refusal(
    policy: str, field: str, check: Check, state: CheckState, rate_headers: list[tuple[str, str]]
) -> GatewayError:
    """The 429 for a refused check: which policy, and for budgets what is used and left."""
    budget = check.kind == "budget"
    retry_after = max(1, math.ceil(state.reset_s)) if not budget else None
    if budget:
        retry_after = _until_window_end(field)
        unit = "" if field.startswith("tokens") else " (in the models' pricing currency)"
        message = (
            f"limit policy '{policy}': {field} budget of {_number(check.limit)}{unit} "
            f"would be exceeded: {_number(state.used)} used or reserved, "
            f"{_number(state.remaining)} left, this request needs about {_number(check.amount)}"
        )
    elif check.kind == "slots":
        message = (
            f"limit policy '{policy}': {_number(check.limit)} concurrent streams "
            "are already open; retry when one ends"
        )
    else:
        message = (
            f"limit policy '{policy}': {field} limit of {_number(check.limit)} reached "
            f"({_number(state.used)} in the last minute); retry in {retry_after} s"
        )
    headers = [("retry-after", str(retry_after)), *rate_headers]
    return LimitRefusal(
        policy,
        message,
        code="insufficient_quota" if budget else "rate_limit_exceeded",
        headers=headers,
    )


def _until_window_end(field: str) -> int:
    now = dt.datetime.now(dt.UTC)
    if field.endswith("_day"):
        end = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    else:
        first = now.date().replace(day=1)
        end = dt.datetime.combine((first + dt.timedelta(days=32)).replace(day=1), dt.time(), dt.UTC)
    return max(1, math.ceil((end - now).total_seconds()))
