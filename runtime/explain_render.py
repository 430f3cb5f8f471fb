"""`interlock explain` output: an `Explanation` as text for people or JSON for machines.

request  POST /v1/chat/completions (openai.chat)
status   200: sent upstream
routes   1. chat-only      no: api is openai.chat, not one of: ...
         2. stage-plan     MATCH
...
"""

from __future__ import annotations

import json
from typing import Any

from runtime.explain import Explanation, TargetPlan


def render_json(found: Explanation) -> str:
    return json.dumps(found.as_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_text(found: Explanation) -> str:
    lines = [f"request   POST {found.path} ({found.api})"]
    if found.client_headers:
        lines.append("headers   " + _pairs(found.client_headers))
    lines.append(f"key       {found.key or '(none)'}")
    lines.append("status    " + _status(found))
    lines += _routes(found)
    if found.requested is not None:
        resolved = f" -> model {found.model}" if found.model else ""
        strategy = f" (strategy {found.strategy})" if found.strategy else ""
        lines.append(f"model     {found.requested!r}{resolved}{strategy}")
    if found.targets:
        lines.append("targets   in order" + _fallback_note(found))
        previous: TargetPlan | None = None
        for number, target in enumerate(found.targets, 1):
            lines += _target(number, target, previous)
            previous = target
    if found.model is not None:
        lines += _limits(found)
        lines.append("cache     " + _cache(found))
    return "\n".join(lines) + "\n"


def _status(found: Explanation) -> str:
    if found.failure is None:
        return f"{found.status}: sent upstream (the answer is the upstream's)"
    code = f" {found.failure.code}" if found.failure.code else ""
    return f"{found.failure.status}{code}: {found.failure.message}"


def _routes(found: Explanation) -> list[str]:
    if not found.routes:
        return []
    width = max(len(check.name) for check in found.routes)
    out = ["routes    in order, the first match decides"]
    for number, check in enumerate(found.routes, 1):
        head = f"  {number}. {check.name:<{width}}  "
        if check.matched:
            out.append(head + "MATCH")
            continue
        out.append(head + "no: " + check.reasons[0])
        out += [" " * len(head) + "    " + reason for reason in check.reasons[1:]]
    if found.route is None:
        out.append("  no route matches: the request keeps its own model")
    return out


def _fallback_note(found: Explanation) -> str:
    models = list(dict.fromkeys(t.model for t in found.targets))
    if len(models) == 1:
        return ""
    on = ", ".join(found.fallback_on) or "-"
    return f"; fallback models {' -> '.join(models[1:])} on: {on}"


def _target(number: int, target: TargetPlan, previous: TargetPlan | None) -> list[str]:
    where = f"POST {target.url}" if target.url else "(not sent over HTTP)"
    out = [
        f"  {number}. {target.upstream} ({target.kind}) {where}",
        f"     model sent: {target.upstream_model}" + _served_as(target),
    ]
    if target.note:
        out.append(f"     note: {target.note}")
    if target.failure is not None:
        failure = target.failure
        out.append(f"     fails: {failure.status} {failure.code or ''}: {failure.message}")
        return out
    if target.dropped:
        out.append("     dropped (drop_unsupported): " + ", ".join(target.dropped))
    if target.headers:
        out.append("     headers:")
        out += [f"       {name}: {value}" for name, value in target.headers]
    if target.body is not None and previous is not None and target.body == previous.body:
        out.append(f"     body: as for {number - 1}")
    elif target.body is not None:
        out.append("     body:")
        out += ["       " + line for line in _json(target.body).splitlines()]
    return out


def _served_as(target: TargetPlan) -> str:
    return f" (for model {target.model})"


def _limits(found: Explanation) -> list[str]:
    if not found.limits:
        return ["limits    none"]
    out = []
    for view in found.limits:
        values = ", ".join(f"{name} {_number(v)}" for name, v in view.limits.items())
        out.append(f"{view.policy} (scope {view.scope}, counter {view.counter}): {values or '-'}")
    return ["limits    " + out[0], *["          " + line for line in out[1:]]]


def _cache(found: Explanation) -> str:
    view = found.cache
    if view is None:
        return "none"
    head = f"{view.policy} (scope {view.scope}, ttl {_number(view.ttl_s)}s)"
    if not view.used:
        return f"{head}: not cached: {view.reason}"
    wishes = [w for w, on in (("lookup", view.lookup), ("store", view.store)) if on]
    return f"{head}: {' and '.join(wishes) or 'neither lookup nor store (client said so)'}"


def _pairs(pairs: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in pairs)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
