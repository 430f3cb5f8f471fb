"""Spend metrics over loopback with `interlock serve --workers 2`: tokens and cost by model,
upstream and key id, cache lookups, limit refusals by policy and ledger writes are totals over
both workers, whichever worker answers the scrape. Each worker's own counters (its files in the
shared multiprocess directory) prove that both served requests before the totals are checked."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.process import Interlock

KEYS = {"team-a": "il-team-a-secret-0001", "team-b": "il-team-b-secret-0002"}
SALT = "00112233aabbccdd"


def key_hash(key: str) -> str:
    return f"sha256:{SALT}:{hashlib.sha256((SALT + key).encode()).hexdigest()}"


def config(tmp_path: Path) -> str:
    return json.dumps(
        {
            "version": 1,
            "upstreams": {
                "mockup": {
                    "kind": "mock",
                    "mock": {"usage": {"prompt_tokens": 10, "completion_tokens": 20}},
                }
            },
            "models": {
                "paid": {
                    "targets": [{"upstream": "mockup", "model": "p-1"}],
                    "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                },
                "cached": {"targets": [{"upstream": "mockup", "model": "c-1"}]},
                "warm": {"targets": [{"upstream": "mockup", "model": "w-1"}]},
            },
            "routes": [
                {"name": "cached", "match": {"model": "cached"}, "action": {"cache": "det"}}
            ],
            "auth": {
                "required": True,
                "keys": [
                    {"id": "team-a", "hash": key_hash(KEYS["team-a"])},
                    {"id": "team-b", "hash": key_hash(KEYS["team-b"]), "limits": ["tight"]},
                ],
            },
            "limits": {
                "backend": {"kind": "sqlite", "path": str(tmp_path / "limits.db")},
                "policies": {"tight": {"scope": "key", "rpm": 3}},
            },
            "cache": {"backend": {"kind": "memory"}, "policies": {"det": {"scope": "global"}}},
            "usage": {"store": {"kind": "sqlite", "path": str(tmp_path / "usage.db")}},
        }
    )


def chat(url: str, key: str, model: str, **body: Any) -> int:
    # NOTE: a new connection per request, so the kernel spreads them over both workers
    with httpx.Client(timeout=10) as client:
        response = client.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {KEYS[key]}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
        )
    return response.status_code


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def served_by_pid(metrics_dir: Path, scratch: Path) -> dict[str, float]:
    """Requests each worker has counted, by pid, read from its own counter file alone."""
    out = {}
    for db in metrics_dir.glob("counter_*.db"):
        pid = db.stem.removeprefix("counter_")
        one = scratch / pid
        one.mkdir(parents=True, exist_ok=True)
        shutil.copy(db, one / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))  # type: ignore[no-untyped-call]
        found = samples(generate_latest(registry).decode())
        out[pid] = sum(
            v
            for (name, labels), v in found.items()
            if name == "interlock_requests_total" and ("api", "openai.chat") in labels
        )
    return out


def warm_both_workers(server: Interlock, metrics_dir: Path, scratch: Path) -> int:
    """Send requests on fresh connections until both workers have answered one; their count."""
    sent = 0
    while sum(1 for n in served_by_pid(metrics_dir, scratch).values() if n > 0) < 2:
        assert sent < 200, f"one worker never answered: {served_by_pid(metrics_dir, scratch)}"
        assert chat(server.url, "team-a", "warm") == 200
        sent += 1
    return sent


def test_spend_metrics_are_totals_over_two_workers(
    interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.json"
    path.write_text(config(tmp_path), encoding="utf-8")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = interlock(
        path, args=("--workers", "2"), env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    warm = warm_both_workers(server, metrics_dir, tmp_path / "scratch")

    assert [chat(server.url, "team-a", "paid") for _ in range(10)] == [200] * 10
    assert sorted(chat(server.url, "team-b", "paid") for _ in range(5)) == [200] * 3 + [429] * 2
    assert [chat(server.url, "team-a", "cached", temperature=0) for _ in range(6)] == [200] * 6

    version = httpx.get(server.url + "/health", timeout=5).json()["version"]
    paid_a = {"model": "paid", "upstream": "mockup", "key": "team-a"}
    paid_b = {"model": "paid", "upstream": "mockup", "key": "team-b"}
    deadline = time.monotonic() + 15
    scrapes: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = []
    while len(scrapes) < 4:
        with httpx.Client(timeout=5) as client:
            found = samples(client.get(server.url + "/metrics").text)
        # the ledger writes in the background: wait until both workers have written everything
        if value(found, "interlock_ledger_written_total") == 21 + warm:
            scrapes.append(found)
        else:
            assert time.monotonic() < deadline, "the ledger never caught up"
            time.sleep(0.05)
    per_worker = served_by_pid(metrics_dir, tmp_path / "scratch-after")
    assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker
    assert sum(per_worker.values()) == 21 + warm
    for found in scrapes:
        assert value(found, "interlock_usage_requests_total", **paid_a) == 10
        assert value(found, "interlock_usage_tokens_total", **paid_a, kind="input") == 100
        assert value(found, "interlock_usage_tokens_total", **paid_a, kind="output") == 200
        cost = value(found, "interlock_usage_cost_total", **paid_a, currency="USD")
        assert abs(cost - 10 * (10 * 1.0 + 20 * 2.0) / 1e6) < 1e-12
        assert value(found, "interlock_usage_requests_total", **paid_b) == 3
        assert value(found, "interlock_usage_tokens_total", **paid_b, kind="output") == 60
        assert value(found, "interlock_limit_refusals_total", policy="tight") == 2
        hits = value(found, "interlock_cache_lookups_total", result="hit")
        misses = value(found, "interlock_cache_lookups_total", result="miss")
        assert hits + misses == 6 and 1 <= misses <= 2  # NOTE: each worker has its own memory cache
        assert value(found, "interlock_requests_total", api="openai.chat", status="200") == (
            19 + warm
        )
        assert value(found, "interlock_requests_total", api="openai.chat", status="429") == 2
        assert value(found, "interlock_in_flight_requests") == 0
        assert value(found, "interlock_upstream_up", upstream="mockup") == 1
        assert value(found, "interlock_upstream_error_rate", upstream="mockup") == 0
        assert value(found, "interlock_config_info", version=version) == 1
        for name, labels in found:
            assert not any(secret in v for secret in KEYS.values() for _, v in labels), name
