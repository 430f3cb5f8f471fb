"""Semantic checks and lowering: a schema-valid `Document` becomes a `RouteTable`.

`lower_config(doc)` walks every section once, collecting ALL diagnostics (unknown references
with did-you-mean hints, invalid regexes and JSONPaths located inside the pattern, fallback cycles,
unreachable routes, duplicate names, header names, warnings) and builds the frozen artifacts as it
goes. The table is returned only when no error was found.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from compiler.analysis import fallback_cycles, missing_files
from compiler.diagnostics import Diagnostic, Severity, Span, did_you_mean
from compiler.headers import (
    HeaderPolicy,
    check_header_rules,
    compile_header_rules,
)
from compiler.loader import Document, PathKey
from compiler.matcher import build_index
from compiler.routes import RouteRefs, check_unreachable, lower_routes
from compiler.table import (
    AdminSettings,
    ApiKey,
    AuthSettings,
    BreakerPolicy,
    CachePolicy,
    CacheSettings,
    CompiledModel,
    CompiledTarget,
    CompiledUpstream,
    CorsSettings,
    HealthSettings,
    LimitPolicy,
    LimitSettings,
    MockSettings,
    OAuthSettings,
    ObservabilitySettings,
    PoolLimits,
    Pricing,
    ResponseHeaderNames,
    RetryPolicy,
    RouteTable,
    SecretRef,
    ServerSettings,
    StoreSettings,
    Timeouts,
    TlsSettings,
    UsageSettings,
)
from compiler.transforms import (
    TransformPipeline,
    check_transform_pipeline,
    compile_transform_pipeline,
)

_REGEX_FLAGS = {"ignorecase": re.I, "multiline": re.M, "dotall": re.S, "verbose": re.X}


def state_id(*parts: Any) -> str:
    """A stable id for state that must survive reloads: sha256 of the canonical JSON of `parts`."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _redact_secrets(spec: Any) -> Any:
    """The spec with inline secret strings replaced, so state ids never depend on secret text."""
    if isinstance(spec, dict):
        return {
            k: "***"
            if k in ("api_key", "client_secret", "credentials") and isinstance(v, str)
            else _redact_secrets(v)
            for k, v in spec.items()
        }
    if isinstance(spec, list):
        return [_redact_secrets(v) for v in spec]
    return spec


@dataclass
class Lowering:
    doc: Document
    diagnostics: list[Diagnostic] = field(default_factory=list)

    # --- reporting -----------------------------------------------------------------------

    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, Severity.ERROR, hint))

    def warn(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, Severity.WARNING, hint))

    def span(self, path: PathKey) -> Span:
        return self.doc.span(path)

    def ref(self, kind: str, name: str, known: Iterable[str], path: PathKey, code: str) -> bool:
        """Check that `name` is among `known`; report `code` with a did-you-mean hint if not."""
        names = list(known)
        if name in names:
            return True
        self.error(code, f"unknown {kind} '{name}'", self.span(path), did_you_mean(name, names))
        return False

    def regex(self, pattern: str, path: PathKey, flags: int = 0) -> re.Pattern[str] | None:
        try:
            return re.compile(pattern, flags)
        except re.error as exc:
            offset = exc.pos or 0
            self.error("regex.invalid", f"invalid regex: {exc.msg}", self.doc.span_at(path, offset))
            return None

    def secret(self, value: Any, path: PathKey) -> SecretRef | None:
        if value is None:
            return None
        if isinstance(value, dict):
            return SecretRef(env=value.get("env"), file=value.get("file"))
        if path not in self.doc.substituted:
            self.warn(
                "secret.literal",
                f"secret '{path[-1]}' is written inline",
                self.span(path),
                hint="use {env: NAME} or {file: PATH} instead of the value",
            )
        return SecretRef(literal=str(value))


def lower_config(doc: Document) -> tuple[RouteTable | None, list[Diagnostic]]:
    """Check and lower a schema-valid document; the table is None when any error was found."""
    lw = Lowering(doc)
    data = doc.data
    policies = data.get("policies") or {}
    header_policies = _lower_header_policies(lw, policies.get("headers") or {})
    transforms = _lower_transforms(lw, policies.get("transforms") or {})
    upstreams = _lower_upstreams(lw, data.get("upstreams") or {}, header_policies)
    models, names, globs = _lower_models(lw, data.get("models") or {}, upstreams)
    limits = _lower_limits(lw, data.get("limits") or {}, models)
    cache = _lower_cache(lw, data.get("cache") or {})
    refs = RouteRefs(
        header_policies,
        transforms,
        limits,
        cache,
        models,
        names,
        globs,
        header_policies_defined=_policy_names(doc, "headers"),
        transforms_defined=_policy_names(doc, "transforms"),
    )
    routes = lower_routes(lw, data.get("routes") or [], refs)
    check_unreachable(lw, data.get("routes") or [])
    auth = _lower_auth(lw, data.get("auth") or {}, limits)
    observability = _lower_observability(lw, data.get("observability") or {})
    server = _lower_server(data.get("server") or {})
    admin_spec = data.get("admin") or {}
    warn_not_enforced(lw, data)
    warn_logging_without_access_log(lw, data)
    warn_missing_files(lw, data)
    if any(d.is_error for d in lw.diagnostics):
        return None, lw.diagnostics
    table = RouteTable(
        version=doc.digest,
        sources=tuple(doc.sources),
        server=server,
        upstreams=MappingProxyType(upstreams),
        models=MappingProxyType(models),
        model_names=MappingProxyType(names),
        model_globs=tuple(globs),
        routes=tuple(routes),
        index=build_index(routes, names),
        header_policies=MappingProxyType(header_policies),
        transforms=MappingProxyType(transforms),
        auth=auth,
        limits=limits,
        usage=_lower_usage(lw, data["usage"] or {}) if "usage" in data else None,
        cache=cache,
        observability=observability,
        admin=AdminSettings(admin_spec.get("enabled", False), admin_spec.get("key_hash")),
    )
    return table, lw.diagnostics


# --- policies -----------------------------------------------------------------------------


def _lower_header_policies(lw: Lowering, specs: dict[str, Any]) -> dict[str, HeaderPolicy]:
    out = {}
    for name, spec in specs.items():
        ok = True
        rules = {}
        for direction in ("request", "response"):
            if direction not in spec:
                continue
            base: PathKey = ("policies", "headers", name, direction)
            found = check_header_rules(
                spec[direction], _suffix_span(lw.doc, base, at_key=True), direction=direction
            )
            lw.diagnostics.extend(found)
            ok = ok and not any(d.is_error for d in found)
            rules[direction] = spec[direction]
        if ok:
            out[name] = HeaderPolicy(
                name=name,
                request=compile_header_rules(rules["request"]) if "request" in rules else None,
                response=compile_header_rules(rules["response"]) if "response" in rules else None,
            )
    return out


def _suffix_path(doc: Document, base: PathKey, suffix: str) -> PathKey:
    """``(("policies", "headers", "corp"), "allow[2]") -> (..., "corp", "allow", 2)``; a name
    with dots (``force.x.team`` for the header ``x.team``) is kept whole when the config has it."""
    path: list[str | int] = list(base)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", suffix):
        if part.startswith("["):
            path.append(int(part[1:-1]))
        elif isinstance(path[-1], str) and tuple(path) not in doc.values:
            path[-1] = f"{path[-1]}.{part}"
        else:
            path.append(part)
    return tuple(path)


def _suffix_span(doc: Document, base: PathKey, *, at_key: bool) -> Callable[[str], Span]:
    """A `span_for` callback turning ``"allow[2]"`` / ``"force.x-team"`` into a located Span:
    the key that holds the value when `at_key` (header names under add/force), else the value."""

    def span_for(suffix: str) -> Span:
        key = _suffix_path(doc, base, suffix)
        return doc.key_span(key) if at_key and key in doc.keys else doc.span(key)

    return span_for


def _suffix_span_at(doc: Document, base: PathKey) -> Callable[[str, int], Span]:
    """A `span_at` callback: where character `offset` of the string at a suffix is."""

    def span_at(suffix: str, offset: int) -> Span:
        return doc.span_at(_suffix_path(doc, base, suffix), offset)

    return span_at


def _lower_transforms(lw: Lowering, specs: dict[str, Any]) -> dict[str, TransformPipeline]:
    out = {}
    for name, spec in specs.items():
        base: PathKey = ("policies", "transforms", name)
        found = check_transform_pipeline(
            name,
            spec,
            _suffix_span(lw.doc, base, at_key=False),
            span_at=_suffix_span_at(lw.doc, base),
        )
        lw.diagnostics.extend(found)
        if not any(d.is_error for d in found):
            out[name] = compile_transform_pipeline(name, spec)
    return out


# --- upstreams and models -----------------------------------------------------------------


def _policy_names(doc: Document, kind: str) -> frozenset[str]:
    """Every policy name defined under ``policies.<kind>``, compiled or not."""
    return frozenset((doc.data.get("policies") or {}).get(kind) or {})


def _lower_upstreams(
    lw: Lowering, specs: dict[str, Any], header_policies: Mapping[str, HeaderPolicy]
) -> dict[str, CompiledUpstream]:
    out = {}
    for name, spec in specs.items():
        base: PathKey = ("upstreams", name)
        policies = []
        defined = _policy_names(lw.doc, "headers")
        for i, policy in enumerate(spec.get("headers") or []):
            path = (*base, "headers", i)
            if lw.ref("header policy", policy, defined, path, "ref.unknown_header_policy") and (
                policy in header_policies  # NOTE: a policy with errors is reported once, there
            ):
                policies.append(header_policies[policy])
        tls = spec.get("tls") or {}
        if tls.get("verify") is False:
            lw.warn(
                "tls.verify_off",
                f"upstream '{name}' does not verify certificates",
                lw.doc.key_span((*base, "tls", "verify")),
            )
        retry = spec.get("retry") or {}
        backoff = retry.get("backoff") or {}
        breaker = spec.get("circuit_breaker")
        out[name] = CompiledUpstream(
            name=name,
            kind=spec["kind"],
            base_url=str(spec.get("base_url", "mock://")).rstrip("/"),
            state_id=state_id("upstream", _redact_secrets(spec)),
            api_key=lw.secret(spec.get("api_key"), (*base, "api_key")),
            timeouts=Timeouts(**(spec.get("timeouts") or {})),
            tls=TlsSettings(**tls),
            pool=PoolLimits(**(spec.get("pool") or {})),
            retry=RetryPolicy(
                attempts=retry.get("attempts", 1),
                initial_ms=backoff.get("initial_ms", 200),
                max_ms=backoff.get("max_ms", 5000),
                multiplier=backoff.get("multiplier", 2.0),
                jitter=backoff.get("jitter", "full"),
                on_status=frozenset(retry.get("on_status", (429, 500, 502, 503, 504))),
                on_errors=frozenset(retry.get("on_errors", ("connect", "timeout", "read"))),
                respect_retry_after=retry.get("respect_retry_after", True),
                max_retry_after_s=retry.get("max_retry_after_s", 30),
            ),
            breaker=BreakerPolicy(**breaker) if breaker is not None else None,
            header_policies=tuple(policies),
            oauth=_lower_oauth(lw, spec.get("oauth"), (*base, "oauth")),
            mock=_lower_mock(spec.get("mock") or {}) if spec["kind"] == "mock" else None,
        )
    return out


def _lower_oauth(lw: Lowering, spec: Any, base: PathKey) -> OAuthSettings | None:
    if not spec:
        return None
    return OAuthSettings(
        token_url=spec["token_url"],
        scope=spec.get("scope", "GIGACHAT_API_PERS"),
        credentials=lw.secret(spec.get("credentials"), (*base, "credentials")),
        client_id=spec.get("client_id"),
        client_secret=lw.secret(spec.get("client_secret"), (*base, "client_secret")),
        refresh_margin_s=spec.get("refresh_margin_s", 60),
    )


def _lower_mock(spec: dict[str, Any]) -> MockSettings:
    usage = spec.get("usage") or {}
    fail = spec.get("fail") or {}
    return MockSettings(
        latency_ms=spec.get("latency_ms", 0),
        reply=spec.get("reply"),
        stream_chunks=spec.get("stream_chunks", 8),
        chunk_delay_ms=spec.get("chunk_delay_ms", 0),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        fail_rate=fail.get("rate", 0.0),
        fail_status=fail.get("status", 500),
        fail_message=fail.get("message", "injected failure"),
        tool_calls=_lower_mock_tool_calls(spec.get("tool_call")),
    )


def _lower_mock_tool_calls(spec: Any) -> tuple[tuple[str, str], ...]:
    """``{name: Bash, arguments: {command: ls}}`` -> ``(("Bash", '{"command":"ls"}'),)``."""
    calls = spec if isinstance(spec, list) else [spec] if isinstance(spec, dict) else []
    return tuple(
        (call["name"], json.dumps(call.get("arguments") or {}, separators=(",", ":")))
        for call in calls
    )


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _lower_models(
    lw: Lowering, specs: dict[str, Any], upstreams: Mapping[str, CompiledUpstream]
) -> tuple[dict[str, CompiledModel], dict[str, str], list[tuple[re.Pattern[str], str]]]:
    models: dict[str, CompiledModel] = {}
    names: dict[str, str] = {name: name for name in specs}
    globs: list[tuple[re.Pattern[str], str]] = []
    for name, spec in specs.items():
        for i, alias in enumerate(spec.get("aliases") or []):
            path = ("models", name, "aliases", i)
            if _is_glob(alias):
                globs.append((re.compile(fnmatch.translate(alias)), name))
            elif alias in names:
                owner = names[alias]
                lw.error(
                    "name.duplicate", f"'{alias}' already names model '{owner}'", lw.span(path)
                )
            else:
                names[alias] = name
    for name, spec in specs.items():
        models[name] = _lower_model(lw, name, spec, upstreams, names)
    _check_fallback_cycles(lw, specs, names)
    return models, names, globs


def _lower_model(
    lw: Lowering,
    name: str,
    spec: dict[str, Any],
    upstreams: Mapping[str, CompiledUpstream],
    names: Mapping[str, str],
) -> CompiledModel:
    base: PathKey = ("models", name)
    targets = []
    for i, target in enumerate(spec.get("targets") or []):
        upstream_name = target["upstream"]
        if not lw.ref(
            "upstream",
            upstream_name,
            upstreams,
            (*base, "targets", i, "upstream"),
            "ref.unknown_upstream",
        ):
            continue
        upstream = upstreams[upstream_name]
        targets.append(
            CompiledTarget(
                upstream=upstream,
                model=target.get("model"),
                state_id=state_id("target", upstream.state_id, target.get("model")),
                priority=target.get("priority", i),
                weight=target.get("weight", 1.0),
                params=MappingProxyType(dict(target.get("params") or {})),
            )
        )
    targets.sort(key=lambda t: t.priority)
    fallback = spec.get("fallback") or {}
    for i, other in enumerate(fallback.get("models") or []):
        lw.ref("model", other, names, (*base, "fallback", "models", i), "ref.unknown_model")
    pricing = spec.get("pricing")
    return CompiledModel(
        name=name,
        targets=tuple(targets),
        strategy=spec.get("strategy", "priority"),
        aliases=tuple(spec.get("aliases") or ()),
        fallback_models=tuple(names.get(m, m) for m in fallback.get("models") or ()),
        fallback_on=frozenset(
            fallback.get(
                "on",
                (
                    "server_error",
                    "timeout",
                    "connect",
                    "rate_limited",
                    "circuit_open",
                    "bad_response",
                ),
            )
        ),
        capabilities=frozenset(spec.get("capabilities") or ()),
        context_window=spec.get("context_window"),
        pricing=Pricing(**pricing) if pricing else None,
    )


def _check_fallback_cycles(lw: Lowering, specs: dict[str, Any], names: Mapping[str, str]) -> None:
    """A fallback may name a model by an alias; the chain follows the model the alias names."""
    graph = {
        name: [
            (i, m, names[m])
            for i, m in enumerate((spec.get("fallback") or {}).get("models") or [])
            if m in names
        ]
        for name, spec in specs.items()
    }
    for model, i, chain in fallback_cycles(graph):
        lw.error(
            "model.fallback_cycle",
            f"fallback cycle: {chain}",
            lw.span(("models", model, "fallback", "models", i)),
            hint="a fallback chain must end",
        )


# --- keys, limits, cache, usage, observability, server ------------------------------------

# Sections the server validates but does not act on yet: each present one is a warning, so that
# nobody believes they are protected by configuration that does nothing.
_NOT_ENFORCED: tuple[tuple[PathKey, str], ...] = ()


def warn_not_enforced(lw: Lowering, data: dict[str, Any]) -> None:
    for path, what in _NOT_ENFORCED:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or node is False or node == {} or node == []:
            continue
        lw.warn(
            "config.not_enforced",
            f"{what} is validated but not enforced by this version of the server",
            lw.doc.key_span(path),
            hint="remove it, or know that it has no effect yet",
        )


def warn_logging_without_access_log(lw: Lowering, data: dict[str, Any]) -> None:
    """Bodies and headers are logged on access lines: with the access log off, asking for them
    does nothing (``log.no_access_log``)."""
    spec = data.get("observability") or {}
    if (spec.get("access_log") or {}).get("enabled", True):
        return
    paths: list[PathKey] = [
        ("observability", key) for key in ("log_bodies", "log_headers") if spec.get(key)
    ]
    paths += [
        ("routes", i, "action", "log_bodies")
        for i, route in enumerate(data.get("routes") or [])
        if (route.get("action") or {}).get("log_bodies")
    ]
    for path in paths:
        lw.warn(
            "log.no_access_log",
            f"{path[-1]} has no effect: observability.access_log.enabled is false",
            lw.doc.key_span(path),
            hint="enable the access log, or remove it",
        )


def warn_missing_files(lw: Lowering, data: dict[str, Any]) -> None:
    """``file.missing`` for each referenced file this machine does not have: the server would
    refuse the config (a warning, as `validate` may run where the files are not)."""
    for path, file, what in missing_files(data):
        lw.warn(
            "file.missing",
            f"{what} '{file}' does not exist on this machine",
            lw.span(path),
            hint="serve and reload refuse this config until the file is there",
        )


def _lower_store(
    lw: Lowering, spec: dict[str, Any] | None, default: StoreSettings, path: PathKey
) -> StoreSettings:
    """A store or backend; a URL with credentials in it is a secret (``postgres://u:p@h/db``)."""
    if not spec:
        return default
    url = spec.get("url")
    if isinstance(url, str) and "@" not in url:
        ref: SecretRef | None = SecretRef(literal=url)
    else:
        ref = lw.secret(url, (*path, "url"))
    return StoreSettings(kind=spec["kind"], path=spec.get("path"), url=ref)


def _lower_limits(
    lw: Lowering, spec: dict[str, Any], models: Mapping[str, CompiledModel]
) -> LimitSettings:
    policies = {}
    unpriced = sorted(name for name, model in models.items() if model.pricing is None)
    for name, policy in (spec.get("policies") or {}).items():
        budget = policy.get("budget") or {}
        for key in ("cost_per_day", "cost_per_month"):
            if key in budget and unpriced:
                lw.warn(
                    "budget.no_price",
                    f"limit '{name}' has a cost budget but models {', '.join(unpriced)} have no"
                    " pricing; their requests cost 0 against it",
                    lw.doc.key_span(("limits", "policies", name, "budget", key)),
                    hint="add `pricing` to those models",
                )
                break
        policies[name] = LimitPolicy(
            name=name,
            scope=policy.get("scope", "key"),
            state_id=state_id("limit", name, policy),
            rpm=policy.get("rpm"),
            tpm=policy.get("tpm"),
            concurrent_streams=policy.get("concurrent_streams"),
            **{
                k: budget.get(k)
                for k in ("tokens_per_day", "tokens_per_month", "cost_per_day", "cost_per_month")
            },
        )
    default = []
    for i, name in enumerate(spec.get("default") or []):
        if lw.ref("limit policy", name, policies, ("limits", "default", i), "ref.unknown_limit"):
            default.append(name)
    return LimitSettings(
        backend=_lower_store(
            lw, spec.get("backend"), StoreSettings("memory"), ("limits", "backend")
        ),
        default=tuple(default),
        policies=MappingProxyType(policies),
        on_backend_error=spec.get("on_backend_error", "allow"),
        headers=spec.get("headers", "api"),
    )


def _lower_cache(lw: Lowering, spec: dict[str, Any]) -> CacheSettings:
    policies = {
        name: CachePolicy(name=name, state_id=state_id("cache", name, policy), **policy)
        for name, policy in (spec.get("policies") or {}).items()
    }
    return CacheSettings(
        backend=_lower_store(
            lw, spec.get("backend"), StoreSettings("memory"), ("cache", "backend")
        ),
        policies=MappingProxyType(policies),
    )


def _lower_auth(lw: Lowering, spec: dict[str, Any], limits: LimitSettings) -> AuthSettings:
    keys = []
    seen: set[str] = set()
    for i, key in enumerate(spec.get("keys") or []):
        base: PathKey = ("auth", "keys", i)
        if key["id"] in seen:
            lw.error(
                "name.duplicate", f"key id '{key['id']}' is used twice", lw.span((*base, "id"))
            )
        seen.add(key["id"])
        key_limits = None
        if "limits" in key:
            key_limits = tuple(
                name
                for j, name in enumerate(key["limits"])
                if lw.ref(
                    "limit policy", name, limits.policies, (*base, "limits", j), "ref.unknown_limit"
                )
            )
        globs = key.get("models")
        keys.append(
            ApiKey(
                id=key["id"],
                hash=key["hash"],
                name=key.get("name"),
                org=key.get("org"),
                project=key.get("project"),
                models=tuple(globs) if globs is not None else None,
                models_pattern=re.compile("|".join(fnmatch.translate(g) for g in globs))
                if globs
                else None,
                expires=key.get("expires"),
                limits=key_limits,
                tags=MappingProxyType({k: str(v) for k, v in (key.get("tags") or {}).items()}),
            )
        )
    store = spec.get("store")
    return AuthSettings(
        required=spec.get("required", bool(spec)),
        accept=tuple(spec.get("accept", ("bearer", "x-api-key"))),
        keys=tuple(keys),
        store=_lower_store(lw, store, StoreSettings("memory"), ("auth", "store"))
        if store
        else None,
    )


def _lower_usage(lw: Lowering, spec: dict[str, Any]) -> UsageSettings:
    default = UsageSettings()
    return UsageSettings(
        store=_lower_store(lw, spec.get("store"), default.store, ("usage", "store")),
        retention_days=spec.get("retention_days", default.retention_days),
        log_prompts=spec.get("log_prompts", False),
        flush_interval_s=float(spec.get("flush_interval_s", default.flush_interval_s)),
    )


def _lower_observability(lw: Lowering, spec: dict[str, Any]) -> ObservabilitySettings:
    redact = []
    for i, pattern in enumerate(spec.get("redact") or []):
        compiled = lw.regex(pattern, ("observability", "redact", i))
        if compiled is not None:
            redact.append(compiled)
    access = spec.get("access_log") or {}
    metrics = spec.get("metrics") or {}
    return ObservabilitySettings(
        access_log=access.get("enabled", True),
        log_format=access.get("format", "json"),
        log_destination=access.get("destination", "stderr"),
        log_bodies=spec.get("log_bodies", False),
        log_headers=spec.get("log_headers", False),
        log_body_max_bytes=spec.get("log_body_max_bytes", 4096),
        redact=tuple(redact),
        metrics=metrics.get("enabled", True),
        metrics_path=metrics.get("path", "/metrics"),
        request_id_header=spec.get("request_id_header", "x-request-id").lower(),
    )


def _lower_server(spec: dict[str, Any]) -> ServerSettings:
    cors = spec.get("cors")
    names = spec.get("response_headers") or {}
    default_names = ResponseHeaderNames()
    return ServerSettings(
        listen=tuple(spec.get("listen", ("127.0.0.1:8080",))),
        max_body_bytes=spec.get("max_body_bytes", 10 * 1024 * 1024),
        max_upstream_body_bytes=spec.get("max_upstream_body_bytes", 32 * 1024 * 1024),
        drain_timeout_s=spec.get("drain_timeout_s", 30),
        keep_alive_timeout_s=spec.get("keep_alive_timeout_s", 5),
        max_connections=spec.get("max_connections"),
        cors=CorsSettings(
            allow_origins=tuple(cors.get("allow_origins", ())),
            allow_methods=tuple(cors.get("allow_methods", ("GET", "POST", "OPTIONS"))),
            allow_headers=tuple(h.lower() for h in cors.get("allow_headers", ())),
            allow_credentials=cors.get("allow_credentials", False),
            max_age_s=cors.get("max_age_s", 600),
        )
        if cors
        else None,
        response_headers=ResponseHeaderNames(
            **{
                k: (names[k].lower() if names.get(k) else None)
                if k in names
                else getattr(default_names, k)
                for k in ("route", "upstream", "model", "version", "cache")
            }
        ),
        health=HealthSettings(
            required=tuple((spec.get("health") or {}).get("required", HealthSettings().required))
        ),
    )
