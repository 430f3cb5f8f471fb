"""Hot reload: watch the config, compile off the event loop, swap atomically, keep the last good.

Triggers: a file change in the config's directory (editors save by rename and Kubernetes swaps a
``..data`` symlink, so the directory is watched, not the file), SIGHUP, and ``POST /admin/reload``.
Every trigger re-reads the files and skips the reload when their bytes did not change. A config
that fails to compile (or cannot be served, e.g. a missing secret) is rejected: the old table
keeps serving and the diagnostics are logged and kept for ``GET /admin/config``::

    reloader = Reloader(gateway, "config.yaml")
    result = await reloader.reload("sighup")   # ReloadResult(ok=True, version="3f2a…", ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import CompileResult, compile_config, compile_texts
from compiler.diagnostics import Diagnostic, render_text
from compiler.diff import TableDiff, describe_changes, diff_tables
from compiler.loader import CONFIG_SUFFIXES
from compiler.table import RouteTable
from runtime.accesslog import lifecycle_log
from runtime.app import Gateway
from runtime.snapshot import Snapshot, SnapshotError, locate_snapshot_error, prepare_snapshot

log = logging.getLogger("interlock.reload")

DEBOUNCE_STEP_MS = 50  # quiet time after the last change before reloading
DEBOUNCE_MAX_MS = 500  # upper bound on grouping a burst of changes
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})  # transient: says nothing about the config
POLL_INTERVAL_S = 1.0  # safety net: changes made before the watch was armed, or on filesystems
# without inotify (some network and container mounts), are found by comparing bytes


@dataclass(frozen=True)
class ReloadResult:
    trigger: str
    ok: bool
    at: float
    version: str | None = None  # the version now live
    skipped: bool = False  # bytes unchanged: nothing to do
    diagnostics: tuple[Diagnostic, ...] = ()
    error: str | None = None
    # NOTE: by section (`compiler.diff`): ``{"keys": {"removed": [...]}, ...}``; names and key
    # ids only, never a value; `described` is the same as one line for the log
    changes: Mapping[str, Any] = field(default_factory=dict)
    described: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "ok": self.ok,
            "skipped": self.skipped,
            "at": self.at,
            "version": self.version,
            "error": self.error,
            "changes": dict(self.changes),
            "diagnostics": [d.as_dict() for d in self.diagnostics],
        }


def config_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return [path]


def read_sources(path: Path) -> list[tuple[str, str]] | None:
    """The config files' names and texts, read the way the compiler reads them; None when they
    cannot be read (the compiler then says why). Raises OSError when the process is out of file
    handles (EMFILE/ENFILE): that is no verdict on the config, and the caller waits it out."""
    try:
        return [(str(file), file.read_text(encoding="utf-8")) for file in config_files(path)]
    except OSError as exc:
        if exc.errno in OUT_OF_FILES:
            raise
        return None
    except UnicodeDecodeError:
        return None


def texts_digest(texts: Iterable[tuple[str, str]]) -> str:
    """sha256 over the config files' names and texts."""
    digest = hashlib.sha256()
    for name, text in texts:
        data = text.encode()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def source_digest(path: Path) -> str | None:
    """`texts_digest` of the config as it is on disk now; None when it cannot be read."""
    texts = read_sources(path)
    return None if texts is None else texts_digest(texts)


class Reloader:
    """Owns reloads for one gateway process; counts attempts, successes and rejections."""

    def __init__(
        self,
        gateway: Gateway,
        config_path: str | Path,
        *,
        loaded: CompileResult | None = None,
        on_result: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.path = Path(config_path)
        self.sources = [str(p) for p in config_files(self.path)]
        self.digest = source_digest(self.path)
        self.loaded_at = time.time()
        self.attempts = 0
        self.successes = 0
        self.rejections = 0
        self.last: ReloadResult | None = None
        self.on_result = on_result
        self._lock = asyncio.Lock()
        self._deferred = False  # out of file handles; said once until the config reads again
        if loaded is not None and loaded.sources:
            # NOTE: the digest of the bytes that were compiled, not of a later read: a save that
            # lands between the startup compile and here must still be loaded
            self.sources = list(loaded.sources)
            self.digest = texts_digest(loaded.sources.items())

    async def reload(self, trigger: str) -> ReloadResult:
        """Re-read the config; swap in the new table if it changed and compiles."""
        async with self._lock:  # NOTE: one reload at a time; a burst collapses into the next
            try:
                digest = source_digest(self.path)
            except OSError as exc:
                return self._defer(trigger, exc)
            self._deferred = False
            if digest is not None and digest == self.digest:
                return self._finish(
                    ReloadResult(
                        trigger,
                        True,
                        time.time(),
                        version=self.gateway.snapshot.table.version,
                        skipped=True,
                    ),
                    count=False,
                )
            self.attempts += 1
            # NOTE: the digest kept is that of the bytes compiled, which may be newer than the
            # ones just hashed (a save in progress): keeping the older one reloads the same bytes
            # twice, keeping a newer one would skip bytes that were never compiled
            try:
                digest, result, snapshot, error = await asyncio.to_thread(self._build)
            except OSError as exc:
                self.attempts -= 1  # NOTE: not an attempt: the config could not be read
                return self._defer(trigger, exc)
            if snapshot is not None and error is None:
                try:  # NOTE: a new auth.store opened and loaded; git key ids checked against it
                    await self.gateway.keys.prepare(snapshot)
                except SnapshotError as exc:
                    snapshot, error = None, str(exc)
            if snapshot is None or result.table is None:
                self.rejections += 1
                self.digest = digest  # do not retry the same broken bytes until they change
                return self._finish(
                    ReloadResult(
                        trigger,
                        False,
                        time.time(),
                        version=self.gateway.snapshot.table.version,
                        diagnostics=result.diagnostics,
                        error=error,
                    )
                )
            old = self.gateway.snapshot.table
            diff = diff_tables(old, result.table)
            self.gateway.swap(snapshot)
            self.digest = digest
            self.successes += 1
            self.loaded_at = time.time()
            self.sources = list(result.sources)
            return self._finish(
                ReloadResult(
                    trigger,
                    True,
                    self.loaded_at,
                    version=result.table.version,
                    diagnostics=result.diagnostics,
                    changes=diff.summary(),
                    described=describe_changes(diff),
                )
            )

    def _build(self) -> tuple[str | None, CompileResult, Snapshot | None, str | None]:
        """Read once, compile and prepare; runs in a worker thread, never on the event loop.
        Returns the digest of the texts compiled (None when unreadable) with the result."""
        texts = read_sources(self.path)
        if texts:
            digest: str | None = texts_digest(texts)
            result = compile_texts(texts)
        else:  # NOTE: unreadable or an empty directory: the compiler says so, located
            digest, result = None, compile_config(self.path)
        if result.table is None:
            return digest, result, None, None
        try:
            return digest, result, prepare_snapshot(result.table), None
        except SnapshotError as exc:  # NOTE: located where the config names the file, if one
            return digest, locate_snapshot_error(result, exc), None, str(exc)

    def _defer(self, trigger: str, exc: OSError) -> ReloadResult:
        """Out of file handles: keep the live table, count nothing, say so once per episode
        (the next poll after handles free up reads the config again)."""
        if exc.errno not in OUT_OF_FILES:
            raise exc
        version = self.gateway.snapshot.table.short_version
        message = (
            f"cannot read the config now: {exc.strerror} ({errno.errorcode.get(exc.errno, '')});"
            f" still serving version {version}, retrying on the next change or poll"
        )
        if not self._deferred:
            self._deferred = True
            lifecycle_log().warning(f"interlock: reload ({trigger}) deferred: {message}")
        return ReloadResult(
            trigger, False, time.time(), version=self.gateway.snapshot.table.version, error=message
        )

    def _finish(self, result: ReloadResult, *, count: bool = True) -> ReloadResult:
        if count or self.last is None:
            self.last = result
        _log_result(result, self.gateway.snapshot.table)
        if self.on_result is not None:
            self.on_result(result)
        return result

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every settled change in the config's directory until `stop` is set."""
        import watchfiles

        poller = asyncio.get_running_loop().create_task(self._poll(stop))
        directory = self.path if self.path.is_dir() else self.path.parent
        try:
            async for _changes in watchfiles.awatch(
                directory,
                stop_event=stop,
                debounce=DEBOUNCE_MAX_MS,
                step=DEBOUNCE_STEP_MS,
                recursive=False,
                ignore_permission_denied=True,
            ):
                await self.safe_reload("watch")
        except OSError as exc:  # NOTE: e.g. EMFILE: no inotify instance; the poll still works
            lifecycle_log().warning(f"interlock: not watching {directory} ({exc}); polling instead")
            await poller
        finally:
            poller.cancel()

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
            if not stop.is_set() and self._changed():
                await self.safe_reload("poll")

    def _changed(self) -> bool:
        try:
            return source_digest(self.path) != self.digest
        except OSError:  # NOTE: out of file handles: `reload` says so and keeps the table
            return True

    async def safe_reload(self, trigger: str) -> None:
        """`reload`, logging instead of raising: for triggers nobody awaits (signals, watch)."""
        try:
            await self.reload(trigger)
        except Exception:  # NOTE: a reload bug must never stop watching
            log.exception("reload failed")


def _log_result(result: ReloadResult, table: RouteTable) -> None:
    if result.skipped:
        return
    if result.ok:
        lifecycle_log().info(
            f"interlock: reload ({result.trigger}) ok: version {table.short_version}"
            f" changes {result.described or describe_changes(TableDiff(()))}"
        )
        return
    lines = [
        f"interlock: reload ({result.trigger}) REJECTED; still serving version"
        f" {table.short_version}"
    ]
    if result.error:
        lines.append(f"  {result.error}")
    lines.extend(render_text(diagnostic) for diagnostic in result.diagnostics)
    lifecycle_log().error("\n".join(lines))
