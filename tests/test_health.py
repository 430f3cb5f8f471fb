"""`GET /health`, `/readyz`, `/admin/upstreams` and the upstream gauges, over loopback, as an
upstream dies (its breaker opens) and comes back, and as Redis or the ledger's PostgreSQL goes
away behind a TCP proxy that the test cuts and restores."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.served
from compiler import compile_texts
from runtime.admin import admin_routes
from runtime.app import Gateway, GatewayApp, create_app
from runtime.reload import Reloader
from runtime.resilience import BreakerBook
from tests.process import ADMIN, ADMIN_HASH, metric
from tests.redis_fixture import REDIS_URL
from tests.served import ServedGateway, compile_yaml
from tests.tcp_proxy import TcpProxy
from tests.test_sdk_ollama_gigachat import gateway_config as gigachat_config
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream

UPSTREAM_SECRET = "sk-upstream-secret-4f9a2c"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream_config(base_url: str, **server: Any) -> str:
    return json.dumps(
        {
            "version": 1,
            "server": server,
            "admin": {"enabled": True, "key_hash": ADMIN_HASH},
            "upstreams": {
                "oai": {
                    "kind": "openai",
                    "base_url": base_url,
                    "api_key": UPSTREAM_SECRET,
                    "circuit_breaker": {"failure_threshold": 2, "cooldown_s": 30},
                },
                "spare": {"kind": "mock"},
            },
            "models": {
                "m": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
                "n": {"targets": [{"upstream": "spare"}]},
            },
        }
    )


def health(gw: ServedGateway) -> tuple[int, dict[str, Any]]:
    response = httpx.get(gw.url + "/health", timeout=10)
    return response.status_code, response.json()


def chat(gw: ServedGateway, model: str = "m") -> int:
    body = {**CHAT, "model": model}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code


@pytest.fixture(autouse=True)
def with_admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Served gateways get the admin routes and /metrics, as `interlock serve` gives them."""
    path = tmp_path / "unused.yaml"
    path.write_text("version: 1\n", encoding="utf-8")

    def create(gateway: Gateway) -> GatewayApp:
        return create_app(gateway, admin_routes(gateway, Reloader(gateway, path)))

    monkeypatch.setattr(tests.served, "create_app", create)


@pytest.fixture
def proxied(upstream_reset: MockUpstream) -> Iterator[TcpProxy]:
    port = int(upstream_reset.url.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        yield proxy


def test_upstream_dies_its_breaker_opens_and_it_comes_back(
    served: Callable[[str], ServedGateway], proxied: TcpProxy
) -> None:
    base_url = f"http://127.0.0.1:{proxied.port}/v1"
    gw = served(upstream_config(base_url, health={"required": ["upstreams"]}))
    clock = FakeClock()
    gw.gateway.state.breakers = BreakerBook(clock)

    status, body = health(gw)
    assert status == 200 and body["status"] == "ok"
    assert body["upstreams"]["oai"]["status"] == "unknown"
    assert body["components"]["upstreams"] == {
        "ok": True,
        "down": [],
        "models_unserved": [],
        "required": True,
    }

    assert chat(gw) == 200
    status, body = health(gw)
    oai = body["upstreams"]["oai"]
    assert status == 200 and oai["status"] == "up" and oai["breaker"] == "closed"
    assert oai["attempts"] == 1 and oai["failures"] == 0 and oai["error_rate"] == 0
    assert oai["latency_ewma_s"] > 0 and oai["last_error"] is None

    proxied.down()
    assert chat(gw) == 502
    status, body = health(gw)
    oai = body["upstreams"]["oai"]
    assert status == 200, "one failure below the threshold degrades, it does not take it down"
    assert oai["status"] == "degraded" and oai["breaker"] == "closed"
    assert oai["breakers"][0]["consecutive_failures"] == 1

    assert chat(gw) == 502  # the second failure opens the breaker
    assert chat(gw) == 503  # refused by the open breaker: not an attempt
    status, body = health(gw)
    oai = body["upstreams"]["oai"]
    assert status == 503 and body["status"] == "unavailable"
    assert body["failing"] == ["upstreams"]
    assert body["components"]["upstreams"]["down"] == ["oai"]
    assert body["components"]["upstreams"]["models_unserved"] == ["m"]
    assert oai["status"] == "down" and oai["breaker"] == "open"
    assert oai["breakers"] == [
        {
            "model": "m",
            "state": "open",
            "upstream_model": "gpt-up",
            "consecutive_failures": 2,
            "half_open_in_s": 30.0,
        }
    ]
    assert oai["attempts"] == 3 and oai["failures"] == 2
    assert oai["error_rate"] == pytest.approx(1 - 0.9**2)
    assert oai["last_error"]["class"] == "connect"
    assert oai["last_error"]["at"] >= oai["last_success_at"]
    assert body["upstreams"]["spare"]["status"] == "unknown"
    assert UPSTREAM_SECRET not in json.dumps(body)

    text = httpx.get(gw.url + "/metrics", timeout=5).text
    assert metric(text, 'interlock_upstream_up{upstream="oai"}') == 0
    assert metric(text, 'interlock_upstream_breaker_state{upstream="oai"}') == 2
    assert metric(text, 'interlock_upstream_error_rate{upstream="oai"}') == pytest.approx(0.19)
    assert metric(text, 'interlock_upstream_up{upstream="spare"}') == 1
    assert metric(text, 'interlock_upstream_latency_ewma_seconds{upstream="oai"}') > 0

    admin = httpx.get(gw.url + "/admin/upstreams", headers=ADMIN, timeout=5)
    assert admin.status_code == 200
    listed = admin.json()["upstreams"]["oai"]
    assert listed["status"] == "down" and listed["kind"] == "openai"
    assert listed["base_url"] == base_url and listed["breakers"] == oai["breakers"]
    assert httpx.get(gw.url + "/admin/upstreams", timeout=5).status_code == 401

    # The upstream comes back; after the cooldown the breaker lets a probe through
    proxied.up()
    clock.now += 30
    status, body = health(gw)
    assert status == 200, "half-open: being probed, not down"
    assert body["upstreams"]["oai"]["breaker"] == "half_open"
    assert body["upstreams"]["oai"]["status"] == "degraded"
    assert chat(gw) == 200
    status, body = health(gw)
    oai = body["upstreams"]["oai"]
    assert status == 200 and body["status"] == "ok"
    assert oai["status"] == "up" and oai["breaker"] == "closed"
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    assert metric(text, 'interlock_upstream_up{upstream="oai"}') == 1
    assert metric(text, 'interlock_upstream_breaker_state{upstream="oai"}') == 0


def test_required_components_decide_the_status(
    served: Callable[[str], ServedGateway], proxied: TcpProxy
) -> None:
    """An upstream down without a breaker: `down` by its last attempt; not required by default,
    so /health stays 200 (degraded) and /readyz ready; /healthz never looks."""
    config = json.loads(upstream_config(f"http://127.0.0.1:{proxied.port}/v1"))
    del config["upstreams"]["oai"]["circuit_breaker"]
    gw = served(json.dumps(config))
    proxied.down()
    assert chat(gw) == 502
    status, body = health(gw)
    assert status == 200 and body["status"] == "degraded"
    assert body["required"] == ["keys", "limits"] and body["failing"] == []
    assert body["upstreams"]["oai"]["status"] == "down"
    assert body["upstreams"]["oai"]["breaker"] is None
    assert body["components"]["upstreams"]["ok"] is False
    assert body["components"]["upstreams"]["required"] is False
    ready = httpx.get(gw.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert httpx.get(gw.url + "/healthz", timeout=5).json() == {"status": "ok"}

    # The spare model's own upstream serves: a model with a live target keeps `upstreams` usable
    assert chat(gw, "n") == 200
    proxied.up()
    assert chat(gw) == 200
    status, body = health(gw)
    assert status == 200 and body["status"] == "ok"
    assert body["upstreams"]["oai"]["status"] == "up"

    # A reload that keeps an upstream keeps what was seen of it; one that drops it forgets it
    config["models"]["extra"] = {"targets": [{"upstream": "spare", "model": "x"}]}
    gw.swap(json.dumps(config))
    oai = health(gw)[1]["upstreams"]["oai"]
    assert (oai["attempts"], oai["failures"], oai["status"]) == (2, 1, "up")
    config["upstreams"]["oai"]["timeouts"] = {"connect_s": 3}
    gw.swap(json.dumps(config))
    assert health(gw)[1]["upstreams"]["oai"]["attempts"] == 0, "a changed upstream starts afresh"


def test_required_lists_only_known_components() -> None:
    text = json.dumps({"version": 1, "server": {"health": {"required": ["ledgr"]}}})
    errors = compile_texts([("config.json", text)]).errors
    assert [d.code for d in errors] == ["schema.enum"]
    table = compile_yaml("version: 1\n")
    assert table.server.health.required == ("keys", "limits")


def limits_config(redis_url: str) -> str:
    return json.dumps(
        {
            "version": 1,
            "upstreams": {"spare": {"kind": "mock"}},
            "models": {"n": {"targets": [{"upstream": "spare"}]}},
            "limits": {
                "backend": {"kind": "redis", "url": redis_url},
                "default": ["wide"],
                "policies": {"wide": {"scope": "ip", "rpm": 100000}},
            },
        }
    )


def test_redis_limits_backend_goes_away_and_comes_back(
    served: Callable[[str], ServedGateway], redis_prefix: str
) -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(port) as proxy:
        gw = served(limits_config(f"redis://127.0.0.1:{proxy.port}/0"))
        assert chat(gw, "n") == 200
        status, body = health(gw)
        limits = body["components"]["limits"]
        assert status == 200 and limits["ok"] is True and limits["kind"] == "redis"
        assert limits["required"] is True

        proxy.down()
        status, body = health(gw)
        limits = body["components"]["limits"]
        assert status == 503 and body["failing"] == ["limits"]
        assert limits["ok"] is False and "Error" in limits["error"]
        ready = httpx.get(gw.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready" and ready.json()["failing"] == ["limits"]

        proxy.up()
        status, body = health(gw)
        assert status == 200 and body["components"]["limits"]["ok"] is True
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200


def test_ledger_store_goes_away_and_comes_back(
    served: Callable[[str], ServedGateway], pg_url: str
) -> None:
    host_port = pg_url.partition("@")[2].partition("/")[0]
    port = int(host_port.rsplit(":", 1)[1]) if ":" in host_port else 5432
    with TcpProxy(port) as proxy:
        url = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        config = json.loads(limits_config("redis://unused"))
        del config["limits"]
        config["usage"] = {"store": {"kind": "postgres", "url": url}}
        config["server"] = {"health": {"required": ["ledger"]}}
        gw = served(json.dumps(config))
        assert chat(gw, "n") == 200
        status, body = health(gw)
        ledger = body["components"]["ledger"]
        assert status == 200 and ledger["ok"] is True and ledger["kind"] == "postgres"
        assert ledger["queue_depth"] >= 0

        proxy.down()
        status, body = health(gw)
        assert status == 503 and body["failing"] == ["ledger"]
        assert body["components"]["ledger"]["ok"] is False
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 503

        proxy.up()
        status, body = health(gw)
        assert status == 200 and body["components"]["ledger"]["ok"] is True
        gw.stop()  # NOTE: while its store is reachable: closing the pool then takes no time


def pg_behind(proxy: TcpProxy, pg_url: str) -> str:
    host_port = pg_url.partition("@")[2].partition("/")[0]
    return pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")


def pg_port(pg_url: str) -> int:
    host_port = pg_url.partition("@")[2].partition("/")[0]
    return int(host_port.rsplit(":", 1)[1]) if ":" in host_port else 5432


def test_key_store_goes_away_and_comes_back(
    served: Callable[[str], ServedGateway], pg_url: str
) -> None:
    """`auth.store` is required by default (`keys`): 503 while it is away, 200 once back."""
    with TcpProxy(pg_port(pg_url)) as proxy:
        config = json.loads(limits_config("redis://unused"))
        del config["limits"]
        config["auth"] = {"store": {"kind": "postgres", "url": pg_behind(proxy, pg_url)}}
        config["server"] = {"health": {"required": ["keys"]}}
        gw = served(json.dumps(config))
        status, body = health(gw)
        keys = body["components"]["keys"]
        assert status == 200 and keys["ok"] is True and keys["kind"] == "postgres"
        assert keys["required"] is True

        proxy.down()
        status, body = health(gw)
        assert status == 503 and body["failing"] == ["keys"]
        assert body["components"]["keys"]["ok"] is False
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 503
        assert "postgresql://" not in json.dumps(body)  # the URL (and its password) never shows

        proxy.up()
        status, body = health(gw)
        assert status == 200 and body["components"]["keys"]["ok"] is True
        gw.stop()  # NOTE: while its store is reachable: closing the pool then takes no time


def test_redis_cache_going_away_only_degrades(
    served: Callable[[str], ServedGateway], redis_prefix: str
) -> None:
    """A cache backend is not required by default: away, /health is 200 `degraded` with the
    cache component failing, and requests still pass (the cache misses)."""
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(port) as proxy:
        config = json.loads(limits_config("redis://unused"))
        del config["limits"]
        config["cache"] = {
            "backend": {"kind": "redis", "url": f"redis://127.0.0.1:{proxy.port}/0"},
            "policies": {"det": {"scope": "global"}},
        }
        gw = served(json.dumps(config))
        status, body = health(gw)
        cache = body["components"]["cache"]
        assert status == 200 and body["status"] == "ok"
        assert cache["ok"] is True and cache["kind"] == "redis" and cache["required"] is False

        proxy.down()
        status, body = health(gw)
        cache = body["components"]["cache"]
        assert status == 200 and body["status"] == "degraded" and body["failing"] == []
        assert cache["ok"] is False and "Error" in cache["error"]
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200

        proxy.up()
        status, body = health(gw)
        assert status == 200 and body["status"] == "ok" and body["components"]["cache"]["ok"]


def test_oauth_token_state_without_the_token(
    served: Callable[[str], ServedGateway],
    upstream_reset: MockUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IL_TEST_GIGACHAT_CREDENTIALS", GIGACHAT_CREDENTIALS)
    config = gigachat_config(upstream_reset)
    gw = served(
        config.replace("version: 1\n", "version: 1\nserver: {health: {required: [oauth]}}\n")
    )
    status, body = health(gw)
    assert status == 200 and body["upstreams"]["giga"]["oauth"]["state"] == "none"

    body_ = {"model": "GigaChat-Pro", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body_, timeout=10).status_code == 200
    status, body = health(gw)
    oauth = body["upstreams"]["giga"]["oauth"]
    assert status == 200 and oauth["state"] == "valid" and oauth["expires_at"] > 0

    # The token endpoint stops accepting the credentials and the token is dropped
    upstream_reset.gigachat_credentials = "bm90LXRoZS1jcmVkZW50aWFscw=="
    gw.call(lambda: gw.gateway.state.tokens[next(iter(gw.gateway.state.tokens))].invalidate())
    assert httpx.post(gw.url + "/v1/chat/completions", json=body_, timeout=10).status_code >= 500
    status, body = health(gw)
    oauth = body["upstreams"]["giga"]["oauth"]
    assert status == 503 and body["failing"] == ["oauth"]
    assert oauth["state"] == "failed" and "401" in oauth["error"]
    assert body["upstreams"]["giga"]["status"] == "down"
    text = json.dumps(body)
    assert GIGACHAT_CREDENTIALS not in text and "interlock-secret" not in text
