"""Authentication cost with managed keys (a script, not a test).

    .venv/bin/python bench/auth_keys.py [--sizes 10 100000] [--calls 200000] [--repeat 5]

For each size, a SQLite key store in a temporary directory gets that many managed keys (written
with one bulk insert after the store's own migrations, so building 100,000 keys takes seconds, not
100,000 transactions); `LiveKeys` loads them as `interlock serve` does, and a `KeyRing` with one
key from the config (as in examples/codexflow-tiers.yaml) is given them. Then, in process, the
CPU cost of one `KeyRing.authenticate(headers)` (the whole auth step of a request: header, lookup,
hash, expiry, last-use note), best of `--repeat` runs of `--calls` calls:

- valid, same key: one managed key over and over;
- valid, a new key each call: 10,000 requests' headers in turn, each with its own copy of one of
  up to 10,000 valid keys (the request side's memory is the same for both sizes);
- wrong secret: a managed key's prefix with a wrong secret (one dict hit, one sha256);
- unknown key: a managed-key-shaped key whose prefix is no key's, a new one each call (the
  config's key ring is then asked too: its memo misses, one sha256 per config salt);
- config key (memo hit): the config's own key, for reference.

Also the time to load all keys (start, or a store replaced), an incremental refresh after one
revocation (what every process does within 500 ms of a change), and the memory per key.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import itertools
import secrets
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.table import ApiKey, AuthSettings, StoreSettings  # noqa: E402
from runtime.auth import KeyRing  # noqa: E402
from runtime.errors import GatewayError  # noqa: E402
from runtime.keys import LiveKeys, new_key  # noqa: E402
from runtime.state.keystore import Org, Project  # noqa: E402
from runtime.state.keystore_stores import open_key_store  # noqa: E402

GIT_KEY = "il-" + "g" * 43
_SALT = "0011223344556677"
GIT_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + GIT_KEY).encode()).hexdigest()}"


async def build_store(path: str, count: int) -> list[str]:
    """A store with `count` active keys in 10 projects of 2 orgs, plus ``spare`` (to revoke);
    returns up to 10,000 of the keys themselves (the benchmark's valid keys)."""
    store = open_key_store("sqlite", path=path)
    await store.open()
    for org in ("acme", "globex"):
        await store.create_org(Org(id=org, name=org), "bench")
    for n in range(10):
        project = Project(id=f"p{n}", org=("acme", "globex")[n % 2], name=f"p{n}", limits=("p",))
        await store.create_project(project, "bench")
    await store.close()
    keys, rows, prefixes = [], [], set()
    for n in range(count + 1):
        key, prefix, hashed = new_key()
        while prefix in prefixes:  # NOTE: ~1 in 100,000 keys meets a prefix: draw again, as
            key, prefix, hashed = new_key()  # `keys create` and POST /admin/keys do
        prefixes.add(prefix)
        key_id = f"k{n}" if n < count else "spare"
        if len(keys) < 10_000 and n < count:
            keys.append(key)
        rows.append(
            (key_id, f"key {n}", f"p{n % 10}", hashed, prefix, None, None, "[]", "{}", 0.0, 13)
        )
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO api_keys (id, name, project_id, hash, prefix, models, expires, limits,"
            " tags, created, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("UPDATE key_changes SET version = 13")  # NOTE: after the 12 changes above
    conn.close()
    return keys


def per_call_us(work: Callable[[], object], calls: int, repeat: int) -> float:
    """Best of `repeat` runs of `calls` calls, in µs per call (CPU time)."""
    best = float("inf")
    for _ in range(repeat):
        gc.disable()
        started = time.process_time_ns()
        for _ in range(calls):
            work()
        elapsed = time.process_time_ns() - started
        gc.enable()
        best = min(best, elapsed / calls / 1000)
    return best


def cases(ring: KeyRing, keys: list[str]) -> dict[str, Callable[[], object]]:
    def bearer(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    same = bearer(keys[0])
    # NOTE: 10,000 distinct header dicts and strings whatever the store's size (a small store's
    # keys repeat, as new objects), so both sizes read the same amount of request memory
    valid = itertools.cycle([bearer("".join(list(keys[n % len(keys)]))) for n in range(10_000)])
    wrong_secret = bearer(keys[0][:12] + secrets.token_urlsafe(32))
    unknown = itertools.cycle(
        [bearer(f"il-{secrets.token_hex(4)}-{secrets.token_urlsafe(32)}") for _ in range(20_000)]
    )
    git = bearer(GIT_KEY)

    def refused(headers: dict[str, str]) -> Callable[[], object]:
        def call() -> object:
            try:
                return ring.authenticate(headers)
            except GatewayError:
                return None

        return call

    def refused_next() -> object:
        try:
            return ring.authenticate(next(unknown))
        except GatewayError:
            return None

    return {
        "valid, same key": lambda: ring.authenticate(same),
        "valid, a new key each call": lambda: ring.authenticate(next(valid)),
        "wrong secret (known prefix)": refused(wrong_secret),
        "unknown key, a new one each call": refused_next,
        "config key (memo hit)": lambda: ring.authenticate(git),
    }


async def loaded_bytes(path: str) -> int:
    """The memory the loaded keys hold (traced allocations that outlive the load)."""
    live = LiveKeys(open_key_store("sqlite", path=path), ("sqlite", path))
    await live.store.open()
    gc.collect()
    tracemalloc.start()
    await live.refresh()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await live.close()
    return held


async def measure(count: int, calls: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "keys.db")
        keys = await build_store(path, count)
        memory = await loaded_bytes(path)
        live = LiveKeys(open_key_store("sqlite", path=path), ("sqlite", path))
        gc.collect()
        started = time.perf_counter()
        await live.load()
        load_s = time.perf_counter() - started
        assert len(live.by_prefix) == count + 1, len(live.by_prefix)
        await live.store.revoke_key("spare", "bench")
        started = time.perf_counter()
        assert await live.refresh()
        refresh_ms = (time.perf_counter() - started) * 1000
        git = ApiKey(id="service", hash=GIT_HASH, org="ops", project="ops")
        ring = KeyRing(AuthSettings(required=True, keys=(git,), store=StoreSettings("sqlite")))
        ring.live = live
        work = cases(ring, keys)
        results = {name: per_call_us(call, calls, repeat) for name, call in work.items()}
        await live.close()
    per_key = memory / (count + 1)
    return {"load_s": load_s, "refresh_ms": refresh_ms, "bytes_per_key": per_key, **results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100_000])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = {size: asyncio.run(measure(size, args.calls, args.repeat)) for size in args.sizes}
    names = [name for name in rows[args.sizes[0]] if name not in ("load_s", "refresh_ms")]
    names.remove("bytes_per_key")
    title = f"µs per authenticate (CPU, best of {args.repeat} × {args.calls:,})"
    print(f"| {title} | " + " | ".join(f"{size:,} keys" for size in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{rows[s][name]:.2f}" for s in args.sizes) + " |")
    for label, field, form in (
        ("load every key (s)", "load_s", "{:.3f}"),
        ("refresh after one revocation (ms)", "refresh_ms", "{:.2f}"),
        ("memory per loaded key (bytes)", "bytes_per_key", "{:.0f}"),
    ):
        print(f"| {label} | " + " | ".join(form.format(rows[s][field]) for s in args.sizes) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
