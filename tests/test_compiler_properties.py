"""Properties of the compiler (Hypothesis).

- Compiling is deterministic: the same bytes give the same version and the same dump; comments
  change the version but not the table; JSON and YAML spellings of a document compile alike.
- The indexed matcher `match_route` returns exactly what the in-order scan `match_route_naive`
  returns, for generated route lists and generated requests (built directly, and compiled).
- ``${VAR}`` substitution round-trips, and positions inside strings (env.unset, regex.invalid)
  land on the offending source character whatever the scalar style.
"""

from __future__ import annotations

import fnmatch
import json
import re
from io import StringIO
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from compiler import CompileError, compile_texts
from compiler.dump import dump_table
from compiler.jsonpath import compile_jsonpath
from compiler.loader import load_texts
from compiler.matcher import RequestFacts, build_index, match_route, match_route_naive
from compiler.table import (
    APIS,
    BodyPredicate,
    CompiledAction,
    CompiledMatch,
    CompiledRoute,
    HeaderCondition,
    RouteTable,
    TextCondition,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
    lambda s: s[0].isalnum()
)


def to_text(doc: dict[str, Any], style: str) -> str:
    if style == "json":
        return json.dumps(doc, indent=1)
    out = StringIO()
    yaml = YAML(typ="rt", pure=True)  # NOTE: keeps key order, which is definition order
    yaml.default_flow_style = style == "yaml-flow"
    yaml.dump(doc, out)
    return out.getvalue()


# --- generated valid configs ------------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Valid documents with upstreams, models, header and transform policies, and routes."""
    upstream_names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    upstreams: dict[str, Any] = {}
    for name in upstream_names:
        if draw(st.booleans()):
            upstreams[name] = {"kind": "mock", "mock": {"latency_ms": draw(st.integers(0, 50))}}
        else:
            upstreams[name] = {
                "kind": draw(st.sampled_from(["openai", "anthropic", "openai-compatible"])),
                "base_url": f"https://{name}.example.com/v1",
                "api_key": {"env": f"KEY_{name.upper().replace('-', '_')}"},
                "retry": {"attempts": draw(st.integers(1, 3))},
            }
    model_names = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    aliases = draw(st.lists(NAME, max_size=4, unique=True))
    models: dict[str, Any] = {}
    for i, name in enumerate(model_names):
        spec: dict[str, Any] = {
            "targets": [
                {"upstream": draw(st.sampled_from(upstream_names)), "model": f"{name}-upstream"}
                for _ in range(draw(st.integers(1, 2)))
            ],
            "strategy": draw(st.sampled_from(["priority", "weighted", "round_robin"])),
        }
        mine = [f"alias-{a}" for a in aliases[i :: len(model_names)]]
        if mine:
            spec["aliases"] = [*mine, f"{name}-*"] if draw(st.booleans()) else mine
        if draw(st.booleans()):
            spec["pricing"] = {"input_per_mtok": 1.5, "output_per_mtok": 3.0}
        if i > 0 and draw(st.booleans()):
            spec["fallback"] = {"models": [model_names[i - 1]]}  # earlier only: never a cycle
        models[name] = spec
    header_policies = {
        f"hp-{i}": {
            "request": {"mode": "allowlist", "allow": ["content-type", "accept", f"x-h{i}-*"]},
            "response": {"drop": ["server"], "add": {f"x-policy-{i}": "on"}},
        }
        for i in range(draw(st.integers(0, 2)))
    }
    transforms = {
        f"tf-{i}": {
            "request": [{"op": "drop", "path": "$.metadata"}],
            "response": [
                {
                    "op": "regex_replace",
                    "pattern": f"secret-{i}\\d+",
                    "replacement": "***",
                    "stream_safe": True,
                }
            ],
        }
        for i in range(draw(st.integers(0, 2)))
    }
    routes = []
    for i in range(draw(st.integers(0, 6))):
        match: dict[str, Any] = {"headers": {"x-route": f"r-{i}"}}  # every route reachable
        if draw(st.booleans()):
            match["api"] = draw(
                st.lists(st.sampled_from(APIS), min_size=1, max_size=3, unique=True)
            )
        model_match = draw(st.sampled_from(["none", "exact", "list", "glob", "regex"]))
        if model_match == "exact":
            match["model"] = draw(st.sampled_from(model_names))
        elif model_match == "list":
            match["model"] = model_names[:2]
        elif model_match == "glob":
            match["model"] = {"glob": f"{model_names[0][:2]}*"}
        elif model_match == "regex":
            match["model"] = {"regex": f"^{re.escape(model_names[0])}(-.*)?$"}
        if draw(st.booleans()):
            match["stream"] = draw(st.booleans())
        if draw(st.booleans()):
            match["body"] = [{"path": "$.max_tokens", "gt": draw(st.integers(0, 4096))}]
        action: dict[str, Any] = {}
        if draw(st.booleans()):
            action["model"] = draw(st.sampled_from(model_names + [f"alias-{a}" for a in aliases]))
        if header_policies and draw(st.booleans()):
            action["headers"] = sorted(header_policies)[:1]
        if transforms and draw(st.booleans()):
            action["transforms"] = sorted(transforms)
        if draw(st.booleans()):
            action["params"] = {"set": {"temperature": 0}, "drop": ["logit_bias"]}
        routes.append({"name": f"route-{i}", "match": match, "action": action})
    doc: dict[str, Any] = {"version": 1, "upstreams": upstreams, "models": models, "routes": routes}
    if header_policies or transforms:
        doc["policies"] = {"headers": header_policies, "transforms": transforms}
    return doc


STYLES = st.sampled_from(["json", "yaml-block", "yaml-flow"])


@PROPERTY
@given(configs(), STYLES)
def test_compile_is_deterministic(doc: dict[str, Any], style: str) -> None:
    text = to_text(doc, style)
    first = compile_texts([("gen.yaml", text)], env={})
    second = compile_texts([("gen.yaml", text)], env={})
    assert first.errors == (), first.errors
    assert first.table is not None and second.table is not None
    assert first.table.version == second.table.version
    assert dump_table(first.table) == dump_table(second.table)
    assert first.diagnostics == second.diagnostics


@PROPERTY
@given(configs(), STYLES, STYLES)
def test_spelling_and_comments_change_the_version_not_the_table(
    doc: dict[str, Any], style: str, other: str
) -> None:
    text = to_text(doc, style)
    base = compile_texts([("gen.yaml", text)], env={})
    commented = compile_texts([("gen.yaml", text + "\n# a comment\n")], env={})
    respelled = compile_texts([("gen.yaml", to_text(doc, other))], env={})
    assert base.table and commented.table and respelled.table
    assert base.table.version != commented.table.version

    def without_version(dump: str) -> Any:
        data = json.loads(dump)
        del data["version"]
        return data

    expected = without_version(dump_table(base.table))
    assert without_version(dump_table(commented.table)) == expected
    assert without_version(dump_table(respelled.table)) == expected


@settings(max_examples=20, deadline=None)
@given(configs())
def test_the_environment_is_part_of_the_version(doc: dict[str, Any]) -> None:
    doc = {**doc, "observability": {"metrics": {"path": "/${INTERLOCK_PROP_METRICS:-metrics}"}}}
    text = to_text(doc, "json")
    unset = compile_texts([("gen.yaml", text)], env={})
    set_ = compile_texts([("gen.yaml", text)], env={"INTERLOCK_PROP_METRICS": "m2"})
    assert unset.table and set_.table
    assert unset.table.observability.metrics_path == "/metrics"
    assert set_.table.observability.metrics_path == "/m2"
    assert unset.table.version != set_.table.version


# --- the indexed matcher equals the naive scan ------------------------------------------------

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-haiku", "local-llama")
MODEL_PATTERNS = ("gpt-*", "*-mini", "claude-?aiku", "^gpt-4", "llama$", "(?i)GPT")
HEADER_NAMES = ("x-stage", "x-team", "x-debug")
HEADER_VALUES = ("plan", "build", "ml", "")
HEADER_REGEXES = ("^pl", "ml|build", "^$")
BODY_PATHS = ("$.temperature", "$.max_tokens", "$.tools", "$.user", "$.metadata.tier")


def header_conditions() -> st.SearchStrategy[HeaderCondition]:
    name = st.sampled_from(HEADER_NAMES)
    return st.one_of(
        st.builds(lambda n, v: HeaderCondition(n, equals=v), name, st.sampled_from(HEADER_VALUES)),
        st.builds(
            lambda n, p: HeaderCondition(n, pattern=re.compile(p)),
            name,
            st.sampled_from(HEADER_REGEXES),
        ),
        st.builds(lambda n, p: HeaderCondition(n, present=p), name, st.booleans()),
    )


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.sampled_from(["web", "ci", "pro", ""]),
)


def body_predicates() -> st.SearchStrategy[BodyPredicate]:
    path = st.sampled_from(BODY_PATHS).map(compile_jsonpath)
    return st.one_of(
        st.builds(
            lambda p, op, v: BodyPredicate(p, op, v),
            path,
            st.sampled_from(["equals", "not_equals"]),
            JSON_SCALARS,
        ),
        st.builds(
            lambda p, v: BodyPredicate(p, "in", v),
            path,
            st.lists(JSON_SCALARS, min_size=1, max_size=3),
        ),
        st.builds(lambda p, v: BodyPredicate(p, "exists", v), path, st.booleans()),
        st.builds(
            lambda p, op, v: BodyPredicate(p, op, v),
            path,
            st.sampled_from(["gt", "gte", "lt", "lte"]),
            st.integers(-1, 3),
        ),
        st.builds(
            lambda p, r: BodyPredicate(p, "regex", r, re.compile(r)),
            path,
            st.sampled_from(["^w", "i$", "pro"]),
        ),
    )


def model_conditions() -> st.SearchStrategy[tuple[frozenset[str] | None, re.Pattern[str] | None]]:
    def pattern(source: str) -> re.Pattern[str]:
        if source.startswith(("^", "(")) or source.endswith("$"):
            return re.compile(source)
        return re.compile(fnmatch.translate(source))

    return st.one_of(
        st.just((None, None)),
        st.frozensets(st.sampled_from(MODELS), min_size=1, max_size=3).map(lambda m: (m, None)),
        st.sampled_from(MODEL_PATTERNS).map(lambda p: (None, pattern(p))),
    )


def sometimes(draw: st.DrawFn, strategy: st.SearchStrategy[Any], absent: Any) -> Any:
    """A value of `strategy` one time in three, else `absent`: routes with few conditions match
    often enough for the index to be exercised."""
    return draw(strategy) if draw(st.integers(0, 2)) == 0 else absent


KEY_ATTRIBUTES = st.lists(
    st.tuples(st.sampled_from(["org", "project", "name", "id"]), st.sampled_from(["acme", "web"])),
    min_size=1,
    max_size=2,
    unique_by=lambda kv: kv[0],
)
KEY_TAGS = st.lists(
    st.tuples(st.sampled_from(["tier", "env"]), st.sampled_from(["pro", "free"])), min_size=1
)
TEXT_CONDITIONS = st.builds(
    TextCondition,
    st.sampled_from(["plan", "(?i)design", "^hi"]).map(re.compile),
    st.sampled_from(["last_user", "user", "system", "all"]),
)
PROMPT_CHARS = st.lists(
    st.tuples(st.sampled_from(["gte", "gt", "lte", "lt"]), st.integers(0, 12)), min_size=1
)


@st.composite
def compiled_matches(draw: st.DrawFn) -> CompiledMatch:
    models, model_pattern = draw(model_conditions())
    return CompiledMatch(
        apis=draw(st.none() | st.frozensets(st.sampled_from(APIS), min_size=1, max_size=3)),
        models=models,
        model_pattern=model_pattern,
        headers=tuple(sometimes(draw, st.lists(header_conditions(), min_size=1, max_size=2), [])),
        key=tuple(sometimes(draw, KEY_ATTRIBUTES, [])),
        key_tags=tuple(sometimes(draw, KEY_TAGS, [])),
        body=tuple(sometimes(draw, st.lists(body_predicates(), min_size=1, max_size=2), [])),
        stream=sometimes(draw, st.booleans(), None),
        text=sometimes(draw, TEXT_CONDITIONS, None),
        prompt_chars=tuple(sometimes(draw, PROMPT_CHARS, [])),
    )


@st.composite
def route_lists(draw: st.DrawFn) -> list[CompiledRoute]:
    matches = draw(st.lists(compiled_matches(), max_size=12))
    return [CompiledRoute(i, f"r{i}", m, CompiledAction()) for i, m in enumerate(matches)]


@st.composite
def requests(draw: st.DrawFn) -> RequestFacts:
    headers = draw(
        st.dictionaries(st.sampled_from(HEADER_NAMES), st.sampled_from((*HEADER_VALUES, "other")))
    )
    payload = draw(
        st.dictionaries(
            st.sampled_from(["temperature", "max_tokens", "tools", "user"]), JSON_SCALARS
        )
    )
    if draw(st.booleans()):
        payload["metadata"] = {"tier": draw(JSON_SCALARS)}
    role = draw(st.sampled_from(["user", "system"]))
    payload["messages"] = [
        {"role": role, "content": draw(st.sampled_from(["hi plan", "Design it", "x"]))}
    ]
    return RequestFacts(
        api=draw(st.sampled_from((*APIS, "other.api"))),
        model=draw(st.sampled_from((None, *MODELS, "gpt-5", "mini"))),
        headers=headers,
        stream=draw(st.booleans()),
        key=draw(
            st.none()
            | st.fixed_dictionaries(
                {},
                optional={
                    "org": st.sampled_from(["acme", "umbrella"]),
                    "project": st.sampled_from(["web", "cli"]),
                    "id": st.just("web"),
                },
            )
        ),
        key_tags=draw(
            st.dictionaries(st.sampled_from(["tier", "env"]), st.sampled_from(["pro", "free"]))
        ),
        payload=payload,
    )


def table_of(routes: list[CompiledRoute], model_names: tuple[str, ...]) -> RouteTable:
    """Just what matching reads of a table: its routes and their index."""
    return cast(
        RouteTable, SimpleNamespace(routes=tuple(routes), index=build_index(routes, model_names))
    )


@settings(max_examples=200, deadline=None)
@given(route_lists(), st.lists(requests(), min_size=1, max_size=8), st.booleans())
def test_indexed_matcher_equals_naive_scan(
    routes: list[CompiledRoute], facts_list: list[RequestFacts], known_names: bool
) -> None:
    table = table_of(routes, MODELS if known_names else ())
    for facts in facts_list:
        assert match_route(table, facts) is match_route_naive(routes, facts)


@st.composite
def route_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Route documents using every kind of match condition (some unreachable, dropped later)."""
    specs = []
    for i in range(draw(st.integers(1, 10))):
        match: dict[str, Any] = {}
        if draw(st.booleans()):
            match["api"] = draw(
                st.lists(st.sampled_from(APIS), min_size=1, max_size=3, unique=True)
            )
        kind = draw(st.sampled_from(["none", "exact", "list", "glob", "regex"]))
        if kind == "exact":
            match["model"] = draw(st.sampled_from(MODELS))
        elif kind == "list":
            match["model"] = draw(
                st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True)
            )
        elif kind in ("glob", "regex"):
            match["model"] = {
                kind: draw(
                    st.sampled_from(["gpt-*", "*-mini"] if kind == "glob" else ["^gpt-4", "llama$"])
                )
            }
        headers = draw(
            st.dictionaries(
                st.sampled_from(["x-stage", "X-Team", "x-debug"]),
                st.one_of(
                    st.sampled_from(["plan", "ml"]),
                    st.sampled_from(HEADER_REGEXES).map(lambda r: {"regex": r}),
                    st.booleans().map(lambda p: {"present": p}),
                ),
                max_size=2,
            )
        )
        if headers and len({h.lower() for h in headers}) == len(headers):
            match["headers"] = headers
        if draw(st.booleans()):
            match["key"] = {
                "org": "acme",
                **({"tags": {"tier": "pro"}} if draw(st.booleans()) else {}),
            }
        if draw(st.booleans()):
            match["body"] = [
                draw(
                    st.sampled_from(
                        [
                            {"path": "$.temperature", "equals": 0},
                            {"path": "$.tools", "exists": True},
                            {"path": "$.max_tokens", "gt": 1},
                            {"path": "$.user", "regex": "^w"},
                            {"path": "$.user", "in": ["web", "ci"]},
                        ]
                    )
                )
            ]
        if draw(st.booleans()):
            match["stream"] = draw(st.booleans())
        if draw(st.booleans()):
            match["text"] = {"regex": "(?i)plan", "in": draw(st.sampled_from(["last_user", "all"]))}
        specs.append({"name": f"route-{i}", "match": match, "action": {}})
    return specs


@settings(max_examples=100, deadline=None)
@given(route_specs(), st.lists(requests(), min_size=1, max_size=8))
def test_compiled_routes_match_like_the_naive_scan(
    specs: list[dict[str, Any]], facts_list: list[RequestFacts]
) -> None:
    doc = {
        "version": 1,
        "upstreams": {"demo": {"kind": "mock"}},
        "models": {m: {"targets": [{"upstream": "demo"}]} for m in MODELS},
        "routes": specs,
    }
    result = compile_texts([("routes.json", json.dumps(doc))], env={})
    unreachable = {d.span.path for d in result.errors if d.code == "route.unreachable"}
    assert {d.code for d in result.errors} <= {"route.unreachable"}
    if unreachable:  # NOTE: covering is transitive, so one pass drops every unreachable route
        doc["routes"] = [s for i, s in enumerate(specs) if f"$.routes[{i}].name" not in unreachable]
        result = compile_texts([("routes.json", json.dumps(doc))], env={})
    assert result.table is not None, result.errors
    for facts in facts_list:
        facts.headers = {k.lower(): v for k, v in facts.headers.items()}
        assert match_route(result.table, facts) is match_route_naive(result.table.routes, facts)


# --- ${VAR} substitution and positions inside strings -----------------------------------------

SAFE_TEXT = st.text(
    alphabet=st.characters(
        max_codepoint=0xFFFF,
        blacklist_categories=("Cs", "Cc"),
        whitelist_characters="\t",
    ),
    max_size=12,
).map(lambda s: s.replace("${", "$ {"))  # a literal "${" is written "$${", below


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """(template, expected substitution, environment)."""
    template, expected, env = "", "", {}
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "var", "default", "escape"]))
        var = f"INTERLOCK_PROP_{i}"
        text = draw(SAFE_TEXT) if kind == "text" else "$"
        if template.endswith("$") and text.startswith(("{", "$")):
            template, expected = template + " ", expected + " "  # not an accidental "$${"
        if kind == "text":
            template, expected = template + text, expected + text
        elif kind == "var":
            value = draw(SAFE_TEXT)
            env[var] = value
            template, expected = template + f"${{{var}}}", expected + value
        elif kind == "default":
            default = draw(SAFE_TEXT.map(lambda s: s.replace("}", ")")))
            value = draw(st.sampled_from([None, "", "set-value"]))
            if value is not None:
                env[var] = value
            template += f"${{{var}:-{default}}}"
            expected += value or default
        else:
            template, expected = template + "$${", expected + "${"
    return template, expected, env


@settings(max_examples=300, deadline=None)
@given(templates(), st.sampled_from(["double", "single"]))
def test_env_substitution_round_trips(case: tuple[str, str, dict[str, str]], quoting: str) -> None:
    template, expected, env = case
    if quoting == "single" and ("\t" in template or template != template.strip()):
        quoting = "double"
    scalar = (
        json.dumps(template) if quoting == "double" else "'" + template.replace("'", "''") + "'"
    )
    doc = load_texts([("env.yaml", f"version: 1\nvalue: {scalar}\n")], env=env)
    assert doc.data["value"] == expected


@settings(max_examples=300, deadline=None)
@given(SAFE_TEXT, SAFE_TEXT, st.sampled_from(["double", "single"]))
def test_env_unset_points_at_the_dollar(before: str, after: str, quoting: str) -> None:
    template = before.rstrip("$") + "${INTERLOCK_PROP_UNSET}" + after
    if quoting == "single" and ("\t" in template or template != template.strip()):
        quoting = "double"
    scalar = (
        json.dumps(template) if quoting == "double" else "'" + template.replace("'", "''") + "'"
    )
    text = f"version: 1\nnested:\n  value: {scalar}\n"
    try:
        load_texts([("env.yaml", text)], env={})
    except CompileError as exc:
        (diagnostic,) = exc.diagnostics
    else:
        raise AssertionError("an unset variable was substituted")
    assert diagnostic.code == "env.unset"
    line = text.splitlines()[diagnostic.span.line - 1]
    assert line[diagnostic.span.col - 1 : diagnostic.span.col + 1] == "${"


def scalar_styles(value: str) -> list[str]:
    """`value` written in each YAML style that can hold it, as the value of `regex:` at column
    9 of a block mapping."""
    styles = [json.dumps(value)]
    if "\t" not in value and value == value.strip():
        styles.append("'" + value.replace("'", "''") + "'")
    plain_safe = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.*+?()\[\]{}^$|\\-]*", value)
    if plain_safe and value == value.strip() and ": " not in value and " #" not in value:
        styles.append(value)
    styles.append("|-\n            " + value)
    return styles


@settings(max_examples=300, deadline=None)
@given(SAFE_TEXT, st.data())
def test_regex_errors_point_at_the_offending_character(literal: str, data: st.DataObject) -> None:
    pattern = re.escape(literal) + "(unclosed"
    scalar = data.draw(st.sampled_from(scalar_styles(pattern)))
    text = (
        "version: 1\nroutes:\n  - name: r\n    match:\n      text:\n"
        f"        regex: {scalar}\n        in: all\n    action: {{}}\n"
    )
    result = compile_texts([("re.yaml", text)], env={})
    (diagnostic,) = result.errors
    assert diagnostic.code == "regex.invalid"
    line = text.splitlines()[diagnostic.span.line - 1]
    assert line[diagnostic.span.col - 1 :].startswith("(unclosed")
