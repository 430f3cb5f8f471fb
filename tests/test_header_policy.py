"""Header policies: built-in protection, rule application, and config checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.diagnostics import Severity, Span
from compiler.headers import (
    DEFAULT_UPSTREAM_ALLOW,
    PROTECTED_REQUEST_HEADERS,
    HeaderNames,
    HeaderPolicy,
    HeaderRules,
    apply_header_policies,
    apply_header_rules,
    check_header_rules,
    compile_header_policy,
    compile_header_rules,
    default_request_rules,
    is_hop_by_hop,
    protect_client_headers,
    resolve_header_secrets,
)
from compiler.table import SecretRef

Headers = list[tuple[str, str]]


def span_for(suffix: str) -> Span:
    return Span("policy.yaml", 1, 1, suffix)


# --- built-in protection ----------------------------------------------------------------------


def test_protection_strips_credentials_and_hop_by_hop() -> None:
    headers = [
        ("Authorization", "Bearer client-key"),
        ("X-Api-Key", "k"),
        ("Cookie", "a=b"),
        ("Host", "gw.example"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Private"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic x"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("X-Stainless-OS", "Linux"),
        ("X-Private", "listed in Connection"),
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
        ("X-Trace-Id", "t1"),
    ]
    assert protect_client_headers(headers) == [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("x-trace-id", "t1"),
    ]


def test_default_rules_forward_only_the_documented_headers() -> None:
    rules = default_request_rules("x-request-id")
    incoming = [(name, "v") for name in (*DEFAULT_UPSTREAM_ALLOW, "x-request-id", "x-debug")]
    assert apply_header_rules(rules, incoming) == incoming[:-1]
    assert rules.mode == "allowlist"


# --- applying rules ----------------------------------------------------------------------------


def test_documented_example() -> None:
    rules = compile_header_rules(
        {
            "mode": "allowlist",
            "allow": ["content-type", "accept", "x-trace-*", "x-debug"],
            "drop": ["x-debug"],
            "add": {"x-source": "interlock"},
            "force": {"x-team": "ml-platform"},
        }
    )
    headers = [
        ("Content-Type", "application/json"),
        ("X-Trace-Id", "1"),
        ("X-Debug", "1"),
        ("X-Team", "client's"),
        ("User-Agent", "sdk"),
        ("Accept", "*/*"),
    ]
    assert apply_header_rules(rules, headers) == [
        ("content-type", "application/json"),
        ("x-trace-id", "1"),
        ("accept", "*/*"),
        ("x-source", "interlock"),
        ("x-team", "ml-platform"),
    ]


def test_denylist_and_passthrough() -> None:
    headers = [("A", "1"), ("X-Internal-1", "2"), ("B", "3"), ("server", "s")]
    deny = compile_header_rules({"mode": "denylist", "deny": ["x-internal-*"], "drop": ["b"]})
    assert apply_header_rules(deny, headers) == [("a", "1"), ("server", "s")]
    passthrough = compile_header_rules({"mode": "passthrough", "drop": ["server"]})
    assert apply_header_rules(passthrough, headers) == [
        ("a", "1"),
        ("x-internal-1", "2"),
        ("b", "3"),
    ]


def test_deny_only_applies_in_denylist_mode() -> None:
    rules = compile_header_rules({"mode": "passthrough", "deny": ["a"]})
    assert apply_header_rules(rules, [("a", "1")]) == [("a", "1")]


def test_add_only_when_absent_and_force_replaces_every_value() -> None:
    rules = compile_header_rules({"add": {"X-Source": "gw"}, "force": {"x-team": "ml"}})
    headers = [("x-team", "a"), ("X-Source", "client"), ("x-team", "b"), ("c", "1")]
    assert apply_header_rules(rules, headers) == [
        ("c", "1"),
        ("x-source", "client"),
        ("x-team", "ml"),
    ]
    assert apply_header_rules(rules, []) == [("x-source", "gw"), ("x-team", "ml")]


def test_multiple_values_keep_their_order() -> None:
    rules = compile_header_rules({"add": {"accept": "*/*"}})
    headers = [("Accept", "a"), ("x", "1"), ("accept", "b")]
    assert apply_header_rules(rules, headers) == [("x", "1"), ("accept", "a"), ("accept", "b")]


def test_force_wins_over_add_of_the_same_name() -> None:
    rules = compile_header_rules({"add": {"x-a": "add"}, "force": {"X-A": "force"}})
    assert rules.add == ()
    assert apply_header_rules(rules, [("x-a", "client")]) == [("x-a", "force")]


def test_policies_apply_in_order_per_direction() -> None:
    first = compile_header_policy("first", {"request": {"force": {"x-a": "1"}}})
    second = compile_header_policy(
        "second",
        {"request": {"mode": "allowlist", "allow": ["x-b"]}, "response": {"drop": ["server"]}},
    )
    assert apply_header_policies((first, second), [("x-b", "2")], "request") == [("x-b", "2")]
    assert apply_header_policies((second, first), [("x-b", "2")], "request") == [
        ("x-b", "2"),
        ("x-a", "1"),
    ]
    assert apply_header_policies((first, second), [("Server", "u"), ("x", "y")], "response") == [
        ("x", "y")
    ]
    assert first.response is None and isinstance(first, HeaderPolicy)


def test_glob_matching() -> None:
    names = HeaderNames(("X-Trace-*", "exact", "*-id", "a.b*"))
    assert names.names == ("x-trace-*", "exact", "*-id", "a.b*")
    assert "x-trace-" in names and "x-trace-span" in names and "request-id" in names
    assert "a.bc" in names and "axbc" not in names
    assert "exact" in names and "exactly" not in names and "x-trace" not in names
    assert "anything" in HeaderNames(("*",))
    assert "x" not in HeaderNames()


def test_rules_built_directly_are_consistent() -> None:
    rules = HeaderRules(mode="allowlist", allow=HeaderNames(("a",)), force=(("B", "1"),))
    assert apply_header_rules(rules, [("a", "x"), ("c", "y")]) == [("a", "x"), ("b", "1")]
    with pytest.raises(ValueError):
        HeaderRules(mode="blocklist")  # type: ignore[arg-type]


def test_secrets_resolve_once_then_apply() -> None:
    rules = compile_header_rules(
        {"force": {"Authorization": {"env": "UPSTREAM_KEY"}, "x-api-key": "inline"}}
    )
    assert rules.force == (
        ("authorization", SecretRef(env="UPSTREAM_KEY")),
        ("x-api-key", SecretRef(literal="inline")),
    )
    assert not rules.resolved
    with pytest.raises(LookupError):
        apply_header_rules(rules, [])

    def resolve(ref: SecretRef) -> str:
        return ref.literal if ref.literal is not None else f"Bearer ${ref.env}"

    with pytest.raises(ValueError):
        resolve_header_secrets(rules, lambda ref: "a\nb")
    assert resolve_header_secrets(rules, lambda ref: "k\n").force[0] == ("authorization", "k")
    ready = resolve_header_secrets(rules, resolve)
    assert ready.resolved and resolve_header_secrets(ready, resolve) is ready
    assert apply_header_rules(ready, [("authorization", "client")]) == [
        ("authorization", "Bearer $UPSTREAM_KEY"),
        ("x-api-key", "inline"),
    ]


def test_scalar_values_become_text() -> None:
    rules = compile_header_rules({"add": {"x-n": 3, "x-flag": True}})
    assert rules.add == (("x-n", "3"), ("x-flag", "true"))


# --- checks ------------------------------------------------------------------------------------


def codes(spec: dict[str, Any], direction: str = "request") -> list[tuple[str, str]]:
    found = check_header_rules(spec, span_for, direction=direction)  # type: ignore[arg-type]
    return [(d.code, d.span.path) for d in found]


def test_check_accepts_the_documented_policy() -> None:
    spec = {
        "mode": "allowlist",
        "allow": ["content-type", "accept", "x-trace-*"],
        "deny": [],
        "drop": ["x-debug", "connection"],
        "add": {"x-source": "interlock"},
        "force": {"x-team": "ml-platform", "authorization": {"env": "KEY"}},
    }
    assert codes(spec) == []


def test_check_reports_each_problem_where_it_is() -> None:
    spec = {
        "allow": ["content-type", "bad name", "Authorization", "x-stainless-*", "keep-alive"],
        "drop": ["ok", "no/slash"],
        "add": {"x-*": "1", "content-length": "3", "x-line": "a\r\nb"},
        "force": {"Upgrade": "h2c", "authorization": "Bearer sk-inline"},
    }
    assert codes(spec) == [
        ("header.invalid_name", "allow[1]"),
        ("header.protected", "allow[2]"),
        ("header.protected", "allow[3]"),
        ("header.hop_by_hop", "allow[4]"),
        ("header.invalid_name", "drop[1]"),
        ("header.invalid_name", "add.x-*"),
        ("header.protected", "add.content-length"),
        ("header.invalid_value", "add.x-line"),
        ("header.hop_by_hop", "force.Upgrade"),
        ("secret.literal", "force.authorization"),
    ]
    found = check_header_rules(spec, span_for)
    literal = next(d for d in found if d.code == "secret.literal")
    assert literal.severity is Severity.WARNING
    assert all(d.is_error for d in found if d is not literal)


def test_protected_only_concerns_requests() -> None:
    assert codes({"allow": ["set-cookie", "authorization"]}, "response") == []
    assert codes({"allow": ["proxy-*"]}, "response") == [("header.hop_by_hop", "allow[0]")]


def test_case_insensitive_duplicates_are_reported() -> None:
    assert codes({"force": {"X-Team": "a", "x-team": "b"}}) == [("name.duplicate", "force.x-team")]


# --- properties --------------------------------------------------------------------------------

POOL = (
    "content-type",
    "accept",
    "user-agent",
    "x-trace-id",
    "x-trace-span",
    "x-debug",
    "x-source",
    "x-team",
    "authorization",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "upgrade",
    "x-stainless-os",
    "server",
)
GLOBS = ("x-*", "x-trace-*", "*", "*-id", "x-stainless-*")

random_names = st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)
names = st.sampled_from(POOL) | random_names


@st.composite
def any_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))


mixed_names = names.flatmap(any_case)
values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6)
headers_strategy = st.lists(st.tuples(mixed_names, values), max_size=12)
listing = st.lists(names | st.sampled_from(GLOBS), max_size=4)
settings_ = st.dictionaries(mixed_names, values, max_size=3)


@st.composite
def rules_strategy(draw: st.DrawFn) -> HeaderRules:
    rules = compile_header_rules(
        {
            "mode": draw(st.sampled_from(["passthrough", "allowlist", "denylist"])),
            "allow": draw(listing),
            "deny": draw(listing),
            "drop": draw(listing),
            "add": draw(settings_),
            "force": draw(settings_),
        }
    )
    return ready(rules)


def ready(rules: HeaderRules) -> HeaderRules:
    return resolve_header_secrets(rules, lambda ref: ref.literal or "")


@settings(max_examples=300, deadline=None)
@given(rules_strategy(), headers_strategy)
def test_rules_are_idempotent(rules: HeaderRules, headers: Headers) -> None:
    once = apply_header_rules(rules, headers)
    assert apply_header_rules(rules, once) == once


@settings(max_examples=200, deadline=None)
@given(rules_strategy(), headers_strategy)
def test_names_are_case_insensitive(rules: HeaderRules, headers: Headers) -> None:
    lowered = [(n.lower(), v) for n, v in headers]
    out = apply_header_rules(rules, headers)
    assert out == apply_header_rules(rules, lowered)
    assert all(n == n.lower() for n, _ in out)


@settings(max_examples=100, deadline=None)
@given(headers_strategy, st.data())
def test_spec_names_are_case_insensitive(headers: Headers, data: st.DataObject) -> None:
    allow, force = data.draw(listing), data.draw(settings_)
    spec = {"mode": "allowlist", "allow": allow, "force": force}
    shouted = {
        "mode": "allowlist",
        "allow": [n.upper() for n in allow],
        "force": {n.upper(): v for n, v in force.items()},
    }
    a = apply_header_rules(ready(compile_header_rules(spec)), headers)
    assert a == apply_header_rules(ready(compile_header_rules(shouted)), headers)


@settings(max_examples=300, deadline=None)
@given(headers_strategy, st.lists(names, max_size=3).flatmap(lambda ns: st.just(", ".join(ns))))
def test_protected_headers_never_come_out(headers: Headers, connection: str) -> None:
    listed = {t.strip() for t in connection.split(",")}
    out = protect_client_headers([*headers, ("Connection", connection)])
    for name, _ in out:
        assert name == name.lower()
        assert name not in PROTECTED_REQUEST_HEADERS
        assert not is_hop_by_hop(name)
        assert not name.startswith("x-stainless-")
        assert name not in listed
    kept = [(n.lower(), v) for n, v in headers if (n.lower(), v) in out]
    assert kept == out
