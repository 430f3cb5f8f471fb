"""Why each route did or did not match one request, for `interlock explain` and `interlock test`.

Each condition of a route is judged by the compiler's own `matches`, called on a match holding
only that condition, so an explanation can never disagree with routing::

    check_routes(table, facts) -> (RouteCheck("chat-only", False, ("api is openai.chat, not
                                    one of: anthropic.messages, ...",)),
                                   RouteCheck("stage-plan", True, ()))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from compiler.headers import is_secret_header
from compiler.jsonpath import MISSING
from compiler.matcher import MatchInput, match_route, matches
from compiler.table import BodyPredicate, CompiledMatch, HeaderCondition, RouteTable

_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


@dataclass(frozen=True)
class RouteCheck:
    name: str
    matched: bool
    reasons: tuple[str, ...]  # the conditions that do not hold (empty when it matched)


def check_routes(table: RouteTable, facts: MatchInput) -> tuple[RouteCheck, ...]:
    """The routes in order up to the one `match_route` picks (all of them when none does)."""
    chosen = match_route(table, facts)
    out = []
    for route in table.routes:
        if chosen is not None and route.index == chosen.index:
            out.append(RouteCheck(route.name, True, ()))
            break
        reasons = why_not(route.match, facts) or ("its conditions do not hold together",)
        out.append(RouteCheck(route.name, False, reasons))
    return tuple(out)


def why_not(match: CompiledMatch, facts: MatchInput) -> tuple[str, ...]:
    """Each condition of `match` that fails for `facts`, in words."""
    out: list[str] = []
    if match.apis is not None and not matches(CompiledMatch(apis=match.apis), facts):
        out.append(f"api is {facts.api}, not one of: {', '.join(sorted(match.apis))}")
    if match.stream is not None and not matches(CompiledMatch(stream=match.stream), facts):
        out.append(f"stream is {_json(facts.stream)}, the route wants {_json(match.stream)}")
    only_model = CompiledMatch(models=match.models, model_pattern=match.model_pattern)
    if (match.models is not None or match.model_pattern is not None) and not matches(
        only_model, facts
    ):
        out.append(_model_reason(match, facts.model))
    out.extend(
        _header_reason(condition, facts.headers.get(condition.name))
        for condition in match.headers
        if not matches(CompiledMatch(headers=(condition,)), facts)
    )
    if (match.key or match.key_tags) and not matches(
        CompiledMatch(key=match.key, key_tags=match.key_tags), facts
    ):
        out.append(_key_reason(match, facts))
    for op, limit in match.prompt_chars:
        if not matches(CompiledMatch(prompt_chars=((op, limit),)), facts):
            out.append(
                f"prompt is {facts.prompt_chars()} chars, the route wants {_OPS[op]} {limit}"
            )
    if match.text is not None and not matches(CompiledMatch(text=match.text), facts):
        text = match.text
        out.append(f"no match for /{text.pattern.pattern}/ in the {text.scope} text")
    out.extend(
        _body_reason(predicate, facts.body())
        for predicate in match.body
        if not matches(CompiledMatch(body=(predicate,)), facts)
    )
    return tuple(out)


def _model_reason(match: CompiledMatch, model: str | None) -> str:
    wanted = []
    if match.models is not None:
        wanted.append("one of: " + ", ".join(sorted(match.models)))
    if match.model_pattern is not None:
        wanted.append(f"matching /{match.model_pattern.pattern}/")
    if model is None:
        return "the request names no model; the route wants " + " or ".join(wanted)
    return f"model {model!r} is not " + " or ".join(wanted)


def _header_reason(condition: HeaderCondition, value: str | None) -> str:
    name = condition.name
    shown = "***" if value is not None and is_secret_header(name) else value
    got = "absent" if shown is None else repr(shown)
    if condition.present is not None:
        state = "present" if value is not None else "absent"
        wants = "present" if condition.present else "absent"
        return f"header {name} is {state}, the route wants it {wants}"
    if condition.equals is not None:
        return f"header {name} is {got}, the route wants {condition.equals!r}"
    pattern = condition.pattern.pattern if condition.pattern is not None else ""
    return f"header {name} is {got}, the route wants /{pattern}/"


def _key_reason(match: CompiledMatch, facts: MatchInput) -> str:
    wanted = [f"{attr}={value}" for attr, value in match.key]
    wanted += [f"tag {tag}={value}" for tag, value in match.key_tags]
    key = facts.key
    who = "no key" if key is None else f"key {key.get('id', '?')}"
    return f"the route wants a key with {', '.join(wanted)}; the caller has {who}"


def _body_reason(predicate: BodyPredicate, body: Any) -> str:
    value = predicate.path.first(body)
    got = "missing" if value is MISSING else _json(value)
    wanted = predicate.pattern.pattern if predicate.pattern is not None else predicate.value
    return f"body {predicate.path.source} is {got}, the route wants {predicate.op} {_json(wanted)}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
