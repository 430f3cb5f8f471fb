"""Limit policies applied to one request: which policies, which counters, the admission verdict
as headers or a 429, and the settlement once the real usage is known.

    plan = plan_limits(table, route, ctx, model, now)       # None: no policy applies
    admission = await admit(limiter, plan, ctx, now, on_error="allow")   # or raises the 429
    admission.headers("openai.chat") -> [("x-ratelimit-limit-requests", "20"), ...]
    ... serve ...
    await limiter.settle(admission.hold, plan.settlements(tokens=812, cost=0.004), now)

Counter keys are ``<policy state id>:<field>:<scope value>[:<calendar window>]``, so counters
survive a reload that leaves the policy unchanged and start afresh when it changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compiler.table import CompiledModel, CompiledRoute, LimitPolicy, RouteTable
from runtime.errors import GatewayError, is_anthropic
from runtime.request import RequestContext
from runtime.state.limits import Check, CheckState, Limiter, Settlement, Verdict
from runtime.translate.anthropic import estimate_tokens

_LOG = logging.getLogger("interlock")
_MINUTE = 60.0
_DAY_TTL = 2 * 86400.0
_MONTH_TTL = 62 * 86400.0
SLOT_TTL_S = 3600.0  # NOTE: a crashed process's stream slots free themselves after this


@dataclass(frozen=True, slots=True)
class Guarded:
    """One check and where it came from, for messages and headers."""

    policy: str
    field: str  # rpm | tpm | concurrent_streams | tokens_per_day | ... | cost_per_month
    check: Check


@dataclass(frozen=True, slots=True)
class LimitPlan:
    checks: tuple[Guarded, ...]
    reserved_tokens: int
    reserved_cost: float

    def settlements(self, *, tokens: int, cost: float) -> list[Settlement]:
        """What this request really used, per check (stream slots are simply freed)."""
        out = []
        for guarded in self.checks:
            field = guarded.field
            if field == "rpm":
                continue  # NOTE: a request counts 1 whatever happened
            actual = cost if field.startswith("cost") else float(tokens)
            out.append(Settlement(guarded.check, actual))
        return out


def applicable_policies(
    table: RouteTable, route: CompiledRoute | None, ctx: RequestContext
) -> list[LimitPolicy]:
    """The route's policies (or `limits.default` when the route names none), then the key's."""
    names: list[str] = []
    route_limits = route.action.limits if route is not None else None
    names += route_limits if route_limits is not None else table.limits.default
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
    policies = applicable_policies(table, route, ctx)
    if not policies:
        return None
    tokens, cost = _reservation(ctx, model, policies)
    day = _day(now) if any(p.has_budget for p in policies) else ""
    checks: list[Guarded] = []
    for policy in policies:
        base = f"{policy.state_id}:{{}}:{scope_value(policy, ctx)}"
        for field, limit, kind, amount, window in (
            ("rpm", policy.rpm, "rate", 1.0, _MINUTE),
            ("tpm", policy.tpm, "rate", float(tokens), _MINUTE),
            (
                "concurrent_streams",
                policy.concurrent_streams if ctx.stream else None,
                "slots",
                1.0,
                SLOT_TTL_S,
            ),
            ("tokens_per_day", policy.tokens_per_day, "budget", float(tokens), _DAY_TTL),
            ("tokens_per_month", policy.tokens_per_month, "budget", float(tokens), _MONTH_TTL),
            ("cost_per_day", policy.cost_per_day, "budget", cost, _DAY_TTL),
            ("cost_per_month", policy.cost_per_month, "budget", cost, _MONTH_TTL),
        ):
            if limit is None:
                continue
            key = base.format(field)
            if field.endswith("_day"):
                key += f":{day}"
            elif field.endswith("_month"):
                key += f":{day[:7]}"
            checks.append(Guarded(policy.name, field, Check(kind, key, limit, amount, window)))
    return LimitPlan(tuple(checks), tokens, cost) if checks else None


_MAX_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


def _reservation(
    ctx: RequestContext, model: CompiledModel, policies: Sequence[LimitPolicy]
) -> tuple[int, float]:
    """Tokens and cost reserved at admission: the prompt's estimate (the body's size / 4, an
    over-estimate) plus the client's `max_tokens` (or `max_completion_tokens`,
    `max_output_tokens`) when it set one."""
    if not any(p.counts_tokens for p in policies):
        return 0, 0.0
    if ctx.body_decoded:  # NOTE: a route edited the body (max_tokens may be clamped): read it
        prompt = estimate_tokens(ctx.prompt_chars())
        source: Any = ctx.body()
        most = next((source.get(f) for f in _MAX_FIELDS if source.get(f)), 0)
    else:  # PERF: no decode (it would also cost the zero-copy forward): size / 4 over-estimates
        prompt = estimate_tokens(len(ctx.raw))
        most = next(
            (getattr(ctx.head, f, None) for f in _MAX_FIELDS if getattr(ctx.head, f, None)), 0
        )
    output = most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else 0
    pricing = model.pricing
    cost = 0.0
    if pricing is not None:
        cost = (prompt * pricing.input_per_mtok + output * pricing.output_per_mtok) / 1_000_000
    return prompt + output, cost


@dataclass(frozen=True, slots=True)
class Admission:
    plan: LimitPlan
    verdict: Verdict | None  # None: the backend failed and `on_backend_error: allow` let it in
    style: str = "api"  # limits.headers: api | x-ratelimit | both | none
    hold: str = ""  # what the limiter knows this request's reservations by (unique per request)

    def headers(self, api: str) -> list[tuple[str, str]]:
        """Rate-limit headers from the tightest rpm and tpm checks: the ones each SDK knows
        (`style` api), CF-X's ``X-RateLimit-*`` for requests (x-ratelimit), both, or none."""
        if self.verdict is None or self.style == "none":
            return []
        out: list[tuple[str, str]] = []
        for family, fields in (("requests", ("rpm",)), ("tokens", ("tpm",))):
            state = self._tightest(fields)
            if state is None:
                continue
            if self.style in ("api", "both"):
                out += _rate_headers(api, family, state)
            if self.style in ("x-ratelimit", "both") and family == "requests":
                out += [
                    ("x-ratelimit-limit", _number(state.limit)),
                    ("x-ratelimit-remaining", _number(state.remaining)),
                    ("x-ratelimit-reset", str(math.ceil(state.reset_s))),
                ]
        return out

    def _tightest(self, fields: Sequence[str]) -> CheckState | None:
        assert self.verdict is not None
        found = [
            state
            for guarded, state in zip(self.plan.checks, self.verdict.states, strict=True)
            if guarded.field in fields
        ]
        return min(found, key=lambda s: s.remaining) if found else None


def _rate_headers(api: str, family: str, state: CheckState) -> list[tuple[str, str]]:
    limit, remaining = _number(state.limit), _number(state.remaining)
    if is_anthropic(api):
        reset = dt.datetime.fromtimestamp(time.time() + state.reset_s, dt.UTC)
        prefix = f"anthropic-ratelimit-{family}"
        return [
            (f"{prefix}-limit", limit),
            (f"{prefix}-remaining", remaining),
            (f"{prefix}-reset", reset.isoformat(timespec="seconds").replace("+00:00", "Z")),
        ]
    return [
        (f"x-ratelimit-limit-{family}", limit),
        (f"x-ratelimit-remaining-{family}", remaining),
        (f"x-ratelimit-reset-{family}", f"{state.reset_s:.3f}s".replace(".000s", "s")),
    ]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")


async def admit(
    limiter: Limiter,
    plan: LimitPlan,
    ctx: RequestContext,
    now: float,
    *,
    on_error: str,
    style: str = "api",
) -> Admission:
    """Admit or raise the 429 (or, when the backend fails and `on_error` is ``deny``, a 503)."""
    try:
        # NOTE: not the request id alone: a client may send the same x-request-id twice
        hold = f"{ctx.request_id}:{os.urandom(6).hex()}"
        verdict = await limiter.admit(hold, [g.check for g in plan.checks], now)
    except Exception as exc:
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
    admission = Admission(plan, verdict, style, hold)
    if verdict.admitted or verdict.refused is None:
        return admission
    index = verdict.refused
    raise refusal(plan.checks[index], verdict.states[index], admission.headers(ctx.api))


class LimitRefusal(GatewayError):
    """The 429 of a limit policy; `policy` names it (for the refusal metrics)."""

    def __init__(self, policy: str, message: str, **kwargs: Any) -> None:
        super().__init__(429, message, **kwargs)
        self.policy = policy


def refusal(
    guarded: Guarded, state: CheckState, rate_headers: list[tuple[str, str]]
) -> GatewayError:
    """The 429 for a refused check: which policy, and for budgets what is used and left."""
    field, check = guarded.field, guarded.check
    budget = check.kind == "budget"
    retry_after = max(1, math.ceil(state.reset_s)) if not budget else None
    if budget:
        retry_after = _until_window_end(field)
        unit = "" if field.startswith("tokens") else " (in the models' pricing currency)"
        message = (
            f"limit policy '{guarded.policy}': {field} budget of {_number(check.limit)}{unit} "
            f"would be exceeded: {_number(state.used)} used or reserved, "
            f"{_number(state.remaining)} left, this request needs about {_number(check.amount)}"
        )
    elif check.kind == "slots":
        message = (
            f"limit policy '{guarded.policy}': {_number(check.limit)} concurrent streams "
            "are already open; retry when one ends"
        )
    else:
        message = (
            f"limit policy '{guarded.policy}': {field} limit of {_number(check.limit)} reached "
            f"({_number(state.used)} in the last minute); retry in {retry_after} s"
        )
    headers = [("retry-after", str(retry_after)), *rate_headers]
    return LimitRefusal(
        guarded.policy,
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
