"""Header policies: which headers Interlock sends upstream and back to the client.

A `HeaderPolicy` has `HeaderRules` per direction. Applying rules is a pure function over
``(name, value)`` pairs, in this order: mode filter (passthrough / allowlist / denylist), `drop`,
`add` (only when absent), `force` (always, replacing every value of that name)::

    rules = compile_header_rules({"mode": "allowlist", "allow": ["content-type", "x-trace-*"],
                                  "force": {"x-team": "ml"}})
    apply_header_rules(rules, [("Content-Type", "application/json"), ("X-Debug", "1")])
    # -> [("content-type", "application/json"), ("x-team", "ml")]

Before any policy, `protect_client_headers` removes what a client may never pass on (its own
credentials, cookies, hop-by-hop headers, ``host``, ``content-length``, ``x-stainless-*``).
Output names are lowercase; headers keep their relative order, except that the values of a
name under `add` are grouped where that `add` entry is, which makes applying rules idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from compiler.diagnostics import Diagnostic, Severity, Span

if TYPE_CHECKING:
    from compiler.table import SecretRef

__all__ = [
    "DEFAULT_UPSTREAM_ALLOW",
    "HOP_BY_HOP_HEADERS",
    "PROTECTED_REQUEST_HEADERS",
    "PROTECTED_REQUEST_PREFIXES",
    "Direction",
    "HeaderNames",
    "HeaderPolicy",
    "HeaderRules",
    "apply_header_policies",
    "apply_header_rules",
    "check_header_rules",
    "compile_header_policy",
    "compile_header_rules",
    "default_request_rules",
    "is_hop_by_hop",
    "is_secret_header",
    "protect_client_headers",
    "resolve_header_secrets",
]

Direction = Literal["request", "response"]
Mode = Literal["passthrough", "allowlist", "denylist"]

HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection (RFC 9110 7.6.1); every ``proxy-*`` name counts too."""

PROTECTED_REQUEST_HEADERS: Final = HOP_BY_HOP_HEADERS | frozenset(
    {"authorization", "x-api-key", "cookie", "host", "content-length"}
)
"""Client request headers never forwarded upstream, whatever a policy says."""

PROTECTED_REQUEST_PREFIXES: Final = ("proxy-", "x-stainless-")

DEFAULT_UPSTREAM_ALLOW: Final = (
    "content-type",
    "accept",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
    "openai-beta",
)
"""What the upstream request carries when no policy applies (plus the request id header)."""

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")
_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-goog-api-key"}
)
_SECRET_SUFFIXES: Final = ("-api-key", "-apikey", "-token", "-secret", "-authorization")
_NAME_HINT: Final = "header names are HTTP tokens: letters, digits and !#$%&'*+-.^_`|~"


def is_hop_by_hop(name: str) -> bool:
    """``is_hop_by_hop("Keep-Alive") -> True``; every ``proxy-*`` header is hop-by-hop."""
    lowered = name.lower()
    return lowered in HOP_BY_HOP_HEADERS or lowered.startswith("proxy-")


def is_secret_header(name: str) -> bool:
    """Whether a header's value is a credential (``authorization``, ``x-api-key``, ...), so a
    value written inline in the config earns the ``secret.literal`` warning."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or lowered.endswith(_SECRET_SUFFIXES)


# --- compiled values --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """A set of lowercase header names and ``*`` globs, precompiled: exact names in a frozenset,
    every glob in one regex. ``"x-trace-id" in HeaderNames(("x-trace-*",)) -> True``."""

    names: tuple[str, ...] = ()
    exact: frozenset[str] = field(init=False)
    glob: re.Pattern[str] | None = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(dict.fromkeys(name.lower() for name in self.names))
        globs = [".*".join(map(re.escape, name.split("*"))) for name in names if "*" in name]
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "exact", frozenset(n for n in names if "*" not in n))
        object.__setattr__(self, "glob", re.compile("|".join(globs)) if globs else None)

    def __contains__(self, name: object) -> bool:
        """`name` must already be lowercase."""
        if name in self.exact:
            return True
        return self.glob is not None and isinstance(name, str) and bool(self.glob.fullmatch(name))

    def __bool__(self) -> bool:
        return bool(self.names)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """One direction of a header policy, with its matchers precomputed: `keep` is None for
    "keep every name" (passthrough, denylist), `reject` is `drop` plus a denylist's `deny`, and
    `diverted` names the headers `add`/`force` set. An `add` of a forced name is ignored."""

    mode: Mode = "passthrough"
    allow: HeaderNames = HeaderNames()
    deny: HeaderNames = HeaderNames()
    drop: HeaderNames = HeaderNames()
    add: tuple[tuple[str, str | SecretRef], ...] = ()
    force: tuple[tuple[str, str | SecretRef], ...] = ()
    keep: HeaderNames | None = field(init=False)
    reject: HeaderNames = field(init=False)
    diverted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("passthrough", "allowlist", "denylist"):
            raise ValueError(f"unknown header mode {self.mode!r}")
        # NOTE: as in a mapping, a repeated name keeps its first place and its last value.
        force = tuple({name.lower(): value for name, value in self.force}.items())
        forced = {name for name, _ in force}
        added = {name.lower(): value for name, value in self.add}
        add = tuple((name, value) for name, value in added.items() if name not in forced)
        deny = self.deny.names if self.mode == "denylist" else ()
        object.__setattr__(self, "add", add)
        object.__setattr__(self, "force", force)
        object.__setattr__(self, "keep", self.allow if self.mode == "allowlist" else None)
        object.__setattr__(self, "reject", HeaderNames((*self.drop.names, *deny)))
        object.__setattr__(self, "diverted", frozenset(forced | {name for name, _ in add}))

    @property
    def resolved(self) -> bool:
        """True when every add/force value is a string (no secret left to resolve)."""
        return all(isinstance(v, str) for _, v in (*self.add, *self.force))


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    name: str
    request: HeaderRules | None = None
    response: HeaderRules | None = None


def compile_header_rules(spec: Mapping[str, Any]) -> HeaderRules:
    """Lower a validated rules mapping (``{mode, allow, deny, drop, add, force}``).

    ``add``/``force`` values are strings, or secret references (``{env: NAME}`` /
    ``{file: PATH}``) that `resolve_header_secrets` turns into strings when the server loads
    the table; an inline value of a credential header is kept as a literal `SecretRef`.
    """
    return HeaderRules(
        mode=spec.get("mode", "passthrough"),
        allow=HeaderNames(tuple(spec.get("allow", ()))),
        deny=HeaderNames(tuple(spec.get("deny", ()))),
        drop=HeaderNames(tuple(spec.get("drop", ()))),
        add=_values(spec.get("add", {})),
        force=_values(spec.get("force", {})),
    )


def compile_header_policy(name: str, spec: Mapping[str, Any]) -> HeaderPolicy:
    """``compile_header_policy("p", {"request": {...}})`` -> a `HeaderPolicy` named ``p``."""
    request = spec.get("request")
    response = spec.get("response")
    return HeaderPolicy(
        name,
        compile_header_rules(request) if request is not None else None,
        compile_header_rules(response) if response is not None else None,
    )


def default_request_rules(request_id_header: str = "x-request-id") -> HeaderRules:
    """The upstream request's headers when no policy applies: `DEFAULT_UPSTREAM_ALLOW` and the
    request id header."""
    return compile_header_rules(
        {"mode": "allowlist", "allow": [*DEFAULT_UPSTREAM_ALLOW, request_id_header]}
    )


def resolve_header_secrets(rules: HeaderRules, resolve: Callable[[SecretRef], str]) -> HeaderRules:
    """The same rules with every secret reference replaced by ``resolve(ref)``, trimmed (a
    secret file usually ends in a newline); the server calls this once when it loads a table,
    so applying rules never sees a reference. A value with a line break inside is a ValueError.
    """
    if rules.resolved:
        return rules

    def text(name: str, value: str | SecretRef) -> str:
        if isinstance(value, str):
            return value
        secret = resolve(value).strip()
        if _BAD_VALUE.search(secret):
            raise ValueError(f"the secret for header {name!r} contains a line break or NUL")
        return secret

    def values(pairs: tuple[tuple[str, str | SecretRef], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((name, text(name, value)) for name, value in pairs)

    return replace(rules, add=values(rules.add), force=values(rules.force))


def _values(spec: Mapping[str, Any]) -> tuple[tuple[str, str | SecretRef], ...]:
    out: dict[str, str | SecretRef] = {}
    for name, value in spec.items():
        lowered = str(name).lower()
        out[lowered] = _value(lowered, value)
    return tuple(out.items())


def _value(name: str, value: Any) -> str | SecretRef:
    # NOTE: imported here because compiler.table imports this module for HeaderPolicy.
    from compiler.table import SecretRef

    if isinstance(value, Mapping):
        return SecretRef(env=value.get("env"), file=value.get("file"))
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise TypeError(f"header {name!r}: not a header value: {type(value).__name__}")
    return SecretRef(literal=text) if is_secret_header(name) else text


# --- checks -----------------------------------------------------------------------------------


def check_header_rules(
    spec: Mapping[str, Any],
    span_for: Callable[[str], Span],
    *,
    direction: Direction = "request",
) -> list[Diagnostic]:
    """Every problem in one direction's rules. `span_for` maps a suffix of the rules' JSON path
    (``"allow[2]"``, ``"force.x-team"``) to where it is written.

    Codes: ``header.invalid_name``, ``header.invalid_value``, ``header.hop_by_hop`` (named in
    allow/add/force), ``header.protected`` (allowlisting a request header that is never
    forwarded; add/force of ``content-length``), ``name.duplicate`` (two add/force keys that
    differ only in case) and the warning ``secret.literal``.
    """
    out: list[Diagnostic] = []
    for key in ("allow", "deny", "drop"):
        for i, entry in enumerate(spec.get(key, ())):
            out.extend(_check_listed(key, str(entry), span_for(f"{key}[{i}]"), direction))
    for key in ("add", "force"):
        seen: dict[str, str] = {}
        for name, value in spec.get(key, {}).items():
            span = span_for(f"{key}.{name}")
            out.extend(_check_set(key, str(name), value, span))
            lowered = str(name).lower()
            if lowered in seen:
                message = f"{key} names '{name}' and '{seen[lowered]}', which are the same header"
                out.append(Diagnostic("name.duplicate", message, span))
            seen[lowered] = str(name)
    return out


def _check_listed(key: str, entry: str, span: Span, direction: Direction) -> list[Diagnostic]:
    if not _TOKEN.fullmatch(entry):
        message = f"'{entry}' in {key} is not a valid header name"
        return [Diagnostic("header.invalid_name", message, span, hint=_NAME_HINT)]
    if key != "allow":
        return []
    name = entry.lower()
    if ("*" not in name and is_hop_by_hop(name)) or name.split("*", 1)[0].startswith("proxy-"):
        message = f"'{entry}' is a hop-by-hop header; it is never forwarded"
        return [Diagnostic("header.hop_by_hop", message, span)]
    if direction == "request" and _never_forwarded(name):
        message = f"'{entry}' is never forwarded from the client, so allowing it has no effect"
        hint = "to send a credential upstream, use force (with a secret reference)"
        return [Diagnostic("header.protected", message, span, hint=hint)]
    return []


def _never_forwarded(name: str) -> bool:
    """Whether every header `name` (a name or a glob) can match is stripped from requests."""
    literal = name.split("*", 1)[0]
    if "*" not in name and name in PROTECTED_REQUEST_HEADERS:
        return True
    return literal.startswith(PROTECTED_REQUEST_PREFIXES)


def _check_set(key: str, name: str, value: Any, span: Span) -> list[Diagnostic]:
    lowered = name.lower()
    if not _TOKEN.fullmatch(name) or "*" in name:
        message = f"'{name}' in {key} is not a valid header name"
        hint = "globs are only allowed in allow, deny and drop" if "*" in name else _NAME_HINT
        return [Diagnostic("header.invalid_name", message, span, hint=hint)]
    if is_hop_by_hop(lowered):
        message = f"'{name}' is a hop-by-hop header; a policy cannot {key} it"
        return [Diagnostic("header.hop_by_hop", message, span)]
    if lowered == "content-length":
        message = f"'{name}' is computed from the body; a policy cannot {key} it"
        return [Diagnostic("header.protected", message, span)]
    if isinstance(value, str):
        if _BAD_VALUE.search(value):
            message = f"the value of '{name}' contains a line break or NUL"
            return [Diagnostic("header.invalid_value", message, span)]
        if is_secret_header(lowered):
            message = f"the value of '{name}' is a secret written inline"
            hint = "use {env: NAME} or {file: PATH}"
            return [Diagnostic("secret.literal", message, span, Severity.WARNING, hint)]
    return []


# --- applying ---------------------------------------------------------------------------------


def protect_client_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers minus everything never forwarded, names lowercased:
    ``[("Authorization", "Bearer k"), ("Accept", "*/*")] -> [("accept", "*/*")]``.

    Names listed in a ``Connection`` header are hop-by-hop for this request and go too.
    """
    lowered = [(name.lower(), value) for name, value in headers]
    listed: set[str] = set()
    for name, value in lowered:
        if name == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    # SECURITY: the client's credentials are for Interlock, never for the upstream.
    return [
        (name, value)
        for name, value in lowered
        if name not in PROTECTED_REQUEST_HEADERS
        and not name.startswith(PROTECTED_REQUEST_PREFIXES)
        and name not in listed
    ]


def apply_header_rules(
    rules: HeaderRules, headers: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Apply one direction's rules: mode filter, drop, add (when absent), force.

    ``apply_header_rules(compile_header_rules({"add": {"x-a": "1"}}), [("X-B", "2")])``
    -> ``[("x-b", "2"), ("x-a", "1")]``.
    """
    keep, reject, diverted = rules.keep, rules.reject, rules.diverted
    out: list[tuple[str, str]] = []
    present: dict[str, list[tuple[str, str]]] = {}
    for raw_name, value in headers:
        name = raw_name.lower()
        if (keep is not None and name not in keep) or name in reject:
            continue
        if name in diverted:
            present.setdefault(name, []).append((name, value))
        else:
            out.append((name, value))
    for name, default in rules.add:
        kept = present.get(name)
        if kept:
            out.extend(kept)
        else:
            out.append((name, _text(name, default)))
    out.extend((name, _text(name, value)) for name, value in rules.force)
    return out


def apply_header_policies(
    policies: Iterable[HeaderPolicy],
    headers: Sequence[tuple[str, str]],
    direction: Direction,
) -> list[tuple[str, str]]:
    """Apply each policy's rules for `direction` in order; a policy without them is skipped."""
    out = list(headers)
    for policy in policies:
        rules = policy.request if direction == "request" else policy.response
        if rules is not None:
            out = apply_header_rules(rules, out)
    return out


def _text(name: str, value: str | SecretRef) -> str:
    if isinstance(value, str):
        return value
    raise LookupError(f"header {name!r} has an unresolved secret; see resolve_header_secrets")
