"""The admin API of organizations, projects and managed keys (``auth.store``), JSON in and out,
behind the admin key like every admin endpoint (runtime/admin.py registers these routes):

POST   /admin/orgs            {"id", "name"?}                          -> 201 the org
GET    /admin/orgs                                                     -> {"data": [orgs]}
POST   /admin/projects        {"id", "org", "name"?, "limits"?}         -> 201 the project
GET    /admin/projects        ?org=ID                                  -> {"data": [projects]}
PATCH  /admin/projects/{id}   {"name"?, "limits"?}                     -> the project
POST   /admin/keys            {"project", "name", "id"?, "models"?, "expires"?, "limits"?,
                               "tags"?}                                -> 201 {"id", "key", ...}
GET    /admin/keys            ?project=&org=&after=&limit=             -> {"data", "next"}
GET    /admin/keys/{id}                                                -> the key (no secret)
PATCH  /admin/keys/{id}       {"name"?, "models"?, "expires"?, "limits"?, "tags"?}
DELETE /admin/keys/{id}       revokes it                               -> the key
GET    /admin/audit           ?limit=N                                 -> {"data": [entries]}

A change is refreshed into this process's live keys before the answer; other processes see it
at their next poll (500 ms). Errors are OpenAI-shaped, ``param`` naming the field at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.app import Gateway
from runtime.errors import GatewayError, error_body
from runtime.tenancy import (
    KeyInput,
    KeyPatch,
    OrgInput,
    ProjectInput,
    ProjectPatch,
    Tenancy,
    TenancyError,
    decode_input,
)

_LOG = logging.getLogger("interlock")
_encode = msgspec.json.Encoder().encode
_CODES = {400: "invalid_request", 404: "not_found", 409: "conflict", 422: "unknown_limit_policy"}
ACTOR = "admin"  # the admin key has no id of its own: every admin change is the admin's

Handler = Callable[[Request], Awaitable[Response]]
Operation = Callable[[Tenancy, Request], Awaitable[Any]]


def key_routes(gateway: Gateway, guard: Callable[[Gateway, Handler], Handler]) -> list[Route]:
    """The routes above, each wrapped in `guard` (the admin key check)."""

    def route(path: str, method: str, operation: Operation, *, status: int = 200) -> Route:
        changes = method != "GET"
        handler = _handler(gateway, operation, status=status, changes=changes)
        return Route(path, guard(gateway, handler), methods=[method])

    return [
        route("/admin/orgs", "POST", _create_org, status=201),
        route("/admin/orgs", "GET", _list_orgs),
        route("/admin/projects", "POST", _create_project, status=201),
        route("/admin/projects", "GET", _list_projects),
        route("/admin/projects/{id}", "PATCH", _update_project),
        route("/admin/keys", "POST", _create_key, status=201),
        route("/admin/keys", "GET", _list_keys),
        route("/admin/keys/{id}", "GET", _get_key),
        route("/admin/keys/{id}", "PATCH", _update_key),
        route("/admin/keys/{id}", "DELETE", _revoke_key),
        route("/admin/audit", "GET", _audit),
    ]


def _handler(gateway: Gateway, operation: Operation, *, status: int, changes: bool) -> Handler:
    async def endpoint(request: Request) -> Response:
        live = gateway.keys.live
        try:
            if live is None:
                raise TenancyError(
                    404, "managed keys are not enabled: the config has no auth.store"
                )
            tenancy = Tenancy(live.store, gateway.snapshot.table, ACTOR)
            result = await operation(tenancy, request)
        except TenancyError as exc:
            return _error(exc.status, exc.message, exc.field)
        except Exception as exc:  # NOTE: the store is down: say so, in the API's shape
            _LOG.warning("admin %s %s failed: %r", request.method, request.url.path, exc)
            return _error(503, f"the key store cannot be used: {type(exc).__name__}", None)
        if changes:
            try:  # NOTE: this process serves the change at once; the others at their next poll
                await live.refresh()
            except Exception as exc:
                _LOG.warning("managed keys: refresh after a change failed: %r", exc)
        return Response(_encode(result), status, media_type="application/json")

    return endpoint


def _error(status: int, message: str, field: str | None) -> Response:
    error = GatewayError(status, message, code=_CODES.get(status, "store_unavailable"), param=field)
    return Response(error_body("openai.chat", error), status, media_type="application/json")


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise TenancyError(400, f"{name} must be an integer, not {text!r}", name) from None


async def _create_org(tenancy: Tenancy, request: Request) -> Any:
    return await tenancy.create_org(decode_input(await request.body(), OrgInput))


async def _list_orgs(tenancy: Tenancy, request: Request) -> Any:
    return {"data": await tenancy.list_orgs()}


async def _create_project(tenancy: Tenancy, request: Request) -> Any:
    return await tenancy.create_project(decode_input(await request.body(), ProjectInput))


async def _list_projects(tenancy: Tenancy, request: Request) -> Any:
    return {"data": await tenancy.list_projects(request.query_params.get("org"))}


async def _update_project(tenancy: Tenancy, request: Request) -> Any:
    patch = decode_input(await request.body(), ProjectPatch)
    return await tenancy.update_project(request.path_params["id"], patch)


async def _create_key(tenancy: Tenancy, request: Request) -> Any:
    return await tenancy.create_key(decode_input(await request.body(), KeyInput))


async def _list_keys(tenancy: Tenancy, request: Request) -> Any:
    params = request.query_params
    return await tenancy.list_keys(
        project=params.get("project"),
        org=params.get("org"),
        after=params.get("after"),
        limit=_query_int(request, "limit", 1000),
    )


async def _get_key(tenancy: Tenancy, request: Request) -> Any:
    return await tenancy.get_key(request.path_params["id"])


async def _update_key(tenancy: Tenancy, request: Request) -> Any:
    patch = decode_input(await request.body(), KeyPatch)
    return await tenancy.update_key(request.path_params["id"], patch)


async def _revoke_key(tenancy: Tenancy, request: Request) -> Any:
    return await tenancy.revoke_key(request.path_params["id"])


async def _audit(tenancy: Tenancy, request: Request) -> Any:
    return {"data": await tenancy.audit(_query_int(request, "limit", 100))}
