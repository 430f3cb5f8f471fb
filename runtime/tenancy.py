"""Organizations, projects and managed keys: the operations the admin API and the CLI share.

Input is decoded into strict Structs (unknown fields and wrong types are refused, naming the
field), checked against the serving table (limit policy names, the ids of the config's keys) and
written to the `KeyStore`; what comes back is plain JSON-ready data, never a key's hash, and the
key itself only in the answer to its creation::

    tenancy = Tenancy(store, table, actor="admin")
    await tenancy.create_key(decode_input(b'{"project": "web", "name": "ci"}', KeyInput))
    -> {"id": "key-1a2b3c4d", "key": "il-1a2b3c4d-…", "prefix": "1a2b3c4d", "project": "web", ...}

Refusals raise `TenancyError` with an HTTP status: 400 bad input, 404 unknown org / project /
key, 409 an id in use (or a revoked key changed), 422 a limit policy the config does not define.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec

from compiler.diagnostics import did_you_mean
from compiler.table import RouteTable
from runtime.keys import new_key
from runtime.state.keystore import (
    KeyChanges,
    KeyStore,
    KeyStoreError,
    NewKey,
    Org,
    Project,
    ProjectChanges,
    StoredKey,
)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ID_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_MAX_NAME = 200
_MAX_LIST = 10_000
_PREFIX_TRIES = 5
_STATUS = {"not_found": 404, "conflict": 409}
_T = TypeVar("_T")


class TenancyError(Exception):
    """A refused request: `status` is the HTTP status, `field` the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class OrgInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str | None = None  # default: the id


class ProjectInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    org: str
    name: str | None = None  # default: the id
    limits: list[str] = msgspec.field(default_factory=list)


class ProjectPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    limits: list[str] | msgspec.UnsetType = msgspec.UNSET


class KeyInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    project: str
    name: str
    id: str | None = None  # default: key-<prefix>
    models: list[str] | None = None  # globs; None: every model
    expires: str | None = None  # RFC 3339 time or a day (its start, UTC)
    limits: list[str] = msgspec.field(default_factory=list)
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class KeyPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    models: list[str] | msgspec.UnsetType | None = msgspec.UNSET
    expires: str | msgspec.UnsetType | None = msgspec.UNSET
    limits: list[str] | msgspec.UnsetType = msgspec.UNSET
    tags: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


_FIELD_AT = re.compile(r"at `\$\.?([^`\[]*)")
_FIELD_NAMED = re.compile(r"field `([^`]+)`")


def decode_input(body: bytes, kind: type[_T]) -> _T:
    """`body` as a `kind`; TenancyError 400 naming the field for malformed JSON, an unknown or
    missing field, or a wrong type: ``decode_input(b'{"name": 1}', KeyPatch)`` raises
    ``TenancyError(400, "invalid request body: Expected `str`, got `int` - at `$.name`",
    field="name")``."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _FIELD_AT.search(text) or _FIELD_NAMED.search(text)
        field = found.group(1) if found and found.group(1) else None
        raise TenancyError(400, f"invalid request body: {text}", field) from None
    except msgspec.DecodeError as exc:
        raise TenancyError(400, f"malformed JSON: {exc}") from None


class Tenancy:
    """The operations on `store`, checked against `table` (the serving config), recorded in the
    audit as done by `actor`."""

    def __init__(self, store: KeyStore, table: RouteTable, actor: str) -> None:
        self.store = store
        self.table = table
        self.actor = actor

    # --- orgs and projects

    async def create_org(self, data: OrgInput) -> dict[str, Any]:
        org = Org(id=_id(data.id, "id"), name=_name(data.name or data.id, "name"))
        return org_view(await self._call(self.store.create_org(org, self.actor)))

    async def list_orgs(self) -> list[dict[str, Any]]:
        return [org_view(org) for org in await self.store.orgs()]

    async def create_project(self, data: ProjectInput) -> dict[str, Any]:
        project = Project(
            id=_id(data.id, "id"),
            org=_id(data.org, "org"),
            name=_name(data.name or data.id, "name"),
            limits=self._limits(data.limits),
        )
        return project_view(await self._call(self.store.create_project(project, self.actor)))

    async def update_project(self, id: str, patch: ProjectPatch) -> dict[str, Any]:
        changes = ProjectChanges(
            name=_name(patch.name, "name") if patch.name is not msgspec.UNSET else msgspec.UNSET,
            limits=self._limits(patch.limits)
            if patch.limits is not msgspec.UNSET
            else msgspec.UNSET,
        )
        return project_view(await self._call(self.store.update_project(id, changes, self.actor)))

    async def list_projects(self, org: str | None = None) -> list[dict[str, Any]]:
        return [project_view(p) for p in await self.store.projects(org)]

    # --- keys

    async def create_key(self, data: KeyInput) -> dict[str, Any]:
        """The new key's view with the key itself under ``"key"``: the only time it is shown."""
        key_id = _id(data.id, "id") if data.id is not None else None
        template = NewKey(
            id="",
            name=_name(data.name, "name"),
            project=_id(data.project, "project"),
            prefix="",
            hash="",
            models=_models(data.models),
            expires=_expiry(data.expires, time.time()),
            limits=self._limits(data.limits),
            tags=_tags(data.tags),
        )
        if key_id is not None:
            self._check_not_git(key_id)
        for _ in range(_PREFIX_TRIES):
            secret, prefix, hashed = new_key()
            new = msgspec.structs.replace(
                template, id=key_id or f"key-{prefix}", prefix=prefix, hash=hashed
            )
            if key_id is None and self._is_git(new.id):
                continue
            try:
                stored = await self.store.create_key(new, self.actor)
            except KeyStoreError as exc:
                if exc.field == "prefix" or (key_id is None and exc.field == "id"):
                    continue  # NOTE: 32 random bits met an existing prefix: draw again
                raise _refusal(exc) from None
            return {"id": stored.id, "key": secret, **key_view(stored)}
        raise TenancyError(409, f"no free prefix in {_PREFIX_TRIES} draws; try again", "prefix")

    async def get_key(self, id: str) -> dict[str, Any]:
        stored = await self.store.key(id)
        if stored is None:
            raise TenancyError(404, f"no key '{id}'", "id")
        return key_view(stored)

    async def list_keys(
        self,
        *,
        project: str | None = None,
        org: str | None = None,
        after: str | None = None,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """``{"data": [key views, by id], "next": <the `after` of the next page> or None}``."""
        if not 1 <= limit <= _MAX_LIST:
            raise TenancyError(400, f"limit must be between 1 and {_MAX_LIST}", "limit")
        keys = await self.store.keys(project=project, org=org, after=after, limit=limit)
        return {
            "data": [key_view(k) for k in keys],
            "next": keys[-1].id if len(keys) == limit else None,
        }

    async def update_key(self, id: str, patch: KeyPatch) -> dict[str, Any]:
        unset = msgspec.UNSET
        changes = KeyChanges(
            name=_name(patch.name, "name") if patch.name is not unset else unset,
            models=_models(patch.models) if patch.models is not unset else unset,
            expires=_expiry(patch.expires, time.time()) if patch.expires is not unset else unset,
            limits=self._limits(patch.limits) if patch.limits is not unset else unset,
            tags=_tags(patch.tags) if patch.tags is not unset else unset,
        )
        return key_view(await self._call(self.store.update_key(id, changes, self.actor)))

    async def revoke_key(self, id: str) -> dict[str, Any]:
        return key_view(await self._call(self.store.revoke_key(id, self.actor)))

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        if not 1 <= limit <= _MAX_LIST:
            raise TenancyError(400, f"limit must be between 1 and {_MAX_LIST}", "limit")
        entries = await self.store.audit(limit)
        return [{**msgspec.structs.asdict(e), "ts": iso_time(e.ts)} for e in entries]

    # --- checks against the serving table

    def _limits(self, names: list[str]) -> tuple[str, ...]:
        defined = self.table.limits.policies
        for name in names:
            if name not in defined:
                hint = did_you_mean(name, defined)
                known = ", ".join(sorted(defined)) or "none"
                raise TenancyError(
                    422,
                    f"unknown limit policy '{name}'"
                    + (f" ({hint})" if hint else f" (defined: {known})"),
                    "limits",
                )
        return tuple(dict.fromkeys(names))

    def _is_git(self, key_id: str) -> bool:
        return any(key.id == key_id for key in self.table.auth.keys)

    def _check_not_git(self, key_id: str) -> None:
        if self._is_git(key_id):
            raise TenancyError(
                409, f"'{key_id}' is the id of a key in the config (auth.keys)", "id"
            )

    async def _call(self, work: Awaitable[_T]) -> _T:
        try:
            return await work
        except KeyStoreError as exc:
            raise _refusal(exc) from None


def _refusal(exc: KeyStoreError) -> TenancyError:
    return TenancyError(_STATUS.get(exc.reason, 409), exc.message, exc.field)


def _id(value: str, field: str) -> str:
    if not _ID.fullmatch(value):
        raise TenancyError(400, f"{field} {value!r} is not an id: {_ID_RULE}", field)
    return value


def _name(value: str, field: str) -> str:
    if not value.strip() or len(value) > _MAX_NAME:
        raise TenancyError(400, f"{field} must be 1-{_MAX_NAME} characters", field)
    return value


def _models(globs: list[str] | None) -> tuple[str, ...] | None:
    if globs is None:
        return None
    if not globs or any(not g.strip() for g in globs):
        raise TenancyError(
            400,
            "models lists model names or globs (at least one, none empty); leave it out or"
            " null for every model",
            "models",
        )
    return tuple(dict.fromkeys(globs))


def _tags(tags: dict[str, str]) -> dict[str, str]:
    if any(not name for name in tags):
        raise TenancyError(400, "tag names must not be empty", "tags")
    return dict(sorted(tags.items()))


def _expiry(text: str | None, now: float) -> float | None:
    """``"2027-01-31"`` / ``"2027-01-31T00:00:00Z"`` -> unix time (UTC unless an offset is
    given); None stays None (never expires). A time already past is refused."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise TenancyError(
            400, f"expires {text!r} is not a time (2027-01-31T00:00:00Z or 2027-01-31)", "expires"
        ) from None
    ts = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if ts <= now:
        raise TenancyError(400, f"expires {text!r} is in the past", "expires")
    return ts


def iso_time(ts: float | None) -> str | None:
    """``iso_time(0.0)`` -> ``"1970-01-01T00:00:00Z"``."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def org_view(org: Org) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "created": iso_time(org.created)}


def project_view(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "org": project.org,
        "name": project.name,
        "limits": list(project.limits),
        "created": iso_time(project.created),
    }


def key_view(key: StoredKey, now: float | None = None) -> dict[str, Any]:
    """What may be shown of a stored key: never the key, never its hash."""
    now = time.time() if now is None else now
    if key.revoked is not None:
        status = "revoked"
    elif key.expires is not None and key.expires <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "project": key.project,
        "org": key.org,
        "status": status,
        "models": list(key.models) if key.models is not None else None,
        "expires": iso_time(key.expires),
        "limits": list(key.limits),
        "project_limits": list(key.project_limits),
        "tags": dict(key.tags),
        "created": iso_time(key.created),
        "last_used": iso_time(key.last_used),
        "revoked": iso_time(key.revoked),
    }
