"""Admin endpoints (enabled by `admin.enabled`, guarded by the admin key's hash) and metrics.

POST /admin/reload   reload now; the result (ok / rejected with diagnostics, changes)
GET  /admin/config   live version, when it was loaded, source files, reload counters and
                     the last reload result with its diagnostics
GET  /admin/usage    the usage ledger report: ?since=DAY&until=DAY&group_by=model,key
                     (the rows of `interlock usage report --format json`)
/admin/orgs, /admin/projects, /admin/keys, /admin/audit
                     organizations, projects and managed keys (runtime/admin_keys.py)
POST /admin/cache/purge  empty the response cache: body {"policy": NAME} for one policy,
                     empty (or {}) for all; answers {"purged": {NAME: entries removed}}
GET  /admin/upstreams each upstream's kind, base URL, status, breakers, error rate, latency
                     average, attempts and last error (redacted), as this process sees it
GET  /metrics        Prometheus text format (when `observability.metrics.enabled`)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.admin_keys import key_routes
from runtime.app import Gateway
from runtime.auth import presented_key, verify_hash
from runtime.errors import GatewayError, error_body
from runtime.health import upstream_health
from runtime.reload import Reloader, ReloadResult
from runtime.state.cache import CacheUnavailable
from runtime.state.ledger import GROUP_FIELDS

_encode = msgspec.json.Encoder().encode
Handler = Callable[[Request], Awaitable[Response]]


def _json(data: object, status: int = 200) -> Response:
    return Response(_encode(data), status, media_type="application/json")


def _error(error: GatewayError) -> Response:
    return Response(error_body("openai.chat", error), error.status, media_type="application/json")


def usage_query(group_by: Sequence[str], params: Mapping[str, str]) -> dict[str, Any]:
    """`since`, `until` and `group_by` of a usage query, checked (ValueError says what is wrong).
    `group_by` may repeat or be comma-separated: ``["day,model"]`` -> ``["day", "model"]``."""
    fields = [f for item in group_by for f in item.split(",") if f] or ["model"]
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown[0]!r}; use {', '.join(GROUP_FIELDS)}")
    query: dict[str, Any] = {"group_by": list(dict.fromkeys(fields))}
    for name in ("since", "until"):
        value = params.get(name)
        try:
            query[name] = dt.date.fromisoformat(value).isoformat() if value else None
        except ValueError:
            raise ValueError(f"{name} must be a day (YYYY-MM-DD), not {value!r}") from None
    return query


def purge_target(body: bytes) -> str | None:
    """The policy a purge names (None: all): ``b'{"policy": "det"}'`` -> ``"det"``; an empty
    body or ``{}`` -> None. ValueError for anything else."""
    if not body.strip():
        return None
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ValueError('the body must be JSON: {"policy": NAME}, or empty for all') from None
    if not isinstance(data, dict) or set(data) - {"policy"}:
        raise ValueError('the body may only name a policy: {"policy": NAME}')
    name = data.get("policy")
    if name is not None and not isinstance(name, str):
        raise ValueError("policy must be a name")
    return name


def _guarded(gateway: Gateway, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        admin = gateway.snapshot.table.admin
        try:
            if not admin.enabled or admin.key_hash is None:
                raise GatewayError(404, "the admin API is not enabled", code="not_found")
            headers = {k.lower(): v for k, v in request.headers.items()}
            key = presented_key(headers, ("bearer", "x-api-key"))
            if key is None or not verify_hash(key, admin.key_hash):
                raise GatewayError(401, "a valid admin key is required", code="invalid_api_key")
        except GatewayError as exc:
            return Response(
                error_body("openai.chat", exc), exc.status, media_type="application/json"
            )
        return await handler(request)

    return endpoint


def admin_routes(gateway: Gateway, reloader: Reloader) -> list[Route]:
    async def reload(request: Request) -> Response:
        result = await reloader.reload("admin")
        return _json(result.as_dict(), 200 if result.ok else 422)

    async def config(request: Request) -> Response:
        table = gateway.snapshot.table
        return _json(
            {
                "version": table.version,
                "short_version": table.short_version,
                "loaded_at": reloader.loaded_at,
                "sources": reloader.sources,
                "reloads": {
                    "attempts": reloader.attempts,
                    "successes": reloader.successes,
                    "rejections": reloader.rejections,
                },
                "last_reload": reloader.last.as_dict() if reloader.last else None,
            }
        )

    async def usage(request: Request) -> Response:
        ledger = gateway.ledger
        if ledger is None:
            return _error(GatewayError(404, "the usage ledger is not enabled", code="not_found"))
        try:
            query = usage_query(request.query_params.getlist("group_by"), request.query_params)
        except ValueError as exc:
            return _error(GatewayError(400, str(exc), code="invalid_request"))
        try:
            rows = await ledger.report(**query)
        except Exception as exc:  # NOTE: the store is down: say so, in the API's shape
            message = f"the usage store cannot be read: {type(exc).__name__}"
            return _error(GatewayError(503, message, code="store_unavailable"))
        return _json(rows)

    async def cache_purge(request: Request) -> Response:
        policies = gateway.snapshot.table.cache.policies
        cache = gateway.state.cache
        if cache is None:
            return _error(GatewayError(404, "the response cache is not enabled", code="not_found"))
        try:
            name = purge_target(await request.body())
        except ValueError as exc:
            return _error(GatewayError(400, str(exc), code="invalid_request"))
        if name is not None and name not in policies:
            message = f"there is no cache policy named {name!r}"
            return _error(GatewayError(404, message, code="not_found"))
        purged = {}
        try:
            for policy in [policies[name]] if name is not None else policies.values():
                purged[policy.name] = await cache.purge([policy.state_id])
        except CacheUnavailable as exc:
            message = f"the response cache cannot be reached: {exc}"
            return _error(GatewayError(503, message, code="cache_unavailable"))
        return _json({"purged": purged})

    async def upstreams(request: Request) -> Response:
        snap = gateway.snapshot
        rows = upstream_health(gateway, snap)
        return _json(
            {
                "version": snap.table.version,
                "upstreams": {
                    row.name: {
                        "kind": snap.table.upstreams[row.name].kind,
                        "base_url": snap.redactor.text(snap.table.upstreams[row.name].base_url),
                        **row.as_dict(),
                    }
                    for row in rows
                },
            }
        )

    async def metrics(request: Request) -> Response:
        if not gateway.snapshot.table.observability.metrics:
            return Response(status_code=404)
        return Response(
            gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    paths = {"/metrics", gateway.snapshot.table.observability.metrics_path}
    return [
        Route("/admin/reload", _guarded(gateway, reload), methods=["POST"]),
        Route("/admin/config", _guarded(gateway, config), methods=["GET"]),
        Route("/admin/usage", _guarded(gateway, usage), methods=["GET"]),
        Route("/admin/cache/purge", _guarded(gateway, cache_purge), methods=["POST"]),
        Route("/admin/upstreams", _guarded(gateway, upstreams), methods=["GET"]),
        *key_routes(gateway, _guarded),
        *(Route(path, metrics, methods=["GET"]) for path in sorted(paths)),
    ]


def count_reload(gateway: Gateway) -> Callable[[ReloadResult], None]:
    """A `Reloader.on_result` hook that keeps the reload counters in the metrics."""

    def hook(result: ReloadResult) -> None:
        if result.skipped:
            return
        gateway.metrics.reload_attempts.inc()
        (gateway.metrics.reload_success if result.ok else gateway.metrics.reload_rejected).inc()

    return hook
