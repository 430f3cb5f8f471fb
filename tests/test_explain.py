"""`interlock explain`: what it says is what serving does (checked against a loopback upstream),
it never needs or shows a secret, it says why earlier routes did not match, and its output for
every example's route tests is pinned by golden files (tests/golden/explain/).

Regenerate the goldens after a deliberate change::

    INTERLOCK_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_explain.py
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile_texts
from compiler.matcher import match_route
from compiler.table import RouteTable
from runtime.cli import main
from runtime.explain import ExplainInput, Explanation, explain_request
from runtime.explain_render import render_json, render_text
from runtime.request import RequestContext
from runtime.routetest import load_tests
from runtime.standins import ExplainError
from tests.served import ServedGateway, compile_yaml
from tests.upstreams import MockUpstream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden" / "explain"
UPDATE = os.environ.get("INTERLOCK_UPDATE_GOLDEN") == "1"
EXAMPLE_NAMES = sorted(
    p.stem for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".tests.yaml")
)
SECRET = "sk-explain-test-secret-0123456789"


@functools.cache
def example_table(name: str) -> RouteTable:
    """An example compiled as CI would, with no environment at all."""
    text = (EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8")
    result = compile_texts([(f"examples/{name}.yaml", text)], env={})
    assert result.table is not None
    return result.table


def explain(table: RouteTable, body: dict[str, Any], **kwargs: Any) -> Explanation:
    return asyncio.run(explain_request(table, ExplainInput(json.dumps(body).encode(), **kwargs)))


def chat(text: str, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# --- the same code as serving ----------------------------------------------------------------


def served_config(up: MockUpstream) -> str:
    return f"""version: 1
upstreams:
  oai:
    kind: openai
    base_url: {up.base_url("openai")}
    api_key: {{env: EXPLAIN_TEST_KEY}}
    headers: [tidy]
  ant:
    kind: anthropic
    base_url: {up.url}
    api_key: {{env: EXPLAIN_TEST_KEY}}
models:
  fast: {{targets: [{{upstream: oai, model: gpt-up, params: {{seed: 7}}}}]}}
  claude: {{targets: [{{upstream: ant, model: claude-up}}]}}
routes:
  - name: to-claude
    match: {{model: {{glob: "claude*"}}}}
    action: {{model: claude, params: {{default: {{max_tokens: 333}}}}}}
  - name: clamp
    match: {{headers: {{x-team: ml}}}}
    action:
      model: fast
      params: {{clamp: {{max_tokens: {{max: 100}}}}, drop: [user]}}
      transforms: [mask]
policies:
  headers:
    tidy:
      request: {{mode: passthrough, drop: ["x-debug-*"], force: {{x-gateway: interlock}}}}
  transforms:
    mask:
      request:
        - {{op: regex_replace, pattern: "\\\\d{{4}}", replacement: "####"}}
"""


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (
            {"x-team": "ml", "x-debug-a": "1", "x-request-id": "rid-1"},
            chat("card 1234 5678", max_tokens=900, user="u1"),
        ),
        ({"x-request-id": "rid-2"}, chat("hello", model="claude-3")),
    ],
    ids=["openai-with-policy-and-transforms", "translated-to-anthropic"],
)
def test_explain_shows_what_the_upstream_receives(
    upstream_reset: MockUpstream,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    body: dict[str, Any],
) -> None:
    monkeypatch.setenv("EXPLAIN_TEST_KEY", SECRET)
    config = served_config(upstream_reset)
    with ServedGateway(config) as gateway:
        response = httpx.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10
        )
    assert response.status_code == 200, response.text
    (received,) = upstream_reset.requests
    found = explain(compile_yaml(config), body, headers=headers)
    first = found.first
    assert first is not None and found.status == 200
    assert first.body == received.body
    assert first.url is not None and first.url.endswith(received.path)
    sent = {n: v for n, v in received.headers.items() if n not in _TRANSPORT}
    shown = dict(first.headers)
    credential = "x-api-key" if first.kind == "anthropic" else "authorization"
    assert shown.pop(credential).endswith("<secret env:EXPLAIN_TEST_KEY>")
    assert SECRET in sent.pop(credential)
    assert shown == sent


_TRANSPORT = frozenset({"host", "content-length", "user-agent", "accept", "connection"})


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_explain_needs_no_secret_and_shows_none(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LITELLM_MASTER_KEY", "DATABASE_URL"):
        monkeypatch.setenv(var, SECRET)
    table = example_table(name)
    key = table.auth.keys[0].id if table.auth.keys else None
    found = explain(table, chat("hi"), key_id=key)
    text = render_text(found) + render_json(found)
    assert SECRET not in text
    assert "explain-stand-in" not in text  # the stand-in credential is masked like a real one


def test_a_client_credential_is_masked() -> None:
    found = explain(
        example_table("quickstart"),
        chat("hi"),
        headers={"Authorization": f"Bearer {SECRET}", "x-goog-api-key": SECRET},
    )
    assert SECRET not in render_text(found) + render_json(found)
    assert ("authorization", "***") in found.client_headers


# --- routes, models, statuses ------------------------------------------------------------------


def test_earlier_routes_say_why_they_did_not_match() -> None:
    found = explain(
        example_table("cfx-stage-routing"),
        chat("hi", model="gpt-4o"),
        headers={"X-CFX-Stage": "direct"},
        key_id="agent-prod",
    )
    assert found.status == 400 and found.route == "direct-rejected"
    reasons = {check.name: check.reasons for check in found.routes}
    assert list(reasons) == [
        "chat-only",
        "stage-plan",
        "stage-code",
        "stage-review",
        "direct-allowed",
        "direct-rejected",
    ]
    assert reasons["stage-plan"] == ("header x-cfx-stage is 'direct', the route wants 'plan'",)
    assert reasons["direct-allowed"] == (
        "model 'gpt-4o' is not one of: claude-haiku-4-5, gemini-2.5-flash, gpt-4.1-mini",
    )
    assert reasons["direct-rejected"] == ()
    assert "400 rejected: model not allowed in direct mode" in render_text(found)


def test_limits_cache_and_fallback_order_are_shown() -> None:
    found = explain(
        example_table("codexflow-tiers"),
        chat("hi", model="claude-sonnet-4-5", temperature=0),
        key_id="codexflow-evals",
    )
    assert [t.upstream for t in found.targets] == [
        "anthropic-key-1",
        "anthropic-key-2",
        "anthropic-key-3",
    ]
    assert [(v.policy, v.counter) for v in found.limits] == [
        ("per-key-rate", "key:codexflow-evals"),
        ("per-ip-rate", "ip:<client address>"),
    ]
    assert found.cache is not None and found.cache.used and found.cache.lookup
    assert found.cache.scope == "project (project:internal-evals)"


FALLBACKS = """version: 1
upstreams:
  oai: {kind: openai, base_url: "https://oai.test/v1", api_key: {env: OAI_KEY}}
  ant: {kind: anthropic, base_url: "https://ant.test", api_key: {file: /run/secrets/ant}}
models:
  main:
    targets:
      - {upstream: oai, model: second, priority: 2}
      - {upstream: oai, model: first, priority: 1}
    fallback: {models: [backup], on: [server_error, timeout]}
  backup: {targets: [{upstream: ant, model: claude-up}]}
"""


def test_targets_in_priority_order_then_the_fallback_models() -> None:
    found = explain(compile_yaml(FALLBACKS), chat("hi", model="main"))
    assert [(t.model, t.upstream, t.upstream_model) for t in found.targets] == [
        ("main", "oai", "first"),
        ("main", "oai", "second"),
        ("backup", "ant", "claude-up"),
    ]
    assert found.fallback_on == ("server_error", "timeout")
    assert dict(found.targets[2].headers)["x-api-key"] == "<secret file:/run/secrets/ant>"
    assert found.targets[2].url == "https://ant.test/v1/messages"
    text = render_text(found)
    assert "targets   in order; fallback models backup on: server_error, timeout" in text
    assert "body: as for 1" not in text  # each target's body names its own model


def test_statuses_the_gateway_decides_itself() -> None:
    xrouter = example_table("xrouter-gigachat")
    assert explain(xrouter, chat("hi")).status == 401
    assert explain(xrouter, chat("hi", model="nope"), key_id="web-app").status == 404
    broken = explain(xrouter, {"model": "GigaChat", "messages": "x"}, key_id="web-app")
    assert broken.status == 400 and broken.failure is not None
    with pytest.raises(ExplainError, match="no such key"):
        explain(xrouter, chat("hi"), key_id="nobody")
    with pytest.raises(ExplainError, match="unknown path"):
        explain(xrouter, chat("hi"), path="/v2/chat")


@settings(max_examples=60, deadline=None)
@given(
    stage=st.sampled_from([None, "plan", "code", "review", "direct", "other"]),
    model=st.sampled_from(["gpt-4o", "gpt-4.1-mini", "claude-haiku-4-5"]),
    text=st.sampled_from(["hi", "review this", "plan the work", "outline it"]),
)
def test_the_explained_route_is_the_matched_route(stage: str | None, model: str, text: str) -> None:
    table = example_table("cfx-stage-routing")
    headers = {"x-cfx-stage": stage} if stage else {}
    body = json.dumps(chat(text, model=model)).encode()
    found = asyncio.run(
        explain_request(table, ExplainInput(body, headers=headers, key_id="agent-prod"))
    )
    ctx = RequestContext.parse("openai.chat", body, headers, "r")
    expected = match_route(table, ctx)
    assert found.route == (expected.name if expected else None)
    assert all(check.reasons for check in found.routes if not check.matched)
    assert [c.matched for c in found.routes].count(True) == (1 if expected else 0)


# --- the command ----------------------------------------------------------------------------


def test_the_command_prints_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(chat("plan it")), encoding="utf-8")
    config = str(EXAMPLES / "cfx-stage-routing.yaml")
    args = [config, str(request), "--header", "x-cfx-stage: code", "--key-id", "agent-prod"]
    assert main(["explain", *args]) == 0
    text = capsys.readouterr().out
    assert "2. stage-plan" in text and "3. stage-code  MATCH" in text
    assert "Bearer <secret env:LITELLM_MASTER_KEY>" in text
    assert main(["explain", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["route"] == "stage-code" and data["targets"][0]["upstream_model"] == "gpt-4.1"
    assert main(["explain", config, str(request), "--key-id", "nobody"]) == 2
    assert "no such key" in capsys.readouterr().err


# --- golden outputs -----------------------------------------------------------------------------


def golden_text(name: str) -> str:
    """The explanation of every request of the example's route tests, one after another."""
    table = example_table(name)
    tests, problems, _ = load_tests(EXAMPLES / f"{name}.tests.yaml")
    assert not problems
    parts = []
    for test in tests:
        found = asyncio.run(explain_request(table, test.request))
        parts.append(f"### {test.name}\n{render_text(found)}")
    return "\n".join(parts)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_golden_explanations(name: str) -> None:
    check_golden(GOLDEN / f"{name}.txt", golden_text(name))


def check_golden(path: Path, text: str, update: Callable[[], bool] = lambda: UPDATE) -> None:
    if update():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing {path}; run with INTERLOCK_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs from its golden"
