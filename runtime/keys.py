"""Managed keys on the hot path: the store's active keys in memory, kept current by a background
task, so authentication never waits on the store.

A managed key reads ``il-<prefix>-<secret>``: the prefix (8 hex characters) is not secret and
finds the key's entry in one dict lookup; the salted sha256 of the whole key is then compared
with the stored one. So a presented key costs one lookup and at most one sha256, whether the
store holds ten keys or a hundred thousand::

    key, prefix, hashed = new_key()      # ("il-1a2b3c4d-…", "1a2b3c4d", "sha256:<salt>:<hex>")
    live = LiveKeys(store, ("sqlite", "keys.db"))
    await live.load()                    # every active key
    live.lookup(key)                     # -> LiveKey(key=ApiKey(id=..., org=..., ...), ...)
    live.start()                         # poll the change counter every 500 ms; flush last-used

`ManagedKeys` is what the gateway holds: the `LiveKeys` of the live table's ``auth.store``,
switched when a reload names another store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from compiler.table import ApiKey
from runtime.auth import parse_hash
from runtime.snapshot import Snapshot, SnapshotError
from runtime.state.keystore import KeyStore, StoredKey
from runtime.state.keystore_stores import open_key_store

_LOG = logging.getLogger("interlock")
KEY_MARK = "il-"
POLL_S = 0.5  # a change in the store reaches every process within this (plus one query)
FLUSH_S = 5.0  # last-used times are written at most this often
OPEN_TIMEOUT_S = 15.0
_LOG_EVERY_S = 10.0
_THREAD_BUILD_ROWS = 2000  # PERF: bigger refreshes build their entries off the event loop
_CACHE_LIMIT = 10_000


def new_key() -> tuple[str, str, str]:
    """A new managed key: ``(key, prefix, hash)``; only the prefix and hash are ever stored."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_MARK}{prefix}-{secrets.token_urlsafe(32)}"
    salt = secrets.token_hex(8)
    return key, prefix, f"sha256:{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class LiveKey:
    key: ApiKey  # what routes, limits and the ledger read
    salt: str
    digest: str
    expires_at: float | None  # unix time


class LiveKeys:
    """The active keys of one store, by prefix. The dict is replaced, never changed in place:
    a request reads it once; a refresh builds the next one and publishes it in one assignment.
    """

    def __init__(
        self,
        store: KeyStore,
        target: tuple[str, str],
        *,
        poll_s: float = POLL_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.store = store
        self.target = target
        self.poll_s = poll_s
        self.flush_s = flush_s
        self.by_prefix: dict[str, LiveKey] = {}
        self.version = -1  # the store's change counter as last read; -1: never loaded
        self.git_ids: frozenset[str] = frozenset()
        self.last_error: str | None = None
        self._used: dict[str, float] = {}
        self._patterns: dict[tuple[str, ...], re.Pattern[str]] = {}  # PERF: keys share globs
        self._merged: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._logged_at = 0.0

    # --- the hot path

    def lookup(self, presented: str) -> LiveKey | None:
        """The entry of `presented` (``il-<prefix>-<secret>``), or None: another shape, an
        unknown or revoked key, a wrong secret."""
        if len(presented) < 13 or presented[11] != "-" or not presented.startswith(KEY_MARK):
            return None
        entry = self.by_prefix.get(presented[3:11])
        if entry is None:
            return None
        candidate = hashlib.sha256((entry.salt + presented).encode()).hexdigest()
        return entry if hmac.compare_digest(candidate, entry.digest) else None

    def touch(self, key_id: str, now: float) -> None:
        """Remember that `key_id` was used at `now` (written by the next flush)."""
        self._used[key_id] = now

    # --- keeping current

    async def load(self) -> None:
        """Open the store and read every active key (at start, before serving)."""
        await self.store.open()
        await self.refresh()

    async def refresh(self) -> bool:
        """Read what changed since the last refresh and publish it; False when nothing did."""
        async with self._lock:
            await self.store.open()  # NOTE: idempotent; a store that was down opens now
            version = await self.store.version()
            if version == self.version:
                return False
            since = self.version if 0 < self.version < version else 0
            version, rows = await self.store.changes(since)
            if len(rows) > _THREAD_BUILD_ROWS:
                table = await asyncio.to_thread(self._build, rows, since == 0)
            else:
                table = self._build(rows, since == 0)
            self.by_prefix = table
            self.version = version
            return True

    def _build(self, rows: Iterable[StoredKey], full: bool) -> dict[str, LiveKey]:
        table = {} if full else dict(self.by_prefix)
        for stored in rows:
            current = table.get(stored.prefix)
            if current is not None and current.key.id == stored.id:
                del table[stored.prefix]
            if stored.revoked is not None:
                continue
            if stored.id in self.git_ids:
                _LOG.error(
                    "managed key '%s' has the id of a key in auth.keys; it is ignored", stored.id
                )
                continue
            table[stored.prefix] = self._entry(stored)
        return table

    def _entry(self, stored: StoredKey) -> LiveKey:
        salt, digest = parse_hash(stored.hash)
        return LiveKey(
            key=ApiKey(
                id=stored.id,
                hash=stored.hash,
                name=stored.name,
                org=stored.org,
                project=stored.project,
                models=stored.models,
                models_pattern=self._pattern(stored.models),
                expires=_iso(stored.expires),
                limits=self._limits(stored.limits, stored.project_limits),
                tags=stored.tags
                if isinstance(stored.tags, MappingProxyType)
                else MappingProxyType(dict(stored.tags)),
            ),
            salt=salt,
            digest=digest,
            expires_at=stored.expires,
        )

    def _limits(self, own: tuple[str, ...], project: tuple[str, ...]) -> tuple[str, ...] | None:
        """The key's limit names, then its project's. NOTE: every name, as the store has it:
        the limiter applies those the serving table defines, so a reload that adds a policy
        needs no refresh."""
        if not project:
            return own or None
        merged = self._merged.get((own, project))
        if merged is None:
            if len(self._merged) > _CACHE_LIMIT:
                self._merged.clear()
            merged = self._merged[(own, project)] = tuple(dict.fromkeys((*own, *project)))
        return merged

    def _pattern(self, globs: tuple[str, ...] | None) -> re.Pattern[str] | None:
        if not globs:
            return None
        pattern = self._patterns.get(globs)
        if pattern is None:
            if len(self._patterns) > _CACHE_LIMIT:
                self._patterns.clear()
            pattern = re.compile("|".join(fnmatch.translate(g) for g in globs))
            self._patterns[globs] = pattern
        return pattern

    def set_git_ids(self, ids: frozenset[str]) -> None:
        """The ids of the live table's git keys: a managed key with one of them is ignored."""
        if ids == self.git_ids:
            return
        self.git_ids = ids
        if any(entry.key.id in ids for entry in self.by_prefix.values()):
            self.by_prefix = {p: e for p, e in self.by_prefix.items() if e.key.id not in ids}

    # --- background work

    def start(self) -> None:
        """Poll the change counter and flush last-used times, on the running loop."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._poll()), loop.create_task(self._flush_loop())]

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
                self.last_error = None
            except Exception as exc:  # NOTE: keep serving the keys we have; retry next poll
                self._failed("cannot refresh managed keys", exc)
            await asyncio.sleep(self.poll_s)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the last-used times gathered since the last flush (kept for later on failure)."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self.store.record_use(used)
        except Exception as exc:
            for key_id, at in used.items():
                if self._used.get(key_id, 0.0) < at:
                    self._used[key_id] = at
            self._failed("cannot record when managed keys were last used", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            _LOG.warning("%s (%s store): %s", what, self.target[0], self.last_error)

    async def close(self) -> None:
        """Stop the background work, write the last-used times, close the store."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 5.0)
        with contextlib.suppress(Exception):
            await self.store.close()


class ManagedKeys:
    """The `LiveKeys` of the live table's ``auth.store``. A reload that keeps the store keeps
    them; one that names another store gets them built by `prepare` before the swap."""

    def __init__(self) -> None:
        self.live: LiveKeys | None = None
        self._pending: LiveKeys | None = None
        self._running = False
        self._closing: set[asyncio.Task[None]] = set()

    async def prepare(self, snapshot: Snapshot) -> None:
        """Make ready the store `snapshot` names and check it against the snapshot's git keys;
        raises SnapshotError (the store cannot be read, or a git key has a managed key's id)."""
        target = snapshot.key_store_target
        if target is None:
            return
        live = self.live if self.live is not None and self.live.target == target else None
        if live is None:
            if self._pending is None or self._pending.target != target:
                if self._pending is not None:
                    self._close_later(self._pending)
                self._pending = None
                fresh = LiveKeys(store_for_target(target), target)
                try:
                    await asyncio.wait_for(fresh.store.open(), OPEN_TIMEOUT_S)
                    await fresh.refresh()  # NOTE: not timed: 100,000 keys take a second or two
                except Exception as exc:
                    await fresh.close()
                    raise SnapshotError(
                        f"auth.store: cannot read the key store ({target[0]}):"
                        f" {type(exc).__name__}: {exc}"
                    ) from None
                self._pending = fresh
            live = self._pending
        await check_git_ids(live.store, [key.id for key in snapshot.table.auth.keys])

    def swap(self, snapshot: Snapshot) -> None:
        """Follow `snapshot` (before it is published): keep the live keys, switch to the
        prepared ones, or (unprepared) open its store; attach them to its key ring."""
        target = snapshot.key_store_target
        old = self.live
        if old is None or old.target != target:
            if target is None:
                self.live = None
            elif self._pending is not None and self._pending.target == target:
                self.live, self._pending = self._pending, None
            else:  # NOTE: not prepared: its keys arrive with the first poll
                self.live = LiveKeys(store_for_target(target), target)
            if self.live is not None and self._running:
                self.live.start()
            if old is not None:
                self._close_later(old)
        if self.live is not None:
            self.live.set_git_ids(frozenset(key.id for key in snapshot.table.auth.keys))
        if snapshot.keyring is not None:
            snapshot.keyring.live = self.live

    async def start(self, snapshot: Snapshot) -> None:
        """At lifespan startup: load the store of `snapshot` (unless prepared) and start."""
        self._running = True
        if self.live is None and snapshot.key_store_target is not None:
            await self.prepare(snapshot)
            self.swap(snapshot)
        if self.live is not None:
            self.live.start()

    async def close(self) -> None:
        self._running = False
        live, pending = self.live, self._pending
        self.live = self._pending = None
        for keys in (live, pending):
            if keys is not None:
                await keys.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, keys: LiveKeys) -> None:
        task = asyncio.get_running_loop().create_task(keys.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def check_git_ids(store: KeyStore, ids: Iterable[str]) -> None:
    """Raise SnapshotError when a managed key has one of `ids` (the config's key ids)."""
    try:
        clash = await store.existing_key_ids(list(ids))
    except Exception as exc:
        raise SnapshotError(
            f"auth.store: cannot read the key store: {type(exc).__name__}: {exc}"
        ) from None
    if clash:
        raise SnapshotError(
            "auth.keys: "
            + ", ".join(f"'{key_id}'" for key_id in sorted(clash))
            + " is also the id of a managed key in auth.store; an id names one key"
            " (rename the key in the config)"
        )


def store_for_target(target: tuple[str, str]) -> KeyStore:
    kind, where = target
    if kind == "sqlite":
        return open_key_store(kind, path=where)
    return open_key_store(kind, url=where)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
