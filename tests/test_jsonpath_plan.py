"""JsonPathPlan: strict RFC 9535 parsing, reading, and in-place editing of decoded JSON."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.jsonpath import (
    MISSING,
    JsonPathCompileError,
    JsonPathEvalError,
    compile_jsonpath,
    freeze_value,
    require_singular,
    thaw_value,
)

# --- compiling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        ("$.a[", 4),  # end of the path
        ("a.b", 0),  # no root identifier
        ("$.a[01]", 4),  # leading zero
        ("$.a | $.b", 4),  # union: a python-jsonpath extension, not RFC 9535
        ("$[?@.a =~ /x/]", 7),  # regex literal: an extension
        ("$.a[?foo(@)]", 5),  # unknown function
        ("$.a.~", 4),  # keys selector: an extension
        ("^.a", 0),  # pseudo root: an extension
        ("$.a ", 3),  # trailing whitespace
        ("$.1", 2),
    ],
)
def test_invalid_paths_report_the_offset(path: str, offset: int) -> None:
    with pytest.raises(JsonPathCompileError) as info:
        compile_jsonpath(path)
    assert info.value.offset == offset
    assert info.value.message
    assert str(offset) in str(info.value)


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("$", ()),
        ("$.messages[0].content", ("messages", 0, "content")),
        ("$['a b'][-1]", ("a b", -1)),
        ('$["x"].y', ("x", "y")),
    ],
)
def test_singular_paths_keep_their_segments(path: str, segments: tuple[Any, ...]) -> None:
    plan = compile_jsonpath(path)
    assert plan.singular
    assert plan.segments == segments
    assert plan.source == path
    assert require_singular(plan) is None or segments == ()


@pytest.mark.parametrize("path", ["$..a", "$.a[*]", "$.a[0,1]", "$.a[1:]", "$.a[?@.b == 1]"])
def test_non_singular_paths(path: str) -> None:
    plan = compile_jsonpath(path)
    assert not plan.singular
    assert plan.segments is None
    reason = require_singular(plan)
    assert reason is not None and path in reason


def test_root_cannot_be_set() -> None:
    assert "whole document" in (require_singular(compile_jsonpath("$")) or "")


@pytest.mark.parametrize("path", ["$.a[0]", "$..a[1:-1:2]", "$.a[?@.b == 1]"])
def test_plans_are_values(path: str) -> None:
    a, b = compile_jsonpath(path), compile_jsonpath(path)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.source = "$.b"  # type: ignore[misc]


# --- reading --------------------------------------------------------------------------------

DOC: dict[str, Any] = {
    "model": "gpt-4o",
    "temperature": None,
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ],
    "s": "hello",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.model", ["gpt-4o"]),
        ("$.messages[-1].role", ["user"]),
        ("$.messages[5]", []),
        ("$.messages[*].role", ["system", "user"]),
        ("$.messages[?@.role == 'user'].content[0].text", ["hi"]),
        ("$..text", ["hi"]),
        ("$.temperature", [None]),
        ("$.s[0:2]", []),  # slices select nothing in a string (RFC 9535)
        ("$.messages[0:1].role", ["system"]),
        ("$.model.x", []),
        ("$.s[0]", []),
    ],
)
def test_find(path: str, expected: list[Any]) -> None:
    assert compile_jsonpath(path).find(DOC) == expected


def test_first_and_exists_tell_missing_from_null() -> None:
    assert compile_jsonpath("$.temperature").first(DOC) is None
    assert compile_jsonpath("$.temperature").exists(DOC)
    assert compile_jsonpath("$.top_p").first(DOC) is MISSING
    assert not compile_jsonpath("$.top_p").exists(DOC)
    assert compile_jsonpath("$..role").first(DOC) == "system"
    assert compile_jsonpath("$..nothing").first(DOC) is MISSING
    assert repr(MISSING) == "MISSING"


def test_descending_too_deep_is_an_evaluation_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(150):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(JsonPathEvalError):
        compile_jsonpath("$..b").find(deep)
    with pytest.raises(JsonPathEvalError):
        compile_jsonpath("$..[?@.b]").drop(deep)
    assert compile_jsonpath("$.a.a.b").find(deep) == []


# --- editing --------------------------------------------------------------------------------


def test_drop_several_indices_deletes_from_the_end() -> None:
    doc = {"a": [0, 1, 2, 3]}
    assert compile_jsonpath("$.a[0,2,-1]").drop(doc) == 3
    assert doc == {"a": [1]}


def test_drop_repeated_selection_counts_once() -> None:
    doc = {"a": [0, 1]}
    assert compile_jsonpath("$.a[0,0,-2]").drop(doc) == 1
    assert doc == {"a": [1]}


def test_drop_descendants_and_members() -> None:
    doc = {"a": {"secret": 1, "b": [{"secret": 2}, {"c": 3}]}, "secret": 0}
    assert compile_jsonpath("$..secret").drop(doc) == 3
    assert doc == {"a": {"b": [{}, {"c": 3}]}}
    assert compile_jsonpath("$.a").drop(doc) == 1
    assert doc == {}


def test_drop_nothing_and_never_the_root() -> None:
    doc = {"a": 1}
    assert compile_jsonpath("$.b").drop(doc) == 0
    assert compile_jsonpath("$").drop(doc) == 0
    assert compile_jsonpath("$.a.b").drop(doc) == 0
    assert doc == {"a": 1}


def test_set_overwrites_every_match() -> None:
    doc = {"m": [{"r": 1}, {"r": 2}, {"x": 0}]}
    assert compile_jsonpath("$.m[*].r").set(doc, "z") == 2
    assert doc == {"m": [{"r": "z"}, {"r": "z"}, {"x": 0}]}


def test_set_non_singular_without_match_does_nothing() -> None:
    doc: dict[str, Any] = {"m": []}
    assert compile_jsonpath("$.m[*].r").set(doc, 1) == 0
    assert compile_jsonpath("$..r").add(doc, 1) == 0
    assert doc == {"m": []}


@pytest.mark.parametrize(
    ("path", "before", "after"),
    [
        ("$.a.b.c", {}, {"a": {"b": {"c": "v"}}}),
        ("$.a.b", {"a": {"x": 1}}, {"a": {"x": 1, "b": "v"}}),
        ("$.a[0].b", {}, {"a": [{"b": "v"}]}),
        ("$.a[-1]", {"a": []}, {"a": ["v"]}),
        ("$.a[2]", {"a": [0, 1]}, {"a": [0, 1, "v"]}),
        ("$.a[1]", {"a": [0, 1]}, {"a": [0, "v"]}),
    ],
)
def test_set_creates_singular_paths(path: str, before: Any, after: Any) -> None:
    assert compile_jsonpath(path).set(before, "v") == 1
    assert before == after


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("$.a.b", {"a": "text"}),  # a string in the way
        ("$.a[3]", {"a": [0]}),  # past the end
        ("$.a[0]", {"a": {}}),  # an index into an object
        ("$.a.b[1].c", {}),  # would need a hole in a new array
        ("$", {}),
    ],
)
def test_set_leaves_impossible_paths_alone(path: str, doc: Any) -> None:
    before = copy.deepcopy(doc)
    assert compile_jsonpath(path).set(doc, "v") == 0
    assert doc == before


def test_written_values_are_copies() -> None:
    value = {"k": [1]}
    doc: dict[str, Any] = {"a": [0, 0]}
    assert compile_jsonpath("$.a[*]").set(doc, {"z": 0}) == 2
    assert doc["a"] == [{"z": 0}, {"z": 0}]
    assert doc["a"][0] is not doc["a"][1]
    compile_jsonpath("$.b").set(doc, value)
    value["k"].append(2)
    assert doc["b"] == {"k": [1]}


def test_add_appends_or_creates_an_array() -> None:
    doc: dict[str, Any] = {"stop": ["a"], "n": 1, "s": "x", "o": {"k": 1}}
    assert compile_jsonpath("$.stop").add(doc, "b") == 1
    assert compile_jsonpath("$.tags").add(doc, {"x": 1}) == 1
    assert compile_jsonpath("$.n").add(doc, 2) == 1  # a scalar becomes [scalar, value]
    assert compile_jsonpath("$.s").add(doc, "y") == 1
    assert compile_jsonpath("$.o").add(doc, 2) == 0  # an object: left alone
    assert doc == {
        "stop": ["a", "b"],
        "tags": [{"x": 1}],
        "n": [1, 2],
        "s": ["x", "y"],
        "o": {"k": 1},
    }


def test_frozen_values_thaw_into_fresh_json() -> None:
    frozen = freeze_value({"a": [1, {"b": None}], "c": True})
    assert isinstance(frozen, MappingProxyType)
    assert frozen["a"] == (1, MappingProxyType({"b": None}))
    doc: dict[str, Any] = {}
    compile_jsonpath("$.v").set(doc, frozen)
    assert doc == {"v": {"a": [1, {"b": None}], "c": True}}
    assert type(doc["v"]["a"]) is list
    assert thaw_value(frozen) == doc["v"]
    with pytest.raises(TypeError):
        freeze_value({1, 2})


def test_freeze_makes_scalar_subclasses_plain() -> None:
    class Quoted(str):
        pass

    assert type(freeze_value(Quoted("x"))) is str
    assert type(freeze_value([Quoted("x")])[0]) is str


def test_filters_are_evaluated_by_python_jsonpath() -> None:
    plan = compile_jsonpath("$.messages[?@.role == 'system']")
    assert plan.selection is None and plan.segments is None
    assert compile_jsonpath("$.messages[*].role").selection is not None
    doc = copy.deepcopy(DOC)
    assert plan.find(doc) == [DOC["messages"][0]]
    assert compile_jsonpath("$.messages[?@.role == 'user'].n").set(doc, 1) == 0
    assert compile_jsonpath("$.messages[?@.role == 'user'].role").set(doc, "u") == 1
    assert plan.drop(doc) == 1
    assert doc["messages"] == [{"role": "u", "content": [{"type": "text", "text": "hi"}]}]
    assert compile_jsonpath("$[?@.x]").find("text") == []
    assert compile_jsonpath("$.s[?@]").find(DOC) == []


def test_map_values_rewrites_selected_values() -> None:
    doc = {"a": ["x", 1, "y"]}
    plan = compile_jsonpath("$.a[*]")
    assert plan.map_values(doc, lambda v: v.upper() if isinstance(v, str) else v) == 2
    assert doc == {"a": ["X", 1, "Y"]}


# --- properties: agreement with a reference evaluator ----------------------------------------

KEYS = ("a", "b", "c", "x y")

json_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "s", "a"])
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=25,
)
json_docs = st.dictionaries(st.sampled_from(KEYS), json_values, min_size=1) | st.lists(
    json_values, min_size=1, max_size=4
)

Selector = tuple[str, Any]
selectors = st.one_of(
    st.tuples(st.just("name"), st.sampled_from(KEYS)),
    st.tuples(st.just("index"), st.integers(-3, 3)),
    st.tuples(st.just("wild"), st.none()),
    st.tuples(st.just("desc_name"), st.sampled_from(KEYS)),
    st.tuples(st.just("desc_wild"), st.none()),
    st.tuples(st.just("desc_index"), st.integers(-2, 2)),
    st.tuples(st.just("slice"), st.tuples(*[st.none() | st.integers(-3, 3)] * 3)),
)
singular_selectors = st.one_of(
    st.tuples(st.just("name"), st.sampled_from(KEYS)),
    st.tuples(st.just("index"), st.integers(-2, 2)),
)


def render(path: list[Selector]) -> str:
    return "$" + "".join(render_selector(kind, arg) for kind, arg in path)


def render_selector(kind: str, arg: Any) -> str:
    if kind == "slice":
        return "[" + ":".join("" if a is None else str(a) for a in arg) + "]"
    if kind in ("name", "desc_name"):
        if arg == "x y":
            return ("" if kind == "name" else "..") + f"['{arg}']"
        return ("." if kind == "name" else "..") + str(arg)
    return {"index": f"[{arg}]", "wild": ".*", "desc_wild": "..*", "desc_index": f"..[{arg}]"}[kind]


Node = tuple[Any, tuple[Any, ...]]  # (value, location)


def children(node: Node) -> Iterator[Node]:
    value, loc = node
    if isinstance(value, dict):
        for k, v in value.items():
            yield v, (*loc, k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield v, (*loc, i)


def descendants(node: Node) -> Iterator[Node]:
    yield node
    for child in children(node):
        yield from descendants(child)


def select(node: Node, kind: str, arg: Any) -> Iterator[Node]:
    value, loc = node
    if kind == "name" and isinstance(value, dict) and arg in value:
        yield value[arg], (*loc, arg)
    elif kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value):
        yield value[arg], (*loc, arg % len(value))
    elif kind == "wild":
        yield from children(node)
    elif kind == "slice" and isinstance(value, list) and arg[2] != 0:
        for i in range(*slice(*arg).indices(len(value))):
            yield value[i], (*loc, i)


def reference(doc: Any, path: list[Selector]) -> list[Node]:
    """Obviously correct (and slow) RFC 9535 evaluation of the generated subset."""
    nodes: list[Node] = [(doc, ())]
    for kind, arg in path:
        if kind.startswith("desc_"):
            visited = [d for n in nodes for d in descendants(n)]
            nodes = [m for d in visited for m in select(d, kind[5:], arg)]
        else:
            nodes = [m for n in nodes for m in select(n, kind, arg)]
    return nodes


def without(value: Any, loc: tuple[Any, ...], gone: set[tuple[Any, ...]]) -> Any:
    if isinstance(value, dict):
        return {k: without(v, (*loc, k), gone) for k, v in value.items() if (*loc, k) not in gone}
    if isinstance(value, list):
        return [without(v, (*loc, i), gone) for i, v in enumerate(value) if (*loc, i) not in gone]
    return value


def strict(value: Any) -> str:
    """Equality that tells True from 1."""
    return json.dumps(value, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(json_docs, st.lists(selectors, max_size=4))
def test_find_agrees_with_reference(doc: Any, path: list[Selector]) -> None:
    plan = compile_jsonpath(render(path))
    expected = reference(doc, path)
    found = plan.find(doc)
    assert [id(v) for v in found] == [id(v) for v, _ in expected]
    assert strict(found) == strict([v for v, _ in expected])
    assert plan.exists(doc) == bool(expected)
    # python-jsonpath itself, less its selecting characters of strings with slices:
    library = plan.query.finditer(doc)
    assert found == [m.obj for m in library if not (m.parent and isinstance(m.parent.obj, str))]


@settings(max_examples=200, deadline=None)
@given(json_docs, st.lists(selectors, min_size=1, max_size=3))
def test_drop_removes_exactly_the_matches(doc: Any, path: list[Selector]) -> None:
    plan = compile_jsonpath(render(path))
    gone = {loc for _, loc in reference(doc, path)} - {()}
    expected = without(doc, (), gone)
    assert plan.drop(doc) == len(gone)
    assert strict(doc) == strict(expected)
    if all(kind not in ("index", "desc_index", "slice") for kind, _ in path):
        # NOTE: with index or slice selectors, later elements move into the dropped places.
        assert plan.find(doc) == []


@settings(max_examples=200, deadline=None)
@given(json_docs, st.lists(singular_selectors, min_size=1, max_size=4), json_values)
def test_set_then_first_is_the_value(doc: Any, path: list[Selector], value: Any) -> None:
    plan = compile_jsonpath(render(path))
    assert plan.singular
    existed = plan.exists(doc)
    written = plan.set(doc, value)
    if existed:
        assert written == 1
    if written:
        assert strict(plan.first(doc)) == strict(value)
        assert plan.first(doc) is not value or not isinstance(value, dict | list)
    once = copy.deepcopy(doc)
    plan.set(doc, value)
    assert strict(doc) == strict(once)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), json_values)
def test_set_always_creates_member_paths_in_an_object(names: list[str], value: Any) -> None:
    plan = compile_jsonpath(render([("name", n) for n in names]))
    doc: dict[str, Any] = {}
    assert plan.set(doc, value) == 1
    assert strict(plan.find(doc)) == strict([value])
