"""A route table made ready to serve: secrets resolved, header policies resolved, mock providers
and key ring built. Built off the hot path when a table is loaded; requests only read it.

    snapshot = prepare_snapshot(table)         # raises SnapshotError (e.g. a missing secret)
    snapshot.upstreams["openai"].auth_headers  -> (("authorization", "Bearer …"),)
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from compiler import CompileResult, Severity
from compiler.headers import (
    HeaderPolicy,
    HeaderRules,
    default_request_rules,
    resolve_header_secrets,
)
from compiler.table import CompiledUpstream, RouteTable, SecretRef
from runtime.auth import KeyRing
from runtime.mock import MockProvider
from runtime.redaction import Redactor, build_redactor

FAMILIES = {
    "openai": "openai",
    "openai-compatible": "openai",
    "gigachat": "gigachat",
    "anthropic": "anthropic",
    "ollama": "ollama",
    "mock": "mock",
}
ANTHROPIC_VERSION = "2023-06-01"


class SnapshotError(Exception):
    """A table that compiled but cannot be served here (a secret is missing, a file unreadable).
    `file` names the file that could not be used, when one was the cause."""

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


def locate_snapshot_error(result: CompileResult, error: SnapshotError) -> CompileResult:
    """`result` with the compiler's ``file.missing`` warnings about `error`'s file raised to
    errors, so a refusal is reported where the config names the file (file:line:col)."""
    if error.file is None:
        return result
    diagnostics = tuple(
        replace(d, severity=Severity.ERROR)
        if d.code == "file.missing" and f"'{error.file}'" in d.message
        else d
        for d in result.diagnostics
    )
    return replace(result, diagnostics=diagnostics)


@dataclass(frozen=True, slots=True)
class PreparedUpstream:
    upstream: CompiledUpstream
    family: str  # openai | anthropic | ollama | gigachat | mock
    auth_headers: tuple[tuple[str, str], ...]
    policies: tuple[HeaderPolicy, ...]  # secrets resolved
    mock: MockProvider | None = None
    oauth_credentials: str | None = None  # gigachat: base64 client credentials


@dataclass(frozen=True, slots=True)
class Snapshot:
    table: RouteTable
    upstreams: Mapping[str, PreparedUpstream]
    route_policies: tuple[tuple[HeaderPolicy, ...], ...]  # by route index, secrets resolved
    default_rules: HeaderRules
    keyring: KeyRing | None
    owned_response_headers: frozenset[str]  # set by the gateway; an upstream's copy never passes
    # NOTE: ("sqlite", path) or ("postgres", url); the url may hold a password: never logged
    ledger_target: tuple[str, str] | None = field(default=None, repr=False)
    # NOTE: ("memory", ""), ("sqlite", path) or ("redis", url) when some limit policy exists
    limits_target: tuple[str, str] | None = field(default=None, repr=False)
    # NOTE: ("memory", "") or ("redis", url) when some cache policy exists
    cache_target: tuple[str, str] | None = field(default=None, repr=False)
    # NOTE: ("sqlite", path) or ("postgres", url) of auth.store (managed keys), or None
    key_store_target: tuple[str, str] | None = field(default=None, repr=False)
    # NOTE: masks every secret above (and the redact patterns) in upstream bytes and log lines
    redactor: Redactor = field(default_factory=lambda: Redactor(()), repr=False)
    # PERF: the table's short version, read several times a request (headers, logs, ledger)
    version: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", self.table.short_version)


def resolve_secret(ref: SecretRef, what: str) -> str:
    if ref.literal is not None:
        return ref.literal
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SnapshotError(f"{what}: environment variable {ref.env} is not set")
        return value
    if ref.file is not None:
        try:
            return Path(ref.file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SnapshotError(
                f"{what}: cannot read secret file '{ref.file}': {reason}", file=ref.file
            ) from None
    raise SnapshotError(f"{what}: empty secret reference")


def _resolve_policy(policy: HeaderPolicy) -> HeaderPolicy:
    def resolve(ref: SecretRef) -> str:
        return resolve_secret(ref, f"header policy '{policy.name}'")

    try:
        return replace(
            policy,
            request=resolve_header_secrets(policy.request, resolve) if policy.request else None,
            response=resolve_header_secrets(policy.response, resolve) if policy.response else None,
        )
    except ValueError as exc:  # NOTE: a secret value that cannot be a header value
        raise SnapshotError(f"header policy '{policy.name}': {exc}") from None


def _auth_headers(upstream: CompiledUpstream) -> tuple[tuple[str, str], ...]:
    if upstream.api_key is None:
        return ()
    key = resolve_secret(upstream.api_key, f"upstream '{upstream.name}' api_key")
    if upstream.kind == "anthropic":
        return (("x-api-key", key),)
    return (("authorization", f"Bearer {key}"),)


def _oauth_credentials(upstream: CompiledUpstream) -> str | None:
    oauth = upstream.oauth
    if oauth is None:
        return None
    what = f"upstream '{upstream.name}' oauth"
    if oauth.credentials is not None:
        return resolve_secret(oauth.credentials, what)
    secret = resolve_secret(oauth.client_secret, what) if oauth.client_secret else ""
    return base64.b64encode(f"{oauth.client_id}:{secret}".encode()).decode()


def prepare_snapshot(table: RouteTable) -> Snapshot:
    policies = {name: _resolve_policy(p) for name, p in table.header_policies.items()}
    upstreams = {}
    for name, upstream in table.upstreams.items():
        check_tls_files(upstream)
        upstreams[name] = PreparedUpstream(
            upstream=upstream,
            family=FAMILIES[upstream.kind],
            auth_headers=_auth_headers(upstream),
            policies=tuple(policies[p.name] for p in upstream.header_policies),
            mock=MockProvider(upstream.mock) if upstream.mock is not None else None,
            oauth_credentials=_oauth_credentials(upstream),
        )
    return Snapshot(
        table=table,
        upstreams=MappingProxyType(upstreams),
        route_policies=tuple(
            tuple(policies[p.name] for p in route.action.header_policies) for route in table.routes
        ),
        default_rules=default_request_rules(table.observability.request_id_header),
        keyring=KeyRing(table.auth)
        if table.auth.keys or table.auth.required or table.auth.store is not None
        else None,
        owned_response_headers=_owned_response_headers(table),
        ledger_target=ledger_target(table),
        limits_target=limits_target(table),
        cache_target=cache_target(table),
        key_store_target=key_store_target(table),
        redactor=build_redactor(table, resolve_secret),
    )


_TLS_FILES = (
    ("ca_bundle", "CA bundle"),
    ("client_cert", "client certificate"),
    ("client_key", "client key"),
)


def check_tls_files(upstream: CompiledUpstream) -> None:
    """Raise SnapshotError naming the file when an upstream's TLS file cannot be read or is not
    PEM the TLS library accepts, so that a table naming one is refused (not served with a pool
    that fails on its first connection)."""
    tls = upstream.tls
    what = f"upstream '{upstream.name}'"
    for key, name in _TLS_FILES:
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise SnapshotError(
                f"{what}: cannot read TLS {name} '{path}' (tls.{key}): {exc.strerror}", file=path
            ) from None
    if tls.ca_bundle is None and tls.client_cert is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_bundle)
        except (ssl.SSLError, OSError) as exc:
            raise SnapshotError(
                f"{what}: TLS CA bundle '{tls.ca_bundle}' (tls.ca_bundle) holds no usable PEM"
                f" certificate: {exc}",
                file=tls.ca_bundle,
            ) from None
    if tls.client_cert is not None:
        try:  # SECURITY: an encrypted key would make OpenSSL prompt on the terminal
            context.load_cert_chain(tls.client_cert, tls.client_key, password=_no_password)
        except (ssl.SSLError, OSError, _EncryptedKey) as exc:
            raise SnapshotError(
                f"{what}: TLS client certificate '{tls.client_cert}' with key"
                f" '{tls.client_key}' cannot be used (an unencrypted PEM key is needed): {exc}",
                file=tls.client_cert,
            ) from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey("the key is encrypted")


def limits_target(table: RouteTable) -> tuple[str, str] | None:
    """Where limit counters live, or None when no policy is defined."""
    if not table.limits.policies:
        return None
    backend = table.limits.backend
    if backend.kind == "sqlite":
        return ("sqlite", backend.path or "interlock-limits.db")
    if backend.kind == "redis":
        if backend.url is None:
            raise SnapshotError("limits.backend: a redis backend needs a url")
        return ("redis", resolve_secret(backend.url, "limits.backend url"))
    return ("memory", "")


def cache_target(table: RouteTable) -> tuple[str, str] | None:
    """Where response cache entries live, or None when no cache policy is defined."""
    if not table.cache.policies:
        return None
    backend = table.cache.backend
    if backend.kind == "redis":
        if backend.url is None:
            raise SnapshotError("cache.backend: a redis backend needs a url")
        return ("redis", resolve_secret(backend.url, "cache.backend url"))
    return ("memory", "")


def key_store_target(table: RouteTable) -> tuple[str, str] | None:
    """Where the managed keys of `table` live: ("sqlite", path), ("postgres", url), or None."""
    store = table.auth.store
    if store is None:
        return None
    if store.kind == "sqlite":
        if not store.path:
            raise SnapshotError("auth.store: a sqlite store needs a path")
        return ("sqlite", store.path)
    if store.url is None:
        raise SnapshotError("auth.store: a postgres store needs a url")
    return ("postgres", resolve_secret(store.url, "auth.store url"))


def ledger_target(table: RouteTable) -> tuple[str, str] | None:
    """Where the usage ledger of `table` lives: ("sqlite", path), ("postgres", url), or None."""
    if table.usage is None:
        return None
    store = table.usage.store
    if store.kind == "sqlite":
        return ("sqlite", store.path or "interlock-usage.db")
    if store.url is None:
        raise SnapshotError("usage.store: a postgres store needs a url")
    return ("postgres", resolve_secret(store.url, "usage.store url"))


def _owned_response_headers(table: RouteTable) -> frozenset[str]:
    names = table.server.response_headers
    identity = (names.route, names.upstream, names.model, names.version, names.cache)
    fixed = {"content-type", "request-id", table.observability.request_id_header}
    return frozenset(fixed | {name for name in identity if name})
