"""The `KeyStore` contract (runtime/state/keystore.py), one suite run against every backend:
SQLite in tmp_path and PostgreSQL in a schema of its own (tests/pg.py). A backend that passes is
interchangeable with the other."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.state.keystore import (
    KeyChanges,
    KeyStore,
    KeyStoreError,
    NewKey,
    Org,
    Project,
    ProjectChanges,
)
from runtime.state.keystore_stores import numbered, open_key_store


@dataclasses.dataclass(frozen=True)
class Backend:
    kind: str
    where: str  # the path or the url

    def store(self) -> KeyStore:
        if self.kind == "sqlite":
            return open_key_store("sqlite", path=self.where)
        return open_key_store("postgres", url=self.where)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "keys.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


@contextlib.asynccontextmanager
async def opened(store: KeyStore) -> AsyncIterator[KeyStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def run(backend: Backend, test: Callable[[KeyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opened(backend.store()) as store:
            await test(store)

    asyncio.run(main())


def new_key(n: int, project: str = "web", **fields: Any) -> NewKey:
    base: dict[str, Any] = {
        "id": f"k{n:03d}",
        "name": f"key {n}",
        "project": project,
        "prefix": f"{n:08x}",
        "hash": f"sha256:salt{n}:{n:064x}",
    }
    return NewKey(**(base | fields))


async def tenants(store: KeyStore) -> None:
    """acme (projects web with limit 'pro', batch) and globex (project support)."""
    await store.create_org(Org(id="acme", name="ACME"), "test")
    await store.create_org(Org(id="globex", name="Globex"), "test")
    await store.create_project(Project(id="web", org="acme", name="Web", limits=("pro",)), "t")
    await store.create_project(Project(id="batch", org="acme", name="Batch"), "test")
    await store.create_project(Project(id="support", org="globex", name="Support"), "test")


async def expect_refusal(work: Awaitable[Any], reason: str, field: str) -> None:
    with pytest.raises(KeyStoreError) as caught:
        await work
    assert (caught.value.reason, caught.value.field) == (reason, field)


# --- the contract -------------------------------------------------------------------------------


def test_a_new_store_is_empty_at_version_zero_and_opens_again(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        assert await store.version() == 0
        assert await store.changes(0) == (0, [])
        assert await store.orgs() == [] and await store.projects() == []
        assert await store.keys() == [] and await store.audit() == []

    run(backend, test)
    run(backend, test)  # NOTE: the migrations are applied once


def test_two_stores_opening_one_database_at_once_both_work(backend: Backend) -> None:
    async def main() -> None:
        stores = [backend.store() for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            await stores[0].create_org(Org(id="acme", name="ACME"), "a")
            assert [o.id for o in await stores[3].orgs()] == ["acme"]
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(main())


def test_orgs_projects_and_keys_read_back_as_written(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        key = new_key(
            1,
            name="Wéb app ✓",
            models=("gpt-4o*", "claude-haiku"),
            expires=1_900_000_000.5,
            limits=("per-key",),
            tags={"tier": "pro", "team": "ml"},
        )
        stored = await store.create_key(key, "admin")
        assert stored.created > 0 and stored.last_used is None and stored.revoked is None
        assert (stored.id, stored.name, stored.project, stored.org) == (
            "k001",
            "Wéb app ✓",
            "web",
            "acme",
        )
        assert (stored.prefix, stored.hash) == (key.prefix, key.hash)
        assert stored.models == ("gpt-4o*", "claude-haiku")
        assert stored.expires == 1_900_000_000.5
        assert stored.limits == ("per-key",) and stored.project_limits == ("pro",)
        assert dict(stored.tags) == {"tier": "pro", "team": "ml"}
        assert await store.key("k001") == stored
        assert await store.key("nope") is None
        assert [(o.id, o.name) for o in await store.orgs()] == [
            ("acme", "ACME"),
            ("globex", "Globex"),
        ]
        assert [(p.id, p.org, p.limits) for p in await store.projects()] == [
            ("batch", "acme", ()),
            ("support", "globex", ()),
            ("web", "acme", ("pro",)),
        ]
        assert [p.id for p in await store.projects("globex")] == ["support"]

    run(backend, test)


def test_every_change_bumps_the_version_once_and_is_audited(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        assert await store.version() == 5
        await store.create_key(new_key(1), "admin")
        await store.update_key("k001", KeyChanges(name="renamed"), "cli:ops")
        await store.update_project("web", ProjectChanges(limits=("pro", "extra")), "admin")
        await store.revoke_key("k001", "admin")
        assert await store.version() == 9
        entries = await store.audit(limit=4)
        assert [(e.action, e.subject, e.actor) for e in entries] == [
            ("key.revoke", "k001", "admin"),
            ("project.update", "web", "admin"),
            ("key.update", "k001", "cli:ops"),
            ("key.create", "k001", "admin"),
        ]
        assert entries[1].detail == {"limits": ["pro", "extra"]}
        assert entries[2].detail == {"name": "renamed"}
        assert entries[3].detail["prefix"] == "00000001"
        assert all("hash" not in e.detail for e in await store.audit())
        assert len(await store.audit(limit=100)) == 9

    run(backend, test)


def test_refusals_name_the_field_and_change_nothing(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1), "a")
        version = await store.version()
        await expect_refusal(store.create_org(Org(id="acme", name="x"), "a"), "conflict", "id")
        await expect_refusal(
            store.create_project(Project(id="p", org="initech", name="p"), "a"), "not_found", "org"
        )
        await expect_refusal(
            store.create_project(Project(id="web", org="acme", name="p"), "a"), "conflict", "id"
        )
        await expect_refusal(store.create_key(new_key(2, "nope"), "a"), "not_found", "project")
        await expect_refusal(store.create_key(new_key(1), "a"), "conflict", "id")
        twin = new_key(2, prefix=new_key(1).prefix)
        await expect_refusal(store.create_key(twin, "a"), "conflict", "prefix")
        await expect_refusal(store.update_key("nope", KeyChanges(), "a"), "not_found", "id")
        await expect_refusal(store.revoke_key("nope", "a"), "not_found", "id")
        await expect_refusal(
            store.update_project("nope", ProjectChanges(name="x"), "a"), "not_found", "id"
        )
        assert await store.version() == version
        assert len(await store.audit()) == 6
        await store.revoke_key("k001", "a")
        await expect_refusal(store.update_key("k001", KeyChanges(name="x"), "a"), "conflict", "id")

    run(backend, test)


def test_updates_set_only_what_is_given(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1, models=("a",), expires=2e9, tags={"x": "1"}), "a")
        updated = await store.update_key("k001", KeyChanges(models=None, limits=("l",)), "a")
        assert updated.models is None and updated.limits == ("l",)
        assert updated.expires == 2e9 and dict(updated.tags) == {"x": "1"}
        assert updated.name == "key 1"
        updated = await store.update_key("k001", KeyChanges(expires=None, tags={}), "a")
        assert updated.expires is None and dict(updated.tags) == {}
        project = await store.update_project("web", ProjectChanges(name="Web 2"), "a")
        assert (project.name, project.limits) == ("Web 2", ("pro",))

    run(backend, test)


def test_revoking_twice_keeps_the_first_time(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1), "a")
        first = await store.revoke_key("k001", "a")
        again = await store.revoke_key("k001", "a")
        assert first.revoked is not None and again.revoked == first.revoked
        assert [e.action for e in await store.audit()].count("key.revoke") == 1

    run(backend, test)


def test_changes_are_what_changed_since_a_version(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        for n in range(1, 4):
            await store.create_key(new_key(n, "batch" if n == 3 else "web"), "a")
        version, active = await store.changes(0)
        assert version == 8 and [k.id for k in active] == ["k001", "k002", "k003"]
        assert await store.changes(8) == (8, [])
        await store.revoke_key("k001", "a")
        version, changed = await store.changes(8)
        assert version == 9 and [(k.id, k.revoked is not None) for k in changed] == [("k001", True)]
        assert [k.id for k in (await store.changes(0))[1]] == ["k002", "k003"]  # active only
        await store.update_project("web", ProjectChanges(limits=("gold",)), "a")
        version, changed = await store.changes(9)
        assert version == 10
        assert sorted((k.id, k.project_limits) for k in changed) == [
            ("k001", ("gold",)),
            ("k002", ("gold",)),
        ]
        await store.update_key("k002", KeyChanges(name="x"), "a")
        version, changed = await store.changes(9)  # NOTE: each key once, though both changed
        assert version == 11 and sorted(k.id for k in changed) == ["k001", "k002"]
        assert await store.changes(99) == (11, [])  # a store newer than the reader: nothing

    run(backend, test)


def test_keys_are_listed_by_id_filtered_and_paged(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        for n, project in enumerate(("web", "batch", "support", "web", "support"), start=1):
            await store.create_key(new_key(n, project), "a")
        assert [k.id for k in await store.keys()] == ["k001", "k002", "k003", "k004", "k005"]
        assert [k.id for k in await store.keys(project="web")] == ["k001", "k004"]
        assert [k.id for k in await store.keys(org="globex")] == ["k003", "k005"]
        assert [k.id for k in await store.keys(org="acme", project="batch")] == ["k002"]
        assert [k.id for k in await store.keys(limit=2)] == ["k001", "k002"]
        assert [k.id for k in await store.keys(after="k002", limit=2)] == ["k003", "k004"]
        assert await store.keys(after="k005") == []

    run(backend, test)


def test_last_use_moves_forward_only_and_is_no_change(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1), "a")
        await store.create_key(new_key(2), "a")
        version = await store.version()
        await store.record_use({"k001": 1000.0, "k002": 2000.0, "gone": 5.0})
        await store.record_use({"k001": 900.0})  # NOTE: another process, an older time
        await store.record_use({})
        assert {k.id: k.last_used for k in await store.keys()} == {"k001": 1000.0, "k002": 2000.0}
        assert await store.version() == version
        assert len(await store.audit()) == 7

    run(backend, test)


def test_existing_key_ids_answers_for_many_ids(backend: Backend) -> None:
    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1), "a")
        await store.create_key(new_key(2), "a")
        await store.revoke_key("k002", "a")
        asked = [f"x{n}" for n in range(1200)] + ["k001", "k002"]
        assert await store.existing_key_ids(asked) == {"k001", "k002"}  # revoked ids count
        assert await store.existing_key_ids([]) == set()

    run(backend, test)


def test_concurrent_writers_through_two_stores_are_serialised(backend: Backend) -> None:
    async def main() -> None:
        async with opened(backend.store()) as one, opened(backend.store()) as two:
            await tenants(one)
            await asyncio.gather(
                *(
                    (one if n % 2 else two).create_key(new_key(n, "web"), f"writer{n % 2}")
                    for n in range(1, 31)
                )
            )
            assert await one.version() == 35 and await two.version() == 35
            version, changed = await two.changes(5)
            assert version == 35 and len({k.id for k in changed}) == 30
            await one.revoke_key("k007", "a")
            version, changed = await two.changes(35)
            assert version == 36 and [k.id for k in changed] == ["k007"]

    asyncio.run(main())


def test_the_store_holds_hashes_and_prefixes_never_keys(tmp_path: Path) -> None:
    """Nothing but what it is given: the plaintext of a key never reaches a store."""
    path = tmp_path / "keys.db"
    backend = Backend("sqlite", str(path))

    async def test(store: KeyStore) -> None:
        await tenants(store)
        await store.create_key(new_key(1, hash="sha256:s:" + "ab" * 32), "a")

    run(backend, test)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"orgs", "projects", "api_keys", "key_audit", "key_changes"} <= tables
        (hashed, prefix), *_ = conn.execute("SELECT hash, prefix FROM api_keys").fetchall()
    finally:
        conn.close()
    assert (hashed, prefix) == ("sha256:s:" + "ab" * 32, "00000001")


def test_placeholders_are_numbered_for_postgres() -> None:
    assert numbered("a = ? AND b IN (?, ?)") == "a = $1 AND b IN ($2, $3)"
    assert numbered("SELECT 1") == "SELECT 1"


def test_unknown_kinds_and_missing_places_are_refused() -> None:
    with pytest.raises(ValueError, match="redis"):
        open_key_store("redis", url="redis://x")
    with pytest.raises(ValueError, match="path"):
        open_key_store("sqlite")
    with pytest.raises(ValueError, match="url"):
        open_key_store("postgres")
