"""The routing of every seed example in `examples/`, shown through a served Interlock.

Each example is loaded as written; only what cannot work in a test is replaced: upstream
`base_url`s (and GigaChat's `token_url`) point at the loopback mock upstreams, `tls` blocks naming
CA files that do not exist here go, secrets come from environment variables set for the test,
Redis backends become memory, ledgers and managed keys (created with the `interlock` CLI, as the
example's comments say) go to SQLite files, and the API key hashes are swapped for hashes of keys
made with `interlock hash-key`. Requests are made with the official SDKs; what happened is read
from the response headers and from the requests the mock upstreams recorded.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2  # the transport the anthropic SDK is built on
import openai
import pytest
from ruamel.yaml import YAML

from runtime.cli import main as interlock_cli
from tests.served import ServedGateway
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream, Reply, Status

EXAMPLES = Path(__file__).parent.parent / "examples"
SECRETS = {
    "LITELLM_MASTER_KEY": "sk-litellm-master",
    "ANTHROPIC_KEY_1": "sk-ant-pool-1",
    "ANTHROPIC_KEY_2": "sk-ant-pool-2",
    "ANTHROPIC_KEY_3": "sk-ant-pool-3",
    "OPENAI_API_KEY": "sk-openai-upstream",
    "ANTHROPIC_API_KEY": "sk-ant-upstream",
    "VLLM_API_KEY": "sk-vllm-upstream",
    "GIGACHAT_CREDENTIALS": GIGACHAT_CREDENTIALS,
    "GIGACHAT_SCOPE": "GIGACHAT_API_B2B",
}
USER_HI: list[Any] = [{"role": "user", "content": "hi"}]
SEED_LEDGER = Path(tempfile.mkdtemp(prefix="interlock-seeds-")) / "usage.db"


def hash_key(key: str) -> str:
    """The `hash:` value `interlock hash-key KEY` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert interlock_cli(["hash-key", key]) == 0
    line = out.getvalue().strip()
    assert line.startswith('hash: "sha256:')
    return line.split('"')[1]


def api_key(key_id: str) -> str:
    return f"il-test-{key_id}-0123456789abcdef"


def seed_config(name: str, up: MockUpstream, edit: Callable[[Any], None] | None = None) -> str:
    """examples/`name` with its upstreams on the mock and test keys in place of its hashes."""
    yaml = YAML()
    yaml.width = 4096
    doc = yaml.load((EXAMPLES / name).read_text(encoding="utf-8"))
    addresses = {
        "openai": up.base_url("openai"),
        "openai-compatible": up.base_url("openai"),
        "anthropic": up.url,
        "ollama": up.url,
        "gigachat": up.base_url("gigachat"),
    }
    for upstream in doc["upstreams"].values():
        upstream["base_url"] = addresses[upstream["kind"]]
        upstream.pop("tls", None)  # NOTE: names CA bundles that only exist in production
        if "oauth" in upstream:
            upstream["oauth"]["token_url"] = up.base_url("gigachat-oauth")
    for key in doc.get("auth", {}).get("keys", []):
        key["hash"] = hash_key(api_key(key["id"]))
    if "usage" in doc:  # NOTE: the seeds' ledgers go to a throwaway SQLite file
        doc["usage"]["store"] = {"kind": "sqlite", "path": str(SEED_LEDGER)}
    for section, field in (("limits", "backend"), ("cache", "backend")):
        if doc.get(section, {}).get(field, {}).get("kind") == "redis":  # NOTE: no Redis here
            doc[section][field] = {"kind": "memory"}
    if edit is not None:
        edit(doc)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


@contextlib.contextmanager
def seed_gateway(
    name: str, up: MockUpstream, edit: Callable[[Any], None] | None = None
) -> Iterator[ServedGateway]:
    with pytest.MonkeyPatch.context() as patch:
        for var, value in SECRETS.items():
            patch.setenv(var, value)
        with ServedGateway(seed_config(name, up, edit)) as gateway:
            yield gateway


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


def openai_sdk(gw: ServedGateway, key: str = "none", **options: Any) -> openai.OpenAI:
    # PERF: the gateway is plain HTTP; a default httpx client would load CA certificates (~60 ms)
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.Client(verify=False),
        **options,
    )


def anthropic_sdk(gw: ServedGateway, key: str = "none", **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key=key,
        max_retries=0,
        http_client=httpx2.Client(verify=False),
        **options,
    )


def routed(raw: Any) -> tuple[str | None, str | None, str | None]:
    """(route, upstream, upstream model) from Interlock's identifying response headers."""
    headers = raw.headers
    return (
        headers.get("x-interlock-route"),
        headers.get("x-interlock-upstream"),
        headers.get("x-interlock-model"),
    )


def chat(client: openai.OpenAI, model: str = "any", **params: Any) -> Any:
    params.setdefault("messages", USER_HI)
    return client.chat.completions.with_raw_response.create(model=model, **params)


# --- CF-X: stage header, inference from the last user message, direct mode ------------------


@pytest.fixture(scope="module")
def cfx_gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with seed_gateway("cfx-stage-routing.yaml", upstream) as gateway:
        yield gateway


@pytest.fixture
def cfx(cfx_gw: ServedGateway, up: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai_sdk(cfx_gw, api_key("agent-prod")) as client:
        yield client


@pytest.mark.parametrize(
    ("stage", "route", "upstream_model"),
    [
        ("plan", "stage-plan", "claude-sonnet-4-5"),
        ("code", "stage-code", "gpt-4.1"),
        ("review", "stage-review", "gemini-2.5-pro"),
    ],
)
def test_cfx_stage_header_picks_the_stage_model(
    cfx: openai.OpenAI, up: MockUpstream, stage: str, route: str, upstream_model: str
) -> None:
    raw = chat(
        cfx,
        "gpt-4.1-mini",  # whatever the client names, the stage decides
        messages=[{"role": "user", "content": "please review this plan"}],
        extra_headers={"X-CFX-Stage": stage},
    )

    assert routed(raw) == (route, "litellm", upstream_model)
    sent = up.last_request("/v1/chat/completions")
    assert sent.body["model"] == upstream_model
    assert sent.headers["authorization"] == "Bearer sk-litellm-master"
    assert raw.parse().choices[0].message.content == "echo: please review this plan"


@pytest.mark.parametrize(
    ("history", "route", "upstream_model"),
    [
        (["Can you review this diff for me?"], "infer-review", "gemini-2.5-pro"),
        (["Design the architecture of a cache"], "infer-plan", "claude-sonnet-4-5"),
        (["Write a function that adds two numbers"], "infer-code", "gpt-4.1"),
        # Only the newest user turn counts: an old "review" does not pin the stage.
        (["review the patch", "now implement the fix"], "infer-code", "gpt-4.1"),
        (["implement it", "and audit the result"], "infer-review", "gemini-2.5-pro"),
    ],
)
def test_cfx_stage_is_inferred_from_the_last_user_message(
    cfx: openai.OpenAI, up: MockUpstream, history: list[str], route: str, upstream_model: str
) -> None:
    messages: list[Any] = []
    for text in history:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    raw = chat(cfx, "whatever", messages=[{"role": "system", "content": "plan"}, *messages[:-1]])

    assert routed(raw) == (route, "litellm", upstream_model)
    assert up.last_request().body["model"] == upstream_model


@pytest.mark.parametrize(
    ("params", "forwarded"),
    [
        ({"max_tokens": 9000}, {"max_tokens": 4096}),
        ({"max_tokens": 100}, {"max_tokens": 100}),
        ({"max_completion_tokens": 10000}, {"max_completion_tokens": 4096}),
        ({}, {}),
    ],
)
def test_cfx_direct_mode_keeps_an_allowed_model_and_caps_max_tokens(
    cfx: openai.OpenAI, up: MockUpstream, params: dict[str, Any], forwarded: dict[str, Any]
) -> None:
    raw = chat(cfx, "claude-haiku-4-5", extra_headers={"x-cfx-stage": "direct"}, **params)

    assert routed(raw) == ("direct-allowed", "litellm", "claude-haiku-4-5")
    body = up.last_request().body
    assert body["model"] == "claude-haiku-4-5"
    assert {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body} == forwarded


@pytest.mark.parametrize(
    ("model", "stage", "message"),
    [
        ("gpt-4o", "direct", "model not allowed in direct mode"),
        ("cfx-plan", "direct", "model not allowed in direct mode"),
        ("gpt-4.1-mini", "deploy", "X-CFX-Stage must be plan, code, review or direct"),
    ],
)
def test_cfx_rejects_before_anything_goes_upstream(
    cfx: openai.OpenAI, up: MockUpstream, model: str, stage: str, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(cfx, model, max_tokens=10, extra_headers={"x-cfx-stage": stage})

    assert caught.value.response.json()["error"]["message"] == message
    assert up.requests == []


def test_cfx_streams_with_the_stage_route_and_its_request_id_header(
    cfx: openai.OpenAI, up: MockUpstream
) -> None:
    with cfx.chat.completions.with_streaming_response.create(
        model="x",
        messages=[{"role": "user", "content": "outline the approach"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        chunks = list(raw.parse())

    assert routed(raw) == ("infer-plan", "litellm", "claude-sonnet-4-5")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "echo: outline the approach"
    )
    assert chunks[-1].usage is not None
    request_id = raw.headers["x-cfx-request-id"]  # observability.request_id_header
    assert up.last_request().headers["x-cfx-request-id"] == request_id


@pytest.mark.parametrize("key", [None, "il-not-a-key"])
def test_cfx_requires_a_known_key(cfx_gw: ServedGateway, up: MockUpstream, key: str | None) -> None:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    response = httpx.post(
        cfx_gw.url + "/v1/chat/completions",
        json={"model": "x", "messages": USER_HI},
        headers=headers,
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert up.requests == []


def test_cfx_ci_key_is_accepted_and_other_apis_are_closed(
    cfx_gw: ServedGateway, up: MockUpstream
) -> None:
    with openai_sdk(cfx_gw, api_key("agent-ci")) as ci:
        assert routed(chat(ci))[0] == "infer-code"
        with pytest.raises(openai.NotFoundError) as closed:
            ci.completions.create(model="cfx-code", prompt="x")
    with (
        anthropic_sdk(cfx_gw, api_key("agent-prod")) as claude,
        pytest.raises(anthropic.NotFoundError) as closed_anthropic,
    ):
        claude.messages.create(model="cfx-code", max_tokens=5, messages=USER_HI)

    assert "only /v1/chat/completions" in closed.value.response.json()["error"]["message"]
    assert closed_anthropic.value.response.json()["error"]["type"] == "not_found_error"
    assert len(up.requests) == 1


# --- CodexFlow: fast / deep tiers over a pool of Anthropic keys ------------------------------

POOL_KEYS = {"sk-ant-pool-1", "sk-ant-pool-2", "sk-ant-pool-3"}
FAST = "claude-haiku-4-5-20251001"
DEEP = "claude-sonnet-4-5-20250929"


def cli_json(*args: str) -> Any:
    """What ``interlock ARGS --format json`` prints, decoded (the command must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert interlock_cli([*args, "--format", "json"]) == 0
    return json.loads(out.getvalue())


def bootstrap_codexflow_tenants(config: Path) -> dict[str, str]:
    """The example's bootstrap (see its `auth` comments): orgs, projects and one managed key per
    project, made with the CLI on the config's store before the gateway starts. Key by project."""
    cli_json("orgs", "create", str(config), "--id", "acme", "--name", "ACME Corp")
    cli_json("projects", "create", str(config), "--id", "acme-web", "--org", "acme",
             "--limits", "plan-pro")  # fmt: skip
    cli_json("orgs", "create", str(config), "--id", "globex", "--name", "Globex")
    cli_json("projects", "create", str(config), "--id", "globex-support", "--org", "globex",
             "--limits", "plan-starter")  # fmt: skip
    keys = {}
    for project, name in (("acme-web", "ACME web app (prod)"), ("globex-support", "Globex bot")):
        created = cli_json("keys", "create", str(config), "--project", project, "--name", name)
        keys[project] = created["key"]
    return keys


@pytest.fixture(scope="module")
def codexflow_keys(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(config text, managed keys by project): the example with its store in a SQLite file."""
    workdir = tmp_path_factory.mktemp("codexflow")

    def local_store(doc: Any) -> None:
        doc["auth"]["store"] = {"kind": "sqlite", "path": str(workdir / "keys.db")}

    text = seed_config("codexflow-tiers.yaml", upstream, local_store)
    config = workdir / "codexflow-tiers.yaml"
    config.write_text(text, encoding="utf-8")
    return text, bootstrap_codexflow_tenants(config)


@pytest.fixture(scope="module")
def codexflow_gw(codexflow_keys: Any) -> Iterator[ServedGateway]:
    with pytest.MonkeyPatch.context() as patch:
        for var, value in SECRETS.items():
            patch.setenv(var, value)
        with ServedGateway(codexflow_keys[0]) as gateway:
            yield gateway


@pytest.fixture
def codexflow(
    codexflow_gw: ServedGateway, codexflow_keys: Any, up: MockUpstream
) -> Iterator[openai.OpenAI]:
    with openai_sdk(codexflow_gw, codexflow_keys[1]["acme-web"]) as client:
        yield client


@pytest.mark.parametrize(
    ("system", "user", "route", "upstream_model"),
    [
        (None, "x" * 7999, "default-fast", FAST),
        (None, "x" * 8000, "large-prompt-deep", DEEP),
        ("s" * 5000, "u" * 5000, "large-prompt-deep", DEEP),  # the system prompt counts too
        (None, "short question", "default-fast", FAST),
    ],
)
def test_codexflow_prompts_of_8000_characters_go_to_the_deep_tier(
    codexflow: openai.OpenAI,
    up: MockUpstream,
    system: str | None,
    user: str,
    route: str,
    upstream_model: str,
) -> None:
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    raw = chat(codexflow, "gpt-4o", messages=[*messages, {"role": "user", "content": user}])

    assert routed(raw)[0::2] == (route, upstream_model)
    sent = up.last_request("/v1/messages")  # OpenAI client, Anthropic upstream
    assert sent.body["model"] == upstream_model
    assert sent.headers["x-api-key"] in POOL_KEYS
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert raw.parse().choices[0].message.content == f"echo: {user}"


@pytest.mark.parametrize(
    ("tier", "text", "route", "upstream_model"),
    [
        ("deep", "tiny", "explicit-deep", DEEP),
        ("fast", "y" * 9000, "explicit-fast", FAST),
    ],
)
def test_codexflow_tier_header_wins_over_the_prompt_size(
    codexflow: openai.OpenAI, tier: str, text: str, route: str, upstream_model: str
) -> None:
    raw = chat(
        codexflow,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-CodexFlow-Tier": tier},
    )

    assert routed(raw)[0::2] == (route, upstream_model)


def test_codexflow_deep_tier_takes_the_keys_in_turn(
    codexflow: openai.OpenAI, up: MockUpstream
) -> None:
    for _ in range(3):
        chat(codexflow, extra_headers={"x-codexflow-tier": "deep"})

    keys = [r.headers["x-api-key"] for r in up.requests_to("/v1/messages")]
    assert set(keys) == POOL_KEYS  # round robin: each key once in three requests


def test_codexflow_fails_over_to_another_key_of_the_same_tier(
    codexflow: openai.OpenAI, up: MockUpstream
) -> None:
    up.script("/v1/messages", Status(529), Status(529))  # one key: first try and its retry

    raw = chat(codexflow, extra_headers={"x-codexflow-tier": "fast"})

    sent = up.requests_to("/v1/messages")
    assert len(sent) == 3
    assert sent[0].headers["x-api-key"] == sent[1].headers["x-api-key"]
    assert sent[2].headers["x-api-key"] != sent[0].headers["x-api-key"]
    assert {r.body["model"] for r in sent} == {FAST}  # never across tiers
    assert routed(raw)[0::2] == ("explicit-fast", FAST)


def test_codexflow_streams_the_deep_tier_to_an_openai_client(
    codexflow: openai.OpenAI, up: MockUpstream
) -> None:
    with codexflow.chat.completions.with_streaming_response.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "z" * 8000}],
        stream=True,
    ) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    assert routed(raw)[0::2] == ("large-prompt-deep", DEEP)
    assert text == "echo: " + "z" * 8000
    assert up.last_request("/v1/messages").body["stream"] is True


def test_codexflow_refuses_unknown_keys_and_other_apis(
    codexflow_gw: ServedGateway, codexflow_keys: Any, up: MockUpstream
) -> None:
    with (
        openai_sdk(codexflow_gw, "il-unknown") as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        chat(stranger)
    with openai_sdk(codexflow_gw, codexflow_keys[1]["globex-support"]) as globex:
        with pytest.raises(openai.NotFoundError):
            globex.embeddings.create(model="codexflow-fast", input="x")
        assert routed(chat(globex))[0] == "default-fast"

    assert len(up.requests) == 1


def test_codexflow_service_key_in_git_and_managed_keys_serve_side_by_side(
    codexflow_gw: ServedGateway, codexflow_keys: Any, up: MockUpstream
) -> None:
    for key in (api_key("codexflow-evals"), *codexflow_keys[1].values()):
        with openai_sdk(codexflow_gw, key) as client:
            assert routed(chat(client))[0] == "default-fast"

    assert len(up.requests) == 3


# --- 001 llm-router-service: header rules and transforms per provider -------------------------


@pytest.fixture(scope="module")
def router_gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with seed_gateway("llm-router-service.yaml", upstream) as gateway:
        yield gateway


@pytest.fixture
def router(router_gw: ServedGateway, up: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai_sdk(router_gw, "client-key") as client:
        yield client


NOISY_HEADERS = {
    "x-forwarded-for": "10.0.0.1",
    "x-real-ip": "10.0.0.2",
    "x-debug-trace": "on",
    "x-team": "search",
}


def test_001_openai_models_get_the_passthrough_header_rules(
    router: openai.OpenAI, up: MockUpstream
) -> None:
    raw = chat(router, "gpt-4o", extra_headers=NOISY_HEADERS)
    chat(router, "gpt-4o", extra_headers={"x-request-source": "batch-job"})

    assert routed(raw) == ("cloud-models", "openai", "gpt-4o-2024-08-06")
    first, second = (dict(r.headers) for r in up.requests_to("/v1/chat/completions"))
    assert not {"x-forwarded-for", "x-real-ip", "x-debug-trace"} & first.keys()
    assert first["x-team"] == "search"  # passthrough
    assert first["x-request-source"] == "llm-router"  # add: only when absent
    assert second["x-request-source"] == "batch-job"
    assert first["user-agent"] == second["user-agent"] == "llm-router-service/1.0"  # force
    assert first["authorization"] == "Bearer sk-openai-upstream"


def test_001_reasoning_model_has_its_own_upstream(router: openai.OpenAI, up: MockUpstream) -> None:
    raw = chat(router, "o3")

    assert routed(raw) == ("cloud-models", "openai-reasoning", "o3-2025-04-16")
    assert up.last_request().body["model"] == "o3-2025-04-16"


def test_001_anthropic_models_get_a_version_only_when_the_client_sends_none(
    router_gw: ServedGateway, router: openai.OpenAI, up: MockUpstream
) -> None:
    raw = chat(router, "claude-3-5-haiku-latest", extra_headers=NOISY_HEADERS)
    with anthropic_sdk(router_gw) as claude:
        message = claude.messages.with_raw_response.create(
            model="claude-sonnet-4", max_tokens=10, messages=USER_HI
        )

    assert routed(raw) == ("cloud-models", "anthropic", "claude-3-5-haiku-20241022")
    assert routed(message) == ("cloud-models", "anthropic", "claude-sonnet-4-20250514")
    from_openai, from_anthropic = (dict(r.headers) for r in up.requests_to("/v1/messages"))
    assert from_openai["anthropic-version"] == "2023-06-01"  # added by the policy
    assert from_anthropic["anthropic-version"] == "2026-10-21"  # the SDK's own, kept
    assert from_openai["x-api-key"] == from_anthropic["x-api-key"] == "sk-ant-upstream"
    assert from_openai["user-agent"] == "llm-router-service/1.0"
    assert not {"x-forwarded-for", "x-real-ip", "x-debug-trace"} & from_openai.keys()


LEAKY_PROMPT = "key sk-proj-abcdefghijklmnopqrstuv, aws AKIAABCDEFGHIJKLMNOP, Password = hunter2 ok"


def test_001_cloud_requests_are_masked_and_tidied(router: openai.OpenAI, up: MockUpstream) -> None:
    raw = chat(
        router,
        "gpt-4o-mini",
        messages=[
            {"role": "system", "content": ""},
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": LEAKY_PROMPT},
        ],
        user="alice@example.com",
    )

    masked = "key [REDACTED-KEY], aws [REDACTED-KEY], password: [REDACTED] ok"
    assert raw.parse().choices[0].message.content == f"echo: {masked}"
    body = up.last_request().body
    assert body["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": masked},
    ]
    assert "user" not in body


@pytest.mark.parametrize("stream", [False, True])
def test_001_cloud_responses_are_cleaned(
    router: openai.OpenAI, up: MockUpstream, stream: bool
) -> None:
    up.script("openai", Reply(text="ask db-01.corp.internal or cache.corp.internal now"))

    if stream:
        chunks = list(router.chat.completions.create(model="gpt-4o", messages=USER_HI, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        fingerprints = {c.system_fingerprint for c in chunks}
    else:
        reply = router.chat.completions.create(model="gpt-4o", messages=USER_HI)
        text, fingerprints = reply.choices[0].message.content or "", {reply.system_fingerprint}

    assert text == "ask [internal-host] or [internal-host] now"
    assert fingerprints == {None}  # the upstream sent fp_mock


def test_001_upstream_response_headers_are_hidden(router: openai.OpenAI, up: MockUpstream) -> None:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
    leaky = {"openai-organization": "org-secret", "openai-project": "proj", "x-kept": "1"}
    up.script("openai", Status(200, headers=leaky, body=completion))

    raw = chat(router, "gpt-4o")

    assert raw.headers["x-kept"] == "1"
    assert "openai-organization" not in raw.headers and "openai-project" not in raw.headers


def test_001_local_models_get_the_allowlist_and_ollama_compat(
    router: openai.OpenAI, up: MockUpstream
) -> None:
    raw = chat(
        router,
        "llama3.1:latest",  # a glob alias of llama3.1:8b
        messages=[
            {"role": "user", "content": "token sk-abcdefghijklmnopqrstuvwxyz", "name": "bob"}
        ],
        stop=["END"],
        logit_bias={"1": 1},
        extra_headers={**NOISY_HEADERS, "x-request-id": "local-1"},
    )

    assert routed(raw) == ("local-models", "ollama", "llama3.1:8b")
    sent = up.last_request("/api/chat")
    assert sent.body["messages"] == [{"role": "user", "content": "token [REDACTED-KEY]"}]
    assert sent.body["options"]["stop"] == ["END", "<|eot_id|>"]
    allowed = {"content-type", "accept", "x-request-id", "user-agent"}
    transport = {"host", "connection", "content-length", "accept-encoding"}
    assert set(sent.headers) - transport == allowed
    assert sent.headers["user-agent"] == "llm-router-service/1.0"


def test_001_local_completions_and_unknown_models(router: openai.OpenAI, up: MockUpstream) -> None:
    completion = router.completions.with_raw_response.create(
        model="qwen2.5-coder:7b", prompt="def f():"
    )
    with pytest.raises(openai.NotFoundError) as unknown:
        router.chat.completions.create(model="gpt-5-turbo", messages=USER_HI)

    assert routed(completion) == ("local-models", "ollama", "qwen2.5-coder:7b")
    sent = up.last_request("/api/generate").body
    assert sent["prompt"] == "def f():" and sent["options"]["stop"] == ["<|eot_id|>"]
    assert unknown.value.code == "model_not_found"


# --- 002 xrouter-gigachat: GigaChat behind x-api-key auth ------------------------------------


def far_future(doc: Any) -> None:
    """partner-acme expires on 2026-06-30: keep it valid whatever today's date is."""
    doc["auth"]["keys"][1]["expires"] = "2099-06-30T00:00:00+03:00"


@pytest.fixture(scope="module")
def xrouter_gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with seed_gateway("xrouter-gigachat.yaml", upstream, far_future) as gateway:
        yield gateway


@pytest.fixture
def xrouter(xrouter_gw: ServedGateway, up: MockUpstream) -> ServedGateway:
    return xrouter_gw


def x_api_key(gw: ServedGateway, key_id: str) -> openai.OpenAI:
    """The OpenAI SDK with the key in X-API-Key (its own bearer key is not accepted here)."""
    return openai_sdk(gw, "not-the-key", default_headers={"x-api-key": api_key(key_id)})


@pytest.mark.parametrize(
    ("model", "upstream_model"),
    [("GigaChat", "GigaChat"), ("GigaChat-Lite", "GigaChat"), ("GigaChat-Pro", "GigaChat-Pro")],
)
def test_002_named_models_go_to_gigachat_with_an_oauth_token(
    xrouter: ServedGateway, up: MockUpstream, model: str, upstream_model: str
) -> None:
    with x_api_key(xrouter, "web-app") as client:
        raw = chat(client, model, messages=[{"role": "user", "content": "привет"}])

    assert routed(raw) == ("default-model", "gigachat", upstream_model)
    assert raw.parse().choices[0].message.content == "echo: привет"
    sent = up.last_request("/api/v1/chat/completions")
    assert sent.body["model"] == upstream_model
    scheme, token = sent.headers["authorization"].split(" ")
    assert scheme == "Bearer" and token in up.issued_tokens
    assert "x-api-key" not in sent.headers


def test_002_the_token_is_asked_for_with_the_scope_from_the_environment(
    up: MockUpstream,
) -> None:
    with (
        seed_gateway("xrouter-gigachat.yaml", up) as gw,
        x_api_key(gw, "web-app") as client,
    ):
        chat(client, "GigaChat")

    token_request, sent = up.requests
    assert token_request.path == "/api/v2/oauth"
    assert token_request.body == {"scope": "GIGACHAT_API_B2B"}  # ${GIGACHAT_SCOPE:-...}
    assert token_request.headers["authorization"] == f"Basic {GIGACHAT_CREDENTIALS}"
    assert sent.headers["authorization"] == f"Bearer {up.issued_tokens[-1]}"


def test_002_a_request_without_model_gets_the_default(
    xrouter: ServedGateway, up: MockUpstream
) -> None:
    response = httpx.post(
        xrouter.url + "/v1/chat/completions",
        json={"messages": USER_HI},
        headers={"x-api-key": api_key("web-app")},
    )

    assert response.status_code == 200
    assert response.headers["x-interlock-model"] == "GigaChat"
    assert up.last_request("/api/v1/chat/completions").body["model"] == "GigaChat"


def test_002_streams_and_reuses_the_token(xrouter: ServedGateway, up: MockUpstream) -> None:
    with x_api_key(xrouter, "web-app") as client:
        for text in ("one", "two"):
            chunks = list(
                client.chat.completions.create(
                    model="GigaChat",
                    messages=[{"role": "user", "content": text}],
                    stream=True,
                )
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert streamed == f"echo: {text}"

    assert up.oauth_calls <= 1  # none when an earlier test of this gateway fetched it
    first, second = up.requests_to("/api/v1/chat/completions")
    assert first.headers["authorization"] == second.headers["authorization"]
    assert first.body["stream"] is True


def test_002_partner_key_may_only_use_the_lite_model(
    xrouter: ServedGateway, up: MockUpstream
) -> None:
    with x_api_key(xrouter, "partner-acme") as partner:
        assert routed(chat(partner, "GigaChat-Lite"))[2] == "GigaChat"
        with pytest.raises(openai.PermissionDeniedError) as denied:
            chat(partner, "GigaChat-Pro")

    assert denied.value.code == "model_not_allowed"
    assert [r.body["model"] for r in up.requests_to("/api/v1/chat/completions")] == ["GigaChat"]


def test_002_keys_only_in_x_api_key_and_only_chat(xrouter: ServedGateway, up: MockUpstream) -> None:
    with (
        openai_sdk(xrouter, api_key("web-app")) as bearer_only,
        pytest.raises(openai.AuthenticationError),
    ):
        chat(bearer_only, "GigaChat")
    with x_api_key(xrouter, "web-app") as client, pytest.raises(openai.NotFoundError) as closed:
        client.completions.create(model="GigaChat", prompt="x")
    with (
        anthropic_sdk(xrouter, default_headers={"x-api-key": api_key("web-app")}) as claude,
        pytest.raises(anthropic.NotFoundError),
    ):
        claude.messages.create(model="GigaChat", max_tokens=5, messages=USER_HI)

    assert "XRouter serves only" in closed.value.response.json()["error"]["message"]
    assert up.requests == []


def test_002_an_expired_key_is_refused(up: MockUpstream) -> None:
    def expired(doc: Any) -> None:
        doc["auth"]["keys"][1]["expires"] = "2020-01-01T00:00:00+03:00"

    with (
        seed_gateway("xrouter-gigachat.yaml", up, expired) as gw,
        x_api_key(gw, "partner-acme") as partner,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        chat(partner, "GigaChat")

    assert "expired" in refused.value.response.json()["error"]["message"]
    assert up.requests == []


# --- 004 llm-proxy-router: allowlist / denylist per provider, PII redaction, local compat -----


@pytest.fixture(scope="module")
def proxy_gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    with seed_gateway("llm-proxy-router.yaml", upstream) as gateway:
        yield gateway


@pytest.fixture
def proxy(proxy_gw: ServedGateway, up: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai_sdk(proxy_gw, "client-key") as client:
        yield client


PROXY_HEADERS = {
    "x-trace-id": "trace-1",
    "openai-organization": "org-client",
    "x-forwarded-for": "10.1.1.1",
    "x-internal-tenant": "t1",
    "x-real-ip": "10.1.1.2",
    "x-debug-level": "9",
    "x-custom": "c",
}


def test_004_openai_gets_the_allowlist_and_pii_redaction(
    proxy: openai.OpenAI, up: MockUpstream
) -> None:
    raw = chat(
        proxy,
        "gpt-4o",
        messages=[{"role": "user", "content": "mail bob@example.com card 4111 1111 1111 1111"}],
        extra_headers=PROXY_HEADERS,
    )

    assert routed(raw) == ("cloud-default", "openai", "gpt-4o-2024-11-20")
    sent = up.last_request()
    assert sent.body["messages"][0]["content"] == "mail [email] card [card]"
    extra = {n: v for n, v in sent.headers.items() if n.startswith(("x-", "openai-"))}
    assert extra.pop("x-request-id")
    assert extra == {
        "x-trace-id": "trace-1",
        "openai-organization": "org-client",
        "x-proxy": "llm-proxy-router",
    }
    assert sent.headers["user-agent"].startswith("OpenAI/Python")
    assert sent.headers["authorization"] == "Bearer sk-openai-upstream"


@pytest.mark.parametrize("max_tokens", [None, 100])
def test_004_openai_clients_on_claude_get_a_default_max_tokens_and_the_denylist(
    proxy: openai.OpenAI, up: MockUpstream, max_tokens: int | None
) -> None:
    params = {} if max_tokens is None else {"max_tokens": max_tokens}
    raw = chat(proxy, "claude-sonnet-4-5-20250929", extra_headers=PROXY_HEADERS, **params)

    assert routed(raw) == ("openai-clients-on-claude", "anthropic", "claude-sonnet-4-5-20250929")
    sent = up.last_request("/v1/messages")
    assert sent.body["max_tokens"] == (max_tokens or 4096)
    headers = dict(sent.headers)
    assert not {"x-forwarded-for", "x-internal-tenant", "x-real-ip"} & headers.keys()
    assert (headers["x-custom"], headers["x-debug-level"]) == ("c", "9")
    assert headers["x-proxy"] == "llm-proxy-router"
    assert headers["anthropic-version"] == "2023-06-01"
    assert not headers.get("user-agent", "").startswith("OpenAI/")  # dropped
    assert headers["x-api-key"] == "sk-ant-upstream"


def test_004_the_client_gets_one_request_id_the_one_sent_upstream(
    proxy: openai.OpenAI, up: MockUpstream
) -> None:
    raw = chat(proxy, "gpt-4o")

    assert raw.headers["x-request-id"] == up.last_request().headers["x-request-id"]


@pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning")
def test_004_anthropic_clients_on_claude_use_the_default_route(
    proxy_gw: ServedGateway, up: MockUpstream
) -> None:
    with anthropic_sdk(proxy_gw) as claude:
        raw = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "write to ann@example.org"}],
        )

    assert routed(raw) == ("cloud-default", "anthropic", "claude-sonnet-4-5-20250929")
    sent = up.last_request("/v1/messages")
    assert sent.body["messages"][0]["content"] == "write to [email]"
    assert sent.headers["anthropic-version"] == "2026-10-21"  # the client's; add only fills in


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_004_zero_width_characters_and_fingerprints_are_removed(
    proxy: openai.OpenAI, up: MockUpstream, model: str, stream: bool
) -> None:
    up.script("*", Reply(text="zero\u200bwidth\u2060 gone\ufeff"))

    if stream:
        chunks = list(proxy.chat.completions.create(model=model, messages=USER_HI, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        fingerprints = {c.system_fingerprint for c in chunks}
    else:
        reply = proxy.chat.completions.create(model=model, messages=USER_HI)
        text, fingerprints = reply.choices[0].message.content or "", {reply.system_fingerprint}

    assert text == "zerowidth gone"
    assert fingerprints == {None}


def test_004_local_backends_get_passthrough_headers_and_compat_edits(
    proxy: openai.OpenAI, up: MockUpstream
) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {"name": f, "strict": True, "parameters": {"type": "object"}},
        }
        for f in ("a", "b")
    ]
    vllm = chat(
        proxy,
        "Qwen/Qwen2.5-72B-Instruct",
        tools=tools,
        tool_choice="none",
        logit_bias={"5": 1},
        extra_headers=PROXY_HEADERS,
    )
    ollama = chat(proxy, "llama3.2:latest", stop=["END"], extra_headers=PROXY_HEADERS)

    assert routed(vllm) == ("local-backends", "vllm", "Qwen/Qwen2.5-72B-Instruct")
    assert routed(ollama) == ("local-backends", "ollama", "llama3.2:3b")
    to_vllm = up.last_request("/v1/chat/completions")
    assert [t["function"] for t in to_vllm.body["tools"]] == [
        {"name": "a", "parameters": {"type": "object"}},
        {"name": "b", "parameters": {"type": "object"}},
    ]
    assert "logit_bias" not in to_vllm.body
    assert to_vllm.body["stop"] == ["<|eot_id|>"]
    assert to_vllm.headers["authorization"] == "Bearer sk-vllm-upstream"
    to_ollama = up.last_request("/api/chat")
    assert to_ollama.body["options"]["stop"] == ["END", "<|eot_id|>"]
    for sent in (to_vllm, to_ollama):
        headers = dict(sent.headers)
        assert headers["x-source"] == "llm-proxy-router"
        assert headers["x-custom"] == "c" and headers["x-forwarded-for"] == "10.1.1.1"
        assert "x-debug-level" not in headers


def test_004_a_string_stop_also_gets_the_local_stop_sequence(
    proxy: openai.OpenAI, up: MockUpstream
) -> None:
    chat(proxy, "llama3.2:latest", stop="END")

    assert up.last_request("/api/chat").body["options"]["stop"] == ["END", "<|eot_id|>"]


def test_004_provider_response_headers_are_stripped(proxy: openai.OpenAI, up: MockUpstream) -> None:
    completion = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-11-20",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    leaky = {
        "openai-organization": "org-x",
        "anthropic-organization-id": "a",
        "x-kept": "1",
        "x-ratelimit-limit-requests": "500",
    }
    up.script("openai", Status(200, headers=leaky, body=completion))

    raw = chat(proxy, "gpt-4o")

    assert (raw.headers["x-kept"], raw.headers["x-ratelimit-limit-requests"]) == ("1", "500")
    assert "openai-organization" not in raw.headers
    assert "anthropic-organization-id" not in raw.headers
