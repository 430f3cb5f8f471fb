"""Pick a `Limiter` backend by name; each driver is imported only when its backend is chosen.

    open_limiter("memory")                                 -> MemoryLimiter()
    open_limiter("sqlite", path="limits.db")               -> SqliteLimiter("limits.db")
    open_limiter("redis", url="redis://127.0.0.1:6379/0")  -> RedisLimiter(url, "interlock:")

None of them does I/O here: the SQLite file is opened, and Redis connected, on first use.
"""

from __future__ import annotations

from runtime.state.limits import Limiter, MemoryLimiter


def open_limiter(
    kind: str, *, path: str | None = None, url: str | None = None, prefix: str = "interlock:"
) -> Limiter:
    """The limiter of `kind`: ``memory``, ``sqlite`` (with a `path`) or ``redis`` (with a `url`;
    every key it writes starts with `prefix`)."""
    if kind == "memory":
        return MemoryLimiter()
    if kind == "sqlite":
        if not path:
            raise ValueError("a sqlite limiter needs a path")
        from runtime.state.limits_sqlite import SqliteLimiter

        return SqliteLimiter(path)
    if kind == "redis":
        if not url:
            raise ValueError("a redis limiter needs a url")
        from runtime.state.limits_redis import RedisLimiter

        return RedisLimiter(url, prefix)
    raise ValueError(f"unknown limits backend {kind!r} (expected memory, sqlite or redis)")
