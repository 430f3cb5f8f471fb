"""The compiled route table: frozen values the runtime reads and never changes.

Everything here is immutable (frozen dataclasses, tuples, frozensets, MappingProxyType). State that
must outlive a reload (breaker state, counters, cache entries) is keyed by the `state_id` of the
object that owns it: a sha256 of that object's own definition, so it survives a swap exactly when
the definition did not change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from compiler.diagnostics import Span
from compiler.headers import HeaderPolicy
from compiler.jsonpath import JsonPathPlan
from compiler.transforms import TransformPipeline

APIS = (
    "openai.chat",
    "openai.completions",
    "openai.embeddings",
    "openai.responses",
    "anthropic.messages",
    "anthropic.count_tokens",
)
FAILURE_CLASSES = (
    "server_error",
    "rate_limited",
    "timeout",
    "connect",
    "circuit_open",
    "bad_response",
    "client_error",
)

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret the server resolves when it loads the table; the table never holds its value
    unless it was written inline (`literal`), which the compiler warns about."""

    env: str | None = None
    file: str | None = None
    literal: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0
    first_byte_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    verify: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 100
    max_keepalive: int = 20
    keepalive_expiry_s: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 1
    initial_ms: float = 200.0
    max_ms: float = 5000.0
    multiplier: float = 2.0
    jitter: str = "full"
    on_status: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    on_errors: frozenset[str] = frozenset({"connect", "timeout", "read"})
    respect_retry_after: bool = True
    max_retry_after_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    token_url: str
    scope: str
    credentials: SecretRef | None = None
    client_id: str | None = None
    client_secret: SecretRef | None = None
    refresh_margin_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MockSettings:
    latency_ms: float = 0.0
    reply: str | None = None
    stream_chunks: int = 8
    chunk_delay_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fail_rate: float = 0.0
    fail_status: int = 500
    fail_message: str = "injected failure"
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, JSON arguments), first offered wins


@dataclass(frozen=True, slots=True)
class CompiledUpstream:
    name: str
    kind: str
    base_url: str
    state_id: str
    api_key: SecretRef | None = None
    timeouts: Timeouts = Timeouts()
    tls: TlsSettings = TlsSettings()
    pool: PoolLimits = PoolLimits()
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy | None = None
    header_policies: tuple[HeaderPolicy, ...] = ()
    oauth: OAuthSettings | None = None
    mock: MockSettings | None = None


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    """One place a model can be served: an upstream and the model name sent there."""

    upstream: CompiledUpstream
    model: str | None  # None: forward the name the client asked for
    state_id: str  # breaker and latency state key
    priority: int = 0
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Pricing:
    input_per_mtok: float
    output_per_mtok: float
    currency: str = "USD"
    cached_input_per_mtok: float | None = None  # None: cached input costs the input price


@dataclass(frozen=True, slots=True)
class CompiledModel:
    name: str
    targets: tuple[CompiledTarget, ...]  # priority order for the `priority` strategy
    strategy: str = "priority"
    aliases: tuple[str, ...] = ()
    fallback_models: tuple[str, ...] = ()
    fallback_on: frozenset[str] = frozenset()
    capabilities: frozenset[str] = frozenset()
    context_window: int | None = None
    pricing: Pricing | None = None


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: str  # lowercase
    equals: str | None = None
    pattern: re.Pattern[str] | None = None
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class BodyPredicate:
    path: JsonPathPlan
    op: str  # equals | not_equals | in | exists | gt | gte | lt | lte | regex
    value: Any = None
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class TextCondition:
    pattern: re.Pattern[str]
    scope: str = "all"  # last_user | user | system | all


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    apis: frozenset[str] | None = None
    models: frozenset[str] | None = None  # exact names
    model_pattern: re.Pattern[str] | None = None  # from glob or regex
    headers: tuple[HeaderCondition, ...] = ()
    key: tuple[tuple[str, str], ...] = ()  # (attribute, value): org, project, name, id
    key_tags: tuple[tuple[str, str], ...] = ()
    body: tuple[BodyPredicate, ...] = ()
    stream: bool | None = None
    text: TextCondition | None = None
    prompt_chars: tuple[tuple[str, int], ...] = ()  # (gte|gt|lte|lt, n), all must hold


@dataclass(frozen=True, slots=True)
class ParamPlan:
    set: Mapping[str, Any] = field(default_factory=_empty)
    default: Mapping[str, Any] = field(default_factory=_empty)
    clamp: Mapping[str, tuple[float | None, float | None]] = field(default_factory=_empty)
    drop: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.default or self.clamp or self.drop)


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class CompiledAction:
    model: str | None = None
    default_model: str | None = None
    params: ParamPlan = ParamPlan()
    reject: Rejection | None = None
    header_policies: tuple[HeaderPolicy, ...] = ()
    transforms: tuple[TransformPipeline, ...] = ()
    limits: tuple[str, ...] | None = None  # None: the limits default applies
    cache: str | None = None
    drop_unsupported: bool = False  # drop what the target protocol cannot honour, not a 400
    hosted_tools: str = "drop"  # Responses API hosted tools off kind openai: drop | refuse
    log_bodies: bool | None = None  # None: observability.log_bodies decides


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    index: int
    name: str
    match: CompiledMatch
    action: CompiledAction
    span: Span = field(compare=False, default=Span("<config>", 1, 1))


@dataclass(frozen=True, slots=True)
class RouteIndex:
    """Bitset index over routes (bit i = route i): for each indexed dimension, the routes that
    can match a given value (routes requiring exactly that value, plus routes that do not
    constrain the dimension), so that matching intersects a few ints instead of scanning."""

    all_routes: int
    api: Mapping[str, int]
    model: Mapping[str, int]  # a known name -> routes naming it, matching it, or not constraining
    model_wild: int  # a name not in `model`: routes with a model pattern or no model condition
    headers: tuple[tuple[str, Mapping[str, int], int], ...]  # (name, value -> mask, wild mask)
    api_wild: int = 0  # an API outside APIS: routes with no api condition
    model_none: int = 0  # a request naming no model: routes with no model condition


@dataclass(frozen=True, slots=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allow_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: int = 600


@dataclass(frozen=True, slots=True)
class ResponseHeaderNames:
    route: str | None = "x-interlock-route"
    upstream: str | None = "x-interlock-upstream"
    model: str | None = "x-interlock-model"
    version: str | None = "x-interlock-config-version"
    cache: str | None = "x-interlock-cache"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """What ``/health`` (503) and ``/readyz`` need usable: ledger, keys, limits, cache, upstreams,
    oauth. By default the stores that enforce policy: limits and the key store."""

    required: tuple[str, ...] = ("keys", "limits")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    max_body_bytes: int = 10 * 1024 * 1024
    max_upstream_body_bytes: int = 32 * 1024 * 1024
    drain_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int | None = None  # None: derived from the open-file limit at startup
    cors: CorsSettings | None = None
    response_headers: ResponseHeaderNames = ResponseHeaderNames()
    health: HealthSettings = HealthSettings()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    hash: str  # "sha256:<salt>:<hex digest of sha256(salt + key)>"
    name: str | None = None
    org: str | None = None
    project: str | None = None
    models: tuple[str, ...] | None = None  # globs, as written
    models_pattern: re.Pattern[str] | None = None  # the same globs, compiled
    expires: str | None = None
    limits: tuple[str, ...] | None = None
    tags: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    kind: str  # memory | sqlite | postgres | redis
    path: str | None = None
    url: SecretRef | None = None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    required: bool = False
    accept: tuple[str, ...] = ("bearer", "x-api-key")
    keys: tuple[ApiKey, ...] = ()
    store: StoreSettings | None = None


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    name: str
    scope: str
    state_id: str
    rpm: int | None = None
    tpm: int | None = None
    concurrent_streams: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    cost_per_day: float | None = None
    cost_per_month: float | None = None

    @property
    def has_budget(self) -> bool:
        return any(
            limit is not None
            for limit in (
                self.tokens_per_day,
                self.tokens_per_month,
                self.cost_per_day,
                self.cost_per_month,
            )
        )

    @property
    def counts_tokens(self) -> bool:
        """Whether a request must reserve tokens (and cost) against this policy."""
        return self.tpm is not None or self.has_budget


@dataclass(frozen=True, slots=True)
class LimitSettings:
    backend: StoreSettings = StoreSettings("memory")
    default: tuple[str, ...] = ()
    policies: Mapping[str, LimitPolicy] = field(default_factory=_empty)
    on_backend_error: str = "allow"  # allow | deny
    headers: str = "api"  # api | x-ratelimit | both | none


@dataclass(frozen=True, slots=True)
class UsageSettings:
    store: StoreSettings = StoreSettings("sqlite", path="interlock-usage.db")
    retention_days: int = 90
    log_prompts: bool = False
    flush_interval_s: float = 0.2


@dataclass(frozen=True, slots=True)
class CachePolicy:
    name: str
    state_id: str  # entries are namespaced by it: they survive a reload that keeps the policy
    ttl_s: float = 86400.0
    max_entries: int = 10000
    max_entry_bytes: int = 1024 * 1024
    only_deterministic: bool = True
    scope: str = "project"  # key | project | org | global: whose requests share entries


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: StoreSettings = StoreSettings("memory")
    policies: Mapping[str, CachePolicy] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    access_log: bool = True
    log_format: str = "json"
    log_destination: str = "stderr"
    log_bodies: bool = False
    log_headers: bool = False
    log_body_max_bytes: int = 4096
    redact: tuple[re.Pattern[str], ...] = ()
    metrics: bool = True
    metrics_path: str = "/metrics"
    request_id_header: str = "x-request-id"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    enabled: bool = False
    key_hash: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The whole compiled config. `version` is the sha256 of the source files (and of the
    environment variables they used); `short_version` is what responses carry."""

    version: str
    sources: tuple[str, ...]
    server: ServerSettings
    upstreams: Mapping[str, CompiledUpstream]
    models: Mapping[str, CompiledModel]
    model_names: Mapping[str, str]  # exact name or alias -> model name
    model_globs: tuple[tuple[re.Pattern[str], str], ...]  # (glob alias, model name), in order
    routes: tuple[CompiledRoute, ...]
    index: RouteIndex
    header_policies: Mapping[str, HeaderPolicy]
    transforms: Mapping[str, TransformPipeline]
    auth: AuthSettings
    limits: LimitSettings
    usage: UsageSettings | None  # None: no ledger
    cache: CacheSettings
    observability: ObservabilitySettings
    admin: AdminSettings

    @property
    def short_version(self) -> str:
        return self.version[:12]

    def resolve_model(self, name: str) -> CompiledModel | None:
        """The model a client-facing name means: exact name or alias, then glob aliases in order."""
        found = self.model_names.get(name)
        if found is None:
            for pattern, model in self.model_globs:
                if pattern.fullmatch(name):
                    found = model
                    break
            else:
                return None
        return self.models[found]
