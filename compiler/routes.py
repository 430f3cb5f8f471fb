"""Lowering of `routes`: match conditions, actions, and the unreachable-route check.

`lower_routes(lw, specs, refs)` compiles each route in order, reporting through `lw` every
unknown reference, invalid regex or JSONPath (located inside the string) and duplicate name;
`check_unreachable` reports routes an earlier route covers (`compiler.analysis`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from compiler.analysis import covered_routes
from compiler.headers import HeaderPolicy
from compiler.jsonpath import JsonPathCompileError, compile_jsonpath
from compiler.loader import PathKey
from compiler.table import (
    BodyPredicate,
    CacheSettings,
    CompiledAction,
    CompiledMatch,
    CompiledModel,
    CompiledRoute,
    HeaderCondition,
    LimitSettings,
    ParamPlan,
    Rejection,
    TextCondition,
)
from compiler.transforms import TransformPipeline

if TYPE_CHECKING:
    from compiler.lower import Lowering

_BODY_OPS = ("equals", "not_equals", "in", "exists", "gt", "gte", "lt", "lte", "regex")


@dataclass(frozen=True)
class RouteRefs:
    """What routes may name. A policy defined with errors of its own is in `*_defined` but not
    compiled: naming it is not reported again, and the route gets nothing for it."""

    header_policies: Mapping[str, HeaderPolicy]
    transforms: Mapping[str, TransformPipeline]
    limits: LimitSettings
    cache: CacheSettings
    models: Mapping[str, CompiledModel]
    model_names: Mapping[str, str]
    model_globs: list[tuple[re.Pattern[str], str]]
    header_policies_defined: frozenset[str] = frozenset()
    transforms_defined: frozenset[str] = frozenset()


def lower_routes(lw: Lowering, specs: list[Any], refs: RouteRefs) -> list[CompiledRoute]:
    """The routes in order (``routes[i]`` gets index i), reporting duplicate names and response
    transforms that cannot run on streams on a route that allows streaming."""
    routes: list[CompiledRoute] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        base: PathKey = ("routes", i)
        name = spec["name"]
        if name in seen:
            lw.error(
                "name.duplicate",
                f"route name '{name}' is already used by routes[{seen[name]}]",
                lw.span((*base, "name")),
            )
        seen.setdefault(name, i)
        match = _lower_match(lw, spec.get("match") or {}, (*base, "match"))
        action = _lower_action(lw, spec.get("action") or {}, (*base, "action"), refs)
        if any(not s.stream_safe for t in action.transforms for s in t.response) and (
            match.stream is not False
        ):
            lw.warn(
                "transform.not_stream_safe",
                f"route '{name}' allows streaming but a response transform cannot run on streams;"
                " it will be skipped for streamed responses",
                lw.doc.key_span((*base, "action", "transforms")),
                hint="add `stream: false` to the match, or mark the step stream_safe",
            )
        routes.append(CompiledRoute(len(routes), name, match, action, lw.span(base)))
    return routes


def _lower_match(lw: Lowering, spec: dict[str, Any], base: PathKey) -> CompiledMatch:
    models, pattern = _lower_model_matcher(lw, spec.get("model"), (*base, "model"))
    text = spec.get("text")
    text_condition = None
    if text:
        compiled = lw.regex(text["regex"], (*base, "text", "regex"))
        if compiled is not None:
            text_condition = TextCondition(compiled, text.get("in", "all"))
    key = spec.get("key") or {}
    return CompiledMatch(
        apis=frozenset(_as_list(spec["api"])) if "api" in spec else None,
        models=models,
        model_pattern=pattern,
        headers=_lower_header_conditions(lw, spec.get("headers") or {}, (*base, "headers")),
        key=tuple(sorted((k, str(v)) for k, v in key.items() if k != "tags")),
        key_tags=tuple(sorted((k, str(v)) for k, v in (key.get("tags") or {}).items())),
        body=_lower_body_predicates(lw, spec.get("body") or [], (*base, "body")),
        stream=spec.get("stream"),
        text=text_condition,
        prompt_chars=tuple(sorted((op, n) for op, n in (spec.get("prompt_chars") or {}).items())),
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _lower_model_matcher(
    lw: Lowering, spec: Any, path: PathKey
) -> tuple[frozenset[str] | None, re.Pattern[str] | None]:
    if spec is None:
        return None, None
    if isinstance(spec, str | list):
        return frozenset(_as_list(spec)), None
    if "glob" in spec:
        # NOTE: model patterns are searched (regex semantics); a glob is anchored at both ends
        return None, re.compile(r"\A" + fnmatch.translate(spec["glob"]))
    return None, lw.regex(spec["regex"], (*path, "regex"))


def _lower_header_conditions(
    lw: Lowering, spec: dict[str, Any], base: PathKey
) -> tuple[HeaderCondition, ...]:
    out = []
    for name, condition in spec.items():
        lname = name.lower()
        if isinstance(condition, str):
            out.append(HeaderCondition(lname, equals=condition))
        elif "regex" in condition:
            compiled = lw.regex(condition["regex"], (*base, name, "regex"))
            out.append(HeaderCondition(lname, pattern=compiled))
        else:
            out.append(HeaderCondition(lname, present=bool(condition.get("present", True))))
    return tuple(out)


def _lower_body_predicates(
    lw: Lowering, specs: list[Any], base: PathKey
) -> tuple[BodyPredicate, ...]:
    out = []
    for i, spec in enumerate(specs):
        try:
            plan = compile_jsonpath(spec["path"])
        except JsonPathCompileError as exc:
            lw.error(
                "jsonpath.invalid",
                f"invalid JSONPath: {exc.message}",
                lw.doc.span_at((*base, i, "path"), exc.offset),
            )
            continue
        op = next(o for o in _BODY_OPS if o in spec)
        pattern = None
        if op == "regex":
            pattern = lw.regex(spec["regex"], (*base, i, "regex"))
        out.append(BodyPredicate(plan, op, spec[op], pattern))
    return tuple(out)


def _lower_action(
    lw: Lowering, spec: dict[str, Any], base: PathKey, refs: RouteRefs
) -> CompiledAction:
    def model_ref(key: str) -> str | None:
        name = spec.get(key)
        if name is None:
            return None
        if not lw.ref("model", name, refs.model_names, (*base, key), "ref.unknown_model"):
            return None
        return refs.model_names[name]

    def refs_to(
        key: str, known: Mapping[str, Any], kind: str, code: str, defined: Iterable[str] = ()
    ) -> list[Any]:
        """The `known` values `spec[key]` names; a name `defined` but not compiled (it had
        errors of its own) is neither reported again nor returned."""
        names = set(known) | set(defined)
        found = []
        for i, name in enumerate(spec.get(key) or []):
            if lw.ref(kind, name, names, (*base, key, i), code) and name in known:
                found.append(known[name])
        return found

    params = spec.get("params") or {}
    reject = spec.get("reject")
    limits = None
    if "limits" in spec:
        limits = tuple(
            p.name
            for p in refs_to("limits", refs.limits.policies, "limit policy", "ref.unknown_limit")
        )
    cache = spec.get("cache")
    if isinstance(cache, str):
        lw.ref("cache policy", cache, refs.cache.policies, (*base, "cache"), "ref.unknown_cache")
    return CompiledAction(
        model=model_ref("model"),
        default_model=model_ref("default_model"),
        params=ParamPlan(
            set=MappingProxyType(dict(params.get("set") or {})),
            default=MappingProxyType(dict(params.get("default") or {})),
            clamp=MappingProxyType(
                {k: (v.get("min"), v.get("max")) for k, v in (params.get("clamp") or {}).items()}
            ),
            drop=tuple(params.get("drop") or ()),
        ),
        reject=Rejection(reject["status"], reject.get("message", "request rejected by route"))
        if reject
        else None,
        header_policies=tuple(
            refs_to(
                "headers",
                refs.header_policies,
                "header policy",
                "ref.unknown_header_policy",
                refs.header_policies_defined,
            )
        ),
        transforms=tuple(
            refs_to(
                "transforms",
                refs.transforms,
                "transform pipeline",
                "ref.unknown_transform",
                refs.transforms_defined,
            )
        ),
        limits=limits,
        cache=cache if isinstance(cache, str) else None,
        drop_unsupported=spec.get("drop_unsupported", False),
        hosted_tools=spec.get("hosted_tools", "drop"),
        log_bodies=spec.get("log_bodies"),
    )


def check_unreachable(lw: Lowering, specs: list[Any]) -> None:
    matches = [spec.get("match") or {} for spec in specs]
    for j, i in covered_routes(matches):
        lw.error(
            "route.unreachable",
            f"route '{specs[j]['name']}' can never match: route '{specs[i]['name']}'"
            f" (routes[{i}]) matches everything it matches",
            lw.span(("routes", j, "name")),
            hint="move it above the broader route, or narrow the broader route",
        )
