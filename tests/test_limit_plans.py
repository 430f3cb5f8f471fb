"""`plan_limits` (runtime/limiting.py): which counters a request is checked against. Plans are
built from a template kept per table, route, key and stream-or-not; these pin that the template
never hands one request another's counters."""

from __future__ import annotations

from typing import Any

from compiler import compile_texts
from compiler.table import ApiKey, RouteTable
from runtime.limiting import plan_limits
from runtime.request import RequestContext

NOW = 1_795_910_400.0  # 2026-11-29 UTC

CONFIG = """
version: 1
upstreams:
  demo: {kind: mock}
models:
  demo-chat:
    targets: [{upstream: demo, model: demo-1}]
limits:
  default: [per-key, per-project, per-ip]
  policies:
    per-key: {scope: key, rpm: 10, concurrent_streams: 2}
    per-project: {scope: project, tpm: 1000, budget: {tokens_per_day: 5000}}
    per-ip: {scope: ip, rpm: 100}
"""


def table(text: str = CONFIG) -> RouteTable:
    result = compile_texts([("limits.yaml", text)])
    assert result.table is not None, result.errors
    return result.table


def counters(
    routes: RouteTable, key: ApiKey | None, ip: str, *, stream: bool = False
) -> dict[str, str]:
    body = b'{"model":"demo-chat","messages":[{"role":"user","content":"hi"}]%s}' % (
        b',"stream":true' if stream else b""
    )
    ctx = RequestContext.parse("openai.chat", body, {}, "req-1")
    ctx.api_key, ctx.client_ip = key, ip
    model: Any = routes.resolve_model("demo-chat")
    plan = plan_limits(routes, None, ctx, model, NOW)
    assert plan is not None
    sources = plan.template.sources
    return {f"{p}.{f}": c.key for (p, f), c in zip(sources, plan.checks, strict=True)}


def test_each_request_gets_its_own_key_project_and_address_counters() -> None:
    routes = table()
    alice = ApiKey(id="alice", hash="sha256:00:00", project="web")
    bob = ApiKey(id="bob", hash="sha256:00:00", project="web")
    first = counters(routes, alice, "10.0.0.1")
    assert first == counters(routes, alice, "10.0.0.1")  # NOTE: the template's second use
    state = {name: key.split(":")[0] for name, key in first.items()}
    assert first == {
        "per-key.rpm": f"{state['per-key.rpm']}:rpm:key:alice",
        "per-project.tpm": f"{state['per-project.tpm']}:tpm:project:web",
        "per-project.tokens_per_day": (
            f"{state['per-project.tokens_per_day']}:tokens_per_day:project:web:2026-11-29"
        ),
        "per-ip.rpm": f"{state['per-ip.rpm']}:rpm:ip:10.0.0.1",
    }
    other = counters(routes, bob, "10.0.0.2")
    assert other["per-key.rpm"].endswith(":key:bob")
    assert other["per-project.tpm"] == first["per-project.tpm"]  # NOTE: one project, one counter
    assert other["per-ip.rpm"].endswith(":ip:10.0.0.2")
    assert counters(routes, alice, "10.0.0.9")["per-ip.rpm"].endswith(":ip:10.0.0.9")
    assert counters(routes, None, "10.0.0.1")["per-key.rpm"].endswith(":anonymous")


def test_stream_slots_only_for_streams_and_a_new_table_plans_afresh() -> None:
    routes = table()
    alice = ApiKey(id="alice", hash="sha256:00:00", project="web")
    assert "per-key.concurrent_streams" not in counters(routes, alice, "10.0.0.1")
    assert "per-key.concurrent_streams" in counters(routes, alice, "10.0.0.1", stream=True)
    assert "per-key.concurrent_streams" not in counters(routes, alice, "10.0.0.1")
    changed = table(CONFIG.replace("rpm: 10,", "rpm: 11,"))
    before = counters(routes, alice, "10.0.0.1")["per-key.rpm"]
    after = counters(changed, alice, "10.0.0.1")["per-key.rpm"]
    assert before != after  # NOTE: a changed policy has a new state id: fresh counters
    moved = ApiKey(id="alice", hash="sha256:00:00", project="mobile")
    assert counters(routes, moved, "10.0.0.1")["per-project.tpm"].endswith(":project:mobile")
