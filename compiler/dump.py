"""A deterministic, secret-free rendering of a compiled `RouteTable`.

`dump_table(table)` gives stable JSON text (sorted keys, patterns as their source, secrets as
their reference or ``"***"``, the route index as route names per value), suitable for golden files
and for `interlock dump`::

    {"version": "3f2a…", "routes": [{"index": 0, "name": "plan-stage", ...}], ...}
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from typing import Any

from compiler.diagnostics import Span
from compiler.jsonpath import JsonPathPlan
from compiler.table import CompiledTarget, RouteIndex, RouteTable, SecretRef


def dump_table(table: RouteTable) -> str:
    return json.dumps(to_plain(table), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def to_plain(value: Any, *, routes: tuple[str, ...] = ()) -> Any:
    """Convert compiled artifacts to JSON-able data, never revealing a secret's value."""
    if isinstance(value, RouteTable):
        names = tuple(r.name for r in value.routes)
        return {f.name: _field(value, f.name, names) for f in dataclasses.fields(value)}
    if isinstance(value, SecretRef):
        if value.env is not None:
            return {"env": value.env}
        if value.file is not None:
            return {"file": value.file}
        return "***"
    if isinstance(value, RouteIndex):
        return _index(value, routes)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, JsonPathPlan):
        return value.source
    if isinstance(value, Span):
        return None
    if isinstance(value, CompiledTarget):
        # NOTE: a target names its upstream; the upstream itself is dumped under `upstreams`.
        return {**_fields(value, routes, skip="upstream"), "upstream": value.upstream.name}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value, routes)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, routes=routes) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((to_plain(v, routes=routes) for v in value), key=_sort_key)
    if isinstance(value, tuple | list):
        return [to_plain(v, routes=routes) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def _field(table: RouteTable, name: str, route_names: tuple[str, ...]) -> Any:
    return to_plain(getattr(table, name), routes=route_names)


def _fields(value: Any, routes: tuple[str, ...], skip: str = "") -> dict[str, Any]:
    return {
        f.name: to_plain(getattr(value, f.name), routes=routes)
        for f in dataclasses.fields(value)
        if f.name != skip and not isinstance(getattr(value, f.name), Span)
    }


def _index(index: RouteIndex, routes: tuple[str, ...]) -> dict[str, Any]:
    def names(mask: int) -> list[str]:
        return [routes[i] for i in range(len(routes)) if mask >> i & 1]

    return {
        "api": {k: names(v) for k, v in index.api.items()},
        "model": {k: names(v) for k, v in index.model.items()},
        "model_wild": names(index.model_wild),
        "headers": {
            name: {"values": {k: names(v) for k, v in values.items()}, "wild": names(wild)}
            for name, values, wild in index.headers
        },
    }


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
