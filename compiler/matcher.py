"""Route matching: a pure function over the compiled routes and one request's facts.

`match_route(table, facts)` returns the first route whose match holds, exactly as a scan in order
would (`match_route_naive`), but narrows the candidates first with the bitset `RouteIndex`: for the
API, the requested model and each header used with exact values it intersects the masks of routes
that can match, so the cost does not grow with the number of routes that constrain those to other
values::

    facts = RequestFacts(api="openai.chat", model="gpt-4o", headers={"x-cfx-stage": "plan"})
    match_route(table, facts).name  -> "plan-stage"
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from compiler.jsonpath import MISSING
from compiler.table import (
    APIS,
    BodyPredicate,
    CompiledMatch,
    CompiledRoute,
    RouteIndex,
    RouteTable,
)


class MatchInput(Protocol):
    """What matching may ask of a request. `body()` and `text()` may be computed lazily."""

    @property
    def api(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...  # lowercase names
    @property
    def stream(self) -> bool: ...
    @property
    def key(self) -> Mapping[str, str] | None: ...  # id, name, org, project of the caller's key
    @property
    def key_tags(self) -> Mapping[str, str]: ...
    def body(self) -> Any: ...
    def text(self, scope: str) -> str: ...
    def prompt_chars(self) -> int: ...


@dataclass
class RequestFacts:
    """A plain `MatchInput` (tests, tools); the runtime has a lazy one with the same contract."""

    api: str
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: bool = False
    key: Mapping[str, str] | None = None
    key_tags: Mapping[str, str] = field(default_factory=dict)
    payload: Any = None

    def body(self) -> Any:
        return self.payload if self.payload is not None else {}

    def text(self, scope: str) -> str:
        return message_text(self.api, self.body(), scope)

    def prompt_chars(self) -> int:
        return len(message_text(self.api, self.body(), "all"))


def message_text(api: str, body: Any, scope: str) -> str:
    """The message text of a request body, joined by newlines.

    `scope`: ``last_user`` (the last user message), ``user`` (all user messages), ``system``
    (system prompts) or ``all``. ``message_text("openai.chat", {"messages": [{"role": "user",
    "content": "hi"}]}, "all") -> "hi"``.
    """
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    if api == "openai.completions":
        if scope != "system":
            _collect(body.get("prompt"), parts)
        return "\n".join(parts)
    if api == "openai.embeddings":
        if scope != "system":
            _collect(body.get("input"), parts)
        return "\n".join(parts)
    if api == "openai.responses":
        return _responses_text(body, scope)
    if api.startswith("anthropic.") and scope in ("system", "all"):
        _collect(body.get("system"), parts)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "\n".join(parts)
    selected: Iterable[Any] = messages
    if scope == "last_user":
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        selected = users[-1:]
    for message in selected:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        system_role = role in ("system", "developer")
        if (
            scope == "all"
            or (scope == "system" and system_role)
            or (scope in ("user", "last_user") and role == "user")
        ):
            _collect(message.get("content"), parts)
    return "\n".join(parts)


def _responses_text(body: dict[str, Any], scope: str) -> str:
    """`message_text` of a Responses body: ``instructions`` is a system prompt, a string
    ``input`` one user message, and items are messages (and, for ``all``, tool outputs)."""
    parts: list[str] = []
    if scope in ("system", "all"):
        _collect(body.get("instructions"), parts)
    items = body.get("input")
    if isinstance(items, str):
        if scope != "system":
            parts.append(items)
        return "\n".join(parts)
    if not isinstance(items, list):
        return "\n".join(parts)
    messages = [i for i in items if isinstance(i, dict) and i.get("type", "message") == "message"]
    if scope == "last_user":
        users = [m for m in messages if m.get("role") == "user"]
        messages = users[-1:]
    for item in items if scope == "all" else messages:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if (
            scope == "all"
            or (scope == "system" and role in ("system", "developer"))
            or (scope in ("user", "last_user") and role == "user")
        ):
            _collect(item.get("content"), parts)
            _collect(item.get("output"), parts)
    return "\n".join(parts)


def _collect(content: Any, parts: list[str]) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for item in content:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])


def build_index(routes: Sequence[CompiledRoute], model_names: Iterable[str] = ()) -> RouteIndex:
    """The bitset index for `routes` (see `RouteIndex`).

    `model_names` (the config's model names and aliases) get their own entries when a route
    matches models by pattern, so a request naming one skips the patterns that cannot match it.
    """
    every = (1 << len(routes)) - 1
    api: dict[str, int] = {}
    for name in APIS:
        api[name] = _mask(r for r in routes if r.match.apis is None or name in r.match.apis)
    model_none = _mask(
        r for r in routes if r.match.models is None and r.match.model_pattern is None
    )
    patterned = [r for r in routes if r.match.model_pattern is not None]
    model_wild = model_none | _mask(patterned)
    exact: dict[str, int] = {}
    for route in routes:
        for name in sorted(route.match.models or ()):
            exact[name] = exact.get(name, 0) | (1 << route.index)
    names = dict.fromkeys([*exact, *(model_names if patterned else ())])
    model = {name: model_none | exact.get(name, 0) | _matching(patterned, name) for name in names}
    header_names = sorted({h.name for r in routes for h in r.match.headers if h.equals is not None})
    headers = []
    for name in header_names:
        wild = _mask(r for r in routes if not _exact_header(r.match, name))
        values: dict[str, int] = {}
        for route in routes:
            for value in _exact_header(route.match, name):
                values[value] = values.get(value, wild) | (1 << route.index)
        headers.append((name, MappingProxyType(values), wild))
    return RouteIndex(
        all_routes=every,
        api=MappingProxyType(api),
        model=MappingProxyType(model),
        model_wild=model_wild,
        headers=tuple(headers),
        api_wild=_mask(r for r in routes if r.match.apis is None),
        model_none=model_none,
    )


def _matching(routes: Iterable[CompiledRoute], model: str) -> int:
    return _mask(
        r
        for r in routes
        if r.match.model_pattern is not None and r.match.model_pattern.search(model)
    )


def _mask(routes: Iterable[CompiledRoute]) -> int:
    mask = 0
    for route in routes:
        mask |= 1 << route.index
    return mask


def _exact_header(match: CompiledMatch, name: str) -> list[str]:
    return [h.equals for h in match.headers if h.name == name and h.equals is not None]


def match_route(table: RouteTable, facts: MatchInput) -> CompiledRoute | None:
    """The first route of `table` that matches `facts`, or None."""
    index = table.index
    candidates = index.api.get(facts.api, index.api_wild)
    model = facts.model
    candidates &= (
        index.model.get(model, index.model_wild) if model is not None else index.model_none
    )
    if index.headers:
        request_headers = facts.headers
        for name, values, wild in index.headers:
            value = request_headers.get(name)
            candidates &= values.get(value, wild) if value is not None else wild
            if not candidates:
                return None
    routes = table.routes
    while candidates:
        low = candidates & -candidates
        route = routes[low.bit_length() - 1]
        if matches(route.match, facts):
            return route
        candidates ^= low
    return None


def match_route_naive(routes: Sequence[CompiledRoute], facts: MatchInput) -> CompiledRoute | None:
    """The reference: scan every route in order."""
    for route in routes:
        if matches(route.match, facts):
            return route
    return None


def matches(match: CompiledMatch, facts: MatchInput) -> bool:
    """Whether every condition of `match` holds for `facts` (cheap checks first)."""
    if match.apis is not None and facts.api not in match.apis:
        return False
    if match.stream is not None and facts.stream is not match.stream:
        return False
    if not _model_ok(match, facts.model):
        return False
    if match.headers and not _headers_ok(match, facts.headers):
        return False
    if (match.key or match.key_tags) and not _key_ok(match, facts):
        return False
    if match.prompt_chars:
        chars = facts.prompt_chars()
        if not all(_COMPARE[op](chars, limit) for op, limit in match.prompt_chars):
            return False
    if match.text is not None and not match.text.pattern.search(facts.text(match.text.scope)):
        return False
    return all(body_predicate_holds(p, facts.body()) for p in match.body)


def _model_ok(match: CompiledMatch, model: str | None) -> bool:
    if match.models is None and match.model_pattern is None:
        return True
    if model is None:
        return False
    if match.models is not None and model in match.models:
        return True
    return match.model_pattern is not None and match.model_pattern.search(model) is not None


def _headers_ok(match: CompiledMatch, headers: Mapping[str, str]) -> bool:
    for condition in match.headers:
        value = headers.get(condition.name)
        if condition.present is not None:
            if (value is not None) is not condition.present:
                return False
        elif (
            value is None
            or (condition.equals is not None and value != condition.equals)
            or (condition.pattern is not None and not condition.pattern.search(value))
        ):
            return False
    return True


def _key_ok(match: CompiledMatch, facts: MatchInput) -> bool:
    key = facts.key
    if key is None:
        return False
    if any(key.get(attr) != value for attr, value in match.key):
        return False
    tags = facts.key_tags
    return all(tags.get(tag) == value for tag, value in match.key_tags)


_COMPARE: Mapping[str, Callable[[Any, Any], bool]] = MappingProxyType(
    {"gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt}
)


def body_predicate_holds(predicate: BodyPredicate, body: Any) -> bool:
    """Evaluate one JSONPath predicate against the first value the path selects.

    ``{path: $.temperature, equals: 0}`` holds for ``{"temperature": 0}``; a missing value fails
    every operator except ``not_equals`` and ``exists: false``.
    """
    value = predicate.path.first(body)
    op = predicate.op
    if op == "exists":
        return (value is not MISSING) is bool(predicate.value)
    if value is MISSING:
        return op == "not_equals"
    if op == "equals":
        return _same(value, predicate.value)
    if op == "not_equals":
        return not _same(value, predicate.value)
    if op == "in":
        return any(_same(value, v) for v in predicate.value)
    if op == "regex":
        return (
            isinstance(value, str)
            and predicate.pattern is not None
            and bool(predicate.pattern.search(value))
        )
    compare = _COMPARE[op]
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and compare(value, predicate.value)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``True != 1`` (Python says they are equal), ``0 == 0.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return bool(a == b)
