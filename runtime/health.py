"""The deep health view: upstreams (breakers, error rate, latency, last error), stores and OAuth
tokens, and which of them the gateway needs (``server.health.required``).

    GET /health   200 {"status": "ok" | "degraded", ...} or 503 {"status": "unavailable", ...}
    GET /readyz   200 when the table is loaded and every required store answers, else 503

Upstream state is what this process has seen (`UpstreamStats`, breakers): no request is sent to
an upstream to check it. Stores are asked (a ``PING`` or ``SELECT 1``, at most `PROBE_TIMEOUT_S`
each, all at once); concurrent health requests share one round of probes. Messages are masked
by the snapshot's `Redactor` (secret values, URL passwords); keys and tokens never appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from compiler.table import CompiledUpstream
from runtime.resilience import BreakerState

if TYPE_CHECKING:
    from runtime.app import Gateway
    from runtime.snapshot import Snapshot

PROBE_TIMEOUT_S: Final = 1.0
STORES: Final = ("ledger", "keys", "limits", "cache")
_BREAKER_LEVEL: Final[dict[str, int]] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    """One upstream as this process sees it; `status` is ``up``, ``degraded``, ``down`` or
    ``unknown`` (never tried). `breaker` is the worst state among its targets' breakers (None:
    no breaker configured, or none used yet)."""

    name: str
    state_id: str
    status: str
    breaker: BreakerState | None
    breakers: tuple[dict[str, Any], ...]
    attempts: int
    failures: int
    error_rate: float
    latency_s: float | None
    last_success_at: float | None
    last_error: dict[str, Any] | None
    oauth: dict[str, Any] | None

    @property
    def up(self) -> bool:
        return self.status != "down"

    @property
    def breaker_level(self) -> int:
        """0 closed (or none), 1 half-open, 2 open: the value of the breaker-state gauge."""
        return _BREAKER_LEVEL[self.breaker] if self.breaker is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "breaker": self.breaker,
            "breakers": list(self.breakers),
            "attempts": self.attempts,
            "failures": self.failures,
            "error_rate": round(self.error_rate, 4),
            "latency_ewma_s": round(self.latency_s, 6) if self.latency_s is not None else None,
            "last_success_at": self.last_success_at,
            "last_error": self.last_error,
            "oauth": self.oauth,
        }


def upstream_health(gateway: Gateway, snap: Snapshot) -> list[UpstreamHealth]:
    """Every upstream of `snap`, by name; no I/O."""
    targets: dict[str, list[tuple[str, str, str]]] = {}
    for model in snap.table.models.values():
        for target in model.targets:
            targets.setdefault(target.upstream.name, []).append(
                (model.name, target.model or "", target.state_id)
            )
    return [
        _one_upstream(gateway, snap, upstream, targets.get(name, []))
        for name, upstream in sorted(snap.table.upstreams.items())
    ]


def _one_upstream(
    gateway: Gateway,
    snap: Snapshot,
    upstream: CompiledUpstream,
    targets: list[tuple[str, str, str]],
) -> UpstreamHealth:
    state = gateway.state
    breakers = []
    for model, target_model, state_id in targets:
        breaker = state.breakers.peek(state_id)
        if breaker is None or upstream.breaker is None or breaker.policy != upstream.breaker:
            continue
        entry: dict[str, Any] = {"model": model, "state": breaker.state}
        if target_model:
            entry["upstream_model"] = target_model
        entry["consecutive_failures"] = breaker.consecutive_failures
        reopens = breaker.reopens_in_s
        if reopens is not None:
            entry["half_open_in_s"] = round(reopens, 3)
        breakers.append(entry)
    worst: BreakerState | None = None
    for entry in breakers:
        if worst is None or _BREAKER_LEVEL[entry["state"]] > _BREAKER_LEVEL[worst]:
            worst = entry["state"]
    stats = state.upstream_stats.peek(upstream.state_id)
    oauth = _oauth(gateway, snap, upstream)
    last_error = None
    if stats is not None and stats.last_error_at is not None:
        last_error = {
            "class": stats.last_error_class,
            "message": snap.redactor.text(stats.last_error_message or ""),
            "at": stats.last_error_at,
        }
    all_open = bool(breakers) and len(breakers) == len(targets)
    all_open = all_open and all(entry["state"] == "open" for entry in breakers)
    last_failed = stats is not None and stats.last_failed
    if all_open or (oauth is not None and oauth["state"] == "failed"):
        status = "down"
    elif last_failed and upstream.breaker is None:
        status = "down"  # NOTE: without a breaker, the last attempt is all there is to go on
    elif last_failed or worst in ("open", "half_open"):
        status = "degraded"
    elif stats is None or stats.attempts == 0:
        status = "unknown"
    else:
        status = "up"
    return UpstreamHealth(
        name=upstream.name,
        state_id=upstream.state_id,
        status=status,
        breaker=worst,
        breakers=tuple(breakers),
        attempts=stats.attempts if stats is not None else 0,
        failures=stats.failures if stats is not None else 0,
        error_rate=stats.error_rate if stats is not None else 0.0,
        latency_s=stats.latency_s if stats is not None else None,
        last_success_at=stats.last_success_at if stats is not None else None,
        last_error=last_error,
        oauth=oauth,
    )


def _oauth(gateway: Gateway, snap: Snapshot, upstream: CompiledUpstream) -> dict[str, Any] | None:
    if upstream.oauth is None:
        return None
    source = gateway.state.tokens.get(upstream.state_id)
    if source is None:
        return {"state": "none", "expires_at": None, "error": None}
    state, expires_at, error = source.status()
    return {
        "state": state,
        "expires_at": expires_at,
        "error": snap.redactor.text(error) if error is not None else None,
    }


class HealthChecker:
    """Builds the ``/health`` report; keeps one probe client per Redis URL (closed by `close`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._redis: dict[str, Any] = {}
        self._probing: asyncio.Task[dict[str, dict[str, Any]]] | None = None

    async def report(self) -> tuple[int, dict[str, Any]]:
        """``(http status, body)`` of ``GET /health``."""
        gateway = self.gateway
        snap = gateway.snapshot
        required = snap.table.server.health.required
        components = await self.stores()
        upstreams = upstream_health(gateway, snap)
        components["upstreams"] = _upstreams_component(snap, upstreams)
        oauth = [u for u in upstreams if u.oauth is not None]
        if oauth:
            failed = [u.name for u in oauth if u.oauth is not None and u.oauth["state"] == "failed"]
            components["oauth"] = {"ok": not failed, "failed": failed}
        for name, component in components.items():
            component["required"] = name in required
        failing = sorted(n for n, c in components.items() if c["required"] and not c["ok"])
        degraded = any(not c["ok"] for c in components.values())
        status = "unavailable" if failing else "degraded" if degraded else "ok"
        body = {
            "status": status,
            "version": snap.table.version,
            "uptime_s": round(time.time() - gateway.started, 3),
            "required": list(required),
            "failing": failing,
            "components": components,
            "upstreams": {u.name: u.as_dict() for u in upstreams},
        }
        return (503 if failing else 200), body

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """``(http status, body)`` of ``GET /readyz``: the table is loaded (it always is once
        the app serves) and every required store answers."""
        snap = self.gateway.snapshot
        required = snap.table.server.health.required
        if any(name in STORES for name in required):
            stores = await self.stores()
        else:
            stores = {}
        failing = sorted(n for n, c in stores.items() if n in required and not c["ok"])
        if failing:
            return 503, {"status": "not_ready", "version": snap.table.version, "failing": failing}
        return 200, {"status": "ready", "version": snap.table.version}

    async def stores(self) -> dict[str, dict[str, Any]]:
        """Each configured store's reachability; concurrent callers share one round."""
        task = self._probing
        if task is None:
            task = asyncio.get_running_loop().create_task(self._probe_stores())
            self._probing = task
            task.add_done_callback(self._probe_done)
        result = await asyncio.shield(task)
        return {name: dict(component) for name, component in result.items()}

    def _probe_done(self, task: asyncio.Task[dict[str, dict[str, Any]]]) -> None:
        if self._probing is task:
            self._probing = None

    async def close(self, keep: frozenset[str] = frozenset()) -> None:
        """Close the probe clients (but those of the Redis URLs in `keep`)."""
        gone = [url for url in self._redis if url not in keep]
        for url in gone:
            client = self._redis.pop(url)
            with contextlib.suppress(Exception):  # NOTE: a probe client that fails to close
                await client.aclose()

    async def _probe_stores(self) -> dict[str, dict[str, Any]]:
        gateway = self.gateway
        snap = gateway.snapshot
        probes: dict[str, tuple[str, Callable[[], Awaitable[object]] | None]] = {}
        ledger = gateway.ledger
        if ledger is not None and snap.ledger_target is not None:
            store = ledger.store

            async def ping_ledger() -> None:
                await store.open()  # NOTE: idempotent; a ledger that never wrote is not open yet
                await store.ping()

            probes["ledger"] = (snap.ledger_target[0], ping_ledger)
        live = gateway.keys.live
        if live is not None:
            probes["keys"] = (live.target[0], live.store.version)
        for name, target in (("limits", snap.limits_target), ("cache", snap.cache_target)):
            if target is not None:
                probes[name] = (target[0], self._target_probe(*target))
        redis_urls = frozenset(
            t[1] for t in (snap.limits_target, snap.cache_target) if t and t[0] == "redis"
        )
        if set(self._redis) - redis_urls:  # NOTE: a reload moved a backend elsewhere
            await self.close(keep=redis_urls)
        names = list(probes)
        results = await asyncio.gather(*(_probe(snap, *probes[n]) for n in names))
        out = dict(zip(names, results, strict=True))
        if "ledger" in out and ledger is not None:
            out["ledger"]["queue_depth"] = ledger.depth
            out["ledger"]["dropped"] = ledger.dropped
        return out

    def _target_probe(self, kind: str, where: str) -> Callable[[], Awaitable[object]] | None:
        if kind == "memory":
            return None
        if kind == "redis":
            return lambda: self._redis_client(where).ping()
        if kind == "sqlite":
            return lambda: asyncio.to_thread(_sqlite_ping, where)
        return None

    def _redis_client(self, url: str) -> Any:
        client = self._redis.get(url)
        if client is None:
            from redis.asyncio import Redis  # NOTE: the driver only for those who use it
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = self._redis[url] = Redis.from_url(
                url,
                socket_timeout=PROBE_TIMEOUT_S,
                socket_connect_timeout=PROBE_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        return client


async def _probe(
    snap: Snapshot, kind: str, probe: Callable[[], Awaitable[object]] | None
) -> dict[str, Any]:
    """``{"kind", "ok", "latency_s"}`` plus ``error`` (redacted) when it failed."""
    if probe is None:
        return {"kind": kind, "ok": True}
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_twice(probe), PROBE_TIMEOUT_S)
    except Exception as exc:  # NOTE: any failure to answer means unreachable, whatever it is
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return {"kind": kind, "ok": False, "error": snap.redactor.text(text)[:300]}
    return {"kind": kind, "ok": True, "latency_s": round(time.perf_counter() - started, 6)}


async def _twice(probe: Callable[[], Awaitable[object]]) -> None:
    """A pooled connection that died while the store was away fails once, then reconnects: one
    more try (probes are idempotent) keeps a store that is back from reading as down."""
    try:
        await probe()
    except Exception:
        await probe()


def _sqlite_ping(path: str) -> None:
    """Read the file without creating it; one not created yet is fine where it can be."""
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OSError(f"cannot create a database in {folder}")
        return
    conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=PROBE_TIMEOUT_S)
    try:
        conn.execute("SELECT 1").fetchone()
    finally:
        conn.close()


def _upstreams_component(snap: Snapshot, upstreams: list[UpstreamHealth]) -> dict[str, Any]:
    """Usable when every model has a target whose upstream is not down."""
    down = {u.name for u in upstreams if not u.up}
    stranded = sorted(
        model.name
        for model in snap.table.models.values()
        if model.targets and all(t.upstream.name in down for t in model.targets)
    )
    return {"ok": not stranded, "down": sorted(down), "models_unserved": stranded}
