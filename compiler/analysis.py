"""Static analyses the semantic checks report: routes an earlier route covers, fallback cycles,
referenced files that are missing.

Pure functions over the schema-valid spec (the file check only asks `os.path` whether a path
exists); `compiler.lower` turns their findings into located diagnostics::

    list(covered_routes([{}, {"model": "gpt-4o"}]))  -> [(1, 0)]
    list(fallback_cycles({"a": [(0, "b", "b")], "b": [(0, "a", "a")]}))
        -> [("b", 0, "a -> b -> a")]
    list(missing_files({"upstreams": {"u": {"api_key": {"file": "/nope"}}}}))
        -> [(("upstreams", "u", "api_key", "file"), "/nope", "secret file")]
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_Shape = frozenset[tuple[Any, ...]]
_SUBSET_LIMIT = 12  # a route with more conditions is compared with every earlier shape


def covered_routes(matches: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, int]]:
    """``(later, earlier)`` for each route `match` that an earlier one covers (`covers`), with
    the first such earlier route.

    PERF: earlier routes are indexed by the shape of their conditions, so each route is compared
    only with routes that could cover it: near-linear instead of every pair (1,000 routes).
    """
    index = _CoverIndex()
    for j, match in enumerate(matches):
        later = match_conditions(match)
        i = index.first_cover(later)
        if i is not None:
            yield j, i
        index.add(later)


def match_conditions(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A route match as comparable parts: sets for `api` and model names (a later set must be
    within the earlier one), canonical JSON for everything else (it must be equal)."""
    parts: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "api" or (key == "model" and isinstance(value, str | list)):
            parts[key] = frozenset(value if isinstance(value, list) else [value])
        elif key == "headers":
            by_name: dict[str, list[str]] = {}
            for name, condition in value.items():
                by_name.setdefault(name.lower(), []).append(json.dumps(condition, sort_keys=True))
            for name, conditions in by_name.items():
                # NOTE: two spellings of one header are kept together, never one for the other.
                parts[f"headers.{name}"] = (
                    conditions[0] if len(conditions) == 1 else (json.dumps(sorted(conditions)))
                )
        elif key == "body":
            for item in value:
                parts[f"body.{json.dumps(item, sort_keys=True)}"] = True
        else:
            parts[key] = json.dumps(value, sort_keys=True)
    return parts


def covers(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> bool:
    """Whether every request `later` matches is also matched by `earlier` (syntactically)."""
    for key, value in earlier.items():
        other = later.get(key)
        if other is None:
            return False
        if isinstance(value, frozenset):
            if not isinstance(other, frozenset) or not other <= value:
                return False
        elif other != value:
            return False
    return True


def _shape(conditions: Mapping[str, Any]) -> _Shape:
    """What a covering route must have: ``(key, value)`` for each exact condition, ``(key,)``
    for each set condition (api, model lists), which covers by containing the later set."""
    return frozenset(
        (key,) if isinstance(value, frozenset) else (key, value)
        for key, value in conditions.items()
    )


def _first_set_key(shape: _Shape) -> str | None:
    keys = [atom[0] for atom in shape if len(atom) == 1]
    return min(keys) if keys else None


@dataclass
class _CoverIndex:
    """Earlier routes' conditions by shape, and by shape plus one member of their first set
    condition: a route covering `later` has a shape within `later`'s shape and contains
    every member of `later`'s set in that condition."""

    routes: list[Mapping[str, Any]] = field(default_factory=list)
    by_shape: dict[_Shape, list[int]] = field(default_factory=dict)
    by_member: dict[tuple[_Shape, Any], list[int]] = field(default_factory=dict)

    def add(self, conditions: Mapping[str, Any]) -> None:
        index = len(self.routes)
        self.routes.append(conditions)
        shape = _shape(conditions)
        self.by_shape.setdefault(shape, []).append(index)
        key = _first_set_key(shape)
        if key is not None:
            for member in conditions[key]:
                self.by_member.setdefault((shape, member), []).append(index)

    def first_cover(self, later: Mapping[str, Any]) -> int | None:
        """The lowest index of an added route that covers `later`, or None."""
        atoms = _shape(later)
        if len(atoms) > _SUBSET_LIMIT:
            shapes: Iterable[_Shape] = [s for s in self.by_shape if s <= atoms]
        else:
            shapes = (
                frozenset(subset)
                for size in range(len(atoms) + 1)
                for subset in itertools.combinations(atoms, size)
            )
        best: int | None = None
        for shape in shapes:
            for i in self._candidates(shape, later):
                if best is not None and i >= best:
                    break
                if covers(self.routes[i], later):
                    best = i
                    break
        return best

    def _candidates(self, shape: _Shape, later: Mapping[str, Any]) -> list[int]:
        every = self.by_shape.get(shape)
        if every is None:
            return []
        key = _first_set_key(shape)
        if key is None or not later[key]:
            return every
        return self.by_member.get((shape, min(later[key])), [])


FallbackGraph = Mapping[str, Sequence[tuple[int, str, str]]]
"""model -> its fallbacks as (index in `fallback.models`, name as written, model it names)."""


def fallback_cycles(graph: FallbackGraph) -> Iterator[tuple[str, int, str]]:
    """``(model, index, chain)`` for every fallback edge that closes a cycle (a depth-first
    back edge). Linear in models and edges: ``a -> b -> c -> a`` is found once, at c's ``a``;
    a fallback written as an alias shows it: ``big -> large (an alias of big)``."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        trail = [start]  # the models on the current path, each with its next edge to follow
        on_trail = {start}
        edges = [iter(graph[start])]
        while edges:
            step = next(edges[-1], None)
            if step is None:
                done.add(trail[-1])
                on_trail.discard(trail.pop())
                edges.pop()
                continue
            i, written, target = step
            if target in on_trail:
                alias = f" (an alias of {target})" if written != target else ""
                chain = " -> ".join([*trail[trail.index(target) :], written]) + alias
                yield trail[-1], i, chain
            elif target not in done:
                trail.append(target)
                on_trail.add(target)
                edges.append(iter(graph[target]))


FileRef = tuple[tuple[str | int, ...], str, str]
"""A file the server reads: (where the document names it, the path, what the file is)."""

_TLS_FILES = {
    "ca_bundle": "CA bundle",
    "client_cert": "client certificate",
    "client_key": "client key",
}


def referenced_files(spec: Mapping[str, Any]) -> Iterator[FileRef]:
    """Every file the server reads when it loads the config: upstreams' TLS files and every
    ``{file: PATH}`` secret reference, in document order. Paths are as written (a relative one
    is relative to the server's working directory)."""
    for name, upstream in (spec.get("upstreams") or {}).items():
        tls = upstream.get("tls") or {}
        for key, what in _TLS_FILES.items():
            if isinstance(tls.get(key), str):
                yield ("upstreams", name, "tls", key), tls[key], f"TLS {what}"
    yield from _secret_files(spec, ())


def _secret_files(node: Any, path: tuple[str | int, ...]) -> Iterator[FileRef]:
    # NOTE: the schema allows `file` only in a secret reference, and alone there
    if isinstance(node, Mapping):
        if len(node) == 1 and isinstance(node.get("file"), str):
            yield (*path, "file"), node["file"], "secret file"
            return
        for key, value in node.items():
            yield from _secret_files(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _secret_files(value, (*path, i))


def missing_files(
    spec: Mapping[str, Any], exists: Callable[[str], bool] = os.path.isfile
) -> Iterator[FileRef]:
    """The `referenced_files` that are not files on this machine (`exists` says)."""
    for ref in referenced_files(spec):
        if not exists(ref[1]):
            yield ref
