"""Managed API keys: organizations, projects and keys kept in a store (``auth.store``) shared by
every process, behind the `KeyStore` protocol; the backends are in `keystore_stores.py`.

    store = open_key_store("sqlite", path="interlock.db")    # or ("postgres", url=...)
    await store.open()                                       # connects, applies the migrations
    await store.create_org(Org(id="acme", name="ACME"), actor="admin")
    await store.version()                                    # -> 1: bumped by every change
    await store.changes(0)                                   # -> (1, [every active key])

Both backends keep the same tables: ``orgs``, ``projects``, ``api_keys`` (never the key: its
salted hash and a non-secret prefix), ``key_audit`` (one row per change) and ``key_changes``, a
single-row counter bumped in the same transaction as every change. Each org, project and key
row carries the counter value of its last change (``seq``), so a process that saw version N
reads only what changed since: `changes(N)`. Writers take the counter's row lock first, so
changes are serialised and a reader that sees version N sees every change up to N.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import msgspec

COMPONENT = "keys"


class Org(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created: float = 0.0  # set by the store


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org: str
    name: str
    limits: tuple[str, ...] = ()  # limit policy names applied to every key of the project
    created: float = 0.0  # set by the store


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key to store: its salted hash and prefix, never the key itself."""

    id: str
    name: str
    project: str
    prefix: str
    hash: str  # "sha256:<salt>:<hex>"
    models: tuple[str, ...] | None = None  # globs; None: every model
    expires: float | None = None  # unix time
    limits: tuple[str, ...] = ()
    tags: Mapping[str, str] = msgspec.field(default_factory=dict)


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as read back, with its project's org and limit names."""

    id: str
    name: str
    project: str
    org: str
    prefix: str
    hash: str
    models: tuple[str, ...] | None
    expires: float | None
    limits: tuple[str, ...]
    project_limits: tuple[str, ...]
    tags: Mapping[str, str]
    created: float
    last_used: float | None
    revoked: float | None


class KeyChanges(msgspec.Struct, frozen=True, kw_only=True):
    """What a key update sets; fields left UNSET stay as they are."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    models: tuple[str, ...] | msgspec.UnsetType | None = msgspec.UNSET
    expires: float | msgspec.UnsetType | None = msgspec.UNSET
    limits: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET
    tags: Mapping[str, str] | msgspec.UnsetType = msgspec.UNSET


class ProjectChanges(msgspec.Struct, frozen=True, kw_only=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    limits: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    ts: float
    actor: str
    action: str  # org.create | project.create | project.update | key.create | key.update | ...
    subject: str  # the id of what changed
    detail: dict[str, Any]


class KeyStoreError(Exception):
    """A change the store refused. `reason` is ``not_found`` (an unknown org, project or key) or
    ``conflict`` (the id or prefix exists, or the key is revoked); `field` names the input."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


class KeyStore(Protocol):
    """Where managed keys live. Every backend passes `tests/test_keystore.py`.

    - `open` connects and applies the migrations (idempotent; processes may open it at once).
    - Every change (`create_*`, `update_*`, `revoke_key`) is one transaction that bumps
      `version` and writes one `audit` row naming `actor`; refusals raise `KeyStoreError`.
    - `changes(since)` is ``(version, keys)``: with ``since == 0`` every active key, else every
      key (revoked ones included) changed after version `since`, read in one snapshot.
    - `record_use` sets ``last_used`` (never backwards) without counting as a change.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def version(self) -> int: ...
    async def changes(self, since: int) -> tuple[int, list[StoredKey]]: ...
    async def create_org(self, org: Org, actor: str) -> Org: ...
    async def orgs(self) -> list[Org]: ...
    async def create_project(self, project: Project, actor: str) -> Project: ...
    async def update_project(self, id: str, changes: ProjectChanges, actor: str) -> Project: ...
    async def projects(self, org: str | None = None) -> list[Project]: ...
    async def create_key(self, key: NewKey, actor: str) -> StoredKey: ...
    async def update_key(self, id: str, changes: KeyChanges, actor: str) -> StoredKey: ...
    async def revoke_key(self, id: str, actor: str) -> StoredKey: ...
    async def key(self, id: str) -> StoredKey | None: ...
    async def keys(
        self,
        *,
        project: str | None = None,
        org: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[StoredKey]: ...
    async def existing_key_ids(self, ids: Collection[str]) -> set[str]: ...
    async def record_use(self, used: Mapping[str, float]) -> None: ...
    async def audit(self, limit: int = 100) -> list[AuditEntry]: ...


# --- schema ----------------------------------------------------------------------------------

SQLITE_STEPS = (
    """
    CREATE TABLE orgs (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, seq INTEGER NOT NULL
    );
    CREATE TABLE projects (
        id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs (id), name TEXT NOT NULL,
        limits TEXT NOT NULL, created REAL NOT NULL, seq INTEGER NOT NULL
    );
    CREATE INDEX projects_seq ON projects (seq);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL,
        project_id TEXT NOT NULL REFERENCES projects (id), hash TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE, models TEXT, expires REAL, limits TEXT NOT NULL,
        tags TEXT NOT NULL, created REAL NOT NULL, last_used REAL, revoked REAL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX api_keys_seq ON api_keys (seq);
    CREATE INDEX api_keys_project ON api_keys (project_id);
    CREATE TABLE key_audit (
        ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX key_audit_ts ON key_audit (ts);
    CREATE TABLE key_changes (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO key_changes (id, version) VALUES (1, 0);
    """,
)

POSTGRES_STEPS = (
    """
    CREATE TABLE orgs (
        id text COLLATE "C" PRIMARY KEY, name text NOT NULL, created double precision NOT NULL,
        seq bigint NOT NULL
    );
    CREATE TABLE projects (
        id text COLLATE "C" PRIMARY KEY, org_id text COLLATE "C" NOT NULL REFERENCES orgs (id),
        name text NOT NULL, limits text NOT NULL, created double precision NOT NULL,
        seq bigint NOT NULL
    );
    CREATE INDEX projects_seq ON projects (seq);
    CREATE TABLE api_keys (
        id text COLLATE "C" PRIMARY KEY, name text NOT NULL,
        project_id text COLLATE "C" NOT NULL REFERENCES projects (id), hash text NOT NULL,
        prefix text NOT NULL UNIQUE, models text, expires double precision,
        limits text NOT NULL, tags text NOT NULL, created double precision NOT NULL,
        last_used double precision, revoked double precision, seq bigint NOT NULL
    );
    CREATE INDEX api_keys_seq ON api_keys (seq);
    CREATE INDEX api_keys_project ON api_keys (project_id);
    CREATE TABLE key_audit (
        ts double precision NOT NULL, actor text NOT NULL, action text NOT NULL,
        subject text NOT NULL, detail text NOT NULL
    );
    CREATE INDEX key_audit_ts ON key_audit (ts);
    CREATE TABLE key_changes (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL);
    INSERT INTO key_changes (id, version) VALUES (1, 0);
    """,
)

# --- statements (``?`` placeholders; the PostgreSQL backend numbers them) -----------------------

_BUMP = "UPDATE key_changes SET version = version + 1 WHERE id = 1 RETURNING version"
_VERSION = "SELECT version FROM key_changes WHERE id = 1"
_AUDIT = "INSERT INTO key_audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)"
_ORG_COLUMNS = "id, name, created"
_PROJECT_COLUMNS = "id, org_id, name, limits, created"
_KEY_SELECT = (
    "SELECT k.id, k.name, k.project_id, p.org_id, k.prefix, k.hash, k.models, k.expires,"
    " k.limits, p.limits, k.tags, k.created, k.last_used, k.revoked"
    " FROM api_keys k JOIN projects p ON p.id = k.project_id"
)
# PERF: two halves instead of one OR, each on its index (keys by seq; projects by seq, then their
# keys by project): a refresh reads what changed, never every key. A key changed after `since`
# in a project also changed after it comes from the first half only.
_CHANGED_KEYS = (
    f"{_KEY_SELECT} WHERE k.seq > ? UNION ALL {_KEY_SELECT}"
    " WHERE k.project_id IN (SELECT id FROM projects WHERE seq > ?) AND k.seq <= ?"
)
_ACTIVE_KEYS = f"{_KEY_SELECT} WHERE k.revoked IS NULL"
_JSON_COLUMNS = frozenset({"models", "limits", "tags"})

_encode = msgspec.json.encode
_decode_names = msgspec.json.Decoder(tuple[str, ...]).decode
_decode_tags = msgspec.json.Decoder(dict[str, str]).decode
_decode_detail = msgspec.json.Decoder(dict[str, Any]).decode


def json_text(value: Any) -> str | None:
    """A JSON column's text; None stays NULL: ``json_text(("a",))`` -> ``'["a"]'``."""
    return None if value is None else _encode(value).decode()


class Tx(Protocol):
    """One transaction (or read snapshot) of a backend. Statements use ``?`` placeholders."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...
    async def execute(self, sql: str, *args: Any) -> int: ...  # rows affected
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class SqlKeyStore:
    """The `KeyStore` operations over SQL, written once for both backends: a backend provides
    `open`, `close` and the two contexts `_write` (a transaction holding the write lock) and
    `_read` (a consistent snapshot)."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _write(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        raise NotImplementedError

    def _read(self, snapshot: bool = True) -> contextlib.AbstractAsyncContextManager[Tx]:
        """Reads; with `snapshot`, all of them see one committed state."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[tuple[Tx, int]]:
        """A write transaction whose first statement bumps the counter (taking its row lock,
        which serialises writers); yields the transaction and the new version."""
        async with self._write() as tx:
            rows = await tx.fetch(_BUMP)
            yield tx, int(rows[0][0])

    async def version(self) -> int:
        async with self._read(snapshot=False) as tx:
            return int((await tx.fetch(_VERSION))[0][0])

    async def changes(self, since: int) -> tuple[int, list[StoredKey]]:
        async with self._read() as tx:
            version = int((await tx.fetch(_VERSION))[0][0])
            if since <= 0:
                rows = await tx.fetch(_ACTIVE_KEYS)
            elif since >= version:
                rows = []
            else:
                rows = await tx.fetch(_CHANGED_KEYS, since, since, since)
        return version, _keys_of(rows)

    # --- orgs and projects

    async def create_org(self, org: Org, actor: str) -> Org:
        now = time.time()
        async with self._change() as (tx, seq):
            if await tx.fetch("SELECT 1 FROM orgs WHERE id = ?", org.id):
                raise KeyStoreError("conflict", f"org '{org.id}' exists", "id")
            await tx.execute(
                "INSERT INTO orgs (id, name, created, seq) VALUES (?, ?, ?, ?)",
                org.id,
                org.name,
                now,
                seq,
            )
            await _audit(tx, now, actor, "org.create", org.id, {"name": org.name})
        return msgspec.structs.replace(org, created=now)

    async def orgs(self) -> list[Org]:
        async with self._read() as tx:
            rows = await tx.fetch(f"SELECT {_ORG_COLUMNS} FROM orgs ORDER BY id")
        return [Org(id=r[0], name=r[1], created=r[2]) for r in rows]

    async def create_project(self, project: Project, actor: str) -> Project:
        now = time.time()
        async with self._change() as (tx, seq):
            if not await tx.fetch("SELECT 1 FROM orgs WHERE id = ?", project.org):
                raise KeyStoreError("not_found", f"no org '{project.org}'", "org")
            if await tx.fetch("SELECT 1 FROM projects WHERE id = ?", project.id):
                raise KeyStoreError("conflict", f"project '{project.id}' exists", "id")
            await tx.execute(
                "INSERT INTO projects (id, org_id, name, limits, created, seq)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                project.id,
                project.org,
                project.name,
                json_text(project.limits),
                now,
                seq,
            )
            detail = {"org": project.org, "name": project.name, "limits": project.limits}
            await _audit(tx, now, actor, "project.create", project.id, detail)
        return msgspec.structs.replace(project, created=now)

    async def update_project(self, id: str, changes: ProjectChanges, actor: str) -> Project:
        now = time.time()
        values = _set_fields(changes)
        async with self._change() as (tx, seq):
            if not await tx.fetch("SELECT 1 FROM projects WHERE id = ?", id):
                raise KeyStoreError("not_found", f"no project '{id}'", "id")
            if values:
                assignments = ", ".join(f"{name} = ?" for name in values)
                await tx.execute(
                    f"UPDATE projects SET {assignments}, seq = ? WHERE id = ?",
                    *(_column(name, v) for name, v in values.items()),
                    seq,
                    id,
                )
            await _audit(tx, now, actor, "project.update", id, values)
            rows = await tx.fetch(f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?", id)
        return _project_of(rows[0])

    async def projects(self, org: str | None = None) -> list[Project]:
        sql = f"SELECT {_PROJECT_COLUMNS} FROM projects"
        async with self._read() as tx:
            if org is None:
                rows = await tx.fetch(sql + " ORDER BY id")
            else:
                rows = await tx.fetch(sql + " WHERE org_id = ? ORDER BY id", org)
        return [_project_of(r) for r in rows]

    # --- keys

    async def create_key(self, key: NewKey, actor: str) -> StoredKey:
        now = time.time()
        async with self._change() as (tx, seq):
            if not await tx.fetch("SELECT 1 FROM projects WHERE id = ?", key.project):
                raise KeyStoreError("not_found", f"no project '{key.project}'", "project")
            if await tx.fetch("SELECT 1 FROM api_keys WHERE id = ?", key.id):
                raise KeyStoreError("conflict", f"key '{key.id}' exists", "id")
            if await tx.fetch("SELECT 1 FROM api_keys WHERE prefix = ?", key.prefix):
                raise KeyStoreError("conflict", f"prefix '{key.prefix}' is taken", "prefix")
            await tx.execute(
                "INSERT INTO api_keys (id, name, project_id, hash, prefix, models, expires,"
                " limits, tags, created, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                key.id,
                key.name,
                key.project,
                key.hash,
                key.prefix,
                json_text(key.models),
                key.expires,
                json_text(key.limits),
                json_text(key.tags),
                now,
                seq,
            )
            detail = msgspec.structs.asdict(key)
            del detail["hash"]  # SECURITY: the audit never holds the hash either
            await _audit(tx, now, actor, "key.create", key.id, detail)
            return await _one_key(tx, key.id)

    async def update_key(self, id: str, changes: KeyChanges, actor: str) -> StoredKey:
        now = time.time()
        values = _set_fields(changes)
        async with self._change() as (tx, seq):
            current = await _find_key(tx, id)
            if current.revoked is not None:
                raise KeyStoreError("conflict", f"key '{id}' is revoked", "id")
            if values:
                assignments = ", ".join(f"{name} = ?" for name in values)
                await tx.execute(
                    f"UPDATE api_keys SET {assignments}, seq = ? WHERE id = ?",
                    *(_column(name, v) for name, v in values.items()),
                    seq,
                    id,
                )
            await _audit(tx, now, actor, "key.update", id, values)
            return await _one_key(tx, id)

    async def revoke_key(self, id: str, actor: str) -> StoredKey:
        """Revoke `id`; revoking a revoked key changes nothing and returns it as it is."""
        now = time.time()
        async with self._change() as (tx, seq):
            current = await _find_key(tx, id)
            if current.revoked is not None:
                return current
            await tx.execute("UPDATE api_keys SET revoked = ?, seq = ? WHERE id = ?", now, seq, id)
            await _audit(tx, now, actor, "key.revoke", id, {"prefix": current.prefix})
            return await _one_key(tx, id)

    async def key(self, id: str) -> StoredKey | None:
        async with self._read() as tx:
            rows = await tx.fetch(f"{_KEY_SELECT} WHERE k.id = ?", id)
        return _key_of(rows[0]) if rows else None

    async def keys(
        self,
        *,
        project: str | None = None,
        org: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[StoredKey]:
        where: list[str] = []
        args: list[Any] = []
        for condition, value in (("k.project_id = ?", project), ("p.org_id = ?", org)):
            if value is not None:
                where.append(condition)
                args.append(value)
        if after is not None:
            where.append("k.id > ?")
            args.append(after)
        sql = _KEY_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY k.id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        async with self._read() as tx:
            rows = await tx.fetch(sql, *args)
        return _keys_of(rows)

    async def existing_key_ids(self, ids: Collection[str]) -> set[str]:
        found: set[str] = set()
        wanted = sorted(set(ids))
        async with self._read() as tx:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                rows = await tx.fetch(f"SELECT id FROM api_keys WHERE id IN ({marks})", *chunk)
                found.update(str(r[0]) for r in rows)
        return found

    async def record_use(self, used: Mapping[str, float]) -> None:
        if not used:
            return
        rows = [(at, id, at) for id, at in sorted(used.items())]
        async with self._write() as tx:
            await tx.executemany(
                "UPDATE api_keys SET last_used = ? WHERE id = ?"
                " AND (last_used IS NULL OR last_used < ?)",
                rows,
            )

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        async with self._read() as tx:
            rows = await tx.fetch(
                "SELECT ts, actor, action, subject, detail FROM key_audit ORDER BY ts DESC LIMIT ?",
                limit,
            )
        return [
            AuditEntry(ts=r[0], actor=r[1], action=r[2], subject=r[3], detail=_decode_detail(r[4]))
            for r in rows
        ]


async def _audit(
    tx: Tx, ts: float, actor: str, action: str, subject: str, detail: Mapping[str, Any]
) -> None:
    await tx.execute(_AUDIT, ts, actor, action, subject, json_text(detail))


async def _find_key(tx: Tx, id: str) -> StoredKey:
    rows = await tx.fetch(f"{_KEY_SELECT} WHERE k.id = ?", id)
    if not rows:
        raise KeyStoreError("not_found", f"no key '{id}'", "id")
    return _key_of(rows[0])


async def _one_key(tx: Tx, id: str) -> StoredKey:
    return _key_of((await tx.fetch(f"{_KEY_SELECT} WHERE k.id = ?", id))[0])


def _set_fields(changes: msgspec.Struct) -> dict[str, Any]:
    """The fields of `changes` that are set, by column name (only whitelisted names reach SQL)."""
    out = {}
    for name in changes.__struct_fields__:
        value = getattr(changes, name)
        if value is not msgspec.UNSET:
            out[name] = value
    return out


def _column(name: str, value: Any) -> Any:
    return json_text(value) if name in _JSON_COLUMNS else value


def _project_of(row: Sequence[Any]) -> Project:
    return Project(id=row[0], org=row[1], name=row[2], limits=_decode_names(row[3]), created=row[4])


def _key_of(row: Sequence[Any]) -> StoredKey:
    return _keys_of([row])[0]


def _keys_of(rows: Sequence[Sequence[Any]]) -> list[StoredKey]:
    """`StoredKey`s of rows of `_KEY_SELECT`. PERF: the JSON columns repeat (a project's limits,
    empty lists and tags), so each distinct text is decoded once per read and the (immutable)
    result shared: a full read of 100,000 keys allocates and collects far less."""
    names: dict[str, tuple[str, ...]] = {}
    tags: dict[str, Mapping[str, str]] = {}

    def names_of(text: str) -> tuple[str, ...]:
        found = names.get(text)
        if found is None:
            found = names[text] = _decode_names(text)
        return found

    def tags_of(text: str) -> Mapping[str, str]:
        found = tags.get(text)
        if found is None:
            found = tags[text] = MappingProxyType(_decode_tags(text))
        return found

    return [
        StoredKey(
            id=row[0],
            name=row[1],
            project=row[2],
            org=row[3],
            prefix=row[4],
            hash=row[5],
            models=None if row[6] is None else names_of(row[6]),
            expires=row[7],
            limits=names_of(row[8]),
            project_limits=names_of(row[9]),
            tags=tags_of(row[10]),
            created=row[11],
            last_used=row[12],
            revoked=row[13],
        )
        for row in rows
    ]
