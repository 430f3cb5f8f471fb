"""The example configs in examples/: they compile, their compiled tables are pinned by golden
dumps, they behave like the systems they reproduce, and they warn exactly as they say they do.

Each example is compiled hermetically, as `interlock validate` would with no environment set:
``compile_texts([("examples/<file>", text)], env={})``. The file name is part of the table's
`version`, so it is fixed rather than taken from the working directory.

Regenerate the golden dumps after changing an example::

    INTERLOCK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_examples.py
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from compiler import CompileResult, compile_texts
from compiler.diagnostics import render_text
from compiler.dump import dump_table
from compiler.headers import apply_header_rules
from compiler.matcher import RequestFacts, match_route, match_route_naive
from compiler.table import CompiledModel, CompiledRoute, RouteTable, SecretRef
from compiler.transforms import apply_request_steps, apply_response_steps

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden"
# NOTE: <name>.tests.yaml beside an example holds its route tests (tests/test_route_tests.py)
EXAMPLE_NAMES = sorted(
    p.name for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".tests.yaml")
)
UPDATE_GOLDEN = os.environ.get("INTERLOCK_UPDATE_GOLDEN") == "1"

# The line in an example's header comment that documents its warnings, e.g.
# "# Expected warnings: tls.verify_off" or "# Expected warnings: none".
EXPECTED_WARNINGS = re.compile(r"^# Expected warnings: (.+)$", re.MULTILINE)
DIAGNOSTIC_CODE = re.compile(r"\b[a-z_]+\.[a-z_]+\b")
KEY_HASH = re.compile(r"^sha256:[0-9a-f]{16}:[0-9a-f]{64}$")


def compile_example(name: str, env: Mapping[str, str] | None = None) -> CompileResult:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return compile_texts([(f"examples/{name}", text)], env=dict(env or {}))


@functools.cache
def table_of(name: str) -> RouteTable:
    result = compile_example(name)
    assert result.table is not None, describe(result)
    return result.table


def describe(result: CompileResult) -> str:
    return "\n".join(render_text(d, dict(result.sources)) for d in result.diagnostics)


def route_for(table: RouteTable, facts: RequestFacts) -> CompiledRoute:
    """The route `facts` match; the indexed matcher must agree with the in-order scan."""
    route = match_route(table, facts)
    assert route == match_route_naive(table.routes, facts)
    assert route is not None, f"no route matches {facts}"
    return route


def model_named(table: RouteTable, name: str) -> CompiledModel:
    """The model a client-facing name resolves to (exact name, alias or glob alias)."""
    model = table.resolve_model(name)
    assert model is not None, f"{name!r} resolves to no model"
    return model


def reject_status(route: CompiledRoute) -> int | None:
    return route.action.reject.status if route.action.reject is not None else None


def chat(text: str, *, system: str | None = None, model: str = "gpt-4o", **extra: Any) -> Any:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages, **extra}


def facts(
    model: str | None = "gpt-4o",
    text: str = "hello",
    headers: Mapping[str, str] | None = None,
    api: str = "openai.chat",
    **body: Any,
) -> RequestFacts:
    payload = chat(text, model=model or "", **body)
    if model is None:
        del payload["model"]
    return RequestFacts(api=api, model=model, headers=dict(headers or {}), payload=payload)


# --- every example -------------------------------------------------------------------------------


def test_the_five_seed_examples_exist() -> None:
    seeds = {
        "cfx-stage-routing.yaml",
        "llm-router-service.yaml",
        "xrouter-gigachat.yaml",
        "codexflow-tiers.yaml",
        "llm-proxy-router.yaml",
    }
    assert seeds <= set(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_compiles_without_errors(name: str) -> None:
    result = compile_example(name)
    assert result.ok and not result.errors, describe(result)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_matches_golden_dump(name: str) -> None:
    dumped = dump_table(table_of(name))
    golden = GOLDEN / f"{Path(name).stem}.json"
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(dumped, encoding="utf-8")
    assert golden.exists(), f"no golden dump {golden}; run with INTERLOCK_UPDATE_GOLDEN=1"
    assert dumped == golden.read_text(encoding="utf-8"), (
        f"{name} compiles differently from {golden.name}; if intended, regenerate with "
        "INTERLOCK_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_warns_exactly_as_documented(name: str) -> None:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    found = EXPECTED_WARNINGS.search(text)
    documented = [] if found is None else DIAGNOSTIC_CODE.findall(found.group(1))
    result = compile_example(name)
    assert sorted(d.code for d in result.warnings) == sorted(documented), describe(result)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_secrets_are_references(name: str) -> None:
    """No credential is written into an example: every secret is an {env: ...} reference."""
    table = table_of(name)
    secrets: list[SecretRef | None] = [u.api_key for u in table.upstreams.values()]
    secrets += [u.oauth.credentials for u in table.upstreams.values() if u.oauth]
    secrets += [table.limits.backend.url, table.cache.backend.url]
    secrets += [table.usage.store.url] if table.usage is not None else []
    for secret in secrets:
        assert secret is None or secret.literal is None
    for key in table.auth.keys:
        assert KEY_HASH.match(key.hash), key.id


# --- CF-X (seed 000) -----------------------------------------------------------------------------

CFX = "cfx-stage-routing.yaml"


@pytest.mark.parametrize(
    ("stage", "route", "model"),
    [
        ("plan", "stage-plan", "cfx-plan"),
        ("code", "stage-code", "cfx-code"),
        ("review", "stage-review", "cfx-review"),
    ],
)
def test_cfx_stage_header_picks_the_stage_model(stage: str, route: str, model: str) -> None:
    found = route_for(table_of(CFX), facts(headers={"x-cfx-stage": stage}, text="review this diff"))
    assert (found.name, found.action.model) == (route, model)


@pytest.mark.parametrize(
    ("text", "route", "model"),
    [
        ("Please review this diff before I merge", "infer-review", "cfx-review"),
        ("Let's plan the migration to Postgres 16", "infer-plan", "cfx-plan"),
        ("Write a function that parses ISO dates", "infer-code", "cfx-code"),
    ],
)
def test_cfx_stage_is_inferred_from_the_last_user_message(
    text: str, route: str, model: str
) -> None:
    found = route_for(table_of(CFX), facts(text=text))
    assert (found.name, found.action.model) == (route, model)


def test_cfx_direct_mode_allowlist_and_max_tokens_cap() -> None:
    table = table_of(CFX)
    allowed = route_for(table, facts("gpt-4.1-mini", headers={"x-cfx-stage": "direct"}))
    assert allowed.name == "direct-allowed"
    assert allowed.action.model is None  # the requested model is kept
    assert dict(allowed.action.params.clamp) == {
        "max_tokens": (None, 4096),
        "max_completion_tokens": (None, 4096),
    }
    assert model_named(table, "gpt-4.1-mini").name == "gpt-4.1-mini"

    rejected = route_for(table, facts("gpt-4o", headers={"x-cfx-stage": "direct"}))
    assert (rejected.name, reject_status(rejected)) == ("direct-rejected", 400)


def test_cfx_rejects_unknown_stages_and_other_apis() -> None:
    table = table_of(CFX)
    unknown = route_for(table, facts(headers={"x-cfx-stage": "deploy"}))
    assert (unknown.name, reject_status(unknown)) == ("stage-unknown", 400)
    other = route_for(table, facts("claude-haiku-4-5", api="anthropic.messages"))
    assert (other.name, reject_status(other)) == ("chat-only", 404)


def test_cfx_resilience_limits_and_ledger() -> None:
    table = table_of(CFX)
    litellm = table.upstreams["litellm"]
    assert litellm.kind == "openai-compatible"
    assert (litellm.retry.attempts, litellm.retry.on_status) == (2, frozenset({502, 503, 504}))
    assert litellm.retry.on_errors == frozenset()
    assert litellm.breaker is not None and litellm.breaker.failure_threshold == 5
    per_key = table.limits.policies["per-key"]
    assert (per_key.scope, per_key.rpm, per_key.concurrent_streams) == ("key", 60, 3)
    assert table.limits.default == ("per-key",)
    assert table.usage.store.kind == "postgres"
    assert table.usage.store.url == SecretRef(env="DATABASE_URL")
    assert table.observability.request_id_header == "x-cfx-request-id"
    assert table.auth.required and table.auth.accept == ("bearer",)


# --- LLM Router Service (seed 001) ---------------------------------------------------------------

ROUTER = "llm-router-service.yaml"


def test_router_service_models_resolve_to_their_providers() -> None:
    table = table_of(ROUTER)
    kinds = {
        "gpt-4o": "openai",
        "claude-3-5-haiku-latest": "anthropic",
        "llama3.1:latest": "ollama",  # through the glob alias llama3.1:*
        "qwen2.5-coder:7b": "ollama",
    }
    for name, kind in kinds.items():
        assert model_named(table, name).targets[0].upstream.kind == kind
    assert table.resolve_model("gpt-5-turbo") is None


def test_router_service_per_model_timeouts_and_tls() -> None:
    table = table_of(ROUTER)
    reasoning = model_named(table, "o3").targets[0].upstream
    chat_model = model_named(table, "gpt-4o").targets[0].upstream
    assert reasoning.timeouts.first_byte_s > chat_model.timeouts.first_byte_s
    assert reasoning.retry == chat_model.retry  # the YAML alias shares one retry block
    assert 529 in table.upstreams["anthropic"].retry.on_status
    ollama = table.upstreams["ollama"]
    assert ollama.tls.verify and ollama.tls.ca_bundle == "/etc/llm-router/company-ca.pem"


def test_router_service_routes_pick_transforms() -> None:
    table = table_of(ROUTER)
    local = route_for(table, facts("llama3.1:latest"))
    assert local.name == "local-models"
    assert [t.name for t in local.action.transforms] == ["mask-secrets-in-prompts", "ollama-compat"]
    cloud = route_for(table, facts("claude-sonnet-4", api="anthropic.messages"))
    assert cloud.name == "cloud-models"


def test_router_service_drop_all_header_mode() -> None:
    rules = table_of(ROUTER).header_policies["local-allowlist"].request
    assert rules is not None
    sent = [("Content-Type", "application/json"), ("X-Team", "ml"), ("Accept", "*/*")]
    assert apply_header_rules(rules, sent) == [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("user-agent", "llm-router-service/1.0"),
    ]


def test_router_service_transforms_mask_drop_and_add() -> None:
    transforms = table_of(ROUTER).transforms
    body = chat("my key is sk-proj-abcdefghijklmnopqrstuvwx, password: hunter2", system="")
    body["user"] = "alice@example.com"
    for name in ("mask-secrets-in-prompts", "tidy-request", "ollama-compat"):
        apply_request_steps(transforms[name].request, body, "openai.chat")
    assert body["messages"] == [
        {"role": "user", "content": "my key is [REDACTED-KEY], password: [REDACTED]"}
    ]
    assert "user" not in body and body["stop"] == ["<|eot_id|>"]

    response = {
        "system_fingerprint": "fp_1",
        "choices": [{"message": {"role": "assistant", "content": "see db-01.corp.internal"}}],
    }
    apply_response_steps(transforms["clean-response"].response, response, "openai.chat")
    assert response == {
        "choices": [{"message": {"role": "assistant", "content": "see [internal-host]"}}]
    }


def test_router_service_logs_bodies_with_masking() -> None:
    observability = table_of(ROUTER).observability
    assert observability.log_bodies
    line = 'Authorization: Bearer abc.def {"api_key": "k-123"}'
    for pattern in observability.redact:
        line = pattern.sub("***", line)
    assert line == "Authorization: *** {***}"


# --- XRouter (seed 002) --------------------------------------------------------------------------

XROUTER = "xrouter-gigachat.yaml"


def test_xrouter_gigachat_oauth_upstream() -> None:
    gigachat = table_of(XROUTER).upstreams["gigachat"]
    assert gigachat.kind == "gigachat" and gigachat.oauth is not None
    assert gigachat.oauth.credentials == SecretRef(env="GIGACHAT_CREDENTIALS")
    assert gigachat.oauth.scope == "GIGACHAT_API_PERS"
    assert gigachat.tls.ca_bundle == "/etc/ssl/certs/russian_trusted_root_ca.pem"
    corp = compile_example(XROUTER, env={"GIGACHAT_SCOPE": "GIGACHAT_API_CORP"}).table
    assert corp is not None and corp.upstreams["gigachat"].oauth is not None
    assert corp.upstreams["gigachat"].oauth.scope == "GIGACHAT_API_CORP"


def test_xrouter_models_are_priced_in_roubles() -> None:
    table = table_of(XROUTER)
    windows = {}
    for name in ("GigaChat", "GigaChat-Pro"):
        model = model_named(table, name)
        assert model.pricing is not None
        assert model.pricing.currency == "RUB"
        windows[model.name] = model.context_window
    assert windows == {"gigachat": 8192, "gigachat-pro": 32768}


def test_xrouter_routes_default_model_and_chat_only() -> None:
    table = table_of(XROUTER)
    unnamed = route_for(table, facts(model=None))
    assert (unnamed.name, unnamed.action.default_model) == ("default-model", "gigachat")
    named = route_for(table, facts("gigachat-pro"))
    assert named.action.model is None  # a named model is kept
    embeddings = route_for(table, facts("gigachat", api="openai.embeddings"))
    assert (embeddings.name, reject_status(embeddings)) == ("chat-only", 404)


def test_xrouter_keys_limits_and_stores() -> None:
    table = table_of(XROUTER)
    assert table.auth.accept == ("x-api-key",)
    partner = next(k for k in table.auth.keys if k.id == "partner-acme")
    assert partner.models_pattern is not None
    assert partner.models_pattern.fullmatch("gigachat")
    assert not partner.models_pattern.fullmatch("gigachat-pro")
    standard = table.limits.policies["standard"]
    assert (standard.rpm, standard.tokens_per_day, standard.cost_per_month) == (100, 500000, 5000)
    assert table.limits.backend.kind == "redis"
    assert table.limits.backend.url == SecretRef(env="REDIS_URL")
    assert (table.usage.store.kind, table.usage.store.path) == ("sqlite", "xrouter.db")
    assert table.observability.metrics


# --- CodexFlow (seed 003) ------------------------------------------------------------------------

CODEXFLOW = "codexflow-tiers.yaml"


@pytest.mark.parametrize(
    ("chars", "headers", "route", "model"),
    [
        (9000, {}, "large-prompt-deep", "codexflow-deep"),
        (8000, {}, "large-prompt-deep", "codexflow-deep"),
        (7999, {}, "default-fast", "codexflow-fast"),
        (20, {"x-codexflow-tier": "deep"}, "explicit-deep", "codexflow-deep"),
        (9000, {"x-codexflow-tier": "fast"}, "explicit-fast", "codexflow-fast"),
    ],
)
def test_codexflow_tier_selection(
    chars: int, headers: dict[str, str], route: str, model: str
) -> None:
    found = route_for(
        table_of(CODEXFLOW), facts("anthropic/claude-haiku-4-5", "x" * chars, headers)
    )
    assert (found.name, found.action.model) == (route, model)
    assert found.action.cache == "deterministic"


def test_codexflow_system_prompt_counts_towards_the_threshold() -> None:
    request = RequestFacts(
        api="openai.chat", model="claude-haiku-4-5", payload=chat("x" * 4000, system="y" * 4000)
    )
    assert route_for(table_of(CODEXFLOW), request).name == "large-prompt-deep"


def test_codexflow_failover_stays_inside_the_tier() -> None:
    table = table_of(CODEXFLOW)
    assert model_named(table, "anthropic/claude-haiku-4-5").name == "codexflow-fast"
    strategies = {}
    for name in ("codexflow-fast", "codexflow-deep"):
        model = table.models[name]
        strategies[name] = model.strategy
        assert model.fallback_models == ()  # no cross-tier fallback
        upstreams = [t.upstream for t in model.targets]
        assert len({u.name for u in upstreams}) == 3  # three pooled keys
        assert len({u.api_key for u in upstreams}) == 3
        for upstream in upstreams:
            retry = upstream.retry
            assert {429, 500, 502, 503, 504} <= retry.on_status and "timeout" in retry.on_errors
            assert (retry.initial_ms, retry.max_ms, retry.jitter) == (500, 500, "none")
    assert strategies == {"codexflow-fast": "weighted", "codexflow-deep": "round_robin"}


def test_codexflow_tenants_budgets_cache_and_retention() -> None:
    table = table_of(CODEXFLOW)
    service = {k.id: (k.org, k.project, k.limits) for k in table.auth.keys}
    assert service == {"codexflow-evals": ("codexflow", "internal-evals", None)}
    store = table.auth.store  # the tenants' keys are managed keys (tests/test_seed_routing.py)
    assert store is not None and store.kind == "postgres"
    assert store.url == SecretRef(env="DATABASE_URL")
    for name in ("plan-starter", "plan-pro"):
        policy = table.limits.policies[name]
        assert policy.scope == "project"
        assert policy.tokens_per_month and policy.cost_per_month
    cache = table.cache.policies["deterministic"]
    assert (cache.ttl_s, cache.only_deterministic) == (86400, True)
    assert table.cache.backend.kind == "redis"
    assert (table.usage.retention_days, table.usage.log_prompts) == (90, False)
    assert not table.observability.log_bodies


# --- LLM Proxy Router (seed 004) -----------------------------------------------------------------

PROXY = "llm-proxy-router.yaml"


def test_proxy_env_substitution() -> None:
    table = table_of(PROXY)
    assert table.upstreams["vllm"].base_url == "https://vllm.lab.internal:8000/v1"
    assert table.server.listen == ("0.0.0.0:8080",)
    env = {"VLLM_BASE_URL": "https://gpu-07.example.net:8443/v1", "PROXY_LISTEN": "[::]:9000"}
    custom = compile_example(PROXY, env=env).table
    assert custom is not None
    assert custom.upstreams["vllm"].base_url == "https://gpu-07.example.net:8443/v1"
    assert custom.server.listen == ("[::]:9000",)
    assert custom.version != table.version  # the variables are part of the version


def test_proxy_tls_verify_off_is_the_vllm_backend() -> None:
    result = compile_example(PROXY)
    [warning] = [w for w in result.warnings if w.code != "config.not_enforced"]
    assert warning.code == "tls.verify_off"
    assert warning.span.path == "$.upstreams.vllm.tls.verify"
    assert not table_of(PROXY).upstreams["vllm"].tls.verify


def test_proxy_backends_and_routes() -> None:
    table = table_of(PROXY)
    kinds = {u.kind for u in table.upstreams.values()}
    assert kinds == {"openai", "anthropic", "ollama", "openai-compatible"}
    claude = route_for(table, facts("claude-sonnet-4-5"))
    assert claude.name == "openai-clients-on-claude"
    assert dict(claude.action.params.default) == {"max_tokens": 4096}
    native = route_for(table, facts("claude-sonnet-4-5", api="anthropic.messages"))
    assert native.name == "cloud-default"
    for local in ("llama3.2:latest", "Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b-instruct"):
        assert route_for(table, facts(local)).name == "local-backends"
    assert model_named(table, "llama3.2:3b-instruct-q4_K_M").name == "llama3.2:3b"
    retry = table.upstreams["openai"].retry
    assert (retry.attempts, retry.multiplier, retry.jitter) == (4, 2.0, "full")
    assert table.observability.log_format == "json"


@pytest.mark.parametrize(
    ("policy", "mode", "expected"),
    [
        (
            "openai-whitelist",
            "allowlist",
            [
                ("accept", "*/*"),
                ("x-trace-id", "t1"),
                ("user-agent", "curl/8"),
                ("x-proxy", "llm-proxy-router"),
            ],
        ),
        (
            "anthropic-blacklist",
            "denylist",
            [
                ("accept", "*/*"),
                ("x-trace-id", "t1"),
                ("x-team", "ml"),
                ("x-debug-level", "3"),
                ("anthropic-version", "2023-06-01"),
                ("x-proxy", "llm-proxy-router"),
            ],
        ),
        (
            "local-passthrough",
            "passthrough",
            [
                ("accept", "*/*"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-trace-id", "t1"),
                ("x-team", "ml"),
                ("user-agent", "curl/8"),
                ("x-source", "llm-proxy-router"),
            ],
        ),
    ],
)
def test_proxy_header_modes(policy: str, mode: str, expected: list[tuple[str, str]]) -> None:
    rules = table_of(PROXY).header_policies[policy].request
    assert rules is not None and rules.mode == mode
    sent = [
        ("Accept", "*/*"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Trace-Id", "t1"),
        ("X-Team", "ml"),
        ("User-Agent", "curl/8"),
        ("X-Debug-Level", "3"),
    ]
    assert apply_header_rules(rules, sent) == expected


def test_proxy_jsonpath_and_regex_transforms() -> None:
    transforms = table_of(PROXY).transforms
    body = chat("mail bob@example.com", tools=[{"type": "function", "function": {"strict": True}}])
    apply_request_steps(transforms["redact-pii"].request, body, "openai.chat")
    apply_request_steps(transforms["local-compat"].request, body, "openai.chat")
    assert body["messages"][-1]["content"] == "mail [email]"
    assert body["tools"] == [{"type": "function", "function": {}}]
    assert body["stop"] == ["<|eot_id|>"]
