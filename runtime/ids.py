"""Unique ids without a system call per id.

`unique_suffix()` is 48 random bits drawn once per process (again after a fork) and a counter,
so ids from every worker and replica differ. PERF: `os.urandom` per request would release the
GIL on the hot path, handing it to the ledger's writer thread for a switch interval.

    f"{time.time_ns():016x}{unique_suffix()}"  -> "187e3c2a9f0b1c00" + "5f1c2b9a0e7d" + "0001a2"
"""

from __future__ import annotations

import itertools
import os


class _Source:
    __slots__ = ("counter", "pid", "prefix")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count()


_source = _Source()


def unique_suffix() -> str:
    """18 hex digits unique within this process's lifetime (the counter wraps after 2**24)."""
    global _source
    if _source.pid != os.getpid():  # NOTE: a forked worker draws its own prefix
        _source = _Source()
    return f"{_source.prefix}{next(_source.counter) & 0xFFFFFF:06x}"
