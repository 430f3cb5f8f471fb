"""Managed keys in one process, no server: `LiveKeys` (lookup by prefix, refresh, expiry, last
use, a store that fails), the `KeyRing` that consults them, and the checks the admin API and the
CLI share (`Tenancy`). End to end over loopback: tests/test_managed_keys.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import runtime.tenancy
from compiler.table import AuthSettings, StoreSettings
from runtime.auth import KeyRing
from runtime.errors import GatewayError
from runtime.keys import LiveKeys, ManagedKeys, new_key
from runtime.snapshot import SnapshotError, prepare_snapshot
from runtime.state.keystore import KeyChanges, KeyStore, NewKey, Org, Project, StoredKey
from runtime.state.keystore_stores import open_key_store
from runtime.tenancy import (
    KeyInput,
    KeyPatch,
    OrgInput,
    ProjectInput,
    Tenancy,
    TenancyError,
    decode_input,
)
from tests.served import compile_yaml

GIT_KEY = "il-git-service-key"
_SALT = "00112233aabbccdd"
GIT_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + GIT_KEY).encode()).hexdigest()}"
CONFIG = f"""
version: 1
upstreams: {{mock: {{kind: mock}}}}
models: {{gpt-4o: {{targets: [{{upstream: mock}}]}}}}
auth:
  required: true
  keys: [{{id: ops, hash: "{GIT_HASH}", org: acme, project: ops}}]
  store: {{kind: sqlite, path: unused.db}}
limits:
  policies:
    plan-pro: {{scope: project, rpm: 100}}
    per-key: {{scope: key, rpm: 10}}
"""


class Spy:
    """A store that records the `changes` calls and can be made to fail."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.since: list[int] = []
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        if self.failing and name in ("version", "changes", "record_use"):
            raise ConnectionError("store is down")
        return getattr(self.store, name)

    async def changes(self, since: int) -> tuple[int, list[StoredKey]]:
        if self.failing:
            raise ConnectionError("store is down")
        self.since.append(since)
        return await self.store.changes(since)


def with_store(tmp_path: Path, test: Callable[[KeyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_key_store("sqlite", path=str(tmp_path / "keys.db"))
        await store.open()
        try:
            await store.create_org(Org(id="acme", name="ACME"), "t")
            await store.create_project(
                Project(id="web", org="acme", name="Web", limits=("plan-pro",)), "t"
            )
            await test(store)
        finally:
            await store.close()

    asyncio.run(main())


async def make_key(store: KeyStore, key_id: str, **fields: Any) -> str:
    secret, prefix, hashed = new_key()
    new = NewKey(id=key_id, name=key_id, project="web", prefix=prefix, hash=hashed, **fields)
    await store.create_key(new, "t")
    return secret


def ring_with(live: LiveKeys, config: str = CONFIG) -> KeyRing:
    ring = KeyRing(compile_yaml(config).auth)
    ring.live = live
    return ring


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- key material ----------------------------------------------------------------------------


def test_new_keys_carry_their_prefix_and_only_their_hash_is_kept() -> None:
    key, prefix, hashed = new_key()
    assert key.startswith(f"il-{prefix}-") and len(key) > 50
    assert len(prefix) == 8 and int(prefix, 16) >= 0
    _, salt, digest = hashed.split(":")
    assert hashlib.sha256((salt + key).encode()).hexdigest() == digest
    assert key not in hashed
    assert len({new_key()[0] for _ in range(100)}) == 100


# --- LiveKeys and the key ring ---------------------------------------------------------------


def test_a_managed_key_is_found_by_prefix_with_its_tenancy(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        secret = await make_key(
            store, "web-1", models=("gpt-*",), limits=("per-key",), tags={"tier": "pro"}
        )
        live = LiveKeys(store, ("sqlite", "x"))
        await live.load()
        ring = ring_with(live)
        key = ring.authenticate(bearer(secret))
        assert key is not None
        assert (key.id, key.org, key.project, key.name) == ("web-1", "acme", "web", "web-1")
        assert key.limits == ("per-key", "plan-pro")  # the key's, then its project's
        assert dict(key.tags) == {"tier": "pro"} and key.models == ("gpt-*",)
        assert key.models_pattern is not None and key.models_pattern.fullmatch("gpt-4o")
        assert not key.models_pattern.fullmatch("claude")
        assert ring.authenticate({"x-api-key": secret}) == key
        git = ring.authenticate(bearer(GIT_KEY))  # the config's keys still work beside them
        assert git is not None and git.id == "ops"
        wrong_secret = secret[:12] + ("A" if secret[12] != "A" else "B") + secret[13:]
        unknown_prefix = "il-ffffffff-" + secret[12:]
        for wrong in (wrong_secret, unknown_prefix, "il-x", "sk-other", secret + "x"):
            assert live.lookup(wrong) is None
            with pytest.raises(GatewayError) as refused:
                ring.authenticate(bearer(wrong))
            assert refused.value.status == 401 and refused.value.message == "invalid API key"

    with_store(tmp_path, test)


def test_a_revoked_key_goes_at_the_next_refresh_and_only_the_change_is_read(
    tmp_path: Path,
) -> None:
    async def test(store: KeyStore) -> None:
        spy = Spy(store)
        live = LiveKeys(spy, ("sqlite", "x"))  # type: ignore[arg-type]
        keep = await make_key(store, "keep")
        drop = await make_key(store, "drop")
        await live.load()
        assert spy.since == [0]
        assert live.lookup(drop) is not None
        await store.revoke_key("drop", "t")
        assert live.lookup(drop) is not None  # NOTE: not yet refreshed
        assert await live.refresh() is True
        assert live.lookup(drop) is None and live.lookup(keep) is not None
        assert spy.since == [0, live.version - 1]  # only what changed since the last read
        assert await live.refresh() is False  # nothing changed: one tiny query, no read
        assert len(spy.since) == 2
        late = await make_key(store, "late")
        await live.refresh()
        assert live.lookup(late) is not None

    with_store(tmp_path, test)


def test_a_background_poll_sees_changes_within_a_second(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        live = LiveKeys(store, ("sqlite", "x"))
        secret = await make_key(store, "k")
        await live.load()
        live.start()
        try:
            await store.revoke_key("k", "t")
            started = time.monotonic()
            while live.lookup(secret) is not None:
                assert time.monotonic() - started < 1.0
                await asyncio.sleep(0.01)
        finally:
            await live.close()

    with_store(tmp_path, test)


def test_an_expired_key_is_refused_at_once(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        soon = await make_key(store, "soon", expires=time.time() + 0.3)
        live = LiveKeys(store, ("sqlite", "x"))
        await live.load()
        ring = ring_with(live)
        assert ring.authenticate(bearer(soon)) is not None
        await asyncio.sleep(0.35)
        with pytest.raises(GatewayError, match="expired") as refused:
            ring.authenticate(bearer(soon))
        assert refused.value.status == 401

    with_store(tmp_path, test)


def test_last_use_is_written_in_batches(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        secret = await make_key(store, "k")
        live = LiveKeys(store, ("sqlite", "x"))
        await live.load()
        ring = ring_with(live)
        before = time.time()
        for _ in range(3):
            ring.authenticate(bearer(secret))
        assert (await store.key("k")).last_used is None  # type: ignore[union-attr]
        await live.flush()
        used = (await store.key("k")).last_used  # type: ignore[union-attr]
        assert used is not None and before <= used <= time.time()

    with_store(tmp_path, test)


def test_a_store_that_fails_leaves_the_keys_served_as_they_were(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        spy = Spy(store)
        live = LiveKeys(spy, ("sqlite", "x"), poll_s=0.01)  # type: ignore[arg-type]
        secret = await make_key(store, "k")
        await live.load()
        live.touch("k", 123.0)
        spy.failing = True
        live.start()
        await asyncio.sleep(0.05)
        assert live.last_error is not None and "store is down" in live.last_error
        assert live.lookup(secret) is not None
        await live.flush()  # NOTE: fails; the time is kept for the next flush
        spy.failing = False
        await asyncio.sleep(0.05)
        assert live.last_error is None
        await live.close()  # NOTE: flushes, then closes the store
        await store.open()
        assert (await store.key("k")).last_used == 123.0  # type: ignore[union-attr]

    with_store(tmp_path, test)


def test_a_managed_key_with_a_git_key_id_is_ignored(tmp_path: Path) -> None:
    async def test(store: KeyStore) -> None:
        secret = await make_key(store, "ops")
        live = LiveKeys(store, ("sqlite", "x"))
        await live.load()
        assert live.lookup(secret) is not None
        live.set_git_ids(frozenset({"ops"}))
        assert live.lookup(secret) is None
        await store.update_key("ops", KeyChanges(name="x"), "t")
        await live.refresh()
        assert live.lookup(secret) is None  # NOTE: the config's key wins; logged

    with_store(tmp_path, test)


def test_without_a_store_authentication_is_unchanged() -> None:
    relaxed = KeyRing(AuthSettings(required=False))
    assert relaxed.authenticate(bearer("il-anything")) is None  # no keys: anonymous allowed
    with_store_but_no_keys = KeyRing(AuthSettings(required=False, store=StoreSettings("sqlite")))
    with pytest.raises(GatewayError, match="invalid API key"):  # a store: keys exist
        with_store_but_no_keys.authenticate(bearer("il-anything"))
    assert with_store_but_no_keys.authenticate({}) is None


# --- the shared checks (admin API and CLI) ----------------------------------------------------


def tenancy_run(tmp_path: Path, test: Callable[[Tenancy], Awaitable[None]]) -> None:
    async def main(store: KeyStore) -> None:
        await test(Tenancy(store, compile_yaml(CONFIG), "test"))

    with_store(tmp_path, main)


async def refusal(work: Awaitable[Any]) -> tuple[int, str | None, str]:
    with pytest.raises(TenancyError) as caught:
        await work
    return caught.value.status, caught.value.field, caught.value.message


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (b'{"project": "web", "name": "x", "colour": "red"}', "colour", "unknown field"),
        (b'{"project": "web", "name": 7}', "name", "Expected `str`, got `int`"),
        (b'{"project": "web"}', "name", "missing required field"),
        (b'{"project": "web", "name": "x", "tags": {"a": 1}}', "tags", "Expected `str`"),
        (b'{"project": "web", "name": "x", "models": "gpt-4o"}', "models", "got `str`"),
        (b'{"project": "web", "name": "x"', None, "malformed JSON"),
        (b"[]", None, "Expected `object`"),
    ],
)
def test_bad_input_is_refused_naming_the_field(body: bytes, field: str | None, says: str) -> None:
    with pytest.raises(TenancyError) as caught:
        decode_input(body, KeyInput)
    assert (caught.value.status, caught.value.field) == (400, field)
    assert says in caught.value.message


def test_checks_against_the_serving_config(tmp_path: Path) -> None:
    async def test(tenancy: Tenancy) -> None:
        web = {"project": "web", "name": "n"}
        assert await refusal(tenancy.create_key(KeyInput(**web, limits=["plan-por"]))) == (
            422,
            "limits",
            "unknown limit policy 'plan-por' (did you mean 'plan-pro'?)",
        )
        status, field, says = await refusal(tenancy.create_key(KeyInput(**web, id="ops")))
        assert (status, field) == (409, "id") and "auth.keys" in says
        assert (await refusal(tenancy.create_key(KeyInput(project="nope", name="n"))))[:2] == (
            404,
            "project",
        )
        for bad in ({"id": "has space"}, {"models": []}, {"expires": "soon"}):
            status, field, _ = await refusal(tenancy.create_key(KeyInput(**web, **bad)))
            assert (status, field) == (400, next(iter(bad)))
        past = await refusal(tenancy.create_key(KeyInput(**web, expires="2020-01-01")))
        assert past[:2] == (400, "expires") and "past" in past[2]
        assert (await refusal(tenancy.create_org(OrgInput(id="acme"))))[:2] == (409, "id")
        assert (await refusal(tenancy.create_project(ProjectInput(id="p", org="x"))))[:2] == (
            404,
            "org",
        )
        created = await tenancy.create_key(
            KeyInput(**web, expires="2099-01-31", models=["gpt-*", "gpt-*"], tags={"b": "2"})
        )
        assert created["key"].startswith(f"il-{created['prefix']}-")
        assert created["id"] == f"key-{created['prefix']}" and created["status"] == "active"
        assert created["expires"] == "2099-01-31T00:00:00Z" and created["models"] == ["gpt-*"]
        assert "hash" not in created and created["project_limits"] == ["plan-pro"]
        shown = await tenancy.get_key(created["id"])
        assert "key" not in shown and shown == {k: v for k, v in created.items() if k != "key"}
        patch = decode_input(b'{"models": null, "expires": null, "limits": ["per-key"]}', KeyPatch)
        changed = await tenancy.update_key(created["id"], patch)
        assert (changed["models"], changed["expires"], changed["limits"]) == (
            None,
            None,
            ["per-key"],
        )
        revoked = await tenancy.revoke_key(created["id"])
        assert revoked["status"] == "revoked" and revoked["revoked"] is not None
        assert (await refusal(tenancy.update_key(created["id"], patch)))[:2] == (409, "id")
        assert (await refusal(tenancy.get_key("nope")))[:2] == (404, "id")
        assert (await refusal(tenancy.list_keys(limit=0)))[:2] == (400, "limit")
        assert [e["action"] for e in await tenancy.audit()][:3] == [
            "key.revoke",
            "key.update",
            "key.create",
        ]

    tenancy_run(tmp_path, test)


# --- ManagedKeys: the gateway's keys across table swaps --------------------------------------


def snapshot_for(tmp_path: Path, store: str | None, git_ids: tuple[str, ...] = ("ops",)) -> Any:
    keys = ", ".join(f'{{id: {i}, hash: "{GIT_HASH}"}}' for i in git_ids)
    where = f"\n  store: {{kind: sqlite, path: {tmp_path / store}}}" if store else ""
    text = f"""
version: 1
upstreams: {{mock: {{kind: mock}}}}
models: {{gpt-4o: {{targets: [{{upstream: mock}}]}}}}
auth:
  required: true
  keys: [{keys}]{where}
"""
    return prepare_snapshot(compile_yaml(text))


def test_managed_keys_follow_the_table_across_swaps(tmp_path: Path) -> None:
    async def main() -> None:
        first = open_key_store("sqlite", path=str(tmp_path / "a.db"))
        await first.open()
        await first.create_org(Org(id="acme", name="ACME"), "t")
        await first.create_project(Project(id="web", org="acme", name="Web"), "t")
        secret = await make_key(first, "web-1")
        await first.close()

        managed = ManagedKeys()
        snap = snapshot_for(tmp_path, "a.db")
        await managed.start(snap)
        live = managed.live
        assert live is not None and snap.keyring.live is live
        assert snap.keyring.authenticate(bearer(secret)).id == "web-1"

        same_store = snapshot_for(tmp_path, "a.db", git_ids=("ops", "other"))
        await managed.prepare(same_store)
        managed.swap(same_store)
        assert managed.live is live and same_store.keyring.live is live  # kept, not reloaded

        clash = snapshot_for(tmp_path, "a.db", git_ids=("ops", "web-1"))
        with pytest.raises(SnapshotError, match="'web-1' is also the id of a managed key"):
            await managed.prepare(clash)
        unreadable = snapshot_for(tmp_path, "missing-dir/x.db")
        with pytest.raises(SnapshotError, match="cannot read the key store"):
            await managed.prepare(unreadable)

        other = snapshot_for(tmp_path, "b.db")
        await managed.prepare(other)
        managed.swap(other)
        assert managed.live is not live and managed.live is not None
        assert managed.live.target == ("sqlite", str(tmp_path / "b.db"))
        with pytest.raises(GatewayError, match="invalid API key"):
            other.keyring.authenticate(bearer(secret))  # that key lives in the other store

        plain = snapshot_for(tmp_path, None)
        managed.swap(plain)
        assert managed.live is None and plain.keyring.live is None
        await managed.close()

    asyncio.run(main())


def test_a_prefix_in_use_is_drawn_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(tenancy: Tenancy) -> None:
        first = await tenancy.create_key(KeyInput(project="web", name="first"))
        taken = (f"il-{first['prefix']}-{'x' * 43}", first["prefix"], "sha256:s:" + "0" * 64)
        draws = [taken, taken]
        monkeypatch.setattr(runtime.tenancy, "new_key", lambda: draws.pop() if draws else new_key())
        second = await tenancy.create_key(KeyInput(project="web", name="second"))  # id in use
        assert not draws
        draws.append(taken)
        third = await tenancy.create_key(KeyInput(project="web", name="third", id="named"))
        assert not draws  # NOTE: its own id, the prefix in use: drawn again too
        assert len({first["prefix"], second["prefix"], third["prefix"]}) == 3
        assert third["id"] == "named" and third["key"].startswith(f"il-{third['prefix']}-")

    tenancy_run(tmp_path, test)
