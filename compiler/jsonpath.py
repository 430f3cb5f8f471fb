"""JSONPath plans: RFC 9535 paths compiled once, then read and edited against decoded JSON.

Parsing is python-jsonpath's, in a strict RFC 9535 environment (no unions, keys selectors,
pseudo-roots or other extensions). A *singular* path (only ``.name`` and ``[index]`` segments)
keeps its segments, so it is evaluated by a direct walk and can create what is missing; other
paths without filters are walked over the parsed selectors; paths with filters are evaluated by
python-jsonpath itself::

    plan = compile_jsonpath("$.metadata.user")
    body = {}
    plan.set(body, "interlock")        # -> 1; body == {"metadata": {"user": "interlock"}}
    plan.first(body)                   # -> "interlock"
    compile_jsonpath("$.messages[*].content").find({"messages": [{"content": "hi"}]})  # ["hi"]

Plans only ever mutate the document they are given, in place, and deep-copy every value they
write, so the plan (and the value it was compiled with) is never shared with a request.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, MutableSequence
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from jsonpath import JSONPath, JSONPathEnvironment
from jsonpath.exceptions import JSONPathError
from jsonpath.segments import JSONPathRecursiveDescentSegment
from jsonpath.selectors import IndexSelector, NameSelector, SliceSelector, WildcardSelector

__all__ = [
    "MISSING",
    "JsonPathCompileError",
    "JsonPathEvalError",
    "JsonPathPlan",
    "Missing",
    "Segment",
    "compile_jsonpath",
    "freeze_value",
    "require_singular",
    "thaw_value",
]

Segment = str | int
"""One step of a singular path: an object member name or an array index (may be negative)."""


class Missing(enum.Enum):
    """The type of `MISSING`: what `JsonPathPlan.first` returns when nothing matches."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing.MISSING


class JsonPathCompileError(Exception):
    """A path that does not parse; `offset` is the 0-based index in the path of the problem.

    ``compile_jsonpath("$.a[")`` raises one with ``offset == 4`` (the end of the path).
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.offset})"


class JsonPathEvalError(Exception):
    """A document a path cannot be evaluated against, e.g. nested deeper than ``..`` may go."""


# NOTE: one environment for every plan, holding only configuration and function extensions;
# `strict=True` rejects every non-RFC 9535 extension (unions, `~`, `#`, `^`, `=~`, ...).
_ENV: Final = JSONPathEnvironment(strict=True)
_SCALARS: Final = (str, int, float, bool, type(None))  # NOTE: a tuple for isinstance and `in`


def compile_jsonpath(path: str) -> JsonPathPlan:
    """Parse `path` as an RFC 9535 query, e.g. ``compile_jsonpath("$.messages[0].content")``.

    Raises `JsonPathCompileError` with the offset of the offending token.
    """
    path = str(path)
    try:
        query = _ENV.compile(path)
    except JSONPathError as exc:
        raise JsonPathCompileError(_error_message(exc), _error_offset(exc, path)) from None
    if not isinstance(query, JSONPath):  # pragma: no cover - strict mode rejects `|` and `&`
        raise JsonPathCompileError("unions and intersections are not RFC 9535", 0)
    if query.singular_query():
        return JsonPathPlan(path, query, True, segments=_segments(query))
    return JsonPathPlan(path, query, False, selection=_selection(query))


def require_singular(plan: JsonPathPlan) -> str | None:
    """Why `set`/`add` can never create `plan`'s path, or None when it can (a singular path)."""
    if not plan.singular:
        return (
            f"'{plan.source}' can select several nodes; set and add need a singular path "
            "(only .name and [index] segments)"
        )
    if not plan.segments:
        return "set and add cannot replace the whole document '$'"
    return None


def _error_message(exc: JSONPathError) -> str:
    message = exc.message
    return str(message) if message is not None else type(exc).__name__


def _error_offset(exc: JSONPathError, path: str) -> int:
    token = exc.token
    if token is None:
        return 0
    # NOTE: python-jsonpath gives the end-of-query token index -1.
    if token.index < 0:
        return len(path)
    return min(token.index, len(path))


def _segments(query: JSONPath) -> tuple[Segment, ...]:
    out: list[Segment] = []
    for segment in query.segments:
        selector = segment.selectors[0]
        if isinstance(selector, NameSelector):
            out.append(selector.name)
        elif isinstance(selector, IndexSelector):
            out.append(selector.index)
        else:  # pragma: no cover - singular_query() admits only these two
            raise TypeError(f"not a singular selector: {selector!r}")
    return tuple(out)


# --- evaluation without filters ---------------------------------------------------------------

_NAME, _INDEX, _WILD, _SLICE = range(4)
_OBJECT, _ARRAY = 1, 2
_Selector = tuple[int, Any]  # (kind, name | index | None | (start, stop, step))
_Step = tuple[bool, tuple[_Selector, ...]]  # (descendant segment?, selectors)


def _selection(query: JSONPath) -> tuple[_Step, ...] | None:
    """The query's segments as plain tuples, or None when one has a filter (or anything else
    this walk does not do), which leaves the query to python-jsonpath."""
    steps: list[_Step] = []
    for segment in query.segments:
        selectors: list[_Selector] = []
        for selector in segment.selectors:
            if isinstance(selector, NameSelector):
                selectors.append((_NAME, selector.name))
            elif isinstance(selector, IndexSelector):
                selectors.append((_INDEX, selector.index))
            elif isinstance(selector, WildcardSelector):
                selectors.append((_WILD, None))
            elif isinstance(selector, SliceSelector):
                # NOTE: a tuple, not the slice: slices are unhashable before Python 3.12.
                bounds = selector.slice
                selectors.append((_SLICE, (bounds.start, bounds.stop, bounds.step)))
            else:
                return None
        descendant = isinstance(segment, JSONPathRecursiveDescentSegment)
        steps.append((descendant, tuple(selectors)))
    return tuple(steps)


def _select(data: Any, steps: tuple[_Step, ...]) -> list[_Node]:
    """RFC 9535 evaluation of `steps` (names, indices, wildcards, slices; child or descendant
    segments), in document order; agrees with python-jsonpath (see the tests)."""
    nodes: list[_Node] = [(None, None, data)]
    for descendant, selectors in steps:
        if descendant:
            nodes = [visited for node in nodes for visited in _descendants(node)]
        out: list[_Node] = []
        for _, _, value in nodes:
            shape = _shape(value)
            if shape:
                for kind, arg in selectors:
                    _apply_selector(value, shape == _OBJECT, kind, arg, out)
        nodes = out
    return nodes


def _shape(value: Any) -> int:
    """_OBJECT, _ARRAY or 0 (a scalar), the common JSON types first (PERF: no ABC checks)."""
    kind = type(value)
    if kind is dict:
        return _OBJECT
    if kind is list:
        return _ARRAY
    if kind in _SCALARS:
        return 0
    if isinstance(value, Mapping):
        return _OBJECT
    return _ARRAY if isinstance(value, SequenceABC) and not isinstance(value, str | bytes) else 0


def _apply_selector(value: Any, is_object: bool, kind: int, arg: Any, out: list[_Node]) -> None:
    if kind == _NAME:
        if is_object and arg in value:
            out.append((value, arg, value[arg]))
    elif kind == _INDEX:
        if not is_object:
            index = arg + len(value) if arg < 0 else arg
            if 0 <= index < len(value):
                out.append((value, index, value[index]))
    elif kind == _WILD:
        if is_object:
            out.extend((value, k, v) for k, v in value.items())
        else:
            out.extend((value, i, v) for i, v in enumerate(value))
    elif not is_object and arg[2] != 0:
        out.extend((value, i, value[i]) for i in range(*slice(*arg).indices(len(value))))


def _descendants(node: _Node) -> list[_Node]:
    """`node` and every object and array below it, pre-order (the order python-jsonpath visits
    them in); scalars are left out, as no selector selects anything from them."""
    out: list[_Node] = []
    stack: list[tuple[_Node, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        out.append(current)
        value = current[2]
        shape = _shape(value)
        if not shape:
            continue
        pairs = value.items() if shape == _OBJECT else enumerate(value)
        children = [(value, k, v) for k, v in pairs if _shape(v)]
        if children and depth >= _ENV.max_recursion_depth:
            raise JsonPathEvalError("the document is nested too deeply for '..'")
        stack.extend((child, depth + 1) for child in reversed(children))
    return out


# --- values -----------------------------------------------------------------------------------


def freeze_value(value: Any) -> Any:
    """A JSON value made immutable for a compiled plan: objects become read-only mappings,
    arrays tuples, scalars their plain type (not a YAML loader's subclass).
    ``freeze_value({"a": [1]}) -> mappingproxy({"a": (1,)})``."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, bool | str | int | float):
        return _plain_scalar(value)
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze_value(v) for k, v in value.items()})
    if isinstance(value, SequenceABC):
        return tuple(freeze_value(v) for v in value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _plain_scalar(value: bool | str | int | float) -> bool | str | int | float:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    return float(value)


def thaw_value(value: Any) -> Any:
    """A fresh, mutable deep copy of a (frozen or plain) JSON value: dicts, lists, scalars."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {k: thaw_value(v) for k, v in value.items()}
    if isinstance(value, SequenceABC):
        return [thaw_value(v) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


# --- the plan ---------------------------------------------------------------------------------

_Location = tuple[Any, Segment]  # (parent container, key or normalized index)
_Node = tuple[Any, Segment | None, Any]  # (parent container, key, value)


@dataclass(frozen=True, slots=True)
class JsonPathPlan:
    """A compiled JSONPath.

    `segments` is set for singular paths only (``("messages", 0)``); `selection` is set for
    other paths without filters, which are then evaluated over python-jsonpath's parsed
    selectors by a direct walk instead of its (general, much slower) match objects.
    """

    source: str
    query: JSONPath
    singular: bool
    segments: tuple[Segment, ...] | None = None
    selection: tuple[_Step, ...] | None = None

    # --- reading

    def find(self, data: Any) -> list[Any]:
        """Every matched value, in document order: ``$..name`` -> ``[v1, v2]``."""
        if self.segments is not None:
            found = _walk(data, self.segments)
            return [] if found is MISSING else [found]
        return [value for _, _, value in self._nodes(data)]

    def exists(self, data: Any) -> bool:
        return self.first(data) is not MISSING

    def first(self, data: Any) -> Any | Literal[Missing.MISSING]:
        """The first matched value, or `MISSING` (a match may itself be ``None``)."""
        if self.segments is not None:
            return _walk(data, self.segments)
        for _, _, value in self._nodes(data):
            return value
        return MISSING

    # --- editing

    def drop(self, data: Any) -> int:
        """Remove every matched node in place; returns how many were removed.

        Array elements are deleted from the highest index down, so ``$.a[0,2]`` removes the
        two elements it names. The root itself is never removed.
        """
        removed = 0
        for container, keys in _group(self._locations(data)):
            if isinstance(container, MutableSequence):
                for index in sorted(keys, reverse=True):
                    del container[index]  # type: ignore[arg-type]
                    removed += 1
            elif isinstance(container, MutableMapping):
                for key in keys:
                    del container[key]
                    removed += 1
        return removed

    def set(self, data: Any, value: Any) -> int:
        """Overwrite every match with a copy of `value`; when nothing matches and the path is
        singular, create it (and missing intermediate objects/arrays). Returns the writes made.

        ``compile_jsonpath("$.a.b").set({}, 1)`` -> 1, leaving ``{"a": {"b": 1}}``.
        """
        locations = self._locations(data)
        if not locations:
            return self._create(data, value)
        written = 0
        for container, key in _unique(locations):
            if _writable(container, key):
                container[key] = thaw_value(value)
                written += 1
        return written

    def add(self, data: Any, value: Any) -> int:
        """Append a copy of `value` to every matched array; a matched scalar becomes the array
        ``[scalar, value]`` (OpenAI's ``stop`` may be a string or a list); when nothing matches
        and the path is singular, create it as ``[value]``. Matched objects are left alone.

        ``compile_jsonpath("$.stop").add({"stop": ["a"]}, "b")`` -> 1, ``stop == ["a", "b"]``;
        ``compile_jsonpath("$.stop").add({"stop": "a"}, "b")`` -> 1, ``stop == ["a", "b"]``.
        """
        locations = self._locations(data)
        if not locations:
            return self._create(data, [value])
        appended = 0
        seen: set[int] = set()
        for container, key in _unique(locations):
            target = container[key]
            if isinstance(target, MutableSequence) and id(target) not in seen:
                seen.add(id(target))
                target.append(thaw_value(value))
                appended += 1
            elif target is None or isinstance(target, str | int | float | bool):
                container[key] = (
                    [target, thaw_value(value)] if target is not None else [thaw_value(value)]
                )
                appended += 1
        return appended

    def map_values(self, data: Any, fn: Callable[[Any], Any]) -> int:
        """Replace each matched value ``v`` by ``fn(v)`` where that is a different object;
        returns how many were replaced. Used for regex rewrites of selected strings."""
        changed = 0
        for container, key in _unique(self._locations(data)):
            old = container[key]
            new = fn(old)
            if new is not old:
                container[key] = new
                changed += 1
        return changed

    # --- internals

    def _nodes(self, data: Any) -> Iterable[_Node]:
        """Every match as ``(parent, key, value)``; the root's parent and key are None."""
        if self.selection is not None:
            return _select(data, self.selection)
        return self._library_nodes(data)

    def _library_nodes(self, data: Any) -> Iterator[_Node]:
        try:
            for match in self.query.finditer(data):
                parent = match.parent
                if parent is None:
                    yield None, None, match.obj
                # NOTE: python-jsonpath lets slices select characters of strings; RFC 9535
                # selects nothing there, so neither do we.
                elif not isinstance(parent.obj, str):
                    yield parent.obj, match.parts[-1], match.obj
        except JSONPathError as exc:
            raise JsonPathEvalError(f"cannot evaluate '{self.source}': {exc.message}") from None

    def _locations(self, data: Any) -> list[_Location]:
        """Where every match sits, collected before any edit so indices stay valid."""
        if self.segments is not None:
            if not self.segments:
                return []
            parent = _walk(data, self.segments[:-1])
            key = self.segments[-1]
            if parent is MISSING or _get(parent, key) is MISSING:
                return []
            if isinstance(key, int) and key < 0:
                key += len(parent)
            return [(parent, key)]
        return [(parent, key) for parent, key, _ in self._nodes(data) if key is not None]

    def _create(self, data: Any, leaf: Any) -> int:
        if self.segments is None or not self.segments:
            return 0
        return 1 if _create_path(data, self.segments, leaf) else 0


def _get(node: Any, key: Segment) -> Any:
    """``node[key]`` under RFC 9535 rules (names on objects, indices on arrays), or MISSING."""
    if isinstance(key, str):
        if isinstance(node, Mapping):
            return node.get(key, MISSING)
        return MISSING
    if isinstance(node, SequenceABC) and not isinstance(node, str | bytes):
        try:
            return node[key]
        except IndexError:
            return MISSING
    return MISSING


def _walk(data: Any, segments: tuple[Segment, ...]) -> Any:
    node = data
    for key in segments:
        node = _get(node, key)
        if node is MISSING:
            return MISSING
    return node


def _writable(container: Any, key: Segment) -> bool:
    if isinstance(key, str):
        return isinstance(container, MutableMapping)
    return isinstance(container, MutableSequence)


def _unique(locations: list[_Location]) -> list[_Location]:
    """Locations without repeats (``$[0,0]`` names one node twice)."""
    if len(locations) < 2:
        return locations
    seen: set[tuple[int, Segment]] = set()
    out = []
    for container, key in locations:
        marker = (id(container), key)
        if marker not in seen:
            seen.add(marker)
            out.append((container, key))
    return out


def _group(locations: list[_Location]) -> list[tuple[Any, set[Segment]]]:
    groups: dict[int, tuple[Any, set[Segment]]] = {}
    for container, key in locations:
        groups.setdefault(id(container), (container, set()))[1].add(key)
    return list(groups.values())


def _create_path(data: Any, segments: tuple[Segment, ...], leaf: Any) -> bool:
    """Create ``segments`` -> `leaf` below the deepest existing node; False (and no change) when
    an existing node is in the way (a string where an object is needed, an index past the end)."""
    depth = 0
    node = data
    while depth < len(segments) - 1:
        child = _get(node, segments[depth])
        if child is MISSING:
            break
        node = child
        depth += 1
    subtree = thaw_value(leaf)
    for key in reversed(segments[depth + 1 :]):
        if isinstance(key, str):
            subtree = {key: subtree}
        elif key in (0, -1):
            subtree = [subtree]
        else:
            return False
    return _insert(node, segments[depth], subtree)


def _insert(container: Any, key: Segment, value: Any) -> bool:
    if isinstance(key, str):
        if isinstance(container, MutableMapping):
            container[key] = value
            return True
        return False
    if isinstance(container, MutableSequence):
        size = len(container)
        # NOTE: appending is the only way to make `[key]` select the new element.
        if key == size or (key == -1 and size == 0):
            container.append(value)
            return True
    return False
